"""The engine side of split mode: answer the messages of the stream, each once, in each user's order."""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from dataclasses import asdict

from redis.exceptions import ResponseError

from ..engine import Engine
from ..messages import IncomingMessage
from ..metrics import SPLIT_PENDING, SPLIT_QUEUE
from ..config import ConfigError
from .common import (DAY_S, WEEK_S, WHILE_DOWN, WORKERS_GROUP, Shard, default_id, ensure_group, log, shards,
                     split_client)

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



def worker_shards(all_shards: list[Shard], chosen: str | None) -> list[Shard]:
    """The shards a worker reads: all, or those RAPPORT_WORKER_SHARDS lists ("0,2")."""
    if not chosen:
        return all_shards
    try:
        picked = sorted({int(part) for part in chosen.split(",") if part.strip()})
    except ValueError as exc:
        raise ConfigError(f"RAPPORT_WORKER_SHARDS={chosen!r}: shard numbers separated by commas") from exc
    if not picked or picked[0] < 0 or picked[-1] >= len(all_shards):
        raise ConfigError(f"RAPPORT_WORKER_SHARDS={chosen!r}: shards are numbered 0..{len(all_shards) - 1}")
    return [all_shards[i] for i in picked]


class StreamWorker:
    """Consumes its shards of the stream (``P:{S}:in``, all by default) in the ``workers`` group, answers
    with an :class:`Engine` (whose batcher decodes concurrent messages together) and publishes each reply
    once. Its own Redis client retries every command until Redis answers (:func:`split_client`): an outage
    pauses the worker, it loses nothing."""

    def __init__(self, engine: Engine, name: str | None = None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.r = split_client(engine.settings)
        self.name = name or self.settings.worker_name or default_id()
        self.shards = worker_shards(shards(self.settings.key_prefix, self.settings.stream_shards),
                                    self.settings.worker_shards)
        self._deliver = self.r.register_script(_DELIVER)
        self._inflight: dict[tuple[int, bytes], asyncio.Task] = {}
        self._room = asyncio.Condition()  # signalled when a message in hand is finished
        self.answered = 0  # entries this worker acknowledged
        self.reclaimed = 0  # entries it took over from other workers

    @property
    def in_stream(self) -> str:
        """The stream of the first shard this worker reads (the only one with RAPPORT_STREAM_SHARDS=1)."""
        return self.shards[0].in_stream

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then finish the messages in hand."""
        for shard in self.shards:
            await ensure_group(self.r, shard.in_stream, WORKERS_GROUP)
        helpers = [asyncio.create_task(self._reclaim(stop)), asyncio.create_task(self._heartbeat(stop))]
        readers = [asyncio.create_task(self._read(shard, stop)) for shard in self.shards]
        try:
            await asyncio.gather(*readers)
        finally:
            for task in helpers + readers:  # they also stop on ``stop`` (redis-py can lose a cancellation)
                task.cancel()
            await asyncio.wait(helpers + readers, timeout=self.settings.claim_idle_s)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), timeout=self.settings.lock_timeout_s)
            await self.r.aclose()

    async def _read(self, shard: Shard, stop: asyncio.Event) -> None:
        """Take entries of one shard while there is room among the messages in hand."""
        start = "0"  # "0": entries this worker name held before a restart
        while not stop.is_set():
            async with self._room:
                await self._room.wait_for(lambda: len(self._inflight) < self.settings.worker_concurrency
                                          or stop.is_set())
            free = self.settings.worker_concurrency - len(self._inflight)
            if free <= 0:
                continue
            try:
                batches = await self.r.xreadgroup(WORKERS_GROUP, self.name, {shard.in_stream: start},
                                                  count=free, block=500)
            except Exception as exc:  # this reader must outlive any one failure, or its shard would stall
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    with suppress(Exception):
                        await ensure_group(self.r, shard.in_stream, WORKERS_GROUP)  # Redis came back empty
                elif not stop.is_set():
                    log.warning("worker %s: reading shard %d failed (%s); retrying", self.name, shard.index,
                                type(exc).__name__)
                    await asyncio.sleep(0.5)
                continue
            start = ">"  # what this name held before is in hand now (any rest is reclaimed later)
            for entry_id, fields in (batches[0][1] if batches else []):
                self._spawn(shard, entry_id, fields)

    def _spawn(self, shard: Shard, entry_id: bytes, fields: dict) -> None:
        if (shard.index, entry_id) in self._inflight or not fields:
            return
        task = asyncio.create_task(self._process(shard, entry_id, fields))
        self._inflight[(shard.index, entry_id)] = task
        task.add_done_callback(lambda done: self._finished(shard.index, entry_id, done))

    def _finished(self, shard: int, entry_id: bytes, task: asyncio.Task) -> None:
        self._inflight.pop((shard, entry_id), None)
        asyncio.get_running_loop().create_task(self._notify_room())
        if not task.cancelled() and task.exception() is not None:  # the entry stays pending: reclaimed later
            log.error("worker %s could not answer entry %s (%s); it will be retried", self.name, entry_id,
                      type(task.exception()).__name__)

    async def _notify_room(self) -> None:
        async with self._room:
            self._room.notify_all()

    async def _process(self, shard: Shard, entry_id: bytes, fields: dict) -> None:
        try:
            msg = IncomingMessage(**json.loads(fields[b"msg"]))
            request, seq = fields[b"req"].decode(), int(fields[b"seq"])
            reply_to = fields[b"reply_to"].decode()
        except (KeyError, ValueError, TypeError):
            log.error("dropping malformed stream entry %r", entry_id)
            await self.r.xack(shard.in_stream, WORKERS_GROUP, entry_id)
            return
        user = f"{msg.platform}:{msg.user_id}"
        await self._wait_turn(shard, user, seq)
        reply = ""  # answered already (its worker died before acknowledging): only acknowledge
        if not await self.r.exists(shard.key("answered", request)):
            answer = await WHILE_DOWN.call_with_retry(lambda: self.engine.answer(msg), self._engine_failed)
            reply = json.dumps(asdict(answer))
        await self._deliver(keys=[shard.key("answered", request), shard.key("done", user), reply_to, shard.in_stream],
                            args=[request, seq, reply, entry_id, WORKERS_GROUP, DAY_S, WEEK_S, OUT_MAXLEN])
        self.answered += 1

    async def _engine_failed(self, error: Exception) -> None:
        log.warning("Redis failed while worker %s answered (%s); retrying", self.name, type(error).__name__)

    async def _wait_turn(self, shard: Shard, user: str, seq: int) -> None:
        """Wait until the user's previous message is answered. If the user's answered count stops moving
        for ``order_timeout_s`` (a predecessor lost for good), go on, so one lost message cannot block a
        user; a long queue that keeps moving waits as long as it needs."""
        last, since, delay = -1, time.monotonic(), 0.01
        while (done := int(await self.r.get(shard.key("done", user)) or 0)) < seq - 1:
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
            for shard in self.shards:
                try:
                    cursor = "0-0"
                    while True:
                        cursor, claimed, _ = await self.r.xautoclaim(shard.in_stream, WORKERS_GROUP, self.name,
                                                                     idle_ms, cursor, count=100)
                        for entry_id, fields in claimed:
                            log.info("worker %s took over entry %s", self.name, entry_id)
                            self.reclaimed += 1
                            self._spawn(shard, entry_id, fields)
                        if cursor in (b"0-0", "0-0"):
                            break
                except Exception as exc:  # this loop must outlive any one failure, or entries could stay pending
                    log.warning("reclaiming pending entries failed (%s); will retry", type(exc).__name__)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Keep this worker's entries in hand from looking idle (so nobody reclaims a slow reply); update
        the queue gauges."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.claim_idle_s / 3)
            queued = pending = 0
            for shard in self.shards:
                try:
                    queued += await self.r.xlen(shard.in_stream)
                    pending += (await self.r.xpending(shard.in_stream, WORKERS_GROUP))["pending"]
                    if ids := [entry for (index, entry) in self._inflight if index == shard.index]:
                        await self.r.xclaim(shard.in_stream, WORKERS_GROUP, self.name, 0, ids, justid=True)
                except Exception as exc:  # e.g. the group is being recreated (Redis came back empty)
                    log.warning("refreshing entries in hand failed (%s); will retry", type(exc).__name__)
            SPLIT_QUEUE.set(queued)
            SPLIT_PENDING.set(pending)
