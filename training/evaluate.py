"""Evaluate an export on the held-out splits and write eval.json + MODEL_CARD.md.

    rapport-train eval --model exported_models/rapport-chat-small --run ~/.cache/rapport/runs/warm

Metrics (the design's measurement protocol, ../shared/DESIGN.md): word-level perplexity, Hits@1/20 (19 random
distractors from the same split), ParlAI unigram F1 and distinct-1/2 of greedy replies, with
bootstrap 95% intervals by conversation; the user's profile facts true / shuffled / none.
Baselines: retrieval (reply of the nearest training context by the ``--encoder``'s cosine), that
encoder as a ranker (context -> reply cosine), and a constant reply. Only valid/test-type splits are
read; nothing is tuned here.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.model.encoder import SentenceEncoder
from engine.model.generation import GenerationConfig
from engine.model.profile import recommender_score
from engine.model.prompt import PromptBudget
from engine.model.seq2seq import Seq2SeqModel
from engine.model.text import TextCodec

from .data import DEFAULT_DATA, Example, facts_for, load_facts, load_splits
from .examples import FACTS_PER_SIDE, ExampleEncoder, all_examples, context_text
from .metrics import bootstrap_ci, distinct_n, draw_distractors, hits_at_1, unigram_f1, word_count, word_perplexity

CONSTANT_REPLY = "i am good how are you"
DECODING = GenerationConfig(max_new_tokens=32, no_repeat_ngram_size=3)
CONDITIONS = {"test": ("true", "none"), "known_user": ("true", "shuffled", "none"), "new_user": ("none",)}


@dataclass
class Sizes:
    """How many examples each measurement uses (fixed, seeded samples)."""

    score: int = 600
    generate_main: int = 1000
    generate: int = 400
    retrieval_index: int = 30000


def user_facts(ex: Example, facts, condition: str, speakers_with_facts: list[str], seed: int) -> list[str]:
    """The addressee's profile facts under ``condition``: true, shuffled (another user's) or none."""
    rng = random.Random(f"{seed}:{ex.conv_id}:{ex.turn_index}")
    if condition == "none":
        return []
    who = ex.addressee
    if condition == "shuffled":
        others = [s for s in speakers_with_facts if s != ex.addressee]
        who = rng.choice(others)
    return facts_for(facts, who, ex.conv_id, FACTS_PER_SIDE, rng)


class Evaluator:
    """Holds the model, encoder, data; computes every number of the card."""

    def __init__(self, model_dir: Path, encoder_dir: Path, data_dir: Path, sizes: Sizes, seed: int = 0) -> None:
        self.model = Seq2SeqModel.from_dir(model_dir)
        self.codec = TextCodec.from_file(model_dir / "tokenizer.json")
        runtime = json.loads((model_dir / "rapport_config.json").read_text())
        self.encoder_io = ExampleEncoder(self.codec, load_facts(data_dir),
                                         PromptBudget(**runtime.get("prompt_budget", {})))
        self.embedder = SentenceEncoder.from_dir(encoder_dir)
        self.splits = load_splits(data_dir)
        self.facts = self.encoder_io.facts
        self.speakers_with_facts = sorted(self.facts)
        self.sizes = sizes
        self.seed = seed

    def sample(self, split: str, n: int, salt: str) -> list[Example]:
        exs = all_examples(self.splits[split])
        return random.Random(f"{self.seed}:{split}:{salt}").sample(exs, min(n, len(exs)))

    def source(self, ex: Example, condition: str) -> list[int]:
        persona = facts_for(self.facts, ex.speaker, ex.conv_id, FACTS_PER_SIDE, random.Random(f"p:{ex.conv_id}"))
        user = user_facts(ex, self.facts, condition, self.speakers_with_facts, self.seed)
        return self.encoder_io.encode(ex, user, persona).source

    def target(self, text: str) -> list[int]:
        return self.encoder_io.encode(Example("", 0, "", "", ("",), text), [], []).target

    def scored_words(self, reply: str, target: list[int]) -> int:
        """Words of the part of ``reply`` that was scored (targets are cut at 40 tokens)."""
        if target and target[-1] == self.codec.special_ids["[SEP]"]:
            return word_count(reply)
        return word_count(self.codec.decode(target))

    def distractors(self, split: str, exs: list[Example]) -> list[list[str]]:
        pool = [e.reply for e in all_examples(self.splits[split])]
        out = []
        for ex in exs:
            rng = random.Random(f"{self.seed}:d:{ex.conv_id}:{ex.turn_index}")
            out.append([ex.reply] + draw_distractors(pool, ex.reply, rng))
        return out

    def score_split(self, split: str, condition: str) -> dict[str, np.ndarray]:
        """Per-example NLL, words and generator Hits@1/20 for one split and profile condition."""
        exs = self.sample(split, self.sizes.score, "score")
        cands = self.distractors(split, exs)
        nll, words, hits = [], [], []
        for ex, options in zip(exs, cands):
            src = self.source(ex, condition)
            targets = [self.target(t) for t in options]
            logp = self.model.score([src] * len(targets), targets)
            sums = logp.sum(1)
            means = sums / np.array([len(t) for t in targets])
            nll.append(-sums[0])
            words.append(self.scored_words(ex.reply, targets[0]))
            hits.append(hits_at_1(means[None, :])[0])
        return {"nll": np.array(nll), "words": np.array(words), "hits": np.array(hits),
                "groups": [e.conv_id for e in exs]}

    def ranker_hits(self, split: str, encoder: SentenceEncoder | None = None,
                    profile_of: Callable[[Example], np.ndarray | None] | None = None,
                    lam: float = 0.0) -> dict[str, np.ndarray]:
        """A sentence encoder (default: the evaluated one) as a ranker, Hits@1/20 on the same candidates:
        cos(context, reply), plus ``lam`` x P(u, reply) with ``profile_of(example)`` as R_u when given."""
        encoder = encoder or self.embedder
        exs = self.sample(split, self.sizes.score, "score")
        cands = self.distractors(split, exs)
        hits = []
        for ex, options in zip(exs, cands):
            vecs = encoder.embed([context_text(ex)] + options)
            score = vecs[1:] @ vecs[0]
            profile = profile_of(ex) if profile_of and lam else None
            if profile is not None:
                score = score + lam * recommender_score(profile, vecs[1:])
            hits.append(hits_at_1(score[None, :])[0])
        return {"hits": np.array(hits), "groups": [e.conv_id for e in exs]}

    def generate_split(self, split: str, condition: str, n: int) -> dict:
        """Greedy replies, their F1 against the true reply, distinct-1/2."""
        exs = self.sample(split, n, "generate")
        replies = [self.codec.decode(list(self.model.generate(self.source(ex, condition), DECODING)[0].ids))
                   for ex in exs]
        return {"f1": np.array([unigram_f1(r, ex.reply) for r, ex in zip(replies, exs)]),
                "replies": replies, "examples": exs, "groups": [e.conv_id for e in exs]}

    def retrieval(self, split: str, n: int) -> dict:
        """Reply of the nearest training context (encoder cosine); F1 of that reply."""
        if not hasattr(self, "_index"):
            train = random.Random(self.seed).sample(all_examples(self.splits["train"]), self.sizes.retrieval_index)
            self._index = (self.embedder.embed([context_text(e) for e in train]), [e.reply for e in train])
        vecs, replies = self._index
        exs = self.sample(split, n, "generate")
        q = self.embedder.embed([context_text(e) for e in exs])
        best = [replies[i] for i in (q @ vecs.T).argmax(1)]
        return {"f1": np.array([unigram_f1(b, e.reply) for b, e in zip(best, exs)]), "replies": best,
                "groups": [e.conv_id for e in exs]}


def _ci(values, groups, statistic=np.mean) -> dict[str, float]:
    point, low, high = bootstrap_ci(values, groups, statistic=statistic)
    return {"value": point, "ci95": [low, high]}


def _ppl(nll: np.ndarray, words: np.ndarray, groups: list[str]) -> dict[str, float]:
    pairs = np.stack([nll, words], 1)
    return _ci(pairs, groups, statistic=lambda v: word_perplexity(v[:, 0].sum(), int(v[:, 1].sum())))


def run(ev: Evaluator) -> dict:
    """Every number of the card."""
    results: dict = {"splits": {}, "sizes": ev.sizes.__dict__, "decoding": DECODING.__dict__}
    gens: dict = {}
    for split, conditions in CONDITIONS.items():
        entry: dict = {"conditions": {}}
        scores = {}
        for cond in conditions:
            t = time.time()
            s = ev.score_split(split, cond)
            n_gen = ev.sizes.generate_main if (split, cond) == ("test", "true") else ev.sizes.generate
            g = ev.generate_split(split, cond, n_gen)
            scores[cond], gens[(split, cond)] = s, g
            entry["conditions"][cond] = {
                "word_perplexity": _ppl(s["nll"], s["words"], s["groups"]),
                "hits_at_1_of_20": _ci(s["hits"], s["groups"]),
                "f1": _ci(100 * g["f1"], g["groups"]),
                "distinct_1": distinct_n(g["replies"], 1), "distinct_2": distinct_n(g["replies"], 2),
                "n_scored": len(s["nll"]), "n_generated": len(g["replies"]), "seconds": round(time.time() - t),
            }
            print(split, cond, json.dumps(entry["conditions"][cond]), flush=True)
        if "shuffled" in scores:
            t, sh = scores["true"], scores["shuffled"]
            entry["profile_gain_true_minus_shuffled"] = {
                "hits_at_1_of_20": _ci(t["hits"] - sh["hits"], t["groups"]),
                "nll_per_word_reduction": _ci((sh["nll"] - t["nll"]) / t["words"], t["groups"]),
                "f1": _ci(100 * (gens[(split, "true")]["f1"] - gens[(split, "shuffled")]["f1"]),
                          gens[(split, "true")]["groups"]),
            }
        r = ev.ranker_hits(split)
        ret = ev.retrieval(split, ev.sizes.generate)
        const = np.array([unigram_f1(CONSTANT_REPLY, e.reply) for e in gens[(split, conditions[0])]["examples"]])
        entry["baselines"] = {
            "encoder_ranker_hits_at_1_of_20": _ci(r["hits"], r["groups"]),
            "retrieval_f1": _ci(100 * ret["f1"], ret["groups"]),
            "retrieval_distinct_1": distinct_n(ret["replies"], 1),
            "retrieval_distinct_2": distinct_n(ret["replies"], 2),
            "constant_reply_f1": _ci(100 * const, gens[(split, conditions[0])]["groups"]),
        }
        print(split, "baselines", json.dumps(entry["baselines"]), flush=True)
        results["splits"][split] = entry
    g = gens[("test", "true")]
    rng = random.Random(ev.seed)
    picks = rng.sample(range(len(g["examples"])), 10)
    results["samples"] = [{"context": list(g["examples"][i].context[-3:]), "true_reply": g["examples"][i].reply,
                           "model_reply": g["replies"][i]} for i in picks]
    return results


def write_card_from_files(model_dir: Path) -> None:
    """Render MODEL_CARD.md from eval.json (and hybrid_eval.json when present)."""
    from .model_card import write_card

    results = json.loads((model_dir / "eval.json").read_text())
    hybrid_path = model_dir / "hybrid_eval.json"
    hybrid = json.loads(hybrid_path.read_text()) if hybrid_path.exists() else None
    runs = {k: Path(v) if v else None for k, v in results.get("runs", {}).items()}
    write_card(model_dir, results, runs.get("run"), runs.get("warm_run"), runs.get("scratch_run"),
               results.get("command", "rapport-train eval"), hybrid)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="export folder")
    p.add_argument("--encoder", type=Path, default=Path("exported_models/minilm-l6-v2-encoder"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--run", type=Path, help="training run folder of this model (log.jsonl, args.json) for the card")
    p.add_argument("--warm-run", type=Path, help="warm-start comparison run folder (same budget as --scratch-run)")
    p.add_argument("--scratch-run", type=Path, help="from-scratch comparison run folder")
    p.add_argument("--quick", action="store_true", help="small sample sizes (smoke test, not for the card)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sizes = Sizes(40, 40, 20, 2000) if args.quick else Sizes()
    ev = Evaluator(args.model, args.encoder, args.data, sizes, args.seed)
    results = run(ev)
    results["command"] = "rapport-train eval " + " ".join(sys.argv[1:] if argv is None else argv)
    results["runs"] = {k: str(v) if v else None for k, v in
                       (("run", args.run), ("warm_run", args.warm_run), ("scratch_run", args.scratch_run))}
    (args.model / "eval.json").write_text(json.dumps(results, indent=1))
    write_card_from_files(args.model)
    print(f"wrote {args.model / 'eval.json'} and {args.model / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
