"""alt-profanity-check's model, evaluated with numpy alone.

The package runs a TF-IDF vectorizer and five calibrated linear SVMs through scikit-learn: about 3 ms a
message of input checks, and the import of scikit-learn held about 106 MB of every bot process.
``rapport-train export-profanity`` writes the fitted model's arrays into ``exported_models/profanity-check``;
:class:`ProfanityModel` computes the same TF-IDF features (lower-cased unigrams, l2 norm) and the mean
of the five sigmoid-calibrated SVMs from them: the package's probabilities (a test compares them).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default, which the package's vectorizer uses
_TOKEN = re.compile(TOKEN_PATTERN)


class ProfanityModel:
    """The probability that a text is offensive, as ``profanity_check.predict_prob`` computes it."""

    def __init__(self, folder: Path) -> None:
        words = json.loads((Path(folder) / "vocabulary.json").read_text())
        self._column = {w: i for i, w in enumerate(words)}
        arrays = np.load(Path(folder) / "profanity.npz")
        self._idf, self._weights, self._bias = arrays["idf"], arrays["weights"], arrays["bias"]  # (f,), (f, k), (k,)
        self._a, self._b = arrays["a"], arrays["b"]

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(len(texts),) probabilities that each text is offensive."""
        decision = np.tile(self._bias, (len(texts), 1))  # (n, k)
        for row, text in enumerate(texts):
            counts = Counter(c for c in map(self._column.get, _TOKEN.findall(text.lower())) if c is not None)
            if counts:
                columns = np.fromiter(counts, dtype=np.int64, count=len(counts))
                tfidf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) * self._idf[columns]
                decision[row] += (tfidf / np.linalg.norm(tfidf)) @ self._weights[columns]
        return (1.0 / (1.0 + np.exp(self._a * decision + self._b))).mean(axis=1)
