"""Which reply should the engine send? The model's greedy reply vs the ranked hybrid, measured.

    rapport-train reply-choice --model exported_models/rapport-chat-persona          # tune on valid, report test
    rapport-train reply-choice --model exported_models/rapport-chat-small --baseline  # its own weights

For each held-out example the engine's own candidate pool is built (``Replier.candidates`` and
``Replier.retrieved``, as in the chat), with every score part of ``Replier.features``: ranker cosine,
generator mean log-prob, P(u, c) with R_u (the user's messages so far plus their facts, as the engine
builds it), the prior log-prob with an empty prompt (MMI) and the hubness; plus the model's own greedy
reply. Data: Synthetic-Persona-Chat's valid half (tuning) and test half (true user facts, and another
conversation's), and the chit-chat corpus's valid (tuning), test and known-user splits.

Tuning (valid only): a grid over the generator weight, MMI, hubness and λ; the objective is the mean F1
over both corpora, among settings whose replies are less generic than greedy's (distinct-2 at least
greedy's on both). Test: hybrid minus greedy F1 (paired, bootstrap over conversations), distinct-2, the
share of replies taken by the 10 most frequent ones, and on the persona test half the fact use (a reply
word from the user's facts that is not in the last two turns) and F1, true vs shuffled user facts.
The reply mode is chosen on valid too: ``hybrid`` when its paired F1 gain over greedy (tuned weights)
has an interval above 0 on both corpora, else ``greedy`` (the cheaper path). ``--write`` stores the
weights and the mode in the model's ``rapport_config.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import pickle
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
from engine.facts import content_words
from engine.model.profile import update_profile
from engine.model.prompt import Turn
from engine.model.decoding import GREEDY
from engine.model.replier import CandidateFeatures, RankWeights, Replier

from .data import DEFAULT_DATA
from .examples import turns_of
from .metrics import bootstrap_ci, distinct_n, unigram_f1
from .persona import load_persona_splits, persona_examples

GRID = {"generator": (0.0, 0.1, 0.2, 0.5, 1.0), "mmi": (0.0, 0.05, 0.1, 0.2, 0.5),
        "hubness": (0.0, 0.5, 1.0, 2.0), "profile": (0.0, 0.1, 0.25, 0.5)}


@dataclass
class Pool:
    """One example's candidates with their score parts, the greedy reply and what the metrics need."""

    features: CandidateFeatures
    generated: np.ndarray  # True where the candidate came from the generator
    greedy: str
    true_reply: str
    group: str  # the conversation (bootstrap unit)
    user_facts: tuple[str, ...] = ()
    last_turns: str = ""


def collect_pool(replier: Replier, source: list[int], turns: list[Turn], profile: np.ndarray | None,
                 facts: list[str], true_reply: str, group: str) -> Pool:
    """The engine's candidate pool for one example, scored, with the greedy reply."""
    generated = dict(replier.candidates(source, "balanced"))
    context_vec = replier.context_vector(turns)
    cands = dict(generated)
    for text, score in replier.retrieved(source, context_vec):
        cands.setdefault(text, score)
    items = list(cands.items())
    fact_vecs = replier.encoder.embed(facts) if facts else None
    f = replier.features(context_vec, items, replier.profile_with_facts(profile, fact_vecs),
                         [t.text for t in turns[-4:]], prior=replier.priors([t for t, _ in items]))
    text = replier.text_of(replier.model.generate(source, GREEDY)[0].ids)
    return Pool(f, np.array([t in generated for t, _ in items]), text, true_reply, group, tuple(facts),
                " ".join(t.text for t in turns[-2:]))


def pick(pool: Pool, weights: RankWeights) -> str:
    """The hybrid's choice."""
    return pool.features.texts[int(np.argmax(weights.score(pool.features)))]


def pick_generator_only(pool: Pool) -> str:
    """The generator's most likely candidate (no ranker, no retrieval)."""
    gen = np.where(pool.generated, pool.features.generator, -np.inf)
    return pool.features.texts[int(np.argmax(gen))]


def replies_f1(replies: list[str], pools: list[Pool]) -> np.ndarray:
    """Unigram F1 of each reply against its pool's true reply."""
    return np.array([unigram_f1(r, p.true_reply) for r, p in zip(replies, pools)])


def top10_share(replies: list[str]) -> float:
    """Share of replies that are one of the 10 most frequent replies (genericness; 10/n at best)."""
    counts = Counter(r.lower().strip() for r in replies)
    return sum(c for _, c in counts.most_common(10)) / max(1, len(replies))


def uses_facts(reply: str, pool: Pool, facts: tuple[str, ...]) -> bool:
    """Does ``reply`` use a content word of ``facts`` that is not in the last two turns?"""
    return bool((content_words(reply) & content_words(" ".join(facts))) - content_words(pool.last_turns))


def tune(families: dict[str, list[Pool]], base: RankWeights) -> tuple[RankWeights, list[dict]]:
    """Grid search (module docstring): best mean F1 over ``families`` among settings at least as
    distinct (distinct-2) as greedy on each family; the greedy figures are the grid's first row."""
    greedy = {name: distinct_n([p.greedy for p in pools], 2) for name, pools in families.items()}
    table = [{"setting": "greedy", **{f"f1_{n}": 100 * float(replies_f1([p.greedy for p in ps], ps).mean())
                                      for n, ps in families.items()},
              **{f"distinct_2_{n}": d for n, d in greedy.items()}}]
    for values in itertools.product(*GRID.values()):
        w = replace(base, **dict(zip(GRID, values)))
        row = {"setting": asdict(w)}
        for name, pools in families.items():
            replies = [pick(p, w) for p in pools]
            row[f"f1_{name}"] = 100 * float(replies_f1(replies, pools).mean())
            row[f"distinct_2_{name}"] = distinct_n(replies, 2)
        row["f1_mean"] = float(np.mean([row[f"f1_{n}"] for n in families]))
        row["distinct_enough"] = all(row[f"distinct_2_{n}"] >= greedy[n] for n in families)
        table.append(row)
    ok = [r for r in table[1:] if r["distinct_enough"]] or table[1:]
    best = max(ok, key=lambda r: r["f1_mean"])
    return RankWeights(**best["setting"]), table


def _ci(values: np.ndarray, groups: list[str]) -> dict:
    point, low, high = bootstrap_ci(values, groups)
    return {"value": point, "ci95": [low, high]}


def report(pools: list[Pool], weights: RankWeights, shuffled: list[Pool] | None = None) -> dict:
    """Test figures of one split (module docstring)."""
    groups = [p.group for p in pools]
    hybrid = [pick(p, weights) for p in pools]
    greedy = [p.greedy for p in pools]
    f1_h, f1_g = replies_f1(hybrid, pools), replies_f1(greedy, pools)
    out = {"n": len(pools), "hybrid_f1": _ci(100 * f1_h, groups), "greedy_f1": _ci(100 * f1_g, groups),
           "hybrid_minus_greedy_f1": _ci(100 * (f1_h - f1_g), groups),
           "distinct_2": {"hybrid": distinct_n(hybrid, 2), "greedy": distinct_n(greedy, 2)},
           "top10_share": {"hybrid": top10_share(hybrid), "greedy": top10_share(greedy)}}
    if shuffled is not None:
        hybrid_s = [pick(p, weights) for p in shuffled]
        # fact use of the true facts: replies made with them vs replies made with another user's facts
        use_t = np.array([uses_facts(r, p, p.user_facts) for r, p in zip(hybrid, pools)], dtype=float)
        use_s = np.array([uses_facts(r, p, p.user_facts) for r, p in zip(hybrid_s, pools)], dtype=float)
        out["fact_use"] = {"true": _ci(use_t, groups), "shuffled": _ci(use_s, groups),
                           "true_minus_shuffled": _ci(use_t - use_s, groups)}
        out["f1_true_minus_shuffled"] = _ci(100 * (f1_h - replies_f1(hybrid_s, shuffled)), groups)
    return out


class PoolBuilder:
    """Builds (and caches on disk) the pools of one model for each evaluation set."""

    def __init__(self, model: Path, encoder: Path, index: Path, data: Path, cache: Path, seed: int = 0) -> None:
        self.replier = Replier.from_dirs(model, encoder, index_dir=index)
        self.model_dir, self.encoder_dir = model, encoder
        self.data, self.seed, self.cache = data, seed, cache
        self.cache.mkdir(parents=True, exist_ok=True)

    def persona(self, half: str, n: int, condition: str) -> list[Pool]:
        """Persona examples of ``half`` (valid/test) with true or shuffled (``condition``) user facts."""
        def build() -> list[Pool]:
            exs = [ex for c in load_persona_splits()[half] for ex in persona_examples(c)]
            exs = random.Random(f"{self.seed}:{half}").sample(exs, min(n, len(exs)))
            others = exs[97:] + exs[:97]
            pools = []
            for ex, other in zip(exs, others):
                facts = list((other if condition == "shuffled" else ex).user_facts)
                turns = turns_of(ex)
                source = self.replier.source_ids(turns, list(ex.bot_facts), facts)
                pool = collect_pool(self.replier, source, turns, self._messages_profile(turns), facts, ex.reply,
                                    ex.conv_id)
                pool.user_facts = ex.user_facts  # fact use is always measured against the true facts
                pools.append(pool)
            return pools
        return self._cached(f"persona-{half}-{condition}-{n}", build)

    def chitchat(self, split: str, n: int) -> list[Pool]:
        """Chit-chat examples of ``split`` with the addressee's mined facts and R_u (as ``eval-hybrid``)."""
        from .evaluate import Evaluator, Sizes
        from .hybrid import SpeakerProfiles

        def build() -> list[Pool]:
            ev = Evaluator(self.model_dir, self.encoder_dir, self.data, Sizes(), self.seed)  # its sampling and prompts
            profiles = SpeakerProfiles(self.replier.encoder, ev.splits["train"])
            pools = []
            for ex in [e for e in ev.sample(split, n, "hybrid") if e.context]:
                turns = turns_of(ex)
                pools.append(collect_pool(self.replier, ev.source(ex, "true"), turns,
                                          profiles.for_condition(ex, "true", self.seed), [], ex.reply, ex.conv_id))
            return pools
        return self._cached(f"chitchat-{split}-{n}", build)

    def _messages_profile(self, turns: list[Turn]) -> np.ndarray | None:
        """The engine's moving average over the user's messages so far."""
        profile, seen = None, 0
        msgs = [t.text for t in turns if t.from_user]
        for vec in (self.replier.encoder.embed(msgs) if msgs else []):
            profile, seen = update_profile(profile, seen, vec)
        return profile

    def _cached(self, name: str, build) -> list[Pool]:
        path = self.cache / f"{name}.pkl"
        if path.exists():
            return pickle.loads(path.read_bytes())
        pools = build()
        path.write_bytes(pickle.dumps(pools))
        print(f"built {name}", flush=True)
        return pools


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train reply-choice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="chat model export folder")
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "rapport" / "pools",
                   help="pools are cached here per model folder name")
    p.add_argument("--valid", type=int, default=200, help="tuning examples per corpus (valid splits)")
    p.add_argument("--test", type=int, default=250, help="test examples per split")
    p.add_argument("--baseline", action="store_true",
                   help="no tuning and no shuffled-facts condition: the model's own weights, for comparison")
    p.add_argument("--write", action="store_true", help="store the tuned weights in rapport_config.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    builder = PoolBuilder(args.model, args.encoder, args.index, args.data, args.cache / args.model.name, args.seed)
    weights, table, mode, valid_gain = builder.replier.weights, [], builder.replier.mode, {}
    if not args.baseline:
        valid = {"persona": builder.persona("valid", args.valid, "true"), "chitchat": builder.chitchat("valid", args.valid)}
        weights, table = tune(valid, builder.replier.weights)
        for name, pools in valid.items():
            gain = replies_f1([pick(p, weights) for p in pools], pools) - replies_f1([p.greedy for p in pools], pools)
            valid_gain[name] = _ci(100 * gain, [p.group for p in pools])
        mode = "hybrid" if all(g["ci95"][0] > 0 for g in valid_gain.values()) else "greedy"
        print("tuned:", json.dumps(asdict(weights)), "mode:", mode, json.dumps(valid_gain), flush=True)
    shuffled = None if args.baseline else builder.persona("test", args.test, "shuffled")
    result = {"model": str(args.model), "weights": asdict(weights), "reply_mode": mode,
              "valid_hybrid_minus_greedy_f1": valid_gain, "tuned_on": None if args.baseline else "valid",
              "command": "rapport-train reply-choice " + " ".join(sys.argv[1:] if argv is None else argv),
              "splits": {"persona_test": report(builder.persona("test", args.test, "true"), weights, shuffled)}}
    for split in ("test", "known_user"):
        result["splits"][f"chitchat_{split}"] = report(builder.chitchat(split, args.test), weights)
    if table:
        result["grid_top"] = sorted([r for r in table[1:] if r["distinct_enough"]], key=lambda r: -r["f1_mean"])[:10]
        result["greedy_valid"] = table[0]
    out = args.model / ("reply_choice_baseline.json" if args.baseline else "reply_choice.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["splits"], indent=1))
    if args.write:
        path = args.model / "rapport_config.json"
        runtime = json.loads(path.read_text())
        runtime["rank_weights"] = asdict(weights)
        runtime["reply_mode"] = mode
        runtime["rank_weights_tuning"] = {"split": "valid (persona valid half + chit-chat valid)",
                                          "examples_per_corpus": args.valid, "command": result["command"],
                                          "objective": "max mean F1 with distinct-2 >= greedy's on both",
                                          "reply_mode": "hybrid if its valid F1 gain over greedy is above 0 "
                                                        "(95% interval) on both corpora, else greedy"}
        path.write_text(json.dumps(runtime, indent=2))
        print(f"wrote the weights and reply mode {mode} to {path}")


if __name__ == "__main__":
    main()
