"""Store an ONNX model's large token tables in 4 bits (blocks of 32, fp16 scales), read with
onnxruntime's ``GatherBlockQuantized``: issue 24's wheel budget (at most 100 MB, PyPI's file limit).

    rapport-train table-4bit exported_models/minilm-l6-v2-encoder/model.onnx [--out FILE]

A Gather from a large constant table, fp32, 8-bit per tensor (``Gather`` -> ``DequantizeLinear``, as
``quantize_dynamic`` leaves the ranker's) or 8-bit rows (``Gather`` -> ``Cast`` -> ``Mul`` by the row's scale, as
``rapport-train export`` leaves the chat model's), becomes ``GatherBlockQuantized`` -> ``Cast`` to fp32: 11.7 MB
of MiniLM's word embeddings become 6.6 MB. Each block of 32 values gets its own scale (its largest
magnitude / 7), so a table of small rows loses less than the one-scale 8-bit table did, and a large one
more; measure it where it matters (``rapport-train ranker-eval`` for the ranker). A table read as a
matrix too (a tied output layer) is left alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.model.quant4 import BLOCK, dequantize_4bit, pack_nibbles, quantize_4bit, unpack_nibbles

MIN_ELEMENTS = 1_000_000


def pack_4bit(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) float -> packed uint8 (rows, cols // 2) and fp16 scales (rows, cols // BLOCK), the
    layout of :mod:`engine.model.quant4`, which ``GatherBlockQuantized`` reads (zero point 8)."""
    codes, scales = quantize_4bit(table)
    return pack_nibbles(codes), scales


def unpack_4bit(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 table that :func:`pack_4bit` stored."""
    return dequantize_4bit(unpack_nibbles(packed), scales)


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    found = next((t for t in graph.initializer if t.name == name), None)
    return None if found is None else numpy_helper.to_array(found)


def tables_to_4bit(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> list[str]:
    """Rewrite every large Gather table of the main graph in place; returns the tables rewritten."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    done = []
    for gather in [n for n in graph.node if n.op_type == "Gather"]:
        table_name, ids = gather.input[0], gather.input[1]
        table = _const(graph, table_name)
        if table is None or table.ndim != 2 or table.size < min_elements or len(readers[table_name]) != 1 \
                or table.shape[1] % BLOCK or any(a.name == "axis" and a.i != 0 for a in gather.attribute):
            continue
        out, replaced = gather.output[0], [gather]
        after = readers.get(out, [])
        if table.dtype == np.int8:  # 8-bit rows (onnx_quantize): Gather -> Cast -> Mul by Gather(row scales)
            cast = after[0] if len(after) == 1 and after[0].op_type == "Cast" else None
            mul = readers.get(cast.output[0], []) if cast else []
            if len(mul) != 1 or mul[0].op_type != "Mul":
                continue
            scale_out = next(i for i in mul[0].input if i != cast.output[0])
            scale_gather = next((n for n in graph.node if scale_out in n.output and n.op_type == "Gather"
                                 and n.input[1] == ids), None)
            row_scales = None if scale_gather is None else _const(graph, scale_gather.input[0])
            if row_scales is None or len(readers[scale_gather.input[0]]) != 1:
                continue
            table = table.astype(np.float32) * row_scales.reshape(-1, 1)
            out, replaced = mul[0].output[0], [gather, cast, mul[0], scale_gather]
        elif table.dtype != np.float32:  # 8-bit per tensor: Gather -> DequantizeLinear(scale, zero point)
            if len(after) != 1 or after[0].op_type != "DequantizeLinear":
                continue
            scale, zero = _const(graph, after[0].input[1]), _const(graph, after[0].input[2])
            if scale is None or zero is None or scale.size != 1 or zero.size != 1:
                continue
            table = (table.astype(np.float32) - float(zero)) * float(scale)
            out, replaced = after[0].output[0], [gather, after[0]]
        packed, scales = pack_4bit(table)
        tag = f"{table_name}_4bit"
        nodes = [helper.make_node("GatherBlockQuantized", [f"{tag}_data", ids, f"{tag}_scales"], [f"{tag}_fp16"],
                                  name=f"{tag}_gather", domain="com.microsoft", bits=4, block_size=BLOCK,
                                  gather_axis=0, quantize_axis=1),
                 helper.make_node("Cast", [f"{tag}_fp16"], [out], name=f"{tag}_cast", to=TensorProto.FLOAT)]
        position = min(list(graph.node).index(n) for n in replaced)
        for node in replaced:
            graph.node.remove(node)
        for k, node in enumerate(nodes):
            graph.node.insert(position + k, node)
        graph.initializer.extend([numpy_helper.from_array(packed, f"{tag}_data"),
                                  numpy_helper.from_array(scales, f"{tag}_scales")])
        done.append(table_name)
    drop_unused_initializers(graph)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node of ``graph`` reads any more (the tables and weights just replaced)."""
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train table-4bit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an .onnx file")
    p.add_argument("--out", type=Path, help="where to write (default: in place)")
    args = p.parse_args(argv)
    model = onnx.load(str(args.model))
    done = tables_to_4bit(model)
    onnx.save(model, str(args.out or args.model))
    print(f"{args.out or args.model}: {', '.join(done) or 'no table'} in 4 bits")


if __name__ == "__main__":
    main()
