"""Dynamic batching: requests of users who write at the same time are answered in one batch.

The first request of an idle batcher waits ``max_wait_s`` for company, and longer (up to ``gather_s``)
while the engine says more requests are on their way (messages that passed their safety check but
are still reading the user's state); then every request queued so far (up to ``max_batch``) goes
through :meth:`Replier.reply_batch` on the one inference thread. While a batch runs, new requests
queue and form the next one, so under load batches grow by themselves and at one user the only cost
is the short wait. Without the gathering, 50 users writing at once went as a batch of one, then a
batch of 49 that waited for it.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..metrics import BATCH_SIZE, REPLY_LATENCY
from ..process_memory import release_free_memory
from .replier import Replier, ReplyRequest, ScoredReply

log = logging.getLogger("rapport.batcher")
GATHER_POLL_S = 0.002


@dataclass(frozen=True)
class BatchAnswer:
    """What a request gets back: its reply (None when it needed none), the embedding of its message
    (None without an encoder), and how many requests shared its batch."""

    reply: ScoredReply | None
    message_vec: np.ndarray | None
    batch_size: int


class InferenceBatcher:
    """Queues :class:`ReplyRequest` s from the event loop and answers them in batches on one thread."""

    def __init__(self, replier: Replier, max_batch: int = 64, max_wait_s: float = 0.005, gather_s: float = 0.1,
                 on_the_way: Callable[[], int] = lambda: 0, when_idle: Callable[[], object] = release_free_memory
                 ) -> None:
        self.replier = replier
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.gather_s = gather_s
        self.on_the_way = on_the_way  # how many requests the engine is still preparing
        self.when_idle = when_idle  # run on the inference thread once the queue is empty after a batch
        self._queue: list[tuple[ReplyRequest, asyncio.Future]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapport-infer")
        self._runner: asyncio.Task | None = None

    async def submit(self, request: ReplyRequest) -> BatchAnswer:
        """The reply (None if ``needs_reply`` is False) and the message embedding for ``request``."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)
                until = loop.time() + self.gather_s
                while self.on_the_way() > 0 and len(self._queue) < self.max_batch and loop.time() < until:
                    await asyncio.sleep(GATHER_POLL_S)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            batch = [(req, fut) for req, fut in batch if not fut.done()]  # skip cancelled callers
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run, [req for req, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # e.g. the engine stopped (executor shut down): no caller waits forever
                results = [RuntimeError(f"the reply could not be computed ({type(exc).__name__})")] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        # The queue is empty and the replies are out: what the batches freed goes back to the system (not
        # awaited; a request that arrives meanwhile waits for this run, 1-10 ms, on the same thread).
        try:
            self._executor.submit(self.when_idle)
        except RuntimeError:  # the engine stopped
            pass

    def _run(self, requests: list[ReplyRequest]) -> list[BatchAnswer | BaseException]:
        """One batch; if it fails, each request alone, so one bad request cannot fail the others."""
        BATCH_SIZE.observe(len(requests))
        try:
            with REPLY_LATENCY.labels("model").time():
                return [BatchAnswer(reply, vec, len(requests)) for reply, vec in self.replier.reply_batch(requests)]
        except Exception:
            if len(requests) == 1:
                log.exception("reply failed")
                return [RuntimeError("the reply could not be computed")]
            log.exception("a batch of %d failed; answering its requests one by one", len(requests))
            return [r for req in requests for r in self._run([req])]

    def close(self) -> None:
        """Stop the inference thread (after the batch that is running)."""
        self._executor.shutdown(wait=True)
