"""rapport-train table-4bit: each token-table layout becomes onnxruntime's GatherBlockQuantized and gives
the table it stored, row for row."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.table_quantize import pack_4bit, tables_to_4bit, unpack_4bit

ROWS, COLS = 4000, 256  # 1,024,000 values: above the size at which a table is rewritten


def table() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((ROWS, COLS)) * rng.uniform(0.01, 0.3, (ROWS, 1))).astype(np.float32)


def model_with(layout: str, w: np.ndarray):
    """A graph that looks a table up as the exports do: fp32, 8-bit per tensor, or 8-bit rows."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])
    out = helper.make_tensor_value_info("emb", TensorProto.FLOAT, None)
    if layout == "fp32":
        nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"])]
        inits = [numpy_helper.from_array(w, "table")]
    elif layout == "uint8 per tensor":
        scale = (w.max() - w.min()) / 255
        zero = np.uint8(round(-w.min() / scale))
        q = np.clip(np.round(w / scale) + zero, 0, 255).astype(np.uint8)
        nodes = [helper.make_node("Gather", ["table_q", "ids"], ["g"]),
                 helper.make_node("DequantizeLinear", ["g", "scale", "zero"], ["emb"])]
        inits = [numpy_helper.from_array(q, "table_q"), numpy_helper.from_array(np.float32(scale), "scale"),
                 numpy_helper.from_array(zero, "zero")]
    else:  # int8 rows
        scale = np.abs(w).max(1, keepdims=True) / 127
        q = np.round(w / scale).astype(np.int8)
        nodes = [helper.make_node("Gather", ["t_rows_int8", "ids"], ["gq"]),
                 helper.make_node("Cast", ["gq"], ["gf"], to=TensorProto.FLOAT),
                 helper.make_node("Gather", ["t_row_scales", "ids"], ["gs"]),
                 helper.make_node("Mul", ["gf", "gs"], ["emb"])]
        inits = [numpy_helper.from_array(q, "t_rows_int8"), numpy_helper.from_array(scale.astype(np.float32), "t_row_scales")]
    model = helper.make_model(helper.make_graph(nodes, "g", [ids], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def run(model, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_packing_round_trips_within_half_a_step():
    w = table()
    packed, scales = pack_4bit(w)
    assert packed.shape == (ROWS, COLS // 2) and packed.dtype == np.uint8 and scales.dtype == np.float16
    back = unpack_4bit(packed, scales)
    step = np.repeat(scales.astype(np.float32), 32, axis=1)
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6)


@pytest.mark.parametrize("layout", ["fp32", "uint8 per tensor", "int8 rows"])
def test_each_table_layout_becomes_a_4bit_gather_of_the_same_table(layout):
    w = table()
    model = model_with(layout, w)
    ids = np.array([0, 7, 3999, 7])
    before = run(model, ids)
    assert tables_to_4bit(model) and [n.op_type for n in model.graph.node] == ["GatherBlockQuantized", "Cast"]
    after = run(model, ids)
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    data = next(v for k, v in stored.items() if k.endswith("_data"))
    scales = next(v for k, v in stored.items() if k.endswith("_scales"))
    # the lookup multiplies in fp16 (the scales' type), so to within fp16 rounding
    np.testing.assert_allclose(after, unpack_4bit(data, scales)[ids], rtol=2**-10, atol=1e-6)
    step = np.repeat(scales.astype(np.float32), 32, axis=1)[ids]
    assert np.all(np.abs(after - before) <= step / 2 + np.abs(before).max() / 100)  # the 8-bit table's own error
    assert sum(t.raw_data.__len__() for t in model.graph.initializer) < 0.6 * w.size  # about 0.56 byte a value
