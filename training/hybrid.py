"""The engine's hybrid replier measured offline: candidates, ranking weights, profile conditions.

    rapport-train tune-ranking --model exported_models/rapport-chat-small      # valid split only
    rapport-train eval-hybrid --model exported_models/rapport-chat-small \
        --zero-shot-encoder ~/.cache/rapport/zero-shot-encoder

Candidates come from ``engine.replier.Replier`` exactly as in the chat (beam + sampled generator
replies and retrieved real replies); the user's profile vector R_u is built with the engine's
``update_profile`` over the user's messages in their training conversations. ``tune-ranking``
picks the generator weight and λ on the valid split (best F1 among settings whose distinct-2 is at
least 0.30) and writes them to the model's ``rapport_config.json``; ``eval-hybrid`` reports
generator-only, retrieval-only and hybrid replies, and ranker Hits@1/20 (zero-shot vs fine-tuned
encoder, with true / shuffled / no profile) on test, known-user and new-user splits.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
from engine.encoder import SentenceEncoder
from engine.profile import update_profile
from engine.replier import CandidateFeatures, RankWeights, Replier
from engine.retrieval import ReplyIndex

from .data import DEFAULT_DATA, Example
from .evaluate import Evaluator, Sizes, _ci, write_card_from_files
from .examples import turns_of
from .metrics import distinct_n, unigram_f1

GENERATOR_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
PROFILE_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
MIN_DISTINCT_2 = 0.30
PROFILE_MESSAGES = 100
CONDITIONS = {"test": ("true", "shuffled", "none"), "known_user": ("true", "shuffled", "none"),
              "new_user": ("none",)}


class SpeakerProfiles:
    """Profile vectors R_u of corpus speakers, from their messages in training conversations."""

    def __init__(self, embedder: SentenceEncoder, train_convs) -> None:
        self.embedder = embedder
        self.messages: dict[str, list[str]] = {}
        for conv in sorted(train_convs, key=lambda c: c.start):
            for i, turn in enumerate(conv.turns):
                self.messages.setdefault(conv.speakers[i % 2], []).append(turn)
        self.speakers = sorted(self.messages)
        self._cache: dict[str, np.ndarray | None] = {}

    def vector(self, speaker: str) -> np.ndarray | None:
        """The engine's moving-average profile over the speaker's last 100 training messages."""
        if speaker not in self._cache:
            msgs = self.messages.get(speaker, [])[-PROFILE_MESSAGES:]
            profile, seen = None, 0
            for vec in (self.embedder.embed(msgs) if msgs else []):
                profile, seen = update_profile(profile, seen, vec)
            self._cache[speaker] = profile
        return self._cache[speaker]

    def for_condition(self, ex: Example, condition: str, seed: int = 0) -> np.ndarray | None:
        """R_u of the addressee (true), of another known speaker (shuffled) or None."""
        if condition == "none":
            return None
        who = ex.addressee
        if condition == "shuffled":
            others = [s for s in self.speakers if s != ex.addressee]
            who = random.Random(f"{seed}:{ex.conv_id}:{ex.turn_index}").choice(others)
        return self.vector(who)


@dataclass
class Pool:
    """One example's candidates and their score parts."""

    features: CandidateFeatures
    generated: np.ndarray  # True where the candidate came from the generator
    retrieval_top: str | None  # the index's nearest reply
    true_reply: str


def collect(ev: Evaluator, replier: Replier, profiles: SpeakerProfiles, ex: Example, condition: str) -> Pool:
    """Candidates for ``ex`` under a profile ``condition`` (user facts in the prompt and R_u)."""
    turns = turns_of(ex)
    source = ev.source(ex, condition)
    generated = dict(replier.candidates(source, "balanced"))
    context_vec = replier.context_vector(turns)
    retrieved = replier.retrieved(source, context_vec)
    cands = dict(generated)
    for text, score in retrieved:
        cands.setdefault(text, score)
    items = list(cands.items())
    f = replier.features(context_vec, items, profiles.for_condition(ex, condition, ev.seed),
                         [t.text for t in turns[-4:]])
    return Pool(f, np.array([t in generated for t, _ in items]), retrieved[0][0] if retrieved else None, ex.reply)


def pick(pool: Pool, weights: RankWeights) -> str:
    """The hybrid's choice."""
    return pool.features.texts[int(np.argmax(weights.score(pool.features)))]


def pick_generator_only(pool: Pool) -> str:
    """The generator's own choice: its most likely candidate (no ranker, no retrieval)."""
    gen = np.where(pool.generated, pool.features.generator, -np.inf)
    return pool.features.texts[int(np.argmax(gen))]


def replies_f1(replies: list[str], pools: list[Pool]) -> np.ndarray:
    return np.array([unigram_f1(r, p.true_reply) for r, p in zip(replies, pools)])


def tune(pools: list[Pool], base: RankWeights) -> tuple[RankWeights, list[dict]]:
    """Grid over generator weight and λ: best mean F1 among settings with distinct-2 >= 0.30."""
    table = []
    for g, lam in itertools.product(GENERATOR_WEIGHTS, PROFILE_WEIGHTS):
        w = RankWeights(ranker=base.ranker, generator=g, profile=lam)
        replies = [pick(p, w) for p in pools]
        table.append({"generator": g, "profile": lam, "f1": 100 * float(replies_f1(replies, pools).mean()),
                      "distinct_2": distinct_n(replies, 2)})
    ok = [r for r in table if r["distinct_2"] >= MIN_DISTINCT_2] or table
    best = max(ok, key=lambda r: r["f1"])
    return RankWeights(ranker=base.ranker, generator=best["generator"], profile=best["profile"]), table


def build(model: Path, encoder: Path, index: Path, data: Path, sizes: Sizes, seed: int):
    """Evaluator, engine replier (shipped weights) and speaker profiles."""
    ev = Evaluator(model, encoder, data, sizes, seed)
    runtime = json.loads((model / "rapport_config.json").read_text())
    replier = Replier(ev.model, ev.codec, ev.embedder, ev.encoder_io.budget,
                      RankWeights(**runtime.get("rank_weights", {})),
                      index=ReplyIndex.load(index, encoder / "model.onnx"))
    return ev, replier, SpeakerProfiles(ev.embedder, ev.splits["train"])


def tune_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train tune-ranking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(p)
    p.add_argument("--examples", type=int, default=300, help="valid examples")
    args = p.parse_args(argv)
    ev, replier, profiles = build(args.model, args.encoder, args.index, args.data, Sizes(), args.seed)
    exs = [e for e in ev.sample("valid", args.examples, "tune") if e.context]
    pools = [collect(ev, replier, profiles, ex, "true") for ex in exs]
    weights, table = tune(pools, replier.weights)
    path = args.model / "rapport_config.json"
    runtime = json.loads(path.read_text())
    runtime["rank_weights"] = asdict(weights)
    runtime["rank_weights_tuning"] = {"split": "valid", "examples": len(pools), "objective":
                                      f"max F1 with distinct-2 >= {MIN_DISTINCT_2}", "grid": table}
    path.write_text(json.dumps(runtime, indent=2))
    print(json.dumps(asdict(weights)))


def eval_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train eval-hybrid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(p)
    p.add_argument("--zero-shot-encoder", type=Path, help="export of the pretrained MiniLM, for comparison")
    p.add_argument("--examples", type=int, default=120, help="generated examples per split and condition")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, not for the card)")
    args = p.parse_args(argv)
    sizes = Sizes(40, 40, 20, 2000) if args.quick else Sizes()
    n = 10 if args.quick else args.examples
    ev, replier, profiles = build(args.model, args.encoder, args.index, args.data, sizes, args.seed)
    zero_shot = SentenceEncoder.from_dir(args.zero_shot_encoder) if args.zero_shot_encoder else None
    w = replier.weights
    results: dict = {"weights": asdict(w), "examples_per_condition": n, "splits": {}}
    samples = []
    for split, conditions in CONDITIONS.items():
        entry: dict = {"ranker_hits_at_1_of_20": {}, "replies": {}}
        if zero_shot is not None:
            r = ev.ranker_hits(split, zero_shot)
            entry["ranker_hits_at_1_of_20"]["zero_shot_minilm"] = _ci(r["hits"], r["groups"])
        hits = {}
        for cond in conditions:
            hits[cond] = ev.ranker_hits(split, profile_of=lambda ex, c=cond: profiles.for_condition(ex, c, ev.seed),
                                        lam=w.profile)
            entry["ranker_hits_at_1_of_20"][f"fine_tuned_{cond}_profile"] = _ci(hits[cond]["hits"],
                                                                                hits[cond]["groups"])
        exs = [e for e in ev.sample(split, n, "hybrid") if e.context]
        picked = {}
        for cond in conditions:
            t = time.time()
            pools = [collect(ev, replier, profiles, ex, cond) for ex in exs]
            groups = [e.conv_id for e in exs]
            systems = {"hybrid": [pick(pl, w) for pl in pools]}
            if cond == conditions[0]:
                systems["generator_only"] = [pick_generator_only(pl) for pl in pools]
                systems["retrieval_only"] = [pl.retrieval_top or "" for pl in pools]
                samples += [{"split": split, "context": list(ex.context[-3:]), "true_reply": ex.reply,
                             **{k: v[i] for k, v in systems.items()}} for i, ex in enumerate(exs[:4])]
            for name, replies in systems.items():
                f1 = replies_f1(replies, pools)
                picked[(name, cond)] = f1
                entry["replies"][f"{name}_{cond}_profile"] = {
                    "f1": _ci(100 * f1, groups), "distinct_1": distinct_n(replies, 1),
                    "distinct_2": distinct_n(replies, 2), "n": len(replies)}
            print(split, cond, round(time.time() - t), json.dumps(entry["replies"][f"hybrid_{cond}_profile"]),
                  flush=True)
        if "shuffled" in conditions:
            entry["profile_gain_true_minus_shuffled"] = {
                "ranker_hits_at_1_of_20": _ci(hits["true"]["hits"] - hits["shuffled"]["hits"], hits["true"]["groups"]),
                "hybrid_f1": _ci(100 * (picked[("hybrid", "true")] - picked[("hybrid", "shuffled")]),
                                 [e.conv_id for e in exs])}
        results["splits"][split] = entry
    results["samples"] = samples
    results["command"] = "rapport-train eval-hybrid " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.model / "hybrid_eval.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.model / 'hybrid_eval.json'}")
    if (args.model / "eval.json").exists():
        write_card_from_files(args.model)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="chat model export folder")
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
