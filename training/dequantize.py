"""Rebuild a PyTorch BART from an int8 export: every weight dequantized from the ONNX files.

    rapport-train dequantize --model exported_models/rapport-chat-small --out ~/.cache/rapport/dequantized

The result (a Hugging Face folder: config.json + model.safetensors + tokenizer.json) holds exactly the
weights the int8 export computes with, in fp32. Benchmarks give it to PyTorch ``generate`` and to
CTranslate2 so every runtime runs the same weights; exported again to fp32 ONNX it separates the
error of int8 *compute* (activations) from the error of int8 *storage* (weights).
- MatMulNBits (8-bit, blocks along K, zero point 128 unless given) -> Linear weight (N, K);
- the layouts of ``rapport-train rows-int8`` (encoder) and ``static-int8`` (decoder): MatMulIntegerToFloat,
  7-bit codes x a scale per column, divided by the channel balance it multiplied in -> Linear weight (N, K);
- per-row int8 Gather tables (``*_rows_int8`` x ``*_row_scales``), or 4-bit ones (``rapport-train
  table-4bit``) -> the token embeddings;
- everything else (biases, LayerNorms, positions, final_logits_bias) is fp32 in the files already.
The lm_head is quantized apart from the embedding table, so the rebuilt model's lm_head is untied.
A decoder-only export (``rapport-train export-lm``, 8- or 4-bit) is rebuilt as the Llama it came from
(``rebuild_causal``): ``finetune-lm --init-from`` continues from it when the checkpoint cache is gone.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import BartConfig, BartForConditionalGeneration

from .fused_decoder import FUSED_PREFIX, JOINED_QKV
from .onnx_merge import all_graphs
from .table_quantize import unpack_4bit

_MATMUL_OUTPUT = re.compile(r"/((?:encoder|decoder)/layers\.\d+/\w+(?:/\w+)?|lm_head)/MatMul_output_0$")
_MATMUL_NAME = re.compile(r"/((?:encoder|decoder)/layers\.\d+/\w+(?:/\w+)?|lm_head)/MatMul_Q8_int$")


def dequantize_matmul_nbits(q: np.ndarray, scales: np.ndarray, k: int, bits: int,
                            zero_points: np.ndarray | None = None) -> np.ndarray:
    """The (N, K) float weight a MatMulNBits node multiplies by (its B^T); 8 bits, or 4 (two codes a byte,
    the low nibble first)."""
    if bits not in (4, 8):
        raise ValueError(f"only 4- and 8-bit MatMulNBits are supported, got {bits}")
    n, blocks, _ = q.shape
    if bits == 4:
        q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(n, blocks, -1)
        if zero_points is not None:
            raise ValueError("4-bit MatMulNBits with zero points is not supported")
    block = q.shape[-1]
    zero = float(1 << (bits - 1)) if zero_points is None else zero_points.reshape(n, blocks, 1).astype(np.float32)
    w = (q.astype(np.float32) - zero) * scales.reshape(n, blocks, 1)
    return w.reshape(n, blocks * block)[:, :k]


def _param_name(name: str, graph: str) -> str:
    """ONNX initializer name -> Hugging Face parameter name."""
    name = re.sub(r"^w\d+_model\.", "", name)  # merged decoder: "w5_model.model.decoder..." -> "model.decoder..."
    if name.startswith(("encoder.", "decoder.")):
        name = "model." + name
    return name


def onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight of one exported ONNX file, by Hugging Face parameter name, dequantized."""
    from .static_quantize import STATIC_PREFIX  # (it imports this module's dequantize_matmul_nbits)

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for g in all_graphs(model.graph):
        producers = {o: node for node in g.node for o in node.output}
        for node in g.node:
            if node.op_type == "MatMulIntegerToFloat" and not node.name.startswith(FUSED_PREFIX):
                # rapport-train rows-int8 (encoder) or static-int8 (decoder; its with-past branch reads the
                # first step's weights)
                weight = inits[node.input[1]].astype(np.float32) * inits[node.input[3]][None, :]
                balance = _input_balance(node.input[0], producers, inits)
                if balance is not None:  # x's channels were multiplied by it
                    weight = weight * balance[:, None]
                if joined := JOINED_QKV.match(node.name.removesuffix("_int")):
                    for part, value in zip("qkv", np.split(weight.T, 3)):
                        out[f"model.decoder.layers.{joined.group(1)}.self_attn.{part}_proj.weight"] = value
                    continue
                match = _MATMUL_NAME.search(node.name)
                if not match:
                    raise ValueError(f"cannot tell which layer MatMulIntegerToFloat {node.name} belongs to")
                out[_param_name(match.group(1).replace("/", "."), path.name) + ".weight"] = weight.T
                continue
            if node.op_type != "MatMulNBits" or node.name.startswith(FUSED_PREFIX):
                continue  # (the fused with-past branch reads the first step's weights)
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if joined := JOINED_QKV.match(node.name):  # q, k and v side by side (rapport-train fuse-decoder)
                weight = dequantize_matmul_nbits(inits[node.input[1]], inits[node.input[2]], attrs["K"], attrs["bits"])
                for part, value in zip("qkv", np.split(weight, 3)):
                    out[f"model.decoder.layers.{joined.group(1)}.self_attn.{part}_proj.weight"] = value
                continue
            match = _MATMUL_OUTPUT.search(node.output[0])
            if not match:
                raise ValueError(f"cannot tell which layer MatMulNBits {node.name} belongs to")
            module = match.group(1).replace("/", ".")
            zero = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
            weight = dequantize_matmul_nbits(inits[node.input[1]], inits[node.input[2]], attrs["K"], attrs["bits"], zero)
            out[_param_name(module, path.name) + ".weight"] = weight
    for name, value in inits.items():
        if name.endswith("_4bit_data"):  # a token table stored in 4 bits since (rapport-train table-4bit)
            tag = name[: -len("_data")]
            table = tag[: -len("_4bit")].removesuffix("_rows_int8")
            out[_param_name(table, path.name)] = unpack_4bit(value, inits[tag + "_scales"])
        elif name.endswith("_rows_int8"):
            table = name[: -len("_rows_int8")]
            out[_param_name(table, path.name)] = value.astype(np.float32) * inits[table + "_row_scales"]
        elif (value.dtype == np.float32 and not name.endswith(("_scales", "_row_scales")) and "onnx::" not in name
              and "rowq" not in name and not name.startswith((FUSED_PREFIX, STATIC_PREFIX))):  # rows-int8's and
            # static-int8's quantizer constants, shift corrections; fuse-decoder's joined q, k, v biases (the
            # originals stay)
            out[_param_name(name, path.name)] = value
    return out


def _input_balance(codes: str, producers: dict[str, onnx.NodeProto], inits: dict[str, np.ndarray]
                   ) -> np.ndarray | None:
    """The per-channel factor an integer product's input was multiplied by before ``QuantizeLinear`` wrote
    ``codes``: the constant of the ``Mul`` feeding it, past a constant ``Add`` (rows-int8's GELU shift) if there
    is one; None where the input was not balanced."""
    quantize = producers.get(codes)
    node = producers.get(quantize.input[0]) if quantize is not None else None
    if node is not None and node.op_type == "Add" and node.input[1] in inits:
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "Mul" and node.input[1] in inits:
        return inits[node.input[1]]
    return None


def rebuild(export_dir: Path) -> BartForConditionalGeneration:
    """A BART whose weights are the dequantized weights of ``export_dir``'s ONNX files."""
    config = BartConfig.from_dict({**json.loads((export_dir / "config.json").read_text()),
                                   "tie_word_embeddings": False})
    model = BartForConditionalGeneration(config).eval()
    weights = {**onnx_weights(export_dir / "encoder_model.onnx"),
               **onnx_weights(export_dir / "decoder_model_merged.onnx")}
    # one token table under whichever name the exporter kept (the shipped export: model.shared; an export
    # of a model loaded with from_pretrained: model.decoder.embed_tokens); the others hold the same rows
    names = ("model.shared.weight", "model.decoder.embed_tokens.weight", "model.encoder.embed_tokens.weight")
    shared = next(weights[n] for n in names if n in weights)
    for name in names:
        weights.pop(name, None)
    weights["model.shared.weight"] = shared
    weights["model.encoder.embed_tokens.weight"] = shared
    weights["model.decoder.embed_tokens.weight"] = shared
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    unknown = sorted(set(weights) - set(state))
    if missing or unknown:
        raise ValueError(f"weights do not match BART: missing {missing[:5]}, unknown {unknown[:5]}")
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32).reshape(state[k].shape)
                           for k, v in weights.items()})
    return model


_BLOCK_MATMUL = re.compile(r"^/(?:blocks\.(\d+)/(\w+)|(lm_head))/MatMul")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _causal_param(initializer: str) -> str:
    """An export's initializer name (``training/causal_export.py``) -> the Llama parameter name."""
    if initializer.startswith("blocks."):
        return re.sub(r"^blocks\.(\d+)\.layer\.", r"model.layers.\1.", initializer)
    return {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}.get(initializer, initializer)


def rebuild_causal(export_dir: Path):
    """A Llama whose weights are those of a decoder-only export (``rapport-train export-lm``), dequantized;
    the tied token table comes from the output layer (8 bits where the lookup table has 4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict(json.loads((export_dir / "config.json").read_text())["llama"])
    graph = onnx.load(str(export_dir / "decoder_model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    weights: dict[str, np.ndarray] = {}
    for node in graph.node:
        match = _BLOCK_MATMUL.search(node.name or "")
        if node.op_type not in ("MatMul", "MatMulNBits") or not match:
            continue
        layer, proj, head = match.groups()
        name = "lm_head.weight" if head else \
            f"model.layers.{layer}.{'self_attn' if proj in _ATTENTION else 'mlp'}.{proj}.weight"
        if node.op_type == "MatMul":
            weights[name] = inits[alias.get(node.input[1], node.input[1])].T
        else:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weights[name] = dequantize_matmul_nbits(inits[node.input[1]], inits[node.input[2]], attrs["K"], attrs["bits"])
    for node in graph.node:  # norm weights, and the ones deduplicated by the exporter (Identity of another)
        for name in node.input:
            source = alias.get(name, name)
            if source in inits and name.endswith(".weight") and inits[source].ndim == 1:
                weights[_causal_param(name)] = inits[source]
    weights["model.embed_tokens.weight"] = weights["lm_head.weight"]
    model = LlamaForCausalLM(config).eval()
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}")
    model.load_state_dict({k: torch.tensor(weights[k], dtype=torch.float32).reshape(state[k].shape) for k in state})
    return model


def main(argv: list[str] | None = None) -> None:
    from engine.model.family import CAUSAL_LM, family_of

    p = argparse.ArgumentParser(prog="rapport-train dequantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="an int8 export folder (either family)")
    p.add_argument("--out", type=Path, required=True, help="where to write the Hugging Face folder")
    args = p.parse_args(argv)
    model = rebuild_causal(args.model) if family_of(args.model) == CAUSAL_LM else rebuild(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    for name in ("tokenizer.json", "rapport_config.json"):
        if (args.model / name).exists():
            shutil.copy(args.model / name, args.out / name)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, fp32)")
