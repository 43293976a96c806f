"""Dialogue metrics (ParlAI conventions) and bootstrap confidence intervals by conversation."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation and articles, collapse whitespace (ParlAI's normalize_answer)."""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def unigram_f1(guess: str, answer: str) -> float:
    """Token-overlap F1 between a generated and the true reply (0 when either is empty)."""
    g, a = normalize_answer(guess).split(), normalize_answer(answer).split()
    common = Counter(g) & Counter(a)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(g), same / len(a)
    return 2 * precision * recall / (precision + recall)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / total n-grams over all ``texts`` (whitespace tokens, lower-cased)."""
    total, seen = 0, set()
    for text in texts:
        toks = text.lower().split()
        grams = [tuple(toks[i: i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def word_count(text: str) -> int:
    """Words of a reply for word-level perplexity (whitespace split, at least 1)."""
    return max(1, len(text.split()))


def word_perplexity(total_nll: float, total_words: int) -> float:
    """exp(total NLL / number of words): comparable across tokenizers."""
    return math.exp(total_nll / total_words)


def draw_distractors(pool: list[str], true: str, rng, n: int = 19) -> list[str]:
    """``n`` replies drawn from ``pool`` (with replacement) that differ from ``true``: the Hits@1/20 negatives."""
    picks: list[str] = []
    while len(picks) < n:
        r = pool[rng.randrange(len(pool))]
        if r != true:
            picks.append(r)
    return picks


def hits_at_1(scores: np.ndarray) -> np.ndarray:
    """1 where the true candidate (column 0) scores strictly best, per row of (n, candidates)."""
    return (scores[:, 0] > scores[:, 1:].max(axis=1)).astype(np.float64)


def bootstrap_ci(values: list[float] | np.ndarray, groups: list[str], statistic=np.mean, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(point, low, high): percentile bootstrap resampling whole conversations (``groups``)."""
    values = np.asarray(values, dtype=np.float64)
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    index = np.array([ids[g] for g in groups])
    members = [np.flatnonzero(index == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[k] for k in pick])
        stats.append(statistic(values[rows]))
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(statistic(values)), float(low), float(high)

