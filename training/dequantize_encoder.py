"""Rebuild the sentence encoder's PyTorch weights from its int8 ONNX export (the shipped ranker).

    rapport-train dequantize-encoder --encoder exported_models/minilm-l6-v2-encoder \
        --out ~/.cache/rapport/dequantized-ranker
    rapport-train train-ranker --init-from ~/.cache/rapport/dequantized-ranker ...

Only the int8 export of the fine-tuned ranker ships, so continuing its training starts here. The export
is onnxruntime's dynamic quantization: ``MatMulInteger`` weights (K, N) int8 with one scale and zero
point per output column -> Linear weight (N, K); the three embedding tables int8 with one scale each (or, the
word embeddings since issue 24, 4 bits with a scale per block of 32) -> fp32; biases and LayerNorms are fp32 already. The pooler, which the engine never runs, comes from the
pretrained MiniLM. The result is a MiniLM-shaped folder (``train-ranker --init-from``,
``export-encoder --source``).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file

from .modeling import copy_minilm_files, minilm_dir
from .table_quantize import unpack_4bit

_LINEAR = re.compile(r"^/bert/(encoder/layer\.\d+/[\w/]+?)/MatMul_quant$")


def encoder_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight of a dynamically quantized BERT ONNX file, by Hugging Face ``BertModel`` name, in fp32."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        match = _LINEAR.match(node.name)
        if not match:
            raise ValueError(f"cannot tell which layer MatMulInteger {node.name} belongs to")
        q = inits[node.input[1]].astype(np.float32)
        base = node.input[1][: -len("_quantized")]
        w = (q - inits[base + "_zero_point"].astype(np.float32)) * inits[base + "_scale"]
        out[match.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(w.T)
    for name, value in inits.items():
        if not name.startswith("bert."):
            continue
        if name.endswith("_4bit_data"):  # a table stored in 4 bits (rapport-train table-4bit)
            tag = name[: -len("_data")]
            table = tag[: -len("_4bit")].removesuffix("_quantized")
            out[table[len("bert."):]] = unpack_4bit(value, inits[tag + "_scales"])
        elif name.endswith("_quantized"):
            table = name[: -len("_quantized")]
            zero = inits[table + "_zero_point"].astype(np.float32)
            out[table[len("bert."):]] = (value.astype(np.float32) - zero) * inits[table + "_scale"]
        elif value.dtype == np.float32 and not name.endswith("_scale"):
            out[name[len("bert."):]] = value
    return out


def rebuild(encoder_dir: Path, out_dir: Path) -> int:
    """Write ``out_dir`` (MiniLM files + dequantized ``model.safetensors``); return the weights rebuilt."""
    base = load_file(str(minilm_dir() / "model.safetensors"))
    weights = encoder_weights(encoder_dir / "model.onnx")
    unknown = sorted(set(weights) - set(base))
    missing = sorted(k for k in set(base) - set(weights) if not k.startswith("pooler.") and k != "embeddings.position_ids")
    if unknown or missing:
        raise ValueError(f"weights do not match MiniLM: missing {missing[:5]}, unknown {unknown[:5]}")
    for name, value in weights.items():
        if value.shape != base[name].shape:
            raise ValueError(f"{name}: shape {value.shape} in the export, {base[name].shape} in MiniLM")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({**base, **{k: v.astype(np.float32) for k, v in weights.items()}}, str(out_dir / "model.safetensors"))
    copy_minilm_files(out_dir)
    config = json.loads((encoder_dir / "encoder_config.json").read_text())
    (out_dir / "dequantized_from.json").write_text(json.dumps(
        {"encoder": str(encoder_dir), "fine_tuned": config.get("fine_tuned")}, indent=2))
    return len(weights)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train dequantize-encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=Path, required=True, help="an int8 encoder export folder")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    n = rebuild(args.encoder, args.out)
    print(f"wrote {args.out} ({n} weights dequantized)")


if __name__ == "__main__":
    main()
