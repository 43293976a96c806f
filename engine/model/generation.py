"""Decoding settings and the numpy logits processors used at every decoding step."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. ``strategy`` is ``greedy``, ``beam`` or ``sample``."""

    strategy: str = "greedy"
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    num_beams: int = 4
    num_candidates: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    time_budget_s: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise ValueError(f"unknown strategy {self.strategy!r}: use greedy, beam or sample")
        if self.max_new_tokens < 1 or self.num_beams < 1 or self.num_candidates < 1:
            raise ValueError("max_new_tokens, num_beams and num_candidates must be >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")

    @property
    def rows_per_source(self) -> int:
        """Decoding rows one source takes: its beams, its samples, or 1 (greedy)."""
        return self.num_beams if self.strategy == "beam" else 1 if self.strategy == "greedy" else self.num_candidates

    def with_(self, **changes) -> "GenerationConfig":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32."""
    shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def chosen_log_probs(x: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``log_softmax(x)[row, chosen[row]]`` for each row, the same floats, without building the
    (rows, vocabulary) result: one array fewer to allocate and one pass fewer over it per decoding step."""
    top = x.max(axis=-1, keepdims=True)
    shifted = x - top
    np.exp(shifted, out=shifted)
    picked = x[np.arange(len(chosen)), chosen][:, None] - top
    return (picked - np.log(shifted.sum(axis=-1, keepdims=True)))[:, 0]


def target_log_probs(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Log-probability of each target token under ``logits`` (rows, positions, vocab), 0 where ``mask`` is 0.
    ``logits`` is converted to float32 and worked on in place (it is the largest array of a scoring run)."""
    logits = np.asarray(logits, dtype=np.float32)
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    top = logits.max(axis=-1)
    np.subtract(logits, top[..., None], out=logits)
    np.exp(logits, out=logits)
    return (picked - top - np.log(logits.sum(axis=-1))) * mask


def apply_repetition_penalty(logits: np.ndarray, sequences: list[list[int]], penalty: float) -> None:
    """CTRL-style penalty (as in Hugging Face): divide positive, multiply negative logits of seen tokens."""
    if penalty == 1.0:
        return
    for row, seq in enumerate(sequences):
        seen = np.unique(np.asarray(seq, dtype=np.int64))
        vals = logits[row, seen]
        logits[row, seen] = np.where(vals > 0, vals / penalty, vals * penalty)


def banned_ngram_tokens(seq: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``seq``."""
    if n <= 0 or len(seq) + 1 < n:
        return set()
    prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i: i + n - 1]) == prefix}


def apply_no_repeat_ngram(logits: np.ndarray, sequences: list[list[int]], n: int) -> None:
    """Set logits of n-gram-repeating tokens to -inf."""
    if n <= 0:
        return
    for row, seq in enumerate(sequences):
        banned = banned_ngram_tokens(seq, n)
        if banned:
            logits[row, list(banned)] = -np.inf


def process_logits(logits: np.ndarray, seqs: list[list[int]], config: GenerationConfig, step: int,
                   eos_id: int) -> np.ndarray:
    """A float32 copy of one step's logits with the repetition penalty, the n-gram ban and the minimum
    length (no end token before ``min_new_tokens``) applied."""
    logits = logits.astype(np.float32, copy=True)
    apply_repetition_penalty(logits, seqs, config.repetition_penalty)
    apply_no_repeat_ngram(logits, seqs, config.no_repeat_ngram_size)
    if step < config.min_new_tokens:
        logits[:, eos_id] = -np.inf
    return logits


def top_k_top_p_filter(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Keep the ``top_k`` best tokens and the smallest set with probability mass >= ``top_p``."""
    logits = logits.copy()
    if 0 < top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits[logits < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(log_softmax(sorted_logits))
        cumulative = np.cumsum(probs, axis=-1)
        remove = cumulative - probs > top_p
        sorted_logits[remove] = -np.inf
        np.put_along_axis(logits, order, sorted_logits, axis=-1)
    return logits


def nucleus_sample(logits: np.ndarray, top_k: int, top_p: float, rng: np.random.Generator,
                   shortlist: int = 1024) -> np.ndarray:
    """One token per row, sampled from softmax(``logits``) restricted by :func:`top_k_top_p_filter`.

    Works on each row's ``shortlist`` best tokens, so the cost of a step does not grow with
    the number of rows times the vocabulary; rows whose shortlist is not enough fall back to the full row.
    """
    rows, vocab = logits.shape
    width = min(shortlist, vocab, top_k if top_k > 0 else vocab)
    short = np.argpartition(-logits, width - 1, axis=-1)[:, :width] if width < vocab else \
        np.broadcast_to(np.arange(vocab), logits.shape)
    vals = np.take_along_axis(logits, short, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    short, vals = np.take_along_axis(short, order, -1), np.take_along_axis(vals, order, -1)
    row_max = vals[:, :1]
    total = np.exp(logits - row_max).sum(-1, keepdims=True)
    probs = np.exp(vals - row_max) / total  # (rows, width), true probabilities of the shortlist
    cumulative = np.cumsum(probs, axis=-1)
    keep = cumulative - probs <= top_p
    enough = (cumulative[:, -1] >= top_p) | (width == top_k)
    kept = np.where(keep, probs, 0.0)
    draw = rng.random(rows) * kept.sum(-1)
    picks = np.minimum((np.cumsum(kept, axis=-1) < draw[:, None]).sum(-1), width - 1)
    chosen = short[np.arange(rows), picks]
    for row in np.nonzero(~enough)[0]:
        filtered = top_k_top_p_filter(logits[row: row + 1], top_k, top_p)[0]
        p = np.exp(filtered - filtered.max())
        chosen[row] = rng.choice(vocab, p=p / p.sum())
    return chosen
