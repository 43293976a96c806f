"""Sentence encoder (all-MiniLM-L6-v2 in ONNX): text -> unit vector, mean-pooled.

With ``cache_size`` > 0 the vectors of recent texts are kept (by digest, :mod:`.digest_cache`): the
engine embeds a user's message, then its recent turns and the reply it chose, and would otherwise embed
the same texts again at the next message."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .digest_cache import DigestCache
from .onnx_session import onnx_session


class SentenceEncoder:
    """Embeds texts into one space used for ranking replies and for users' profile vectors."""

    def __init__(self, folder: Path, threads: int = 2, cache_size: int = 0) -> None:
        self.folder = Path(folder)
        self._cache = DigestCache(cache_size) if cache_size > 0 else None
        config = json.loads((self.folder / "encoder_config.json").read_text())
        self.dim = int(config["dim"])
        self.max_tokens = int(config["max_tokens"])
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        self.session = onnx_session(self.folder / "model.onnx", threads, exact_int8=True)  # 8-bit weights

    @classmethod
    def from_dir(cls, folder: str | Path, threads: int = 2, cache_size: int = 0) -> "SentenceEncoder":
        """Load an exported encoder folder (keeping the vectors of the last ``cache_size`` texts)."""
        return cls(Path(folder), threads, cache_size)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-norm float32 vectors, shape (len(texts), dim); each distinct text not in the cache is
        encoded once."""
        if self._cache is None:
            return self._pooled(texts, batch_size)
        keys = [DigestCache.key(t) for t in texts]
        found = {k: v for k in set(keys) if (v := self._cache.get(k)) is not None}
        missing = {k: t for k, t in zip(keys, texts) if k not in found}
        if missing:
            for k, vec in zip(missing, self._pooled(list(missing.values()), batch_size)):
                self._cache.put(k, vec)
                found[k] = vec
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, k in enumerate(keys):
            out[row] = found[k]
        return out

    def embed_pairs(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Unit-norm vectors of (first, second) text pairs read as one input, ``[CLS] a [SEP] b [SEP]``
        (a cross-encoder's input; truncated longest-first to ``max_tokens``)."""
        return self._pooled(pairs, batch_size)

    def _pooled(self, inputs: list, batch_size: int) -> np.ndarray:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        order = np.argsort([len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in inputs])
        for start in range(0, len(inputs), batch_size):
            idx = order[start: start + batch_size]
            encs = self.tokenizer.encode_batch([inputs[i] for i in idx])
            width = max(len(e.ids) for e in encs)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, e in enumerate(encs):
                ids[row, : len(e.ids)] = e.ids
                mask[row, : len(e.ids)] = 1
            states = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            summed = (states * mask[..., None]).sum(1)
            pooled = summed / np.maximum(mask.sum(1, keepdims=True), 1)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out
