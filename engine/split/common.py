"""What the split-mode gateway and workers share: consumer groups, TTLs, Redis retry helpers."""
from __future__ import annotations

import logging
import os
import socket

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import ConfigError, Settings
from ..state.store import connect

log = logging.getLogger("rapport.streams")

WORKERS_GROUP = "workers"
GATEWAYS_GROUP = "gateways"
DAY_S, WEEK_S = 86400, 7 * 86400
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def default_id() -> str:
    """host-pid: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


def split_client(settings: Settings) -> aioredis.Redis:
    """Split mode's client: redis-py retries each command until Redis answers again (a restart or an
    outage loses no message; callers bound the wait with a timeout where they must)."""
    return connect(split_redis_url(settings), retries=-1)


# the worker retries a whole answer the engine could not finish while Redis was down, for as long as it is
WHILE_DOWN = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=-1, supported_errors=REDIS_DOWN)


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
