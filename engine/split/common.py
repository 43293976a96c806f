"""What the split-mode gateway and workers share: consumer groups, TTLs, Redis retry helpers."""
from __future__ import annotations

import logging
import os
import socket
import zlib
from dataclasses import dataclass
from functools import lru_cache

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ResponseError
from redis.crc import key_slot

from ..config import ConfigError, Settings
from ..state.store import REDIS_UNAVAILABLE, LockTimeout, connect

log = logging.getLogger("rapport.streams")

WORKERS_GROUP = "workers"
GATEWAYS_GROUP = "gateways"
DAY_S, WEEK_S = 86400, 7 * 86400
REDIS_DOWN = REDIS_UNAVAILABLE + (ConnectionError, OSError)


@lru_cache(maxsize=None)
def shard_tags(count: int) -> tuple[str, ...]:
    """Hash tags of ``count`` stream shards: shard i's tag hashes into the i-th of ``count`` equal ranges of
    the 16,384 slots, so on a cluster whose masters hold equal ranges the shards sit on different masters."""
    tags = []
    for i in range(count):
        low, high, j = i * 16384 // count, (i + 1) * 16384 // count, 0
        while not low <= key_slot(f"s{i}.{j}".encode()) < high:
            j += 1
        tags.append(f"s{i}.{j}")
    return tuple(tags)


@dataclass(frozen=True)
class Shard:
    """The keys of one stream shard. Each user's messages go to one shard (``shard_of``), and every key a
    script of the gateway or a worker touches for them carries the shard's hash tag: one slot per script."""

    index: int
    prefix: str
    tag: str

    def key(self, kind: str, *parts: str) -> str:
        return ":".join((self.prefix, "{" + self.tag + "}", kind, *parts))

    @property
    def in_stream(self) -> str:
        return self.key("in")

    def out_stream(self, gateway: str) -> str:
        return self.key("out", gateway)


def shards(prefix: str, count: int) -> list[Shard]:
    """The ``count`` shards of split mode's streams under ``prefix``."""
    if count < 1:
        raise ConfigError(f"RAPPORT_STREAM_SHARDS={count}: at least 1")
    return [Shard(i, prefix, tag) for i, tag in enumerate(shard_tags(count))]


def shard_of(user: str, count: int) -> int:
    """The shard of ``user``'s messages (stable: a user's messages always share one stream)."""
    return zlib.crc32(user.encode()) % count


def default_id() -> str:
    """host-pid: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


def split_client(settings: Settings) -> aioredis.Redis:
    """Split mode's client: redis-py retries each command until Redis answers again (a restart or an
    outage loses no message; callers bound the wait with a timeout where they must)."""
    return connect(split_redis_url(settings), retries=-1, cluster=settings.redis_cluster)


# the worker retries a whole answer the engine could not finish while Redis was down (or failing over: the
# user's lock could not be had meanwhile), for as long as it is
WHILE_DOWN = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=-1, supported_errors=REDIS_DOWN + (LockTimeout,))


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    """Create consumer ``group`` on ``stream`` (and the stream) unless it exists; it reads from the start."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def split_redis_url(settings: Settings) -> str:
    """REDIS_URL, which split mode requires (workers and adapters must share one server)."""
    if not settings.redis_url:
        raise ConfigError("split mode (RAPPORT_MODE=split and `rapport worker`) needs REDIS_URL: adapters and "
                          "workers must share one Redis server")
    return settings.redis_url
