"""Settings for a benchmark's engine on a throwaway Redis server (deleted afterwards)."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from engine.config import Settings
from engine.state.redis_server import EmbeddedRedis


@contextmanager
def throwaway_settings(model: Path | None = None) -> Iterator[Settings]:
    """Engine settings on a fresh embedded Redis server, no rate limit; ``model`` replaces the shipped model."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        settings = Settings(redis_url=server.url, data_dir=Path(tmp), rate_limit_per_minute=10_000)
        yield replace(settings, model_dir=model) if model else settings
