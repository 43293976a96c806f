"""Generate reply candidates and pick one: ranker similarity + generator score + λ·P(u, c).

The weights come from the chat model's ``rapport_config.json`` (``rank_weights``, chosen on the
validation split by ``rapport-train tune-ranking``); ``/style`` scales them (STYLE_WEIGHTS).
This is synchronous, CPU-bound code: the engine runs it in a worker thread.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .encoder import SentenceEncoder
from .generation import GenerationConfig
from .profile import recommender_score
from .retrieval import ReplyIndex
from .prompt import PromptBudget, Turn, build_source_ids
from .seq2seq import Seq2SeqModel
from .text import TextCodec

STYLES: dict[str, list[GenerationConfig]] = {
    "balanced": [GenerationConfig("beam", max_new_tokens=32, num_beams=4, num_candidates=4, no_repeat_ngram_size=3),
                 GenerationConfig("sample", max_new_tokens=32, num_candidates=4, top_p=0.9, temperature=0.8,
                                  no_repeat_ngram_size=3, repetition_penalty=1.2)],
    "precise": [GenerationConfig("beam", max_new_tokens=32, num_beams=5, num_candidates=5, no_repeat_ngram_size=3)],
    "creative": [GenerationConfig("sample", max_new_tokens=40, num_candidates=8, top_p=0.95, temperature=1.0,
                                  no_repeat_ngram_size=3, repetition_penalty=1.2)],
    "short": [GenerationConfig("beam", max_new_tokens=16, num_beams=4, num_candidates=4, no_repeat_ngram_size=3,
                               length_penalty=0.6)],
    "long": [GenerationConfig("beam", max_new_tokens=48, min_new_tokens=12, num_beams=4, num_candidates=4,
                              no_repeat_ngram_size=3, length_penalty=1.5),
             GenerationConfig("sample", max_new_tokens=48, min_new_tokens=12, num_candidates=4, top_p=0.9,
                              no_repeat_ngram_size=3, repetition_penalty=1.2)],
}
_WORD = re.compile(r"\w+")
NEAR_COPY = 0.9  # cosine above which a candidate repeats a recent turn


@dataclass(frozen=True)
class RankWeights:
    """Weights of the candidate score (see module docstring)."""

    ranker: float = 1.0
    generator: float = 0.1
    profile: float = 0.5

    def score(self, f: "CandidateFeatures") -> np.ndarray:
        """Score of every candidate; a repeat of a recent turn loses 1."""
        return self.ranker * f.ranker + self.generator * f.generator + self.profile * f.profile - f.echo


# How /style moves the weights: "precise" trusts the generator more, "creative" the ranker.
STYLE_WEIGHTS: dict[str, dict[str, float]] = {"precise": {"generator": 2.0}, "creative": {"generator": 0.5}}


@dataclass(frozen=True)
class CandidateFeatures:
    """Score parts of each candidate: ranker cosine to the context, generator mean log-prob,
    P(u, c) with the user's profile vector, and 1 where it repeats a recent turn."""

    texts: list[str]
    ranker: np.ndarray
    generator: np.ndarray
    profile: np.ndarray
    echo: np.ndarray


@dataclass(frozen=True)
class ScoredReply:
    """A candidate reply with its score parts."""

    text: str
    score: float
    ranker: float
    generator: float
    profile: float


class Replier:
    """Turns (history, profile) into a reply with the seq2seq model and the sentence encoder."""

    def __init__(self, model: Seq2SeqModel, codec: TextCodec, encoder: SentenceEncoder | None,
                 budget: PromptBudget = PromptBudget(), weights: RankWeights = RankWeights(),
                 time_budget_s: float = 5.0, index: ReplyIndex | None = None, retrieve_k: int = 8) -> None:
        if index is not None and encoder is None:
            raise ValueError("a reply index needs the sentence encoder that built it")
        self.model = model
        self.codec = codec
        self.encoder = encoder
        self.budget = budget
        self.weights = weights
        self.time_budget_s = time_budget_s
        self.index = index
        self.retrieve_k = retrieve_k

    @classmethod
    def from_dirs(cls, model_dir: Path, encoder_dir: Path | None, threads: int = 2,
                  index_dir: Path | None = None, profile_weight: float | None = None, **kwargs) -> "Replier":
        """Load the seq2seq export (prompt budget, ranking weights), the sentence encoder and the reply
        index; ``profile_weight`` overrides the exported λ."""
        model = Seq2SeqModel.from_dir(model_dir, threads)
        codec = TextCodec.from_file(model_dir / "tokenizer.json")
        budget, weights = PromptBudget(), RankWeights()
        runtime = model_dir / "rapport_config.json"
        if runtime.exists():
            data = json.loads(runtime.read_text())
            budget = PromptBudget(**data.get("prompt_budget", {}))
            weights = RankWeights(**data.get("rank_weights", {}))
        if profile_weight is not None:
            weights = replace(weights, profile=profile_weight)
        encoder = SentenceEncoder.from_dir(encoder_dir, threads) if encoder_dir and encoder_dir.exists() else None
        index = None
        if encoder is not None and index_dir is not None and index_dir.exists():
            index = ReplyIndex.load(index_dir, encoder.folder / "model.onnx")
        return cls(model, codec, encoder, budget, weights, index=index, **kwargs)

    def source_ids(self, turns: list[Turn], persona: list[str], user_facts: list[str]) -> list[int]:
        """Model input for this conversation."""
        return build_source_ids(self.codec.encode, self.codec.special_ids, turns, persona, user_facts, self.budget)

    def candidates(self, source: list[int], style: str) -> list[tuple[str, float]]:
        """Distinct non-empty (text, mean log-prob) candidates of every decoding setting of ``style``."""
        seen: dict[str, float] = {}
        for config in STYLES.get(style, STYLES["balanced"]):
            config = config.with_(time_budget_s=self.time_budget_s / 2)
            for cand in self.model.generate(source, config):
                text = self.codec.decode(list(cand.ids))
                if _WORD.search(text) and text not in seen:
                    seen[text] = cand.mean_logprob
        return list(seen.items())

    def retrieved(self, source: list[int], context_vec: np.ndarray) -> list[tuple[str, float]]:
        """Top real replies from the index, scored by the generator (mean token log-prob)."""
        if self.index is None:
            return []
        texts = [t for t, _ in self.index.search(context_vec, self.retrieve_k)]
        targets = [self.codec.encode(t)[:40] + [self.model.eos_id] for t in texts]
        logp = self.model.score([source] * len(targets), targets)
        return [(t, float(lp.sum() / len(tg))) for t, lp, tg in zip(texts, logp, targets)]

    def features(self, context_vec: np.ndarray | None, cands: list[tuple[str, float]],
                 profile: np.ndarray | None, recent: list[str]) -> CandidateFeatures:
        """Score parts of ``cands`` ((text, mean log-prob) pairs); without an encoder (``context_vec``
        None) ranker and profile parts are 0."""
        texts = [t for t, _ in cands]
        gen = np.array([s for _, s in cands], dtype=np.float32)
        seen = {t.lower() for t in recent}
        echo = np.array([t.lower() in seen for t in texts], dtype=np.float32)
        if context_vec is None:
            ranker = np.zeros(len(texts), dtype=np.float32)
            prof = np.zeros(len(texts), dtype=np.float32)
        else:
            vecs = self.encoder.embed(texts + recent)
            vecs, recent_vecs = vecs[: len(texts)], vecs[len(texts):]
            ranker = vecs @ context_vec
            prof = recommender_score(profile, vecs)
            if recent:  # near-copies of a recent turn ("what do you like to do for fun??") count as repeats
                echo = np.maximum(echo, ((vecs @ recent_vecs.T).max(1) > NEAR_COPY).astype(np.float32))
        return CandidateFeatures(texts, ranker, gen, prof, echo)

    def weights_for(self, style: str) -> RankWeights:
        """The ranking weights, scaled for ``style``."""
        scale = STYLE_WEIGHTS.get(style, {})
        return replace(self.weights, **{k: getattr(self.weights, k) * v for k, v in scale.items()})

    def rank(self, context_vec: np.ndarray | None, cands: list[tuple[str, float]], profile: np.ndarray | None,
             recent: list[str], style: str = "balanced") -> list[ScoredReply]:
        """Score candidates, best first; a candidate repeating (or nearly copying) a ``recent`` turn loses 1."""
        f = self.features(context_vec, cands, profile, recent)
        scores = self.weights_for(style).score(f)
        return [ScoredReply(f.texts[i], float(scores[i]), float(f.ranker[i]), float(f.generator[i]),
                            float(f.profile[i])) for i in np.argsort(-scores)]

    def context_vector(self, turns: list[Turn]) -> np.ndarray | None:
        """Sentence vector of the last two turns (None without an encoder)."""
        if self.encoder is None or not turns:
            return None
        return self.encoder.embed([" ".join(t.text for t in turns[-2:])])[0]

    def reply(self, turns: list[Turn], persona: list[str], user_facts: list[str],
              profile: np.ndarray | None, style: str = "balanced") -> ScoredReply:
        """The best reply to the last turn, among generated and retrieved candidates."""
        source = self.source_ids(turns, persona, user_facts)
        context_vec = self.context_vector(turns)
        cands = dict(self.candidates(source, style))
        if context_vec is not None:
            for text, score in self.retrieved(source, context_vec):
                cands.setdefault(text, score)
        if not cands:
            return ScoredReply("Sorry, I'm lost for words. Could you say that another way?", 0.0, 0.0, 0.0, 0.0)
        return self.rank(context_vec, list(cands.items()), profile, [t.text for t in turns[-4:]], style)[0]
