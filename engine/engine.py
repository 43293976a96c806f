"""The engine: one entry point, :meth:`Engine.handle`, used by every adapter and test.

    async with Engine.from_settings(Settings.from_env()) as engine:
        out = await engine.handle(IncomingMessage("fake", "c1", "u1", "hi"))
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from typing import Callable

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .access import BLOCKED, NOT_ALLOWED, PRIVACY_COMMANDS, Access
from .model.batcher import InferenceBatcher
from .commands import MAX_FACTS, CommandContext, parse_command, run_command
from .config import Settings
from .facts import extract_facts
from .feedback import FeedbackRecorder, load_taste
from .state.keyed_lock import KeyedLocks
from .memory import answer_from_memory
from .metrics import ERRORS, MESSAGES_ANSWERED, MESSAGES_RECEIVED, REPLY_LATENCY, SAFETY_DECISIONS
from .persona_guard import answer_about_self, claims_a_name, claims_user_facts
from .messages import DUPLICATE, IGNORED, IncomingMessage, OutgoingMessage, Reaction
from .model.profile import update_profile
from .model.prompt import Turn
from .state.redis_server import EmbeddedRedis
from .model.replier import Replier, ReplyRequest
from .safety import Assessment, SafetyFilter, SafetyReplies
from .safety.loading import load_classifier
from .safety.replies import DEFAULT_CRISIS_REPLY, DEFAULT_CRISIS_URL
from .sanitize import clean_text
from .state.store import REDIS_UNAVAILABLE, LockTimeout, RedisStore, Store, StoredTurn, UserRef

_batch_size: ContextVar[int | None] = ContextVar("batch_size", default=None)  # of this message's reply, for the log
log = logging.getLogger("rapport.engine")

EMPTY_REPLY = "I got an empty message. Say something and I'll answer!"
RATE_LIMITED = "You're sending messages faster than I can read them. I kept this one; give me a minute before the next."
BUSY = "I'm still working on your previous message. Please send this one again in a moment."
FAILED = "Sorry, something went wrong on my side while answering. Please try again."
TOO_LONG = " (Your message was long, so I read only the first {n} characters.)"
PURGE_DELAY_S = 2.0  # /forget's disk rewrite waits this long, so forgets that come together share one


class Engine:
    """Loads state, handles commands, generates replies, updates history and profile."""

    def __init__(self, settings: Settings, store: Store, replier: Replier,
                 embedded: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.store = store
        self.replier = replier
        self.embedded = embedded
        self._preparing = 0  # messages past the command check that have not reached the batcher yet
        self.batcher = InferenceBatcher(replier, settings.batch_max, settings.batch_wait_ms / 1000,
                                        settings.batch_gather_ms / 1000, on_the_way=lambda: self._preparing)
        self.safety = SafetyFilter(settings.safety, load_classifier(settings.safety_model_dir)
                                   if settings.safety_classifier else None)
        self.safety_replies = SafetyReplies(settings.crisis_reply or DEFAULT_CRISIS_REPLY,
                                            settings.crisis_url or DEFAULT_CRISIS_URL)
        self.access = Access(settings)
        self.feedback = FeedbackRecorder(store, self.access)
        self._user_locks = KeyedLocks()
        self._purge_task: asyncio.Task | None = None
        self._purge_again = False

    @classmethod
    def from_settings(cls, settings: Settings, replier: Replier | None = None) -> "Engine":
        """Build the engine: the store at REDIS_URL or an embedded server, and the models."""
        embedded = None
        url = settings.redis_url
        if not url:
            embedded = EmbeddedRedis(settings.data_dir / "redis").start()
            url = embedded.url
        store = RedisStore.from_url(url, cluster=settings.redis_cluster, prefix=settings.key_prefix, history_turns=settings.history_turns,
                                    history_tokens=settings.history_tokens, history_ttl_s=settings.history_ttl_s,
                                    profile_ttl_s=settings.profile_ttl_s)
        if replier is None:
            replier = Replier.from_dirs(settings.model_dir, settings.encoder_dir, settings.inference_threads,
                                        index_dir=settings.index_dir, time_budget_s=settings.reply_time_budget_s,
                                        profile_weight=settings.profile_weight, max_rows=settings.max_decode_rows,
                                        mode=settings.reply_mode)
        return cls(settings, store, replier, embedded)

    async def start(self) -> None:
        """Check that Redis answers (raise a clear error if not), then warm the models up, so the first
        user does not wait for their first run."""
        try:
            await self.store.ping()
        except Exception as exc:
            raise ConnectionError(f"cannot reach Redis at {self.settings.redis_url or 'the embedded server'}: {exc}. "
                                  "Check REDIS_URL or unset it to use the embedded server.") from exc
        await asyncio.to_thread(self._warm_up)

    def _warm_up(self) -> None:
        self.replier.warm_up()
        self.safety.warm_up()

    async def stop(self) -> None:
        """Finish a pending disk purge, close connections, stop the worker thread and the embedded server."""
        await self.disk_purged()
        await self.store.close()
        self.batcher.close()
        if self.embedded:
            self.embedded.stop()

    async def __aenter__(self) -> "Engine":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- the one entry point -------------------------------------------------------------------------
    async def handle(self, msg: IncomingMessage) -> OutgoingMessage:
        """Answer one message. Messages of one user are answered in arrival order; a message the
        platform delivers twice (same message id) is answered once (the repeat gets kind "duplicate")."""
        return await self._in_order(msg, dedupe=True)

    async def answer(self, msg: IncomingMessage) -> OutgoingMessage:
        """Answer ``msg`` without the duplicate check (split-mode workers: the gateway did it). Safe to
        repeat: a message whose reply is already in the history gets that reply again. Raises
        ``redis.ConnectionError`` while Redis is unreachable (or a cluster has no master for the user's
        slot yet, or the user's lock could not be had meanwhile: :class:`LockTimeout`), so the caller can
        retry later instead of sending an apology or a "busy" notice for a message it still holds."""
        return await self._in_order(msg, dedupe=False)

    async def sent(self, out: OutgoingMessage, message_ids: list[str]) -> None:
        """Remember the platform messages that carried ``out``, so reactions to them can be tied to it. A
        Redis failure here is logged and costs only that: the reply was delivered."""
        try:
            await self.feedback.sent(out, message_ids)
        except (RedisConnectionError, RedisTimeoutError):
            log.warning("could not remember the ids of a sent reply (Redis unreachable)")

    async def react(self, reaction: Reaction) -> None:
        """A reaction to one of the bot's messages: stored for the user's taste, or ignored (a message the bot
        no longer knows, a reply to someone else, an account kept out). Never answered."""
        try:
            await self.feedback.react(reaction)
        except (RedisConnectionError, RedisTimeoutError):
            log.warning("could not store a reaction (Redis unreachable)")

    async def _in_order(self, msg: IncomingMessage, dedupe: bool) -> OutgoingMessage:
        MESSAGES_RECEIVED.labels(msg.platform).inc()
        if self.settings.log_text:
            log.debug("message text", extra={"platform": msg.platform, "text": msg.text})
        started = time.perf_counter()
        _batch_size.set(None)
        out, kind = await self._answer_in_order(msg, dedupe, started)
        seconds = time.perf_counter() - started
        MESSAGES_ANSWERED.labels(msg.platform, kind).inc()
        if kind in ("reply", "memory"):
            REPLY_LATENCY.labels("end_to_end").observe(seconds)
        log.info("message handled", extra={"platform": msg.platform, "kind": kind,
                                           "latency_ms": round(1000 * seconds, 1), "batch": _batch_size.get()})
        return out

    async def _answer_in_order(self, msg: IncomingMessage, dedupe: bool, started: float) -> tuple[OutgoingMessage, str]:
        """The answer, and its kind for the metrics (as the message's kind, but "memory" for a reply from
        stored facts or the persona)."""
        ref = UserRef(msg.platform, msg.user_id, msg.chat_id)
        async with self._user_locks.hold(ref.user):
            try:
                refusal = await self._refusal(ref, msg)
                if refusal is not None:
                    kind = "notice" if refusal else IGNORED
                    return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, refusal, msg.message_id, kind), kind
                if dedupe and msg.message_id and not await self.store.first_delivery(ref, msg.message_id):
                    return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, "", msg.message_id,
                                           DUPLICATE), DUPLICATE
                linked = await self.store.resolve(ref)
                async with self.store.user_lock(linked, self.settings.lock_timeout_s):
                    text, kind = await self._answer(linked, msg)
                await self.store.count("messages", {"reply": "replies", "command": "commands"}.get(kind, kind),
                                       latency_ms=1000 * (time.perf_counter() - started) if kind == "reply" else None,
                                       user=ref.user)
            except LockTimeout:
                ERRORS.labels("LockTimeout").inc()
                if not dedupe:  # a worker: its messages come in order, so Redis failed over meanwhile
                    raise
                text, kind = BUSY, "notice"
            except REDIS_UNAVAILABLE as exc:
                ERRORS.labels(type(exc).__name__).inc()
                if not dedupe:
                    raise
                log.exception("Redis failed while answering %s", ref.user)
                text, kind = FAILED, "notice"
            except Exception as exc:
                ERRORS.labels(type(exc).__name__).inc()
                log.exception("failed to answer %s", ref.user)
                text, kind = FAILED, "notice"
        out_kind = "reply" if kind == "memory" else kind
        return OutgoingMessage(msg.platform, msg.chat_id, msg.user_id, text, msg.message_id, out_kind), kind

    async def ready(self) -> bool:
        """Readiness: Redis answers a PING (its round trip goes to the metrics); the model was loaded with
        the engine."""
        return await self.store.ping()

    async def _refusal(self, ref: UserRef, msg: IncomingMessage) -> str | None:
        """None when ``msg`` may be handled; else the notice for a blocked or not-allowed account ("" once it
        was told today). Such messages are neither answered nor stored; /export and /forget always run."""
        listed = self.access.listed(ref.user, ref.chat)
        if listed and not await self.store.is_blocked(ref.user):
            return None
        call = parse_command(msg.text) if isinstance(msg.text, str) else None
        if call is not None and f"/{call.name}" in PRIVACY_COMMANDS:
            return None
        await self.store.count("refused")
        return (NOT_ALLOWED if not listed else BLOCKED) if await self.store.notice_due(ref) else ""

    async def _answer(self, ref: UserRef, msg: IncomingMessage) -> tuple[str, str]:
        text, cut = clean_text(msg.text, self.settings.max_message_chars)
        if not text:
            return EMPTY_REPLY, "notice"
        call = parse_command(text)
        if call is not None:  # commands are never rate-limited and always run
            ctx = CommandContext(self.store, ref, self.settings.bot_name, msg.user_name, msg.is_private,
                                 self.access.is_admin(ref.user), self.safety, self.purge_disk_soon, msg.replied_to)
            return await run_command(call, ctx), "command"
        on_its_way = self._on_its_way()  # the batcher waits a little for messages on their way
        try:
            return await self._answer_message(ref, msg, text, cut, on_its_way)
        finally:
            on_its_way()

    def _on_its_way(self) -> Callable[[], None]:
        """Count one message as on its way to the batcher; the function returned ends that (once)."""
        self._preparing += 1
        done = False

        def arrived() -> None:
            nonlocal done
            if not done:
                done = True
                self._preparing -= 1
        return arrived

    async def _answer_message(self, ref: UserRef, msg: IncomingMessage, text: str, cut: bool,
                              arrived: Callable[[], None]) -> tuple[str, str]:
        history = await self.store.history(ref)
        assessment = await asyncio.to_thread(self.safety.assess, text, [t.text for t in history if t.role == "user"])
        category = assessment.category
        if category is not None:  # never generated from, stored, or learned from
            log.info("safety action: %s (%s) on %s", category.value, assessment.source, msg.platform)
            SAFETY_DECISIONS.labels(assessment.source, category.value).inc()
            await self.store.count(f"safety_{category.value}", f"safety_layer_{assessment.source}")
            return self.safety_replies.for_category(category), "safety"
        if assessment.borderline:
            SAFETY_DECISIONS.labels("borderline", "none").inc()
            await self.store.count("safety_layer_borderline")
        if not await self.store.allow(ref, self.settings.rate_limit_per_minute):
            await self.store.append_turns(ref, [StoredTurn("user", text, msg.timestamp)], self._tokens)
            return RATE_LIMITED, "rate_limited"
        reply, kind = await self._converse(ref, text, history, assessment, msg.message_id, arrived)
        if cut:
            reply += TOO_LONG.format(n=self.settings.max_message_chars)
        return reply, kind

    async def _converse(self, ref: UserRef, text: str, history: list[StoredTurn], assessment: Assessment,
                        message_id: str = "", arrived: Callable[[], None] = lambda: None) -> tuple[str, str]:
        """The reply and its source: "reply" (generated) or "memory" (from the user's facts or the persona)."""
        if message_id:  # answered already (a worker died before delivering): the same reply again
            for turn, after in zip(history, history[1:]):
                if turn.role == "user" and turn.mid == message_id and after.role == "bot":
                    return after.text, "reply"
        facts = await self.store.facts(ref)
        new_facts = [f for f in extract_facts(text) if f not in facts and self.safety.fact_ok(f)]
        if new_facts:
            facts = (facts + new_facts)[-MAX_FACTS:]
            await self.store.set_facts(ref, facts)
        vector, seen = await self.store.vector(ref)
        prefs = await self.store.prefs(ref)
        encoder = self.replier.encoder
        taste = await load_taste(self.store, ref, encoder.embed) \
            if self.settings.learn_from_reactions and encoder is not None else None
        turns = [Turn(t.text, t.role == "user") for t in history] + [Turn(text, True)]
        reply = answer_from_memory(text, facts) or answer_about_self(text, list(self.settings.persona))
        dropped: set[str] = set()

        def keep(texts: list[str]) -> list[bool]:  # on the inference thread
            verdicts = self.safety.verdicts(texts, text, assessment.borderline)
            dropped.update(v for v in verdicts if v)
            return [v is None for v in verdicts]

        arrived()
        answer = await self.batcher.submit(ReplyRequest(
            turns, list(self.settings.persona), facts, vector, prefs.get("style", "balanced"),
            needs_reply=reply is None, keep=keep,
            claims=lambda texts: np.maximum(claims_user_facts(texts, facts, self.settings.persona),
                                            claims_a_name(texts, self.settings.bot_name)), taste=taste))
        _batch_size.set(answer.batch_size)
        for reason in dropped:
            SAFETY_DECISIONS.labels(reason, "candidate").inc()
        if dropped:
            await self.store.count(*(f"safety_dropped_{reason}" for reason in sorted(dropped)))
        kind = "memory" if reply is not None else "reply"
        if reply is None:
            reply = answer.reply.text
        if answer.message_vec is not None:
            vector, seen = update_profile(vector, seen, answer.message_vec)
            await self.store.set_vector(ref, vector, seen)
        now = time.time()
        await self.store.append_turns(ref, [StoredTurn("user", text, now, message_id), StoredTurn("bot", reply, now)],
                                      self._tokens)
        return reply, kind

    # --- deleted data leaves the disk ------------------------------------------------------------------
    def purge_disk_soon(self) -> None:
        """After /forget: have the embedded server rewrite its append-only file and snapshot, so deleted
        text leaves the disk. Forgets that come together share one rewrite. (An external Redis is the
        operator's: see the README, "Privacy".)"""
        if self.embedded is None:
            return
        self._purge_again = True
        if self._purge_task is None or self._purge_task.done():
            self._purge_task = asyncio.create_task(self._purge())

    async def _purge(self) -> None:
        while self._purge_again:
            self._purge_again = False
            await asyncio.sleep(PURGE_DELAY_S)
            try:
                await self.store.rewrite_disk()
            except Exception:
                log.exception("rewriting the embedded server's files after /forget failed")

    async def disk_purged(self) -> None:
        """Wait for a pending disk purge to finish."""
        if self._purge_task is not None:
            await asyncio.shield(self._purge_task)

    def _tokens(self, text: str) -> int:
        return len(self.replier.codec.encode(text))
