"""Retrieval of real replies: an int8 index of sentence-encoder vectors, searched exactly with numpy.

Folder layout (written by ``rapport-train build-index``):
  vectors4.npy    uint8 (n, dim / 2): each row a unit vector in 4-bit codes (-7..7, +8, two a byte, low
                  nibble first), with
  vector_scales.npy float16 (n, dim / 32): the scale of each block of 32 codes (its largest magnitude / 7);
                  or, in indexes built before issue 24,
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

from .quant4 import dequantize_4bit, pack_nibbles, quantize_4bit, unpack_nibbles


SEARCH_CHUNK = 4096  # index rows dequantized at a time (6 MB of float32)


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

    def __init__(self, vectors: np.ndarray, replies: list[str], meta: dict, contexts: np.ndarray | None = None,
                 scales: np.ndarray | None = None) -> None:
        """``vectors``: int8 codes, unit vectors x127 (``scales`` None) or 4-bit codes with the ``scales`` of
        their blocks (:mod:`.quant4`); ``contexts``: int8, x127."""
        if len(vectors) != len(replies):
            raise ValueError("vectors and replies differ in length")
        self.vectors = vectors  # kept as codes: dequantized a chunk at a time while searching (46 MB less memory)
        self.scales = scales
        self.replies = replies
        self.meta = meta
        self.contexts = contexts
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
        return cls.read(folder)

    @classmethod
    def read(cls, folder: Path) -> "ReplyIndex":
        """Load ``folder`` without checking which encoder built it (for tools that rewrite an index)."""
        meta = json.loads((folder / "index_meta.json").read_text())
        scales = None
        if (folder / "vectors4.npy").exists():
            vectors = unpack_nibbles(np.load(folder / "vectors4.npy"))
            scales = np.load(folder / "vector_scales.npy").astype(np.float32)
        else:
            vectors = np.load(folder / "vectors.npy")
        replies = json.loads((folder / "replies.json").read_text())
        contexts = np.load(folder / "contexts.npy") if (folder / "contexts.npy").exists() else None
        return cls(vectors, replies, meta, contexts, scales)

    @staticmethod
    def quantize(vectors: np.ndarray) -> np.ndarray:
        """Unit float vectors -> int8 rows (x127)."""
        return np.clip(np.round(vectors * 127), -127, 127).astype(np.int8)

    @staticmethod
    def quantize_4bit(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit float vectors -> 4-bit codes (int8, -7..7) and fp16 scales of each block of 32 values
        (half the bytes of int8 rows; the top 8 of a search kept 93% of int8's, issue 24)."""
        return quantize_4bit(vectors)

    def save(self, folder: Path) -> None:
        """Write the index files."""
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("vectors.npy", "vectors4.npy", "vector_scales.npy"):
            (folder / stale).unlink(missing_ok=True)
        if self.scales is None:
            np.save(folder / "vectors.npy", self.vectors)
        else:
            np.save(folder / "vectors4.npy", pack_nibbles(self.vectors))
            np.save(folder / "vector_scales.npy", self.scales.astype(np.float16))
        if self.contexts is not None:
            np.save(folder / "contexts.npy", self.contexts)
        (folder / "replies.json").write_text(json.dumps(self.replies, ensure_ascii=False))
        (folder / "index_meta.json").write_text(json.dumps(self.meta, indent=2))

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` replies with the highest cosine to ``query`` (a unit vector)."""
        return self.search_batch(query[None, :], k)[0]

    def search_batch(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """:meth:`search` for each row of ``queries`` (m, dim), in one pass over the index."""
        queries = np.asarray(queries, dtype=np.float32).T  # (dim, m)
        scores = np.empty((len(self.vectors), queries.shape[1]), dtype=np.float32)
        for start in range(0, len(self.vectors), SEARCH_CHUNK):
            codes = self.vectors[start: start + SEARCH_CHUNK]
            rows = codes.astype(np.float32) / 127.0 if self.scales is None else \
                dequantize_4bit(codes, self.scales[start: start + SEARCH_CHUNK])
            scores[start: start + SEARCH_CHUNK] = rows @ queries
        k = min(k, len(scores))
        out = []
        for column in scores.T:
            top = np.argpartition(-column, k - 1)[:k]
            top = top[np.argsort(-column[top])]
            out.append([(self.replies[i], float(column[i])) for i in top])
        return out

    def hubness(self, vectors: np.ndarray) -> np.ndarray:
        """Mean cosine of each row of ``vectors`` to the context sample (0 without one): how close a
        reply sits to every context, which generic replies ("haha", "hey whats up!") do."""
        if self._contexts is None:
            return np.zeros(len(vectors), dtype=np.float32)
        return (vectors @ self._contexts.T).mean(axis=1).astype(np.float32)
