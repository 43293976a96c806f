"""Write tiny random BART, T5 and LSTM exports and their PyTorch ``generate`` outputs as test fixtures.

    rapport-train fixtures --out tests/fixtures

BART is written with a merged decoder, T5 with decoder + decoder-with-past: both Optimum layouts. The LSTM
family (``training/lstm.py``) is written twice: ``tiny-lstm`` (99 tokens, greedy outputs of its own
PyTorch ``generate``) and ``tiny-lstm-chat`` (the real tokenizer's 30,522 tokens, 8-wide, so the whole
engine can talk through it in the fast tier). The decoder-only family (``training/causal_export.py``) is
written twice too: ``tiny-llama`` (99 tokens, fp32, with Hugging Face ``generate`` outputs) and
``tiny-llama-chat`` (SmolLM2's tokenizer, 16-wide, quantized as a real export is).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import (BartConfig, BartForConditionalGeneration, GenerationConfig, LlamaConfig,
                          LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

from .causal_export import export_fp32, quantize, write_config

from .lstm import LstmConfig, LstmSeq2Seq, build_lstm
from .lstm_export import export_lstm_onnx
from .modeling import CLS_ID, MINILM_VOCAB, PAD_ID, SEP_ID, minilm_dir
from .onnx_export import export_onnx, merge_decoder_files

BEAMS = 3
MAX_NEW = 12


def tiny_models() -> dict[str, torch.nn.Module]:
    """Small random models (seeded) of two architectures."""
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        decoder_start_token_id=2, eos_token_id=2, bos_token_id=0, pad_token_id=1, forced_eos_token_id=None))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                             num_heads=4, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0))
    return {"tiny-bart": bart.eval(), "tiny-t5": t5.eval()}


def hf_outputs(model, sources: list[list[int]], beams: int) -> list[list[int]]:
    """Hugging Face ``generate`` output (start token dropped) for each source."""
    config = GenerationConfig(do_sample=False, num_beams=beams, max_new_tokens=MAX_NEW,
                              decoder_start_token_id=model.config.decoder_start_token_id,
                              eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id,
                              early_stopping=beams > 1)
    with torch.no_grad():
        return [model.generate(torch.tensor([s]), generation_config=config)[0].tolist()[1:] for s in sources]


def tiny_lstm(vocab_size: int, pad: int, start: int, eos: int, width: int) -> LstmSeq2Seq:
    """A small random LSTM seq2seq (seeded), with weights scaled up so greedy replies vary with the source."""
    model = build_lstm(LstmConfig(vocab_size=vocab_size, embed_dim=width // 2, hidden=width, dropout=0.0,
                                  pad_token_id=pad, decoder_start_token_id=start, eos_token_id=eos), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6)
    return model.eval()


def write_lstm_fixtures(out: Path, sources: list[list[int]]) -> None:
    """``tiny-lstm`` with its PyTorch greedy outputs, and ``tiny-lstm-chat`` with the real tokenizer."""
    model = tiny_lstm(99, pad=1, start=2, eos=2, width=32)
    export_lstm_onnx(model, out / "tiny-lstm")
    greedy = [[t for t in model.generate(torch.tensor([s]), max_new_tokens=MAX_NEW)[0].tolist()[1:] if t != 1]
              for s in sources]
    (out / "tiny-lstm" / "expected.json").write_text(json.dumps(
        {"sources": sources, "greedy": greedy, "max_new_tokens": MAX_NEW}))
    chat = out / "tiny-lstm-chat"
    export_lstm_onnx(tiny_lstm(MINILM_VOCAB, pad=PAD_ID, start=CLS_ID, eos=SEP_ID, width=16), chat)
    shutil.copy(minilm_dir() / "tokenizer.json", chat / "tokenizer.json")
    (chat / "rapport_config.json").write_text(json.dumps({"model_type": "lstm", "reply_mode": "greedy"}))


def tiny_llama(vocab_size: int, width: int, eos: int) -> LlamaForCausalLM:
    """A small random Llama (SmolLM2's shape: grouped-query attention, tied embeddings), seeded."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=eos, pad_token_id=eos, bos_token_id=eos, rms_norm_eps=1e-5)).eval()


def write_llama_fixtures(out: Path, sources: list[list[int]]) -> None:
    """``tiny-llama`` (fp32) with Hugging Face's greedy and beam outputs, and ``tiny-llama-chat`` (int8, with
    SmolLM2's tokenizer and the chat layout)."""
    from .lm_finetune import base_folder

    folder = out / "tiny-llama"
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_llama(99, 32, eos=2)
    export_fp32(model, folder / "decoder_model.onnx")
    tokenizer = base_folder() / "tokenizer.json"
    write_config(model, folder, tokenizer, {})
    (folder / "tokenizer.json").unlink()  # 99 tokens: ids only

    def hf(beams: int) -> list[list[int]]:
        config = GenerationConfig(do_sample=False, num_beams=beams, max_new_tokens=MAX_NEW, eos_token_id=2,
                                  pad_token_id=2, early_stopping=beams > 1)
        with torch.no_grad():
            return [model.generate(torch.tensor([s]), generation_config=config)[0].tolist()[len(s):] for s in sources]
    (folder / "expected.json").write_text(json.dumps(
        {"sources": sources, "greedy": hf(1), "beam": hf(BEAMS), "num_beams": BEAMS, "max_new_tokens": MAX_NEW}))
    chat = out / "tiny-llama-chat"
    chat.mkdir(parents=True, exist_ok=True)
    from tokenizers import Tokenizer
    end = Tokenizer.from_file(str(tokenizer)).token_to_id("<|im_end|>")
    small = tiny_llama(49152, 16, eos=end)
    export_fp32(small, chat / "fp32.onnx")
    quantize(chat / "fp32.onnx", chat / "decoder_model.onnx", 8)
    (chat / "fp32.onnx").unlink()
    write_config(small, chat, tokenizer, {"max_source_tokens": 128, "max_facts_tokens": 32, "max_turn_tokens": 32})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train fixtures", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    sources = [[int(x) for x in rng.integers(3, 99, size=int(rng.integers(3, 20)))] for _ in range(20)]
    for name, model in tiny_models().items():
        folder = args.out / name
        export_onnx(model, folder)
        if name == "tiny-bart":
            merge_decoder_files(folder)
        model.config.to_json_file(folder / "config.json")
        expected = {"sources": sources, "greedy": hf_outputs(model, sources, 1),
                    "beam": hf_outputs(model, sources, BEAMS), "num_beams": BEAMS, "max_new_tokens": MAX_NEW}
        (folder / "expected.json").write_text(json.dumps(expected))
    write_lstm_fixtures(args.out, sources)
    write_llama_fixtures(args.out, sources)


if __name__ == "__main__":
    main()
