"""Does the int8 export keep the quality of its fp32 model? Paired NLL and F1 on held-out examples.

    rapport-train export --checkpoint best.pt --out exported_models/NAME --keep-fp32 ~/.cache/rapport/fp32/NAME
    python -m training.int8_quality --int8 exported_models/NAME --fp32 ~/.cache/rapport/fp32/NAME --split test

On the same examples (Synthetic-Persona-Chat's valid or test half with the true facts, and the chit-chat
valid or test split with the mined facts, as the card's other figures): NLL per token of the true reply
and unigram F1 of the greedy reply, for each model. Reported per set: each model's mean with a bootstrap
95% interval over conversations, and the paired int8 - fp32 difference with its interval. The int8 model
keeps the quality when its mean lies inside the fp32 interval (the criterion of issue 13).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER
from engine.model.seq2seq import Seq2SeqModel

from .data import DEFAULT_DATA
from .evaluate import Evaluator, Sizes
from .fact_use import nll_per_token
from .metrics import bootstrap_ci, unigram_f1
from .persona import load_persona_splits, persona_examples
from .reply_choice import GREEDY


def greedy_f1(model: Seq2SeqModel, ev: Evaluator, sources: list[list[int]], replies: list[str]) -> np.ndarray:
    """F1 of each greedy reply against the true one."""
    out = [ev.codec.decode(list(model.generate(s, GREEDY)[0].ids)) for s in sources]
    return np.array([unigram_f1(g, r) for g, r in zip(out, replies)])


def compare(models: dict[str, Seq2SeqModel], ev: Evaluator, sources: list[list[int]], replies: list[str],
            groups: list[str]) -> dict:
    """Each model's NLL/token and greedy F1, and the paired int8 - fp32 differences."""
    targets = [ev.target(r) for r in replies]
    values = {name: {"nll": nll_per_token(m, sources, targets), "f1": 100 * greedy_f1(m, ev, sources, replies)}
              for name, m in models.items()}
    out: dict = {"n": len(sources)}
    for metric in ("nll", "f1"):
        entry = {}
        for name in models:
            point, low, high = bootstrap_ci(values[name][metric], groups)
            entry[name] = {"value": point, "ci95": [low, high]}
        point, low, high = bootstrap_ci(values["int8"][metric] - values["fp32"][metric], groups)
        entry["int8_minus_fp32"] = {"value": point, "ci95": [low, high]}
        low, high = entry["fp32"]["ci95"]
        entry["int8_inside_fp32_interval"] = bool(low <= entry["int8"]["value"] <= high)
        out[metric] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--int8", type=Path, required=True, help="the int8 export")
    p.add_argument("--fp32", type=Path, required=True, help="its fp32 ONNX folder (export --keep-fp32)")
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--n", type=int, default=400, help="examples per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="where the JSON goes (default: int8_quality_<split>.json in the int8 "
                   "folder; name another file when --fp32 is an earlier export rather than the fp32 model)")
    args = p.parse_args(argv)
    ev = Evaluator(args.int8, args.encoder, args.data, Sizes(), args.seed)
    models = {"int8": ev.model, "fp32": Seq2SeqModel.from_dir(args.fp32)}
    persona = [ex for c in load_persona_splits()[args.split] for ex in persona_examples(c)]
    persona = random.Random(f"{args.seed}:int8:{args.split}").sample(persona, args.n)
    chitchat = ev.sample(args.split, args.n, "int8")
    result = {"int8": str(args.int8), "split": args.split, "seed": args.seed, "sets": {
        "persona": compare(models, ev, [ev.encoder_io.encode(ex, list(ex.user_facts), list(ex.bot_facts)).source
                                        for ex in persona], [ex.reply for ex in persona], [ex.conv_id for ex in persona]),
        "chitchat": compare(models, ev, [ev.source(ex, "true") for ex in chitchat], [ex.reply for ex in chitchat],
                            [ex.conv_id for ex in chitchat])}}
    (args.out or args.int8 / f"int8_quality_{args.split}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
