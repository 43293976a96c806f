"""The adapter side of split mode: publish each message to the workers, wait for its reply."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from contextlib import suppress
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
from .common import (DAY_S, GATEWAYS_GROUP, WEEK_S, WORKERS_GROUP, Shard, default_id, ensure_group, log, shard_of,
                     shards, split_client)

START_TIMEOUT_S = 5.0  # how long start() waits for Redis before it says it cannot reach it
PENDING_CHECK_S = 5.0  # how often the reply reader looks for replies a dropped read left pending
SLOW = "Sorry, I'm answering slowly right now. Your message is kept; my reply will follow."
LateReply = Callable[[OutgoingMessage], Awaitable[None]]

REPUBLISH_CHECK_S = 2.0  # how often the gateway checks that its unanswered messages are still in Redis
RESOLVED_KEPT = 10_000  # request ids remembered as answered (a second reply to one is dropped)
# KEYS: pub:R, seq:U, the shard's stream, pub of the user's previous unanswered request (or the same pub:R)
_PUBLISH = """
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[4]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'msg', ARGV[1], 'reply_to', ARGV[2], 'req', ARGV[3], 'seq', seq)
return seq
"""


class StreamGateway:
    """Stands in for the :class:`~engine.engine.Engine` in an adapter process: publishes each message to its
    user's shard of the stream (``P:{S}:in``) and waits for the reply a worker publishes to this gateway's
    ``P:{S}:out:G`` of that shard. A reply that comes after ``handle`` stopped waiting goes to ``late_reply``
    (the adapters' send; without one it is dropped).

    Until its reply comes, the gateway keeps each message. A failover of a Redis Cluster master (or a
    server restarted without its last writes) can lose a publish that Redis had acknowledged; the gateway
    publishes it again, before any later message of the same user (each publish checks that the user's
    previous unanswered one is still there, and every ``REPUBLISH_CHECK_S`` the latest one is checked)."""

    def __init__(self, settings: Settings, client: aioredis.Redis, late_reply: LateReply | None = None,
                 gateway_id: str | None = None) -> None:
        self.settings = settings
        self.r = client
        self.id = gateway_id or settings.gateway_id or default_id()
        self.store = RedisStore(client, prefix=settings.key_prefix, history_ttl_s=settings.history_ttl_s,
                                profile_ttl_s=settings.profile_ttl_s)  # key names, the duplicate check, reactions
        self.feedback = FeedbackRecorder(self.store, Access(settings))
        self.shards = shards(settings.key_prefix, settings.stream_shards)
        self.late_reply = late_reply
        self._publish = client.register_script(_PUBLISH)
        self._waiting: dict[str, asyncio.Future] = {}
        self._unanswered: dict[str, OrderedDict[str, IncomingMessage]] = {}  # user -> request -> message
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self._user_locks = KeyedLocks()
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    @property
    def out_stream(self) -> str:
        """This gateway's reply stream of the first shard (the only one with RAPPORT_STREAM_SHARDS=1)."""
        return self.shards[0].out_stream(self.id)

    def shard(self, user: str) -> Shard:
        """The stream shard of ``user``'s messages."""
        return self.shards[shard_of(user, len(self.shards))]

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
        for shard in self.shards:
            await ensure_group(self.r, shard.in_stream, WORKERS_GROUP)
            await ensure_group(self.r, shard.out_stream(self.id), GATEWAYS_GROUP)
        self._tasks = [asyncio.create_task(self._read_replies(shard)) for shard in self.shards]
        self._tasks.append(asyncio.create_task(self._check_published()))

    async def stop(self) -> None:
        """Stop reading replies and close the connection."""
        self._closing = True  # redis-py may turn the cancellation of a blocked read into a ConnectionError
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
                    queue = self._unanswered.setdefault(ref.user, OrderedDict())
                    previous = next(reversed(queue), None)
                    queue[request] = msg
                    if not await self._publish_one(ref.user, request, msg, previous):
                        await self._publish_missing(ref.user)  # an earlier one was lost: it goes first
            except TimeoutError as exc:
                self._forget_request(ref.user, request)
                raise ConnectionError(f"Redis did not take the message within {self.settings.reply_timeout_s} s") \
                    from exc
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.settings.reply_timeout_s)
            except asyncio.TimeoutError:
                return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, SLOW, msg.message_id, "notice")
        finally:
            self._waiting.pop(request, None)
            GATEWAY_WAITING.set(len(self._waiting))

    async def _publish_one(self, user: str, request: str, msg: IncomingMessage, previous: str | None) -> bool:
        """Publish one message (nothing if it is in the stream already); False when ``previous`` (the user's
        unanswered message before it) is no longer in Redis, so that it must go again first."""
        shard = self.shard(user)
        result = await self._publish(
            keys=[shard.key("pub", request), shard.key("seq", user), shard.in_stream,
                  shard.key("pub", previous or request)],
            args=[json.dumps(asdict(msg)), shard.out_stream(self.id), request, DAY_S, WEEK_S, "1" if previous else "0"])
        return int(result) != -1

    async def _publish_missing(self, user: str, attempts: int = 5) -> None:
        """Publish again, in their order, the user's unanswered messages Redis lost (the caller holds the
        user's lock). A walk that finds a message lost behind it (Redis failed over again meanwhile) starts
        over."""
        for _ in range(attempts):
            previous = None
            for request, msg in list(self._unanswered.get(user, {}).items()):
                if not await self._publish_one(user, request, msg, previous):
                    break
                previous = request
            else:
                return
        raise ConnectionError(f"Redis kept losing published messages ({attempts} attempts)")

    async def _check_published(self) -> None:
        """Every REPUBLISH_CHECK_S, check that each user's latest unanswered message is still in Redis (if it
        is, the earlier ones are: a replica holds a prefix of its master's writes); publish lost ones again."""
        while not self._closing:
            await asyncio.sleep(REPUBLISH_CHECK_S)
            for user, queue in list(self._unanswered.items()):
                try:
                    if queue and not await self.r.exists(self.shard(user).key("pub", next(reversed(queue)))):
                        async with self._user_locks.hold(user):
                            log.warning("messages of a user were lost by Redis (a failover?); publishing them again")
                            await self._publish_missing(user)
                except Exception as exc:  # Redis is still failing over: the next round tries again
                    log.warning("checking published messages failed (%s); will retry", type(exc).__name__)

    def _forget_request(self, user: str, request: str) -> None:
        queue = self._unanswered.get(user)
        if queue is not None:
            queue.pop(request, None)
            if not queue:
                self._unanswered.pop(user, None)

    async def ready(self) -> bool:
        """Readiness: Redis answers a PING and the reply readers run."""
        return bool(await self.r.ping()) and bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def _read_replies(self, shard: Shard) -> None:
        """Resolve the replies of this gateway's stream of ``shard``. It reads its own pending entries
        ("0") at start and every PENDING_CHECK_S: replies a read took from Redis whose answer never arrived
        (the connection dropped mid-read, e.g. a Redis restart) would otherwise wait there for ever."""
        stream = shard.out_stream(self.id)
        start, checked = "0", time.monotonic()
        while not self._closing:
            try:
                batches = await self.r.xreadgroup(GATEWAYS_GROUP, self.id, {stream: start}, count=100, block=1000)
                entries = batches[0][1] if batches else []
                if start == "0" and not entries:
                    start, checked = ">", time.monotonic()
                elif start == ">" and time.monotonic() - checked > PENDING_CHECK_S:
                    start = "0"
                for entry_id, fields in entries:
                    if fields:  # an entry trimmed from the stream while pending has no fields left
                        await self._resolve(fields)
                    await self.r.xack(stream, GATEWAYS_GROUP, entry_id)
                    await self.r.xdel(stream, entry_id)
            except Exception as exc:  # the reader must outlive any one failure, or every reply would wait
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    with suppress(Exception):
                        await ensure_group(self.r, stream, GATEWAYS_GROUP)  # Redis came back empty
                elif not self._closing:
                    log.error("reading replies failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(1.0)

    async def _resolve(self, fields: dict) -> None:
        try:
            out = OutgoingMessage(**json.loads(fields[b"reply"]))
            request = fields[b"req"].decode()
        except (KeyError, ValueError, TypeError):
            log.error("dropping a malformed reply entry")
            return
        if request in self._resolved:  # a second reply (its first was lost with a failed master's writes)
            return
        self._resolved[request] = None
        if len(self._resolved) > RESOLVED_KEPT:
            self._resolved.popitem(last=False)
        self._forget_request(f"{out.platform}:{out.user_id}", request)
        future = self._waiting.pop(request, None)
        if future is not None and not future.done():
            future.set_result(out)
        elif out.kind != DUPLICATE and self.late_reply is not None:
            try:
                await self.late_reply(out)
            except Exception:
                log.exception("sending a late reply to %s:%s failed", out.platform, out.chat_id)
        elif out.kind != DUPLICATE:
            log.warning("a late reply for %s:%s has no sender; dropped", out.platform, out.chat_id)
