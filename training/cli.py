"""``rapport-train``: prepare | train | export | export-lstm | export-encoder | eval | fixtures | build-index | filter-index | train-ranker | train-safety | safety-export | ranker-eval | shards | eval-hybrid | reply-choice | dequantize | dequantize-encoder | slim-decoder | fuse-decoder | reblock-output | export-profanity | table-4bit | rows-int8 | static-int8 | finetune-lm | export-lm | distill."""
from __future__ import annotations

import importlib
import sys

JOBS = {
    "prepare": ("training.prepare_cli", "clean and split the chit-chat corpus, extract profile facts"),
    "train": ("training.train", "train the seq2seq model (checkpoints, --resume, --max-minutes)"),
    "export": ("training.export", "export a checkpoint to int8 ONNX in exported_models/"),
    "export-lstm": ("training.lstm_export", "export a `train --family lstm` checkpoint to ONNX (int8) in exported_models/"),
    "export-encoder": ("training.export_encoder", "export the MiniLM sentence encoder to ONNX"),
    "eval": ("training.evaluate", "evaluate an export on the held-out splits, write the model card"),
    "fixtures": ("training.fixtures", "write the tiny BART, T5 and LSTM test fixtures"),
    "build-index": ("training.build_index", "build the retrieval index of real replies"),
    "train-ranker": ("training.ranker", "fine-tune MiniLM as the reply ranker (bi-encoder)"),
    "train-safety": ("training.safety_train", "fine-tune MiniLM as the safety classifier (messages, context/reply pairs)"),
    "safety-export": ("training.safety_export", "export the safety classifier, thresholds chosen on valid data"),
    "ranker-eval": ("training.ranker_eval", "compare two ranker exports: Hits@1/20 on the held-out splits"),
    "shards": ("training.shards", "pack/unpack trained weights as small fp16 shards"),
    "eval-hybrid": ("training.hybrid:eval_main", "evaluate generator / retrieval / hybrid replies and the ranker"),
    "reply-choice": ("training.reply_choice:main", "greedy vs hybrid replies (MMI, hubness, λ) on persona and chit-chat"),
    "filter-index": ("training.safe_data", "drop unsafe or personal replies from a reply index (in place)"),
    "dequantize": ("training.dequantize", "rebuild an fp32 PyTorch model from an int8 export (for benchmarks)"),
    "dequantize-encoder": ("training.dequantize_encoder", "rebuild the ranker's fp32 weights from its int8 export"),
    "export-profanity": ("training.profanity_export", "export alt-profanity-check's fitted model as arrays for the engine"),
    "table-4bit": ("training.table_quantize", "store an ONNX model's large token tables in 4 bits (blocks of 32)"),
    "rows-int8": ("training.row_quantize", "an encoder's MatMuls as per-row int8 products (fast on many rows)"),
    "static-int8": ("training.static_quantize", "a merged decoder's MatMuls as int8 products with fixed activation steps (fast on many rows)"),
    "finetune-lm": ("training.lm_finetune", "fine-tune SmolLM2-135M on the conversation mix (loss on the bot's turns)"),
    "export-lm": ("training.causal_export", "export a finetune-lm checkpoint as one decoder-only ONNX graph (KV cache, int8/4-bit)"),
    "distill": ("training.distill", "the fine-tuned SmolLM2 writes the bot's replies of the training conversations (sequence-level distillation)"),
    "slim-decoder": ("training.onnx_merge", "stop a merged decoder copying its cross-attention cache at every step"),
    "fuse-decoder": ("training.fused_decoder", "rebuild a merged decoder's with-past branch from fused attention operators"),
    "reblock-output": ("training.onnx_quantize", "store a decoder's output layer in 8-bit blocks of 128 instead of 32"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to one job module's ``main``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        print("usage: rapport-train {" + ",".join(JOBS) + "} [options]\n")
        for name, (_, text) in JOBS.items():
            print(f"  {name:15s} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, _, function = JOBS[argv[0]][0].partition(":")
    getattr(importlib.import_module(module_name), function or "main")(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
