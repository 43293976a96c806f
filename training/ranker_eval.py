"""Two ranker exports compared as the engine runs them (int8 ONNX): Hits@1/20 on held-out splits.

    rapport-train ranker-eval --baseline exported_models/minilm-l6-v2-encoder \
        --candidate ~/.cache/rapport/ranker-mix-int8 --out bench/results/ranker.json

Splits: the chit-chat corpus's ``test`` and ``known_user`` and Synthetic-Persona-Chat's ``test`` half (plus
both ``valid`` splits, where the training run chose its checkpoint). Each set is a context (the last two
turns, what the engine embeds), its true reply and 19 replies of the same split (``ranker.ranking_sets``,
fixed seed); the candidate minus the baseline is paired on the same sets, with a 95% bootstrap interval
over conversations.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from engine.model.encoder import SentenceEncoder

from .data import DEFAULT_DATA, load_splits
from .examples import all_examples
from .metrics import bootstrap_ci, hits_at_1
from .persona import DEFAULT_PERSONA_DATA, load_persona_splits
from .ranker import RankingSet, pairs_of, persona_pairs, ranking_sets


def set_hits(encoder: SentenceEncoder, sets: list[RankingSet], batch: int = 64) -> np.ndarray:
    """1 per set whose true reply (first option) the encoder scores strictly best."""
    out = []
    for start in range(0, len(sets), batch):
        chunk = sets[start: start + batch]
        vecs = encoder.embed([t for _, c, options in chunk for t in (c, *options)])
        groups = vecs.reshape(len(chunk), 21, -1)
        scores = np.einsum("bd,bkd->bk", groups[:, 0], groups[:, 1:])
        out.append(hits_at_1(scores))
    return np.concatenate(out)


def held_out_sets(data: Path, persona_data: Path, n: int, seed: int) -> dict[str, list[RankingSet]]:
    """Ranking sets of every held-out split, by name."""
    chat = load_splits(data)
    persona = load_persona_splits(persona_data)
    sets = {f"chitchat_{s}": ranking_sets(pairs_of(all_examples(chat[s])), n, seed) for s in ("valid", "test", "known_user")}
    sets |= {f"persona_{s}": ranking_sets(persona_pairs(persona[s]), n, seed) for s in ("valid", "test")}
    return sets


def compare(baseline: SentenceEncoder, candidate: SentenceEncoder, sets: dict[str, list[RankingSet]]) -> dict:
    """Hits@1/20 of both encoders and the paired difference, per split."""
    report = {}
    for name, split_sets in sets.items():
        groups = [g for g, _, _ in split_sets]
        base, cand = set_hits(baseline, split_sets), set_hits(candidate, split_sets)
        report[name] = {key: dict(zip(("value", "low", "high"), bootstrap_ci(v, groups)))
                        for key, v in (("baseline", base), ("candidate", cand), ("candidate_minus_baseline", cand - base))}
        report[name]["sets"] = len(split_sets)
        print(f"{name:20s} baseline {base.mean():.3f}  candidate {cand.mean():.3f}  "
              f"diff {report[name]['candidate_minus_baseline']['value']:+.3f} "
              f"[{report[name]['candidate_minus_baseline']['low']:+.3f}, "
              f"{report[name]['candidate_minus_baseline']['high']:+.3f}]", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train ranker-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True, help="encoder export folder")
    p.add_argument("--candidate", type=Path, required=True, help="encoder export folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare`")
    p.add_argument("--persona-data", type=Path, default=DEFAULT_PERSONA_DATA)
    p.add_argument("--sets", type=int, default=1000, help="ranking sets per split")
    p.add_argument("--seed", type=int, default=7, help="(the training run's valid sets use seed 0)")
    p.add_argument("--out", type=Path, help="write the report here as JSON")
    args = p.parse_args(argv)
    report = {"baseline": str(args.baseline), "candidate": str(args.candidate), "seed": args.seed,
              "splits": compare(SentenceEncoder.from_dir(args.baseline), SentenceEncoder.from_dir(args.candidate),
                                held_out_sets(args.data, args.persona_data, args.sets, args.seed))}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
