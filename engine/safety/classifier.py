"""The learned safety classifier: all-MiniLM-L6-v2 fine-tuned with two small heads (numpy at run time).

- the *message* head scores a user's message for crisis/self-harm and for hate (sigmoid, each 0..1): a
  sure crisis gets the crisis reply, a less sure one a fixed check-in reply (also never generated); the
  engine also scores the user's last few turns read together, so a crisis that builds up over two or
  three messages is caught (:func:`window_text`), whenever one of those turns alone is of some concern
  (``window_gate``: everyday talk skips the longer inputs; earlier turns' scores come from a cache);
- the *pair* head scores a candidate reply *with its context* (``[CLS] context [SEP] reply [SEP]``): is it
  unsafe there (agreeing with toxicity, ignoring a risk, biased, offending, unauthorised expertise;
  trained on DiaSafety)?

The folder (``exported_models/safety-classifier``, built by ``rapport-train safety-export``) holds the int8
encoder (``model.onnx``, ``tokenizer.json``, ``encoder_config.json``), ``heads.npz`` and
``safety_config.json`` with the thresholds of each mode, chosen on validation data only (its MODEL_CARD.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..model.digest_cache import DigestCache
from ..model.encoder import SentenceEncoder

MAX_TOKENS = 128
HEADS = ("crisis", "hate")


@dataclass(frozen=True)
class LearnedThresholds:
    """Scores at or above which the classifier acts, for one safety mode."""

    crisis: float  # the message alone -> crisis reply
    check_in: float  # the message alone, less sure -> the check-in reply (fixed, points to help too)
    crisis_context: float  # the last few user turns together -> crisis reply
    hate: float  # the message -> hate reply
    borderline_crisis: float  # at or above: no candidate that agrees may be sent
    borderline_hate: float
    pair: float  # a candidate in its context -> dropped before ranking
    # the last turns are read together only when one of them alone scores this high for crisis (or is
    # borderline hate); 0 reads them together always (exports made before the gate existed)
    window_gate: float = 0.0


def window_text(user_turns: list[str]) -> str:
    """What the message head reads for several user turns together (training reads the same)."""
    return " ".join(user_turns)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SafetyClassifier:
    """Scores messages (crisis, hate) and context/reply pairs (unsafe) with one encoder.

    Every text is encoded on its own (batches of one): the int8 encoder quantizes its activations per batch,
    and a short message batched with longer ones scored up to 0.23 higher on the crisis head ("i hate my
    life": 0.31 alone, 0.54 beside a longer text). One text a run gives every text the same score wherever
    it is scored: in the engine, in threshold selection and in the benchmarks."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        self.folder = Path(folder)
        self.encoder = SentenceEncoder.from_dir(self.folder, threads)
        heads = np.load(self.folder / "heads.npz")
        self._message_w, self._message_b = heads["message_weight"], heads["message_bias"]  # (2, d), (2,)
        self._pair_w, self._pair_b = heads["pair_weight"][0], float(heads["pair_bias"][0])  # (d,), ()
        config = json.loads((self.folder / "safety_config.json").read_text())
        names = {f.name for f in fields(LearnedThresholds)}
        self.thresholds = {mode: LearnedThresholds(**{k: float(v) for k, v in t.items() if k in names})
                           for mode, t in config["thresholds"].items()}
        self.context_turns = int(config["context_turns"])
        self._cache = DigestCache()

    @classmethod
    def from_dir(cls, folder: str | Path, threads: int = 1) -> "SafetyClassifier":
        """Load an exported safety classifier folder."""
        return cls(Path(folder), threads)

    def message_scores(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 2): crisis and hate scores of each text."""
        if not texts:
            return np.zeros((0, len(HEADS)), dtype=np.float32)
        return _sigmoid(self.encoder.embed(texts, batch_size=1) @ self._message_w.T + self._message_b)

    def message_scores_cached(self, texts: list[str]) -> np.ndarray:
        """:meth:`message_scores`, reusing the scores of texts seen recently (single messages, not windows)."""
        keys = [DigestCache.key(t) for t in texts]
        found = [self._cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            for i, row in zip(missing, self.message_scores([texts[i] for i in missing])):
                self._cache.put(keys[i], row)
                found[i] = row
        return np.array(found, dtype=np.float32).reshape(len(texts), len(HEADS))

    def pair_scores(self, context: str, replies: list[str]) -> np.ndarray:
        """(len(replies),): how unsafe each reply is as an answer to ``context``."""
        return self.score_pairs([(context, r) for r in replies])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """(len(pairs),): how unsafe each (context, reply) pair's reply is."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return _sigmoid(self.encoder.embed_pairs(pairs, batch_size=1) @ self._pair_w + self._pair_b)
