"""Export a Llama-family causal LM (SmolLM2) to one ONNX graph with a KV cache, for the engine's
decoder-only family (``engine/model/causal_lm.py``).

    rapport-train export-lm --checkpoint ~/.cache/rapport/runs/smol1/best.pt --out exported_models/rapport-chat-smol

Graph ``decoder_model.onnx``:
  inputs  ``input_ids`` (batch, new), ``attention_mask`` (batch, past + new), ``position_ids`` (batch, new),
          ``logit_index`` (batch, k): which of the new positions get logits (the last one when decoding,
          the reply's positions when scoring), and ``past_key_values.{i}.key|value`` (batch, kv heads, past, 64)
          for every layer (past = 0 on the first call);
  outputs ``logits`` (batch, k, vocab) and ``present.{i}.key|value`` (batch, kv heads, past + new, 64).
Rows are left-padded, so the newest token of every row sits at the same column.

The forward pass is written out here (RMSNorm, rotary positions, grouped-query attention, SwiGLU)
rather than traced through ``transformers``' cache classes; ``parity`` checks it against
``transformers`` on the same weights. Weights: 8-bit blockwise ``MatMulNBits`` (as the seq2seq models)
or 4-bit (``--bits 4``), the token table in 4 bits (``GatherBlockQuantized``).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 21


class _Block(nn.Module):
    """One decoder layer with an explicit cache (a module of its own, so the graph's node names say which
    layer each MatMul belongs to: ``/blocks.3/layer/self_attn/q_proj/MatMul``)."""

    def __init__(self, layer, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim, self.eps = heads, kv_heads, head_dim, eps

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def forward(self, x, cos, sin, bias, past_k, past_v):
        batch, new, total = x.shape[0], x.shape[1], bias.shape[-1]
        attn, mlp, group = self.layer.self_attn, self.layer.mlp, self.heads // self.kv_heads
        h = self._norm(x, self.layer.input_layernorm.weight)
        q = attn.q_proj(h).view(batch, new, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
        qg = q.reshape(batch, self.kv_heads, group * new, self.head_dim)  # heads of a group share k, v
        scores = torch.matmul(qg, k.transpose(2, 3)) * (self.head_dim ** -0.5)
        scores = scores.view(batch, self.heads, new, total) + bias
        probs = torch.softmax(scores, dim=-1).view(batch, self.kv_heads, group * new, total)
        out = torch.matmul(probs, v).reshape(batch, self.heads, new, self.head_dim)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, new, self.heads * self.head_dim))
        h = self._norm(x, self.layer.post_attention_layernorm.weight)
        return x + mlp.down_proj(nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h)), k, v


class ExportLlama(nn.Module):
    """A ``LlamaForCausalLM``'s forward with explicit past keys/values (the ONNX graph's signature)."""

    def __init__(self, model) -> None:
        super().__init__()
        cfg = model.config
        self.layers = cfg.num_hidden_layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.embed, self.norm, self.lm_head = model.model.embed_tokens, model.model.norm, model.lm_head
        self.blocks = nn.ModuleList(_Block(layer, self.heads, self.kv_heads, self.head_dim, self.eps)
                                    for layer in model.model.layers)
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, input_ids, attention_mask, position_ids, logit_index, *past):
        batch, new = input_ids.shape
        x = self.embed(input_ids)
        freqs = position_ids.unsqueeze(-1).float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)  # (batch, 1, new, head_dim)
        total = attention_mask.shape[1]
        key_pos = torch.arange(total).view(1, 1, 1, total)
        query_pos = (total - new + torch.arange(new)).view(1, 1, new, 1)
        allowed = (key_pos <= query_pos) & (attention_mask.view(batch, 1, 1, total) > 0)
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        presents = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cos, sin, bias, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        x = self.norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        picked = torch.gather(x, 1, logit_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (self.lm_head(picked), *presents)


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the graph."""
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", "logit_index", *past], ["logits", *present]


def export_fp32(model, path: Path) -> None:
    """Write the fp32 graph (weights in one external-data file next to it, if large)."""
    wrapper = ExportLlama(model).eval()
    layers, kv, hd = wrapper.layers, wrapper.kv_heads, wrapper.head_dim
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones(2, 5, dtype=torch.long)
    pos = torch.tensor([[2, 3, 4], [2, 3, 4]])
    index = torch.tensor([[2], [2]])
    past = [torch.randn(2, kv, 2, hd) for _ in range(2 * layers)]
    inputs, outputs = io_names(layers)
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "logit_index": {0: "batch", 1: "picked"},
            "logits": {0: "batch", 1: "picked"}}
    axes.update({n: {0: "batch", 2: "past"} for n in inputs[4:]})
    axes.update({n: {0: "batch", 2: "total"} for n in outputs[1:]})
    with torch.no_grad():
        torch.onnx.export(wrapper, (ids, mask, pos, index, *past), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False)


PART_BYTES = 90_000_000  # weights files stay under 100 MB (git hosts refuse larger files)


def save_in_parts(model, path: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Save ``model`` with its large weights in ``<name>.weights.N`` files of at most ``part_bytes`` each
    (ONNX external data, read by onnxruntime from beside the graph); returns the weights files."""
    from onnx.external_data_helper import set_external_data

    parts: list[Path] = []
    handle, used = None, part_bytes
    try:
        for tensor in sorted(model.graph.initializer, key=lambda t: -len(t.raw_data)):
            data = tensor.raw_data
            if len(data) < 1024:
                continue
            if used + len(data) > part_bytes:
                if handle:
                    handle.close()
                parts.append(path.with_name(f"{path.name}.weights.{len(parts)}"))
                handle, used = parts[-1].open("wb"), 0
            set_external_data(tensor, parts[-1].name, offset=used, length=len(data))
            handle.write(data)
            used += len(data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
    finally:
        if handle:
            handle.close()
    onnx.save(model, str(path))
    return parts


def quantize(src: Path, dst: Path, bits: int) -> None:
    """MatMuls to ``bits``-bit blockwise MatMulNBits, the token table to 4 bits."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from .onnx_quantize import ACCURACY_LEVEL, BLOCK_SIZE
    from .table_quantize import drop_unused_initializers, tables_to_4bit

    model = onnx.load(str(src))
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=bits)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    tables_to_4bit(model)
    drop_unused_initializers(model.graph)
    if model.ByteSize() > PART_BYTES:
        save_in_parts(model, dst, PART_BYTES)
    else:
        onnx.save(model, str(dst))


def load_checkpoint(base: Path, checkpoint: Path | None):
    """The base model with a ``finetune-lm`` checkpoint's weights (``best.pt`` or ``last.pt``), or the
    Hugging Face folder ``checkpoint`` itself (``rapport-train dequantize`` of a shipped export)."""
    from transformers import AutoModelForCausalLM

    if checkpoint is not None and checkpoint.is_dir():
        return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if checkpoint is not None:
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")
        model.load_state_dict(state["model"] if "model" in state else state)
    return model


def training_totals(checkpoint: Path | None) -> dict:
    """What a ``finetune-lm`` checkpoint cost, from its run's log (``best.pt``: the row it was saved at)."""
    log = checkpoint.parent / "log.jsonl" if checkpoint else None
    if log is None or not log.exists():
        return {"examples": 0, "cpu_minutes": 0, "gpu_minutes": 0, "start": "SmolLM2-135M-Instruct, not fine-tuned"}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    row = min(rows, key=lambda r: r["persona_nll_token"]) if checkpoint.name == "best.pt" else rows[-1]
    return {"examples": row["sequences"], "cpu_minutes": row["minutes"], "gpu_minutes": 0,
            "start": "SmolLM2-135M-Instruct (examples: conversation windows, about 5.4 bot replies each)"}


def write_config(model, out: Path, tokenizer_json: Path, budget: dict, **extra) -> None:
    """The folder's ``config.json`` (family, layout, special ids) and ``rapport_config.json``; tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(out / "tokenizer.json"))
    cfg = model.config
    (out / "config.json").write_text(json.dumps({
        "family": "causal-lm", "model_type": cfg.model_type, "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size, "eos_token_id": tok.token_to_id("<|im_end|>"),
        "pad_token_id": tok.token_to_id("<|im_end|>"), "max_position_embeddings": cfg.max_position_embeddings,
        "llama": {k: v for k, v in cfg.to_dict().items() if k != "quantization_config"},  # to rebuild it in torch
    }, indent=2))
    (out / "rapport_config.json").write_text(json.dumps({"prompt_budget": budget, "reply_mode": "greedy", **extra},
                                                        indent=2))


def main(argv: list[str] | None = None) -> None:
    from .lm_finetune import base_folder

    p = argparse.ArgumentParser(prog="rapport-train export-lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="finetune-lm checkpoint (default: the base model)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bits", type=int, choices=(4, 8), default=8, help="MatMulNBits width")
    p.add_argument("--keep-fp32", type=Path, help="also keep the fp32 graph in this folder")
    args = p.parse_args(argv)
    base = base_folder()
    model = load_checkpoint(base, args.checkpoint)
    fp32 = args.keep_fp32 or args.out / "_fp32"
    fp32.mkdir(parents=True, exist_ok=True)
    export_fp32(model, fp32 / "decoder_model.onnx")
    args.out.mkdir(parents=True, exist_ok=True)
    quantize(fp32 / "decoder_model.onnx", args.out / "decoder_model.onnx", args.bits)
    if not args.keep_fp32:
        shutil.rmtree(fp32)
    write_config(model, args.out, base / "tokenizer.json",
                 {"max_source_tokens": 256, "max_facts_tokens": 64, "max_turn_tokens": 64},
                 training_total=training_totals(args.checkpoint), bits=args.bits)
    licences = Path(__file__).resolve().parent / "licences"  # SmolLM2's Apache-2.0 travels with its weights
    shutil.copy(licences / "Apache-2.0.txt", args.out / "LICENSE-Apache-2.0.txt")
    shutil.copy(licences / "SmolLM2-NOTICE.txt", args.out / "NOTICE.txt")
    files = sorted(args.out.glob("decoder_model.onnx*"))
    print(json.dumps({"out": str(args.out), "bytes": sum(f.stat().st_size for f in files)}))


def parity(model, ids: list[list[int]]) -> float:
    """Largest |logit difference| between this forward pass (prefill, then one cached step) and
    ``transformers``'s on the same weights, for left-padded rows."""
    wrapper = ExportLlama(model).eval()
    width = max(map(len, ids))
    inp = torch.tensor([[0] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=inp, attention_mask=mask, position_ids=pos).logits
        past = [torch.zeros(len(ids), wrapper.kv_heads, 0, wrapper.head_dim) for _ in range(2 * wrapper.layers)]
        index = torch.arange(width).repeat(len(ids), 1)
        got = wrapper(inp[:, :-1], mask[:, :-1], pos[:, :-1], index[:, :-1], *past)
        step = wrapper(inp[:, -1:], mask, pos[:, -1:], torch.zeros(len(ids), 1, dtype=torch.long), *got[1:])
    live = mask[:, :-1].bool()
    first = (got[0] - ref[:, :-1]).abs()[live].max()
    last = (step[0][:, 0] - ref[:, -1]).abs().max()
    return float(max(first, last))


if __name__ == "__main__":
    main()
