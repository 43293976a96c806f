"""A user's taste, learned from their reactions to the bot's replies, as part of the seeds' formula.

P(u, c) = R_u·I_c / (|R_u|·|I_c| + α) is computed in an extended space: I_c is the candidate's sentence
embedding followed by its style (length, question or statement), and R_u is the user's profile (their
messages and facts) plus ``beta``·(mean liked − mean disliked reply embedding), followed by ``gamma``·(mean
liked − mean disliked style). The weight λ of P(u, c) grows with the number of reactions n:
λ_u = λ + (``max_weight`` − λ)·n/(n + ``half_at``). A user who never reacted has no taste, and their
ranking is exactly today's. Why this and not a per-user model: a handful of reactions is too few to fit
one, and a mean difference needs no training, cannot overfit, and stays explainable in /profile.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .profile import recommender_score

_WORD = re.compile(r"[a-z']+")
SHORT_WORDS, LONG_WORDS = 7, 13  # /profile's words for "short" and "long" replies
_STOP = set("""a an the i i'm im my me mine you your you're is am are was were be been being to of in on at for
with and or but so that this it it's its do does did don't not no yes what how why who when where there
here they them their we our us he she his her him just like really very too also can could would will
have has had get got go going one some any all about more much well oh ok okay yeah haha lol that's
i've i'd i'll think know love sounds sound good great nice fun cool thing things lot time""".split())


def style_features(texts: list[str]) -> np.ndarray:
    """Per text: [length in words scaled to -1..1 (10 words = 0), +1 for a question else -1]."""
    out = np.zeros((len(texts), 2), dtype=np.float32)
    for i, text in enumerate(texts):
        out[i, 0] = np.clip((len(text.split()) - 10) / 8, -1.0, 1.0)
        out[i, 1] = 1.0 if "?" in text else -1.0
    return out


@dataclass(frozen=True)
class TasteSettings:
    """How strongly reactions move the ranking: chosen on the validation half's simulated users by
    ``python -m bench.feedback --tune`` (like-rate of turns 6-30; the grid's top settings are within 0.01)."""

    beta: float = 1.0  # weight of the liked-minus-disliked embedding direction in R_u
    gamma: float = 4.0  # weight of the style part, in R_u and in I_c
    max_weight: float = 8.0  # λ_u as the number of reactions grows
    half_at: float = 4.0  # reactions at which λ_u is halfway from λ to max_weight


@dataclass(frozen=True)
class Taste:
    """What one user's reactions say: mean embeddings and styles of liked and disliked replies."""

    liked: np.ndarray  # mean unit embedding of the liked replies (zeros if none)
    disliked: np.ndarray
    liked_style: np.ndarray  # mean style_features of the liked replies (zeros if none)
    disliked_style: np.ndarray
    n_liked: int
    n_disliked: int
    settings: TasteSettings = TasteSettings()

    @classmethod
    def from_reactions(cls, vectors: np.ndarray, texts: list[str], values: list[int],
                       settings: TasteSettings = TasteSettings()) -> "Taste | None":
        """The taste of reply embeddings ``vectors`` (texts ``texts``) rated ``values`` (+1 or -1); None
        when there is no reaction."""
        values_arr = np.asarray(values)
        if not len(values_arr) or not np.any(values_arr):
            return None
        styles = style_features(texts)
        dim = vectors.shape[1]

        def mean(rows: np.ndarray, width: int) -> np.ndarray:
            return rows.mean(0).astype(np.float32) if len(rows) else np.zeros(width, dtype=np.float32)

        like, dislike = values_arr > 0, values_arr < 0
        return cls(mean(vectors[like], dim), mean(vectors[dislike], dim), mean(styles[like], 2),
                   mean(styles[dislike], 2), int(like.sum()), int(dislike.sum()), settings)

    @property
    def reactions(self) -> int:
        return self.n_liked + self.n_disliked

    def weight(self, base: float) -> float:
        """λ_u: the weight of P(u, c), from ``base`` (no reactions) towards ``max_weight``."""
        s = self.settings
        return base + (s.max_weight - base) * self.reactions / (self.reactions + s.half_at)

    def profile(self, profile: np.ndarray | None) -> np.ndarray:
        """R_u in the extended space, from the unit profile vector (messages and facts; may be None)."""
        s = self.settings
        base = np.zeros_like(self.liked) if profile is None or not np.any(profile) else profile / np.linalg.norm(profile)
        return np.concatenate([base + s.beta * (self.liked - self.disliked),
                               s.gamma * (self.liked_style - self.disliked_style)]).astype(np.float32)

    def items(self, vectors: np.ndarray, texts: list[str]) -> np.ndarray:
        """I_c in the extended space for candidates with unit embeddings ``vectors``."""
        return np.hstack([vectors, self.settings.gamma * style_features(texts)]).astype(np.float32)

    def score(self, profile: np.ndarray | None, vectors: np.ndarray, texts: list[str]) -> np.ndarray:
        """P(u, c) in the extended space for every candidate."""
        return recommender_score(self.profile(profile), self.items(vectors, texts))


def content_words(text: str) -> set[str]:
    """The words of ``text`` that say what it is about."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP}


def describe(liked: list[str], disliked: list[str]) -> list[str]:
    """What the reactions to these replies say, in words for /profile."""
    if not liked and not disliked:
        return []
    lines = [f"From your reactions: you liked {len(liked)} of my replies and disliked {len(disliked)}."]
    length = {name: np.mean([len(t.split()) for t in texts]) for name, texts in (("liked", liked), ("disliked", disliked))
              if texts}
    if "liked" in length and length["liked"] <= SHORT_WORDS and length.get("disliked", 99) > length["liked"] + 2:
        lines.append("You like short replies.")
    elif "liked" in length and length["liked"] >= LONG_WORDS and length.get("disliked", 0) < length["liked"] - 2:
        lines.append("You like longer replies.")
    asks = {name: np.mean(["?" in t for t in texts]) for name, texts in (("liked", liked), ("disliked", disliked))
            if texts}
    if "liked" in asks and "disliked" in asks and abs(asks["liked"] - asks["disliked"]) >= 0.3:
        lines.append("You like it when I ask you questions." if asks["liked"] > asks["disliked"]
                     else "You prefer statements to questions.")
    liked_words = Counter(w for t in liked for w in content_words(t))
    disliked_words = Counter(w for t in disliked for w in content_words(t))
    topics = [w for w, n in liked_words.most_common() if n >= 2 and n > disliked_words[w]][:3]
    if topics:
        lines.append(f"You liked replies about {', '.join(topics)}.")
    return lines
