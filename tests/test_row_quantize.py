"""rapport-train rows-int8: MatMulNBits -> per-row u8 x 7-bit s8 products. The bounds come from the
quantization steps (half a step of each operand), not from one machine's run, and a row's result must not
depend on the rest of the batch on any CPU (the integer sums are exact: no int16 pair overflow)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.row_quantize import (GELU_MIN, WEIGHT_LEVELS, weight_nk, activation_channel_max, column_int7,
                                   rows_int8, smoothing)

K, N = 96, 64


def nbits_model(gelu_input: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x (batch, rows, K) -> [GELU] -> MatMul (K, N) + bias, weights as 8-bit MatMulNBits; and the fp32 weight."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    w[5] *= 20  # an input channel with large weights
    nodes = [helper.make_node("Gelu", ["x"], ["h"], domain="com.microsoft")] if gelu_input else []
    nodes += [helper.make_node("MatMul", ["h" if gelu_input else "x", "w"], ["y0"]),
              helper.make_node("Add", ["y0", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "r", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                     algo_config=config)
    quantizer.process()
    return quantizer.model.model, w


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def inputs(batch: int = 3, rows: int = 40) -> np.ndarray:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, rows, K)).astype(np.float32)
    x[..., 7] *= 15  # an outlier channel, as LayerNorm outputs have
    return x


def test_weights_keep_seven_bits_so_no_cpu_overflows_a_pair_sum():
    codes, scales = column_int7(np.random.default_rng(0).standard_normal((N, K)).astype(np.float32))
    assert codes.shape == (K, N) and codes.dtype == np.int8 and scales.shape == (N,)
    assert np.abs(codes).max() == WEIGHT_LEVELS
    assert 2 * 255 * WEIGHT_LEVELS <= 32767  # vpmaddubsw's int16 sum of two u8 x s8 products


def error_bound(x: np.ndarray, w: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """The largest |error| of each output of x (rows, K) @ w (K, N) when each row of x (shifted by ``offset``
    to 0..255 codes, or symmetric to -127..127) and each column of w (-63..63) is rounded to its step."""
    shifted = x + offset if offset is not None else np.abs(x)
    act_step = shifted.max(-1, keepdims=True) / (255 if offset is not None else 127)
    w_step = np.abs(w).max(0) / WEIGHT_LEVELS
    return (act_step / 2 * np.abs(w).sum(0) + np.abs(x) @ np.ones_like(w) * w_step / 2
            + K * act_step / 2 * w_step / 2)


def gelu(x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid("com.microsoft", 1)]), x)


@pytest.mark.parametrize("gelu_input", [False, True])
@pytest.mark.parametrize("smooth", [False, True])
def test_rows_int8_stays_within_the_rounding_bound_and_each_row_is_batch_independent(gelu_input, smooth):
    model, _ = nbits_model(gelu_input)
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    w = weight_nk(node, {i.name: i for i in model.graph.initializer}).T  # what rows_int8 starts from
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b"))
    x = inputs()
    channel_max = activation_channel_max(model, [{"x": inputs(2, 30) * 1.1}]) if smooth else None
    factor = smoothing(channel_max[node.input[0]], [w.T], 0.5) if smooth else np.ones(K, np.float32)
    assert rows_int8(model, channel_max) == 1
    assert not [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    after = run(model, x).reshape(-1, N)
    h = (gelu(x) if gelu_input else x).reshape(-1, K)
    reference = h @ w + bias
    bound = error_bound(h / factor, w * factor[:, None], GELU_MIN / factor if gelu_input else None)
    assert np.all(np.abs(after - reference) <= bound + 1e-4 * (1 + np.abs(reference)))
    one_at_a_time = np.concatenate([run(model, x[i:i + 1, j:j + 1]) for i in range(x.shape[0])
                                    for j in range(x.shape[1])]).reshape(after.shape)
    np.testing.assert_array_equal(one_at_a_time, after)


def test_gelu_inputs_are_found_in_the_exporters_erf_pattern():
    from training.row_quantize import is_gelu_output

    n = helper.make_node
    nodes = [n("Div", ["x", "c"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["a"]),
             n("Mul", ["x", "a"], ["m"]), n("Mul", ["m", "half"], ["gelu"]), n("Add", ["x", "one"], ["plain"])]
    graph = helper.make_graph(nodes, "g", [], [])
    assert is_gelu_output(graph, "gelu") and not is_gelu_output(graph, "plain") and not is_gelu_output(graph, "x")
