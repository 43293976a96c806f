"""A bounded, thread-safe cache of arrays filed by a digest of a text (never the text itself)."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


class DigestCache:
    """Arrays by a digest of the text they were computed from, the newest ``size`` kept.

    A user's earlier turns were scored or embedded when they arrived; reading them again with a new
    message then costs nothing. Thread-safe (the engine works in worker threads). No text is kept, so
    nothing a user wrote stays in memory after it leaves the conversation."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> bytes:
        """The digest a text is filed under."""
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, key: bytes) -> np.ndarray | None:
        """The cached array (now the newest), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        """File ``value``; the least recently used entry goes when full."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
