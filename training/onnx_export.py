"""Export a Hugging Face encoder-decoder to the Optimum seq2seq ONNX layout, then quantize to int8.

Files written (names and input/output names as Optimum writes them, so the engine runs either):
  encoder_model.onnx             input_ids, attention_mask -> last_hidden_state
  decoder_model.onnx             input_ids, encoder_attention_mask, encoder_hidden_states
                                 -> logits, present.{i}.{decoder,encoder}.{key,value}
  decoder_with_past_model.onnx   input_ids, encoder_attention_mask, encoder_hidden_states,
                                 past_key_values.{i}.{decoder,encoder}.{key,value}
                                 -> logits, present.{i}.decoder.{key,value}
Works for BART-like and T5-like models (`model.get_encoder()`, `model.get_decoder()`, `lm_head`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

OPSET = 17


def _num_layers(model: PreTrainedModel) -> int:
    return len(model.get_decoder().layers if hasattr(model.get_decoder(), "layers") else model.get_decoder().block)


def _lm_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    if getattr(model.config, "model_type", "") == "t5" and model.config.tie_word_embeddings:
        hidden = hidden * (model.config.d_model ** -0.5)
    logits = model.lm_head(hidden)
    bias = getattr(model, "final_logits_bias", None)
    return logits + bias if bias is not None else logits


class _Encoder(torch.nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _DecoderStep(torch.nn.Module):
    """One decoder call on a given cache; subclasses choose the cache and the outputs."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.n_layers = _num_layers(model)

    def _logits(self, input_ids, encoder_attention_mask, encoder_hidden_states, cache) -> torch.Tensor:
        out = self.model.get_decoder()(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                                       encoder_attention_mask=encoder_attention_mask, cache=cache,
                                       use_cache=True)
        return _lm_logits(self.model, out.last_hidden_state)


class _Decoder(_DecoderStep):
    """Step 0: no past; returns self- and cross-attention caches."""

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states):
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        result = [self._logits(input_ids, encoder_attention_mask, encoder_hidden_states, cache)]
        for i in range(self.n_layers):
            self_layer = cache.self_attention_cache.layers[i]
            cross_layer = cache.cross_attention_cache.layers[i]
            result += [self_layer.keys, self_layer.values, cross_layer.keys, cross_layer.values]
        return tuple(result)


class _DecoderWithPast(_DecoderStep):
    """Later steps: takes the caches, returns the grown self-attention cache."""

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states, *past):
        self_data = [(past[4 * i], past[4 * i + 1]) for i in range(self.n_layers)]
        cross_data = [(past[4 * i + 2], past[4 * i + 3]) for i in range(self.n_layers)]
        cache = EncoderDecoderCache(DynamicCache(self_data), DynamicCache(cross_data))
        result = [self._logits(input_ids, encoder_attention_mask, encoder_hidden_states, cache)]
        for i in range(self.n_layers):
            layer = cache.self_attention_cache.layers[i]
            result += [layer.keys, layer.values]
        return tuple(result)


def _kv_names(prefix: str, n_layers: int, with_encoder: bool = True) -> list[str]:
    names = []
    for i in range(n_layers):
        names += [f"{prefix}.{i}.decoder.key", f"{prefix}.{i}.decoder.value"]
        if with_encoder:
            names += [f"{prefix}.{i}.encoder.key", f"{prefix}.{i}.encoder.value"]
    return names


def export_onnx(model: PreTrainedModel, out_dir: Path) -> None:
    """Write the three fp32 ONNX files of ``model`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    model.config._attn_implementation = "eager"
    n = _num_layers(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    start = model.config.decoder_start_token_id
    dec_ids = torch.tensor([[start], [start]])
    with torch.no_grad():
        torch.onnx.export(
            _Encoder(model).eval(), (ids, mask), out_dir / "encoder_model.onnx", opset_version=OPSET, dynamo=False,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "src"},
                          "last_hidden_state": {0: "batch", 1: "src"}})
        hidden = _Encoder(model).eval()(ids, mask)
        step0 = _Decoder(model).eval()
        present = _kv_names("present", n)
        axes = {"input_ids": {0: "batch", 1: "tgt"}, "encoder_attention_mask": {0: "batch", 1: "src"},
                "encoder_hidden_states": {0: "batch", 1: "src"}, "logits": {0: "batch", 1: "tgt"}}
        for name in present:
            axes[name] = {0: "batch", 2: "src" if ".encoder." in name else "past_tgt"}
        torch.onnx.export(
            step0, (dec_ids, mask, hidden), out_dir / "decoder_model.onnx", opset_version=OPSET, dynamo=False,
            input_names=["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
            output_names=["logits", *present], dynamic_axes=axes)
        past = step0(dec_ids, mask, hidden)[1:]
        past_names = _kv_names("past_key_values", n)
        present_self = _kv_names("present", n, with_encoder=False)
        axes = {"input_ids": {0: "batch", 1: "tgt"}, "encoder_attention_mask": {0: "batch", 1: "src"},
                "encoder_hidden_states": {0: "batch", 1: "src"}, "logits": {0: "batch", 1: "tgt"}}
        for name in past_names:
            axes[name] = {0: "batch", 2: "src" if ".encoder." in name else "past_tgt"}
        for name in present_self:
            axes[name] = {0: "batch", 2: "total_tgt"}
        torch.onnx.export(
            _DecoderWithPast(model).eval(), (dec_ids, mask, hidden, *past), out_dir / "decoder_with_past_model.onnx",
            opset_version=OPSET, dynamo=False,
            input_names=["input_ids", "encoder_attention_mask", "encoder_hidden_states", *past_names],
            output_names=["logits", *present_self], dynamic_axes=axes)
    model.eval()


def merge_decoder_files(folder: Path) -> None:
    """Replace the two decoder files in ``folder`` by ``decoder_model_merged.onnx``."""
    from .onnx_merge import merge_decoders

    first, later = folder / "decoder_model.onnx", folder / "decoder_with_past_model.onnx"
    merge_decoders(first, later, folder / "decoder_model_merged.onnx")
    first.unlink()
    later.unlink()


def write_runtime_config(model: PreTrainedModel, out_dir: Path, **extra) -> None:
    """``rapport_config.json``: special token ids and lengths the engine needs, plus ``extra``."""
    cfg = model.config
    data = {
        "model_type": cfg.model_type,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "num_layers": _num_layers(model),
        **extra,
    }
    (out_dir / "rapport_config.json").write_text(json.dumps(data, indent=2))
    cfg.to_json_file(out_dir / "config.json")
