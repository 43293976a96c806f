"""Ranking cost of the shipped encoder and index, beside the generator's time per reply.

    python -m bench.ranking [--repeats 100] [--out bench/results/ranking.json]

Measures, on the same contexts, in one process (so the ratios hold on a noisy machine):
  context     embedding one context (last two turns)
  rank30_idx  embedding one context + scoring 30 candidates whose vectors are already known
              (retrieved replies: their vectors are the index rows)
  rank30_txt  embedding one context + 30 candidate texts + scoring (the worst case: nothing cached)
  search      exact search of the 30,000-reply index (top 8)
  generate    the generator's candidates for one reply (4 beam + 4 sampled, the "balanced" style)
Prints p50/p95 in milliseconds and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX, DEFAULT_MODEL
from engine.model.prompt import Turn
from engine.model.replier import Replier

from .latency import PROMPTS


def _timed(fn, repeats: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "n": repeats}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ranking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/ranking.json"))
    args = p.parse_args(argv)
    replier = Replier.from_dirs(DEFAULT_MODEL, DEFAULT_ENCODER, args.threads, index_dir=DEFAULT_INDEX)
    enc, index = replier.encoder, replier.index
    rng = np.random.default_rng(0)
    cand_rows = rng.choice(len(index.replies), 30, replace=False)
    cand_texts = [index.replies[i] for i in cand_rows]
    cand_vecs = index.vectors[cand_rows].astype(np.float32) / 127.0
    contexts = [f"{a} {b}" for a, b in zip(PROMPTS, PROMPTS[1:] + PROMPTS[:1])]
    it = iter(range(10**9))

    def ctx() -> str:
        return contexts[next(it) % len(contexts)]

    results = {
        "context": _timed(lambda: enc.embed([ctx()]), args.repeats),
        "rank30_idx": _timed(lambda: np.argsort(-(cand_vecs @ enc.embed([ctx()])[0])), args.repeats),
        "rank30_txt": _timed(lambda: np.argsort(-(enc.embed(cand_texts) @ enc.embed([ctx()])[0])), args.repeats),
        "search": _timed(lambda: index.search(enc.embed([ctx()])[0], 8), args.repeats),
    }
    turns = [[Turn(c, from_user=True)] for c in PROMPTS]
    sources = [replier.source_ids(t, [], []) for t in turns]
    results["generate"] = _timed(lambda: replier.candidates(sources[next(it) % len(sources)], "balanced"),
                                 max(10, args.repeats // 5))
    gen = results["generate"]["p50_ms"]
    print(f"{'step':12s} {'p50 ms':>8s} {'p95 ms':>8s} {'x generate p50':>15s}")
    for name, r in results.items():
        print(f"{name:12s} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['p50_ms'] / gen:15.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "index_size": len(index.replies), **results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
