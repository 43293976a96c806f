"""Does the model use the facts it is given? Reply NLL with the true facts vs another conversation's.

    python -m training.fact_use --model exported_models/rapport-chat-small [--split valid] [--n 3000]

On Synthetic-Persona-Chat (``valid`` while developing, ``test`` once at the end), for the exported
ONNX model as the engine runs it (either family), with the prompt layout of the model's folder:
- *user-fact-dependent* turns: the true reply uses a content word of the user's facts that is neither
  in the visible history nor in the bot's own persona; gain = NLL/token with a shuffled user profile
  (the next conversation's) minus NLL with the true one;
- *persona-dependent* turns: likewise for the bot's persona (content word not in the history nor in the
  user's facts), shuffling the bot's persona;
- all turns, both gains.
Bootstrap 95% intervals resample whole conversations.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from engine.model.family import load_chat_model

from .examples import turns_of
from .metrics import bootstrap_ci
from .persona import depends_on, load_persona_splits, persona_examples


def nll_per_token(model, sources: list[list[int]], targets: list[list[int]], batch: int = 32) -> np.ndarray:
    """Mean NLL per target token of each (source, target)."""
    out = []
    for i in range(0, len(sources), batch):
        logp = model.score(sources[i: i + batch], targets[i: i + batch])
        out += [-float(row.sum()) / len(t) for row, t in zip(logp, targets[i: i + batch])]
    return np.array(out)


def evaluate(model_dir: Path, split: str = "valid", n: int = 3000, seed: int = 0, threads: int = 2) -> dict:
    """The gains described in the module docstring."""
    parts = load_chat_model(model_dir, threads)
    model, codec, layout = parts.model, parts.codec, parts.layout
    examples = [ex for c in load_persona_splits()[split] for ex in persona_examples(c)]
    examples = random.Random(seed).sample(examples, min(n, len(examples)))
    others = examples[97:] + examples[:97]  # another conversation's facts (a fixed rotation)
    targets = [codec.encode(ex.reply)[:40] + [model.eos_id] for ex in examples]
    sources = {
        "true": [layout.build(codec, turns_of(ex), ex.bot_facts, ex.user_facts) for ex in examples],
        "user_shuffled": [layout.build(codec, turns_of(ex), ex.bot_facts, o.user_facts)
                          for ex, o in zip(examples, others)],
        "persona_shuffled": [layout.build(codec, turns_of(ex), o.bot_facts, ex.user_facts)
                             for ex, o in zip(examples, others)],
    }
    nll = {name: nll_per_token(model, src, targets) for name, src in sources.items()}
    groups = [ex.conv_id for ex in examples]
    user_dep = np.array([depends_on(ex, ex.user_facts, ex.bot_facts) for ex in examples])
    bot_dep = np.array([depends_on(ex, ex.bot_facts, ex.user_facts) for ex in examples])
    result = {"model": str(model_dir), "split": split, "examples": len(examples), "seed": seed,
              "nll_true": float(nll["true"].mean())}
    for name, shuffled, mask in (("user_facts", "user_shuffled", user_dep), ("persona", "persona_shuffled", bot_dep)):
        gain = nll[shuffled] - nll["true"]
        point, low, high = bootstrap_ci(gain, groups)
        result[f"{name}_gain_all"] = [point, low, high]
        sel = np.flatnonzero(mask)
        point, low, high = bootstrap_ci(gain[sel], [groups[i] for i in sel])
        result[f"{name}_gain_dependent"] = [point, low, high]
        result[f"{name}_dependent_turns"] = int(mask.sum())
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = evaluate(args.model, args.split, args.n)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
