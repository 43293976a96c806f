"""User profile vectors and the recommender score P(u,i) = R_u·I_i / (|R_u|·|I_i| + α)."""
from __future__ import annotations

import numpy as np

ALPHA = 1e-3


def recommender_score(profile: np.ndarray | None, items: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """P(u, i) for every row ``i`` of ``items`` (0 for a user without a profile vector)."""
    if profile is None or not np.any(profile):
        return np.zeros(len(items), dtype=np.float32)
    dots = items @ profile
    norms = np.linalg.norm(items, axis=1) * np.linalg.norm(profile) + alpha
    return (dots / norms).astype(np.float32)


def update_profile(profile: np.ndarray | None, seen: int, message_vec: np.ndarray,
                   min_rate: float = 0.05) -> tuple[np.ndarray, int]:
    """Moving average of message embeddings: a plain mean for the first 1/min_rate messages,
    then an exponential average with rate ``min_rate`` so the profile follows the user."""
    seen += 1
    if profile is None:
        return message_vec.astype(np.float32), seen
    rate = max(1.0 / seen, min_rate)
    return ((1 - rate) * profile + rate * message_vec).astype(np.float32), seen
