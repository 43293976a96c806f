"""The decoding loops (greedy, sampling, beam search), shared by every model family.

A family supplies the first step's logits and a :class:`Stepper`, which keeps whatever the model carries
from step to step (a KV cache, encoder states, masks) and runs one more step for the rows it is told to
keep. The loops only choose tokens: a finished row leaves the batch, and beams are reordered by index.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .generation import GenerationConfig, chosen_log_probs, log_softmax, nucleus_sample


@dataclass(frozen=True)
class Candidate:
    """A generated token sequence (without the start token) and its summed log-probability."""

    ids: tuple[int, ...]
    logprob: float

    @property
    def mean_logprob(self) -> float:
        """Log-probability per generated token."""
        return self.logprob / max(1, len(self.ids))


class Stepper(Protocol):
    """A model's state between decoding steps."""

    def advance(self, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Keep the decoding rows ``rows`` (indices into the last step's rows, in their new order, repeats
        allowed), feed each its token of ``tokens`` (rows,), and return the next logits (rows, vocab)."""


Process = Callable[[np.ndarray, list[list[int]], int], np.ndarray]  # (logits, sequences, step) -> logits


def _deadline(config: GenerationConfig) -> float | None:
    return None if config.time_budget_s is None else time.perf_counter() + config.time_budget_s


def greedy_or_sample(logits: np.ndarray, stepper: Stepper, config: GenerationConfig, process: Process,
                     eos_id: int, start: tuple[int, ...] = ()) -> list[Candidate]:
    """One candidate per row of the first step's ``logits``, in row order; a finished row leaves the batch.
    ``start`` is the prefix every sequence carries (what the logits processors see), not returned."""
    rows = logits.shape[0]
    rng = np.random.default_rng(config.seed)
    deadline = _deadline(config)
    seqs = [list(start) for _ in range(rows)]
    scores = np.zeros(rows)
    live = np.arange(rows)  # the rows still decoding, in the order the model sees them
    for step in range(config.max_new_tokens):
        processed = process(logits, [seqs[r] for r in live], step)
        if config.strategy == "greedy":
            chosen = processed.argmax(-1)
        else:
            chosen = nucleus_sample(processed / config.temperature, config.top_k, config.top_p, rng)
        logp = chosen_log_probs(processed, chosen)
        for k, r in enumerate(live):
            seqs[r].append(int(chosen[k]))
            scores[r] += logp[k]
        writing = chosen != eos_id
        if not writing.any() or (deadline is not None and time.perf_counter() > deadline):
            break
        keep = np.arange(len(live)) if writing.all() else np.nonzero(writing)[0]
        live, chosen = live[keep], chosen[keep]
        logits = stepper.advance(keep, chosen)
    return [Candidate(tuple(s[len(start):]), float(sc)) for s, sc in zip(seqs, scores)]


def beam_search(logits: np.ndarray, stepper: Stepper, config: GenerationConfig, process: Process,
                eos_id: int, start: tuple[int, ...] = ()) -> list[list[Candidate]]:
    """Beam search for every source row of the first step's ``logits`` at once; the live beams of all
    sources share each step. Returns each source's finished candidates, best first."""
    sources, beams = logits.shape[0], config.num_beams
    deadline = _deadline(config)
    owner = np.arange(sources)  # source of each live row
    seqs: list[list[int]] = [list(start) for _ in range(sources)]
    scores = np.zeros(sources)
    finished: list[list[tuple[float, Candidate]]] = [[] for _ in range(sources)]

    def finish(src: int, seq: list[int], score: float) -> None:
        cand = Candidate(tuple(seq[len(start):]), float(score))
        finished[src].append((cand.logprob / max(1, len(cand.ids)) ** config.length_penalty, cand))

    for step in range(config.max_new_tokens):
        total = scores[:, None] + log_softmax(process(logits, seqs, step))  # (rows, vocab)
        vocab = total.shape[-1]
        last = step == config.max_new_tokens - 1 or (deadline is not None and time.perf_counter() > deadline)
        next_rows, next_seqs, next_scores = [], [], []
        for src in np.unique(owner):
            rows = np.nonzero(owner == src)[0]
            flat = total[rows].ravel()
            width = min(2 * beams, flat.size)
            top = np.argpartition(-flat, width - 1)[:width]
            kept: list[tuple[int, list[int], float]] = []
            for f in top[np.argsort(-flat[top], kind="stable")]:
                if not np.isfinite(flat[f]):
                    break
                local, tok = divmod(int(f), vocab)
                seq = seqs[rows[local]] + [tok]
                if tok == eos_id:
                    finish(src, seq, flat[f])
                else:
                    kept.append((rows[local], seq, float(flat[f])))
                if len(kept) == beams:
                    break
            best_open = kept[0][2] / (step + 1) ** config.length_penalty if kept else -np.inf
            done = len(finished[src]) >= beams and max(s for s, _ in finished[src]) >= best_open
            if last or done or not kept:
                for _, seq, score in kept:
                    finish(src, seq, score)
                continue
            for row, seq, score in kept:
                next_rows.append(row)
                next_seqs.append(seq)
                next_scores.append(score)
        if not next_rows:
            break
        index = np.asarray(next_rows)
        owner, seqs, scores = owner[index], next_seqs, np.asarray(next_scores)
        logits = stepper.advance(index, np.asarray([s[-1] for s in seqs]))
    out = []
    for cands in finished:
        cands.sort(key=lambda x: -x[0])
        unique: dict[tuple[int, ...], Candidate] = {}
        for _, cand in cands:
            unique.setdefault(cand.ids, cand)
        out.append(list(unique.values())[: config.num_candidates])
    return out
