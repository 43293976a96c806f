"""Retrieval of real replies: an int8 index of sentence-encoder vectors, searched exactly with numpy.

Folder layout (written by ``rapport-train build-index``):
  vectors.npy     int8 (n, dim), each row a unit vector scaled by 127
  replies.json    the n reply texts
  index_meta.json encoder name and the sha256 of the encoder's model.onnx that built the vectors
  contexts.npy    optional, int8 (m, dim): a fixed sample of training contexts, for the hubness correction
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


class IndexMismatch(RuntimeError):
    """The index was built by another encoder than the one loaded: its vectors mean nothing here."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ReplyIndex:
    """Nearest replies to a query vector (cosine, exact search)."""

    def __init__(self, vectors: np.ndarray, replies: list[str], meta: dict, contexts: np.ndarray | None = None) -> None:
        if len(vectors) != len(replies):
            raise ValueError("vectors and replies differ in length")
        self.vectors = vectors
        self.replies = replies
        self.meta = meta
        self.contexts = contexts
        self._matrix = vectors.astype(np.float32) / 127.0  # dequantized once: search is one matmul
        self._contexts = None if contexts is None else contexts.astype(np.float32) / 127.0

    @classmethod
    def load(cls, folder: Path, encoder_model: Path) -> "ReplyIndex":
        """Load ``folder``; raise :class:`IndexMismatch` if another encoder built it."""
        meta = json.loads((folder / "index_meta.json").read_text())
        actual = file_sha256(encoder_model)
        if meta.get("encoder_sha256") != actual:
            raise IndexMismatch(
                f"the reply index in {folder} was built with encoder {meta.get('encoder_sha256', '?')[:12]}, "
                f"but {encoder_model} is {actual[:12]}: rebuild it with `rapport-train build-index` "
                "or point RAPPORT_ENCODER_DIR at the encoder that built it")
        vectors = np.load(folder / "vectors.npy")
        replies = json.loads((folder / "replies.json").read_text())
        contexts = np.load(folder / "contexts.npy") if (folder / "contexts.npy").exists() else None
        return cls(vectors, replies, meta, contexts)

    @staticmethod
    def quantize(vectors: np.ndarray) -> np.ndarray:
        """Unit float vectors -> int8 rows (x127)."""
        return np.clip(np.round(vectors * 127), -127, 127).astype(np.int8)

    def save(self, folder: Path) -> None:
        """Write the three files."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        if self.contexts is not None:
            np.save(folder / "contexts.npy", self.contexts)
        (folder / "replies.json").write_text(json.dumps(self.replies, ensure_ascii=False))
        (folder / "index_meta.json").write_text(json.dumps(self.meta, indent=2))

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` replies with the highest cosine to ``query`` (a unit vector)."""
        scores = self._matrix @ query.astype(np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(self.replies[i], float(scores[i])) for i in top]

    def hubness(self, vectors: np.ndarray) -> np.ndarray:
        """Mean cosine of each row of ``vectors`` to the context sample (0 without one): how close a
        reply sits to every context, which generic replies ("haha", "hey whats up!") do."""
        if self._contexts is None:
            return np.zeros(len(vectors), dtype=np.float32)
        return (vectors @ self._contexts.T).mean(axis=1).astype(np.float32)
