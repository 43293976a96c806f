"""The engine's hybrid replier measured offline on the chit-chat corpus: replies and the ranker.

    rapport-train eval-hybrid --model exported_models/rapport-chat-small \
        --zero-shot-encoder ~/.cache/rapport/zero-shot-encoder

Candidates come from ``engine.model.replier.Replier`` exactly as in the chat (see
``training/reply_choice.py``, which also tunes the ranking weights); the user's profile vector R_u is
built with the engine's ``update_profile`` over the user's messages in their training conversations.
``eval-hybrid`` reports greedy, generator-only, retrieval-only and hybrid replies, and ranker
Hits@1/20 (zero-shot vs fine-tuned encoder, with true / shuffled / no profile) on test, known-user and
new-user splits.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
from engine.model.encoder import SentenceEncoder
from engine.model.profile import update_profile
from engine.model.replier import RankWeights, Replier
from engine.model.retrieval import ReplyIndex

from .data import DEFAULT_DATA, Example
from .evaluate import Evaluator, Sizes, _ci, write_card_from_files
from .examples import turns_of
from .metrics import distinct_n
from .reply_choice import Pool, collect_pool, pick, pick_generator_only, replies_f1

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


def collect(ev: Evaluator, replier: Replier, profiles: SpeakerProfiles, ex: Example, condition: str) -> Pool:
    """The engine's candidate pool for ``ex`` under a profile ``condition`` (user facts in the prompt and R_u)."""
    return collect_pool(replier, ev.source(ex, condition), turns_of(ex), profiles.for_condition(ex, condition, ev.seed),
                        [], ex.reply, ex.conv_id)


def retrieval_top(replier: Replier, ex: Example) -> str:
    """The index's nearest reply to the context."""
    found = replier.index.search(replier.context_vector(turns_of(ex)), 1)
    return found[0][0] if found else ""


def build(model: Path, encoder: Path, index: Path, data: Path, sizes: Sizes, seed: int):
    """Evaluator, engine replier (shipped weights) and speaker profiles."""
    ev = Evaluator(model, encoder, data, sizes, seed)
    runtime = json.loads((model / "rapport_config.json").read_text())
    replier = Replier(ev.model, ev.codec, ev.embedder, ev.encoder_io.budget,
                      RankWeights(**runtime.get("rank_weights", {})),
                      index=ReplyIndex.load(index, encoder / "model.onnx"))
    return ev, replier, SpeakerProfiles(ev.embedder, ev.splits["train"])


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
                systems["greedy"] = [pl.greedy for pl in pools]
                systems["generator_only"] = [pick_generator_only(pl) for pl in pools]
                systems["retrieval_only"] = [retrieval_top(replier, ex) for ex in exs]
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
