"""The adapter side of split mode: publish each message to the workers, wait for its reply."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..access import Access
from ..config import Settings
from ..feedback import FeedbackRecorder
from ..messages import DUPLICATE, IncomingMessage, OutgoingMessage, Reaction
from ..metrics import GATEWAY_WAITING
from ..state.keyed_lock import KeyedLocks
from ..state.store import RedisStore, UserRef
from .common import DAY_S, GATEWAYS_GROUP, WEEK_S, WORKERS_GROUP, default_id, ensure_group, log, split_client

START_TIMEOUT_S = 5.0  # how long start() waits for Redis before it says it cannot reach it
PENDING_CHECK_S = 5.0  # how often the reply reader looks for replies a dropped read left pending
SLOW = "Sorry, I'm answering slowly right now. Your message is kept; my reply will follow."
LateReply = Callable[[OutgoingMessage], Awaitable[None]]

_PUBLISH = """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[4]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'msg', ARGV[1], 'reply_to', ARGV[2], 'req', ARGV[3], 'seq', seq)
return seq
"""


class StreamGateway:
    """Stands in for the :class:`~engine.engine.Engine` in an adapter process: publishes each message to
    ``P:in`` and waits for the reply a worker publishes to this gateway's ``P:out:G``. A reply that comes
    after ``handle`` stopped waiting goes to ``late_reply`` (the adapters' send; without one it is dropped)."""

    def __init__(self, settings: Settings, client: aioredis.Redis, late_reply: LateReply | None = None,
                 gateway_id: str | None = None) -> None:
        self.settings = settings
        self.r = client
        self.id = gateway_id or settings.gateway_id or default_id()
        self.store = RedisStore(client, prefix=settings.key_prefix, history_ttl_s=settings.history_ttl_s,
                                profile_ttl_s=settings.profile_ttl_s)  # key names, the duplicate check, reactions
        self.feedback = FeedbackRecorder(self.store, Access(settings))
        self._k = self.store.key
        self.out_stream = self._k("out", self.id)
        self.late_reply = late_reply
        self._publish = client.register_script(_PUBLISH)
        self._waiting: dict[str, asyncio.Future] = {}
        self._user_locks = KeyedLocks()
        self._reader: asyncio.Task | None = None
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings, late_reply: LateReply | None = None) -> "StreamGateway":
        """A gateway on REDIS_URL."""
        return cls(settings, split_client(settings), late_reply)

    async def start(self) -> None:
        """Check Redis (clear error if it does not answer within START_TIMEOUT_S) and start reading replies."""
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self.r.ping()
        except TimeoutError as exc:
            raise ConnectionError(f"cannot reach Redis at {self.settings.redis_url} "
                                  f"(no answer in {START_TIMEOUT_S:.0f} s)") from exc
        await ensure_group(self.r, self._k("in"), WORKERS_GROUP)
        await ensure_group(self.r, self.out_stream, GATEWAYS_GROUP)
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

    async def sent(self, out: OutgoingMessage, message_ids: list[str]) -> None:
        """Remember the platform messages that carried ``out`` (workers read them when a reaction comes)."""
        await self.feedback.sent(out, message_ids)

    async def react(self, reaction: Reaction) -> None:
        """Store a reaction to one of the bot's replies; workers learn from it at the user's next message."""
        await self.feedback.react(reaction)

    async def handle(self, msg: IncomingMessage) -> OutgoingMessage:
        """Publish ``msg`` and wait for its reply (a polite notice after ``reply_timeout_s``; the late
        reply then goes to ``late_reply``). Raises ConnectionError when Redis does not take the message
        within ``reply_timeout_s``."""
        ref = UserRef(msg.platform, msg.user_id, msg.chat_id)
        request = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        GATEWAY_WAITING.set(len(self._waiting))
        try:
            try:
                async with asyncio.timeout(self.settings.reply_timeout_s), self._user_locks.hold(ref.user):
                    # a user's messages enter the stream in arrival order
                    if msg.message_id and not await self.store.first_delivery(ref, msg.message_id):
                        return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, "", msg.message_id, DUPLICATE)
                    await self._publish(keys=[self._k("pub", request), self._k("seq", ref.user), self._k("in")],
                                        args=[json.dumps(asdict(msg)), self.out_stream, request, DAY_S, WEEK_S])
            except TimeoutError as exc:
                raise ConnectionError(f"Redis did not take the message within {self.settings.reply_timeout_s} s") \
                    from exc
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.settings.reply_timeout_s)
            except asyncio.TimeoutError:
                return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, SLOW, msg.message_id, "notice")
        finally:
            self._waiting.pop(request, None)
            GATEWAY_WAITING.set(len(self._waiting))

    async def ready(self) -> bool:
        """Readiness: Redis answers a PING and the reply reader runs."""
        return bool(await self.r.ping()) and self._reader is not None and not self._reader.done()

    async def _read_replies(self) -> None:
        """Resolve the replies of ``P:out:G``. It reads this gateway's own pending entries ("0") at start
        and every PENDING_CHECK_S: replies a read took from Redis whose answer never arrived (the connection
        dropped mid-read, e.g. a Redis restart) would otherwise wait there for ever."""
        start, checked = "0", time.monotonic()
        while not self._closing:
            try:
                batches = await self.r.xreadgroup(GATEWAYS_GROUP, self.id, {self.out_stream: start},
                                                  count=100, block=1000)
                entries = batches[0][1] if batches else []
                if start == "0" and not entries:
                    start, checked = ">", time.monotonic()
                elif start == ">" and time.monotonic() - checked > PENDING_CHECK_S:
                    start = "0"
                for entry_id, fields in entries:
                    if fields:  # an entry trimmed from the stream while pending has no fields left
                        await self._resolve(fields)
                    await self.r.xack(self.out_stream, GATEWAYS_GROUP, entry_id)
                    await self.r.xdel(self.out_stream, entry_id)
            except Exception as exc:  # the reader must outlive any one failure, or every reply would wait
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    await ensure_group(self.r, self.out_stream, GATEWAYS_GROUP)  # Redis came back empty
                elif not self._closing:
                    log.error("reading replies failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(1.0)

    async def _resolve(self, fields: dict) -> None:
        try:
            out = OutgoingMessage(**json.loads(fields[b"reply"]))
        except (KeyError, ValueError, TypeError):
            log.error("dropping a malformed reply entry")
            return
        future = self._waiting.pop(fields[b"req"].decode(), None)
        if future is not None and not future.done():
            future.set_result(out)
        elif out.kind != DUPLICATE and self.late_reply is not None:
            try:
                await self.late_reply(out)
            except Exception:
                log.exception("sending a late reply to %s:%s failed", out.platform, out.chat_id)
        elif out.kind != DUPLICATE:
            log.warning("a late reply for %s:%s has no sender; dropped", out.platform, out.chat_id)
