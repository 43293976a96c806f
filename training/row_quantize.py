"""Many-row MatMuls as integer products with a scale per activation row (for the encoder).

    rapport-train rows-int8 exported_models/rapport-chat-persona [--calibration 64] [--alpha 0.5]

onnxruntime's 8-bit ``MatMulNBits`` is fast at a few rows (a decoder step) and slow at many (an encoder
run over 50 prompts: 9,500 rows; at 1,650 rows it was slower than fp32). This rewrites every
``MatMulNBits`` of an export's encoder as
- one quantization per activation tensor, shared by the MatMuls that read it: a scale per row (the row's
  largest magnitude), codes around 128; a GELU's output (never below -0.17) is shifted by 0.17 to codes
  0..255, and the shift's product with the weights is subtracted after;
- ``MatMulIntegerToFloat`` (u8 x s8, int32 sums) times the row's scale.
A row's result never depends on the other rows of the batch.

Before quantizing, each input channel is balanced against the weights (SmoothQuant, Xiao et al. 2023,
``alpha`` 0.5): x / s and W * s, with s from the channel's largest magnitude over calibration prompts of
the training split. One outlier channel of a LayerNorm's output no longer sets a whole row's step.

The weights keep a scale per output column and 7 bits (-63..63). With them no pair of products in the
u8 x s8 kernels of AVX2 and AVX-512 CPUs without VNNI (``vpmaddubsw``: 2 x 255 x 63 = 32,130) overflows
int16: the integer sums are exact on every x86-64 CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .dequantize import dequantize_matmul_nbits
from .table_quantize import drop_unused_initializers

WEIGHT_LEVELS = 63  # 7 bits: no int16 overflow in u8 x s8 pair sums
GELU_MIN = 0.17  # GELU(x) >= -0.16997 for every x


def column_int7(weight_nk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An (N, K) float weight -> its (K, N) int8 codes in -63..63 and one float scale per column N."""
    scale = np.maximum(np.abs(weight_nk).max(axis=1), 1e-12) / WEIGHT_LEVELS
    codes = np.clip(np.round(weight_nk / scale[:, None]), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
    return np.ascontiguousarray(codes.T), scale.astype(np.float32)


def activation_channel_max(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each MatMulNBits input's largest magnitude per channel (last axis) over calibration runs ``feeds``."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted({nd.input[0] for nd in probe.graph.node if nd.op_type == "MatMulNBits"})
    probe.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            top = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            out[name] = np.maximum(out.get(name, top), top)
    return out


def smoothing(channel_max: np.ndarray, weights_nk: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factor s (x / s, W * s): moves ``alpha`` of an outlier channel's range into
    the weights (Xiao et al. 2023), so that one channel no longer sets a whole row's quantization step."""
    w_max = np.max([np.abs(w).max(axis=0) for w in weights_nk], axis=0)
    s = np.power(np.maximum(channel_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
    return s.astype(np.float32)


def is_gelu_output(graph: onnx.GraphProto, name: str) -> bool:
    """Whether ``name`` is a GELU's output (a Gelu node, or the exporter's x * 0.5 * (1 + erf(x / sqrt 2)))."""
    producers = {o: nd for nd in graph.node for o in nd.output}
    frontier = [(name, 0)]
    while frontier:
        tensor, depth = frontier.pop()
        node = producers.get(tensor)
        if node is None or depth > 3:
            continue
        if node.op_type in ("Gelu", "BiasGelu", "Erf"):
            return True
        if node.op_type in ("Mul", "Add", "Div"):
            frontier += [(i, depth + 1) for i in node.input]
    return False


def _row_quantizer(x: str, tag: str, k: int, smooth: bool, unsigned: bool
                   ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and constants) that quantize ``x`` (..., K) with a scale per row (a block of K along the last
    axis: QuantizeLinear-21) to ``{tag}_u8`` and ``{tag}_scale`` (..., 1). The rows are first multiplied by
    ``{tag}_smooth`` if ``smooth`` and, if ``unsigned``, shifted by ``{tag}_offset`` (both per channel, set by
    the caller) to codes 0..255; otherwise they get symmetric codes around 128."""
    n = helper.make_node
    levels, zero = (255.0, 0) if unsigned else (127.0, 128)
    consts = [numpy_helper.from_array(np.array(1.0 / levels, np.float32), f"{tag}_inv_levels")]
    nodes, rows = [], x
    if smooth:
        nodes.append(n("Mul", [rows, f"{tag}_smooth"], [f"{tag}_smoothed"], name=f"{tag}_smoothed"))
        rows = f"{tag}_smoothed"
    if unsigned:
        nodes.append(n("Add", [rows, f"{tag}_offset"], [f"{tag}_shifted"], name=f"{tag}_shifted"))
        rows = magnitude = f"{tag}_shifted"
    else:
        nodes.append(n("Abs", [rows], [f"{tag}_abs"], name=f"{tag}_abs"))
        magnitude = f"{tag}_abs"
    nodes += [n("ReduceMax", [magnitude, "rowq_last_axis"], [f"{tag}_max"], name=f"{tag}_max", keepdims=1),
              n("Mul", [f"{tag}_max", f"{tag}_inv_levels"], [f"{tag}_s0"], name=f"{tag}_s0"),
              n("Max", [f"{tag}_s0", "rowq_eps"], [f"{tag}_scale"], name=f"{tag}_scale"),
              n("Shape", [f"{tag}_scale"], [f"{tag}_scale_shape"], name=f"{tag}_scale_shape"),
              n("ConstantOfShape", [f"{tag}_scale_shape"], [f"{tag}_zero"], name=f"{tag}_zero",
                value=numpy_helper.from_array(np.array([zero], np.uint8))),
              n("QuantizeLinear", [rows, f"{tag}_scale", f"{tag}_zero"], [f"{tag}_u8"], name=f"{tag}_u8",
                axis=-1, block_size=k)]
    return nodes, consts


def _require_opset(model: onnx.ModelProto, version: int) -> None:
    """Raise the default domain's opset to ``version`` (the graphs rewritten here use no operator whose
    definition changed between opset 17 and 21 besides ReduceMax, written in the opset-18 form)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, version)
    model.ir_version = max(model.ir_version, 10)


def weight_nk(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The (N, K) float weight of an 8-bit MatMulNBits node."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    zero = numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else None
    return dequantize_matmul_nbits(numpy_helper.to_array(inits[node.input[1]]),
                                   numpy_helper.to_array(inits[node.input[2]]), attrs["K"], attrs["bits"], zero)


def rows_int8(model: onnx.ModelProto, channel_max: dict[str, np.ndarray] | None = None, alpha: float = 0.5) -> int:
    """Rewrite every 8-bit ``MatMulNBits`` of the main graph in place; returns how many.

    With ``channel_max`` (``activation_channel_max``), each input's channels are first balanced against the
    weights (``smoothing``). A GELU's output (never below -0.17) is shifted by 0.17 and quantized to 0..255,
    twice the resolution of symmetric codes; the shift's product with the weights is subtracted after."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets = [nd for nd in graph.node if nd.op_type == "MatMulNBits"]
    if not targets:
        return 0
    weights = {nd.name: weight_nk(nd, inits) for nd in targets}
    graph.initializer.extend([numpy_helper.from_array(np.array(1e-12, np.float32), "rowq_eps"),
                              numpy_helper.from_array(np.array([-1], np.int64), "rowq_last_axis"),
                              numpy_helper.from_array(np.array(1.0, np.float32), "rowq_one")])
    inputs: dict[str, tuple[str, np.ndarray, np.ndarray | None]] = {}  # x -> tag, smoothing, offset
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x = node.input[0]
        if x not in inputs:
            readers = [weights[nd.name] for nd in targets if nd.input[0] == x]
            factor = (smoothing(channel_max[x], readers, alpha) if channel_max
                      else np.ones(attrs["K"], np.float32))
            offset = (GELU_MIN / factor).astype(np.float32) if is_gelu_output(graph, x) else None
            tag = f"rowq{len(inputs)}"
            nodes, consts = _row_quantizer(x, tag, attrs["K"], channel_max is not None, offset is not None)
            if channel_max is not None:
                consts.append(numpy_helper.from_array((1.0 / factor).astype(np.float32), f"{tag}_smooth"))
            if offset is not None:
                consts.append(numpy_helper.from_array(offset, f"{tag}_offset"))
            graph.initializer.extend(consts)
            new_nodes.extend(nodes)
            inputs[x] = (tag, factor, offset)
        qtag, factor, offset = inputs[x]
        w_codes, w_scales = column_int7(weights[node.name] * factor[None, :])
        tag = node.name or node.output[0]
        consts = [numpy_helper.from_array(w_codes, f"{tag}_w7"), numpy_helper.from_array(w_scales, f"{tag}_w7_scales")]
        zero = "rowq_zero_u" if offset is not None else "rowq_zero_s"
        out = [f"{tag}_int", f"{tag}_scaled"]
        nodes = [helper.make_node("MatMulIntegerToFloat", [f"{qtag}_u8", f"{tag}_w7", "rowq_one", f"{tag}_w7_scales",
                                                           zero], [out[0]], name=out[0], domain="com.microsoft"),
                 helper.make_node("Mul", [out[0], f"{qtag}_scale"], [out[1]], name=out[1])]
        if len(node.input) > 5 and node.input[5]:
            raise ValueError(f"{node.name}: a MatMulNBits with a bias input (onnx_quantize writes none)")
        if offset is not None:  # take back what the shift added: exactly its product with the stored weights
            shift = -(offset @ (w_codes.astype(np.float32) * w_scales[None, :]))
            consts.append(numpy_helper.from_array(shift.astype(np.float32), f"{tag}_rowq_shift"))
            nodes.append(helper.make_node("Add", [out[1], f"{tag}_rowq_shift"], [node.output[0]],
                                          name=f"{tag}_rowq_shift"))
        else:
            nodes[-1].output[0] = node.output[0]
        graph.initializer.extend(consts)
        new_nodes.extend(nodes)
    graph.initializer.extend([numpy_helper.from_array(np.array(128, np.uint8), "rowq_zero_s"),
                              numpy_helper.from_array(np.array(0, np.uint8), "rowq_zero_u")])
    del graph.node[:]
    graph.node.extend(new_nodes)
    _require_opset(model, 21)  # QuantizeLinear with a block per row
    drop_unused_initializers(graph)
    return len(targets)


def calibration_feeds(model_dir: Path, n: int, seed: int = 0, batch: int = 16) -> list[dict[str, np.ndarray]]:
    """Encoder inputs of ``n`` prompts from the training split (never valid or test), as the engine builds them."""
    from engine.config import DEFAULT_ENCODER

    from .data import DEFAULT_DATA
    from .evaluate import Evaluator, Sizes

    ev = Evaluator(model_dir, DEFAULT_ENCODER, DEFAULT_DATA, Sizes(), seed)
    sources = [ev.source(ex, "true") for ex in ev.sample("train", n, "rows-int8 calibration")]
    feeds = []
    for start in range(0, len(sources), batch):
        ids, mask = ev.model.pad(sources[start:start + batch])
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train rows-int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an export folder whose encoder_model.onnx has 8-bit MatMulNBits")
    p.add_argument("--out", type=Path, help="where to write the encoder (default: in place)")
    p.add_argument("--calibration", type=int, default=64, help="training prompts that set the channel balance")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    args = p.parse_args(argv)
    path = args.model / "encoder_model.onnx"
    model = onnx.load(str(path))
    channel_max = activation_channel_max(model, calibration_feeds(args.model, args.calibration))
    count = rows_int8(model, channel_max, args.alpha)
    onnx.save(model, str(args.out or path))
    print(f"{args.out or path}: {count} MatMuls as per-row u8 x 7-bit s8 products")


if __name__ == "__main__":
    main()
