"""int8 quantization of an exported seq2seq folder that keeps the fp32 model's replies.

Measured on the shipped model (export_report.json, MODEL_CARD.md): dynamic int8 (per-tensor
activations, per-tensor embedding tables) changed token log-probs by 0.057 nats on average; most
of the error came from the embedding tables. Here:
- every MatMul with a constant weight becomes MatMulNBits, 8-bit, symmetric, blocks of 32 along K,
  with int8 compute on blocks of activations (``accuracy_level`` 4): as fast as dynamic int8;
- the output layer (vocabulary-sized) is then stored in blocks of 128 (``reblock_output_layer``, also
  ``rapport-train reblock-output DIR`` for an existing export): a decoding step reads 1.1 MB fewer scales,
  and onnxruntime's kernel ran it 1.3-1.6x faster at 1 and 50 rows (issue 24);
- every large Gather table (token embeddings) is stored as int8 with one fp32 scale per row,
  dequantized after the lookup (Gather -> Cast -> Mul by the row's scale).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_merge import all_graphs

BLOCK_SIZE = 32
OUTPUT_BLOCK_SIZE = 128
OUTPUT_MIN_COLUMNS = 10_000  # a product this wide is the output layer (a vocabulary's logits)
ACCURACY_LEVEL = 4  # int8 compute on blocks of activations
MIN_TABLE_ELEMENTS = 1_000_000


def quantize_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul -> 8-bit blockwise MatMulNBits (subgraphs of a merged decoder included)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True,
                                          accuracy_level=ACCURACY_LEVEL, bits=8)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def quantize_embedding_rows(model: onnx.ModelProto, min_elements: int = MIN_TABLE_ELEMENTS) -> int:
    """Store large Gather tables as int8 with one fp32 scale per row; returns the Gathers rewritten."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    graphs = all_graphs(graph)
    tables = {n.input[0] for g in graphs for n in g.node
              if n.op_type == "Gather" and n.input[0] in inits and np.prod(inits[n.input[0]].dims) >= min_elements}
    for name in tables:
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.maximum(np.abs(w).max(1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_rows_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_row_scales")])
    rewritten = 0
    for g in graphs:
        for node in [n for n in g.node if n.op_type == "Gather" and n.input[0] in tables]:
            table, idx, out = node.input[0], node.input[1], node.output[0]
            tag = f"{node.name or out}_rowq"
            new = [helper.make_node("Gather", [f"{table}_rows_int8", idx], [f"{tag}_q"], name=f"{tag}_q", axis=0),
                   helper.make_node("Cast", [f"{tag}_q"], [f"{tag}_f"], name=f"{tag}_cast", to=TensorProto.FLOAT),
                   helper.make_node("Gather", [f"{table}_row_scales", idx], [f"{tag}_s"], name=f"{tag}_s", axis=0),
                   helper.make_node("Mul", [f"{tag}_f", f"{tag}_s"], [out], name=f"{tag}_mul")]
            pos = list(g.node).index(node)
            g.node.remove(node)
            for k, m in enumerate(new):
                g.node.insert(pos + k, m)
            rewritten += 1
    return rewritten


def reblock_output_layer(model: onnx.ModelProto, block: int = OUTPUT_BLOCK_SIZE) -> int:
    """Requantize every 8-bit ``MatMulNBits`` at least OUTPUT_MIN_COLUMNS wide (the output layer) from its
    own values to blocks of ``block`` along K (in place, once per weight however many nodes read it);
    returns how many weights changed (0 when they are in such blocks already)."""
    from .dequantize import dequantize_matmul_nbits

    inits = {i.name: i for i in model.graph.initializer}
    changed: set[str] = set()
    for graph in all_graphs(model.graph):
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if (node.op_type != "MatMulNBits" or attrs.get("N", 0) < OUTPUT_MIN_COLUMNS or attrs["bits"] != 8
                    or attrs["K"] % block or (len(node.input) > 3 and node.input[3])):
                continue
            codes, scales = node.input[1], node.input[2]
            if codes not in changed and attrs["block_size"] != block:
                weight = dequantize_matmul_nbits(numpy_helper.to_array(inits[codes]),
                                                 numpy_helper.to_array(inits[scales]), attrs["K"], 8)
                blocks = weight.reshape(weight.shape[0], attrs["K"] // block, block)
                step = np.maximum(np.abs(blocks).max(axis=-1), 1e-12) / 127.0
                q = np.clip(np.round(blocks / step[..., None]) + 128, 1, 255).astype(np.uint8)
                inits[codes].CopyFrom(numpy_helper.from_array(q, codes))
                inits[scales].CopyFrom(numpy_helper.from_array(step.astype(np.float32), scales))
                changed.add(codes)
            if codes in changed:
                next(a for a in node.attribute if a.name == "block_size").i = block
    return len(changed)


def quantize_dir(src: Path, dst: Path) -> None:
    """Quantize every ONNX file of ``src`` into ``dst`` (other files copied)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.suffix == ".onnx":
            model = quantize_matmuls(onnx.load(str(path)))
            reblock_output_layer(model)
            quantize_embedding_rows(model)
            onnx.save(model, str(dst / path.name))
        elif path.is_file():
            shutil.copy(path, dst / path.name)


def main(argv: list[str] | None = None) -> None:
    """``rapport-train reblock-output DIR``: the output layer of an export's decoder in blocks of 128."""
    import argparse

    p = argparse.ArgumentParser(prog="rapport-train reblock-output", description=reblock_output_layer.__doc__)
    p.add_argument("model_dir", type=Path, help="an export folder (its decoder is rewritten in place)")
    p.add_argument("--block", type=int, default=OUTPUT_BLOCK_SIZE)
    args = p.parse_args(argv)
    for path in sorted(args.model_dir.glob("decoder*.onnx")):
        model = onnx.load(str(path))
        changed = reblock_output_layer(model, args.block)
        if changed:
            onnx.save(model, str(path))
        print(f"{path.name}: {changed} output weight(s) requantized to blocks of {args.block}")


if __name__ == "__main__":
    main()
