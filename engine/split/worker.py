"""The engine side of split mode: answer the messages of the stream, each once, in each user's order."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..engine import Engine
from ..messages import IncomingMessage
from ..metrics import SPLIT_PENDING, SPLIT_QUEUE
from .common import DAY_S, WEEK_S, WHILE_DOWN, WORKERS_GROUP, default_id, ensure_group, log, split_client

OUT_MAXLEN = 10_000

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



class StreamWorker:
    """Consumes ``P:in`` in the ``workers`` group, answers with an :class:`Engine` (whose batcher decodes
    concurrent messages together) and publishes each reply once. Its own Redis client retries every
    command until Redis answers (:func:`split_client`): an outage pauses the worker, it loses nothing."""

    def __init__(self, engine: Engine, name: str | None = None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.r: aioredis.Redis = split_client(engine.settings)
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
        start = "0"  # "0": entries this worker name held before a restart
        try:
            while not stop.is_set():
                free = self.settings.worker_concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(list(self._inflight.values()), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    batches = await self.r.xreadgroup(WORKERS_GROUP, self.name, {self.in_stream: start},
                                                      count=free, block=500)
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await ensure_group(self.r, self.in_stream, WORKERS_GROUP)  # Redis came back empty
                    continue
                start = ">"  # what this name held before is in hand now (any rest is reclaimed later)
                for entry_id, fields in (batches[0][1] if batches else []):
                    self._spawn(entry_id, fields)
        finally:
            for task in helpers:  # they also stop on ``stop`` (redis-py can lose a cancellation)
                task.cancel()
            await asyncio.wait(helpers, timeout=self.settings.claim_idle_s)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), timeout=self.settings.lock_timeout_s)
            await self.r.aclose()

    def _spawn(self, entry_id: bytes, fields: dict) -> None:
        if entry_id in self._inflight or not fields:
            return
        task = asyncio.create_task(self._process(entry_id, fields))
        self._inflight[entry_id] = task
        task.add_done_callback(lambda done: self._finished(entry_id, done))

    def _finished(self, entry_id: bytes, task: asyncio.Task) -> None:
        self._inflight.pop(entry_id, None)
        if not task.cancelled() and task.exception() is not None:  # the entry stays pending: reclaimed later
            log.error("worker %s could not answer entry %s (%s); it will be retried", self.name, entry_id,
                      type(task.exception()).__name__)

    async def _process(self, entry_id: bytes, fields: dict) -> None:
        try:
            msg = IncomingMessage(**json.loads(fields[b"msg"]))
            request, seq = fields[b"req"].decode(), int(fields[b"seq"])
            reply_to = fields[b"reply_to"].decode()
        except (KeyError, ValueError, TypeError):
            log.error("dropping malformed stream entry %r", entry_id)
            await self.r.xack(self.in_stream, WORKERS_GROUP, entry_id)
            return
        user = f"{msg.platform}:{msg.user_id}"
        await self._wait_turn(user, seq)
        reply = ""  # answered already (its worker died before acknowledging): only acknowledge
        if not await self.r.exists(self._k("answered", request)):
            answer = await WHILE_DOWN.call_with_retry(lambda: self.engine.answer(msg), self._engine_failed)
            reply = json.dumps(asdict(answer))
        await self._deliver(keys=[self._k("answered", request), self._k("done", user), reply_to, self.in_stream],
                            args=[request, seq, reply, entry_id, WORKERS_GROUP, DAY_S, WEEK_S, OUT_MAXLEN])
        self.answered += 1

    async def _engine_failed(self, error: Exception) -> None:
        log.warning("Redis failed while worker %s answered (%s); retrying", self.name, type(error).__name__)

    async def _wait_turn(self, user: str, seq: int) -> None:
        """Wait until the user's previous message is answered. If the user's answered count stops moving
        for ``order_timeout_s`` (a predecessor lost for good), go on, so one lost message cannot block a
        user; a long queue that keeps moving waits as long as it needs."""
        last, since, delay = -1, time.monotonic(), 0.01
        while (done := int(await self.r.get(self._k("done", user)) or 0)) < seq - 1:
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
            except Exception as exc:  # this loop must outlive any one failure, or entries could stay pending
                log.warning("reclaiming pending entries failed (%s); will retry", type(exc).__name__)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Keep this worker's entries in hand from looking idle (so nobody reclaims a slow reply); update
        the queue gauges."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.claim_idle_s / 3)
            try:
                SPLIT_QUEUE.set(await self.r.xlen(self.in_stream))
                SPLIT_PENDING.set((await self.r.xpending(self.in_stream, WORKERS_GROUP))["pending"])
                if ids := list(self._inflight):
                    await self.r.xclaim(self.in_stream, WORKERS_GROUP, self.name, 0, ids, justid=True)
            except Exception as exc:  # e.g. the group is being recreated (Redis came back empty)
                log.warning("refreshing entries in hand failed (%s); will retry", type(exc).__name__)
