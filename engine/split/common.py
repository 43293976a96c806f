"""What the split-mode gateway and workers share: consumer groups, TTLs, Redis retry helpers."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import ConfigError, Settings

log = logging.getLogger("rapport.streams")

WORKERS_GROUP = "workers"
GATEWAYS_GROUP = "gateways"
DAY_S, WEEK_S = 86400, 7 * 86400
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def default_id() -> str:
    """host-pid: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def retry_while_down(call, *args, give_up_after_s: float | None = None, **kwargs):
    """``await call(*args, **kwargs)``, retried with backoff while Redis is unreachable (for ever, or
    until ``give_up_after_s`` have passed: then the error is raised)."""
    deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    delay = 0.1
    while True:
        try:
            return await call(*args, **kwargs)
        except REDIS_DOWN:
            if deadline is not None and time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


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
