"""What a model and its reply settings cost per reply, as a ratio to a baseline run in the same process.

    python -m bench.reply_cost --baseline exported_models/rapport-chat-small \
        --model exported_models/rapport-chat-persona [--rounds 5] [--out bench/results/reply_cost.json]

One user talks to the whole engine (real Redis server, fake adapter). The user first states five facts
about themselves, so the prompt carries 5 user facts as well as the bot's persona; then each round sends
the same eight messages to every configuration in turn (baseline, model, model in greedy mode), so the
machine's noise hits all alike. Printed: p50 and p95 reply latency of each and the p50 ratio to the baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
from engine.model.replier import Replier

from .latency import reply_latencies

FACTS = ["i work as a nurse.", "i have a dog named rex.", "i go running every morning.", "i live in toronto.",
         "my favorite food is pizza."]


def replier_for(model: Path, encoder: Path, greedy: bool = False) -> Replier:
    """The engine's replier for ``model`` (in greedy mode when asked)."""
    return Replier.from_dirs(model, encoder, index_dir=DEFAULT_INDEX, mode="greedy" if greedy else "hybrid")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.reply_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/reply_cost.json"))
    args = p.parse_args(argv)
    configs = {"baseline": replier_for(args.baseline, args.encoder), "model": replier_for(args.model, args.encoder),
               "model_greedy": replier_for(args.model, args.encoder, greedy=True)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, replier in configs.items():
            times[name] += asyncio.run(reply_latencies(replier, 1, 8, facts=FACTS))[len(FACTS):]
    base = float(np.percentile(times["baseline"], 50))
    result = {name: {"p50_ms": 1000 * float(np.percentile(t, 50)), "p95_ms": 1000 * float(np.percentile(t, 95)),
                     "p50_ratio_to_baseline": float(np.percentile(t, 50)) / base, "replies": len(t)}
              for name, t in times.items()}
    result["models"] = {"baseline": str(args.baseline), "model": str(args.model)}
    for name, row in result.items():
        if name != "models":
            print(f"{name:<14} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                  f"ratio {row['p50_ratio_to_baseline']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
