"""Split mode: adapters hand messages to engine workers over Redis Streams.

    adapter process (rapport telegram ...)            worker processes (rapport worker, any number)
    StreamGateway.handle(msg) --XADD--> P:in --XREADGROUP, group "workers"--> StreamWorker -> Engine.answer
          ^                                                                               |
          +-- the caller's future <-- XREADGROUP, group "gateways" <-- P:out:G <-- XADD --+ (once, in a script)

Delivery is at least once; the effect is once:
- the gateway drops platform redeliveries (the engine's ``P:msg`` marker) and a publish retried after a
  lost connection is recognised by its request id (``P:pub:R``);
- each user's messages get sequence numbers in the same script that appends them to the stream, and a
  worker starts message n of a user only after n-1 is answered (``P:done:U``): order holds across workers;
- a worker that dies leaves its entries pending; live workers take them over with XAUTOCLAIM once they
  have been idle ``claim_idle_s`` (a live worker keeps its own entries fresh with XCLAIM ... JUSTID);
- one script publishes the reply, marks the request answered (``P:answered:R``), advances ``P:done:U``,
  acknowledges and deletes the entry: a second worker finishing the same entry publishes nothing, and
  the engine answers a message whose reply is already in the history with that same reply.

Keys (``P`` prefix, ``U`` = platform:user_id, ``G`` gateway id, ``R`` request id):
  P:in            stream of requests {msg, reply_to, req, seq}; entries deleted once answered
  P:out:G         stream of replies {req, reply} for gateway G; deleted once read; capped ~10,000
  P:seq:U         last sequence number given to U's messages           TTL 7 days
  P:done:U        last sequence number answered for U                  TTL 7 days
  P:pub:R         request R was published                              TTL 1 day
  P:answered:R    request R's reply was published                      TTL 1 day
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import ConfigError, Settings
from .engine import Engine
from .keyed_lock import KeyedLocks
from .messages import DUPLICATE, IncomingMessage, OutgoingMessage
from .store import RedisStore, UserRef, connect

log = logging.getLogger("rapport.streams")

WORKERS_GROUP = "workers"
GATEWAYS_GROUP = "gateways"
DAY_S, WEEK_S = 86400, 7 * 86400
OUT_MAXLEN = 10_000
SLOW = "Sorry, I'm answering slowly right now. Your message is kept; my reply will follow."
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

_PUBLISH = """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[4]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'msg', ARGV[1], 'reply_to', ARGV[2], 'req', ARGV[3], 'seq', seq)
return seq
"""

_DELIVER = """
if ARGV[3] ~= '' and redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[6]) then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'req', ARGV[1], 'reply', ARGV[3])
  local done = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[2]) > done then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[7]) end
end
redis.call('XACK', KEYS[4], ARGV[5], ARGV[4])
redis.call('XDEL', KEYS[4], ARGV[4])
return 1
"""


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


class StreamGateway:
    """Stands in for the :class:`Engine` in an adapter process: publishes each message to ``P:in`` and
    waits for the reply a worker publishes to this gateway's ``P:out:G``."""

    def __init__(self, settings: Settings, client: aioredis.Redis, gateway_id: str | None = None) -> None:
        self.settings = settings
        self.r = client
        self.id = gateway_id or settings.gateway_id or default_id()
        self.store = RedisStore(client, prefix=settings.key_prefix)  # key names and the duplicate check
        self._k = self.store.key
        self.out_stream = self._k("out", self.id)
        # platform -> how its adapter sends a reply that arrived after the caller stopped waiting
        self.late_reply_senders: dict[str, Callable[[OutgoingMessage], Awaitable[None]]] = {}
        self._publish = client.register_script(_PUBLISH)
        self._waiting: dict[str, asyncio.Future] = {}
        self._user_locks = KeyedLocks()
        self._reader: asyncio.Task | None = None
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "StreamGateway":
        """A gateway on REDIS_URL."""
        return cls(settings, connect(split_redis_url(settings)))

    async def start(self) -> None:
        """Check Redis (clear error if unreachable) and start reading replies."""
        try:
            await self.r.ping()
            await ensure_group(self.r, self._k("in"), WORKERS_GROUP)
            await ensure_group(self.r, self.out_stream, GATEWAYS_GROUP)
        except REDIS_DOWN as exc:
            raise ConnectionError(f"cannot reach Redis at {self.settings.redis_url}: {exc}") from exc
        self._reader = asyncio.create_task(self._read_replies())

    async def stop(self) -> None:
        """Stop reading replies and close the connection."""
        self._closing = True  # redis-py may turn the cancellation of a blocked read into a ConnectionError
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.r.aclose()

    async def __aenter__(self) -> "StreamGateway":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def handle(self, msg: IncomingMessage) -> OutgoingMessage:
        """Publish ``msg`` and wait for its reply (a polite notice after ``reply_timeout_s``; the late
        reply is then sent by the platform's entry in ``late_reply_senders``)."""
        ref = UserRef(msg.platform, msg.user_id, msg.chat_id)
        request = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        try:
            async with self._user_locks.hold(ref.user):  # a user's messages enter the stream in arrival order
                if msg.message_id and not await self._retrying(self.store.first_delivery, ref, msg.message_id):
                    return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, "", msg.message_id, DUPLICATE)
                await self._retrying(self._publish, keys=[self._k("pub", request), self._k("seq", ref.user),
                                                          self._k("in")],
                                     args=[json.dumps(asdict(msg)), self.out_stream, request, DAY_S, WEEK_S])
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.settings.reply_timeout_s)
            except asyncio.TimeoutError:
                return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, SLOW, msg.message_id, "notice")
        finally:
            self._waiting.pop(request, None)

    async def _retrying(self, call, *args, **kwargs):
        """``call`` retried while Redis is unreachable, up to ``reply_timeout_s``."""
        return await retry_while_down(call, *args, give_up_after_s=self.settings.reply_timeout_s, **kwargs)

    async def _read_replies(self) -> None:
        start, delay = "0", 0.1  # "0": first what this gateway had not acknowledged before a restart
        while not self._closing:
            try:
                batches = await self.r.xreadgroup(GATEWAYS_GROUP, self.id, {self.out_stream: start},
                                                  count=100, block=1000)
                delay = 0.1
                entries = batches[0][1] if batches else []
                if start == "0" and not entries:
                    start = ">"
                for entry_id, fields in entries:
                    await self._resolve(fields)
                    await self.r.xack(self.out_stream, GATEWAYS_GROUP, entry_id)
                    await self.r.xdel(self.out_stream, entry_id)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await ensure_group(self.r, self.out_stream, GATEWAYS_GROUP)  # Redis came back empty
            except REDIS_DOWN:
                log.warning("Redis unreachable while reading replies; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _resolve(self, fields: dict) -> None:
        out = OutgoingMessage(**json.loads(fields[b"reply"]))
        future = self._waiting.pop(fields[b"req"].decode(), None)
        if future is not None and not future.done():
            future.set_result(out)
        elif out.kind != DUPLICATE and out.platform in self.late_reply_senders:
            try:
                await self.late_reply_senders[out.platform](out)
            except Exception:
                log.exception("sending a late reply to %s:%s failed", out.platform, out.chat_id)
        elif out.kind != DUPLICATE:
            log.warning("a late reply for %s:%s has no sender; dropped", out.platform, out.chat_id)


class StreamWorker:
    """Consumes ``P:in`` in the ``workers`` group, answers with an :class:`Engine` (whose batcher decodes
    concurrent messages together) and publishes each reply once."""

    def __init__(self, engine: Engine, name: str | None = None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.r: aioredis.Redis = engine.store.r
        self.name = name or self.settings.worker_name or default_id()
        self._k = engine.store.key
        self.in_stream = self._k("in")
        self._deliver = self.r.register_script(_DELIVER)
        self._inflight: dict[bytes, asyncio.Task] = {}
        self.answered = 0  # entries this worker acknowledged
        self.reclaimed = 0  # entries it took over from other workers

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then finish the messages in hand."""
        await ensure_group(self.r, self.in_stream, WORKERS_GROUP)
        helpers = [asyncio.create_task(self._reclaim(stop)), asyncio.create_task(self._heartbeat(stop))]
        start, delay = "0", 0.1  # "0": entries this worker name held before a restart
        try:
            while not stop.is_set():
                free = self.settings.worker_concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(list(self._inflight.values()), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    batches = await self.r.xreadgroup(WORKERS_GROUP, self.name, {self.in_stream: start},
                                                      count=free, block=500)
                    delay = 0.1
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await ensure_group(self.r, self.in_stream, WORKERS_GROUP)
                    continue
                except REDIS_DOWN:
                    log.warning("Redis unreachable; worker %s retries in %.1f s", self.name, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                start = ">"  # what this name held before is in hand now (any rest is reclaimed later)
                for entry_id, fields in (batches[0][1] if batches else []):
                    self._spawn(entry_id, fields)
        finally:
            for task in helpers:
                task.cancel()
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), timeout=self.settings.lock_timeout_s)

    def _spawn(self, entry_id: bytes, fields: dict) -> None:
        if entry_id in self._inflight or not fields:
            return
        task = asyncio.create_task(self._process(entry_id, fields))
        self._inflight[entry_id] = task
        task.add_done_callback(lambda _: self._inflight.pop(entry_id, None))

    async def _process(self, entry_id: bytes, fields: dict) -> None:
        try:
            msg = IncomingMessage(**json.loads(fields[b"msg"]))
            request, seq = fields[b"req"].decode(), int(fields[b"seq"])
            reply_to = fields[b"reply_to"].decode()
        except (KeyError, ValueError, TypeError):
            log.error("dropping malformed stream entry %r", entry_id)
            await retry_while_down(self.r.xack, self.in_stream, WORKERS_GROUP, entry_id)
            return
        user = f"{msg.platform}:{msg.user_id}"
        await self._wait_turn(user, seq)
        reply = ""  # answered already (its worker died before acknowledging): only acknowledge
        if not await retry_while_down(self.r.exists, self._k("answered", request)):
            reply = json.dumps(asdict(await retry_while_down(self.engine.answer, msg)))
        await retry_while_down(self._deliver, keys=[self._k("answered", request), self._k("done", user),
                                                    reply_to, self.in_stream],
                               args=[request, seq, reply, entry_id, WORKERS_GROUP, DAY_S, WEEK_S, OUT_MAXLEN])
        self.answered += 1

    async def _wait_turn(self, user: str, seq: int) -> None:
        """Wait until the user's previous message is answered. If the user's answered count stops moving
        for ``order_timeout_s`` (a predecessor lost for good), go on, so one lost message cannot block a
        user; a long queue that keeps moving waits as long as it needs."""
        last, since, delay = -1, time.monotonic(), 0.01
        while (done := int(await retry_while_down(self.r.get, self._k("done", user)) or 0)) < seq - 1:
            if done != last:
                last, since = done, time.monotonic()
            elif time.monotonic() - since > self.settings.order_timeout_s:
                log.warning("message %d of %s: message %d has not been answered for %.0f s; answering anyway",
                            seq, user, done + 1, self.settings.order_timeout_s)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _reclaim(self, stop: asyncio.Event) -> None:
        """Take over entries other workers left pending for ``claim_idle_s`` (they died mid-reply)."""
        idle_ms = int(self.settings.claim_idle_s * 1000)
        while not stop.is_set():
            await asyncio.sleep(self.settings.claim_idle_s / 2)
            try:
                cursor = "0-0"
                while True:
                    cursor, claimed, _ = await self.r.xautoclaim(self.in_stream, WORKERS_GROUP, self.name,
                                                                 idle_ms, cursor, count=100)
                    for entry_id, fields in claimed:
                        log.info("worker %s took over entry %s", self.name, entry_id)
                        self.reclaimed += 1
                        self._spawn(entry_id, fields)
                    if cursor in (b"0-0", "0-0"):
                        break
            except (ResponseError, *REDIS_DOWN) as exc:
                log.warning("reclaiming pending entries failed (%s); will retry", exc)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Keep this worker's entries in hand from looking idle (so nobody reclaims a slow reply)."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.claim_idle_s / 3)
            ids = list(self._inflight)
            if ids:
                try:
                    await self.r.xclaim(self.in_stream, WORKERS_GROUP, self.name, 0, ids, justid=True)
                except (ResponseError, *REDIS_DOWN) as exc:
                    log.warning("refreshing entries in hand failed (%s)", exc)
