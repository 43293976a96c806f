"""The store's keys for reactions to the bot's replies (issue 16): which platform message carried which
reply (``P:sent``, ``P:lastsent``), and the replies each user liked or disliked (``P:fb``, ``P:fbvec``).
Key schema and TTLs: engine/state/store.py. A mixin of :class:`engine.state.store.RedisStore`, which
provides ``r`` (the client), ``key``, ``history_ttl_s`` and ``profile_ttl_s``.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .store import UserRef

FEEDBACK_KEPT = 200  # reactions kept per user (the oldest are dropped)


class ReactionKeys:
    """Sent replies and reactions to them, per user."""

    r: "aioredis.Redis"
    key: Callable[..., str]
    user_key: Callable[..., str]
    history_ttl_s: int
    profile_ttl_s: int

    async def remember_sent(self, ref: UserRef, message_ids: list[str], text: str) -> None:
        """Remember that the platform messages ``message_ids`` carried the reply ``text`` to ``ref``."""
        record = json.dumps({"text": text, "ts": time.time()}, ensure_ascii=False)
        pipe = self.r.pipeline(transaction=True)
        for mid in message_ids:
            pipe.set(self.user_key(ref.user, "sent", ref.chat, mid), record, ex=self.history_ttl_s)
        if message_ids:
            pipe.set(self.user_key(ref.user, "lastsent", ref.chat), message_ids[-1], ex=self.history_ttl_s)
        await pipe.execute()

    async def last_sent(self, ref: UserRef) -> str | None:
        """The id of the bot's latest reply to ``ref`` in its chat (None when it has expired)."""
        mid = await self.r.get(self.user_key(ref.user, "lastsent", ref.chat))
        return mid.decode() if mid else None

    async def sent_text(self, ref: UserRef, message_id: str) -> str | None:
        """The reply the bot's message ``message_id`` carried to ``ref``, or None (expired, or not a reply to them)."""
        raw = await self.r.get(self.user_key(ref.user, "sent", ref.chat, message_id))
        return json.loads(raw)["text"] if raw else None

    async def set_reaction(self, ref: UserRef, message_id: str, text: str, value: int) -> None:
        """Store ``ref``'s reaction (+1 / -1) to the reply ``text`` in message ``message_id``; 0 removes it.
        Only the latest FEEDBACK_KEPT reactions are kept."""
        field_name = f"{ref.chat}/{message_id}"
        fb, vec = self.user_key(ref.owner, "fb"), self.user_key(ref.owner, "fbvec")
        if value == 0:
            await self.r.hdel(fb, field_name)
            await self.r.hdel(vec, field_name)
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(fb, field_name, json.dumps({"text": text, "value": value, "ts": time.time()}, ensure_ascii=False))
        pipe.expire(fb, self.profile_ttl_s)
        await pipe.execute()
        if await self.r.hlen(fb) > FEEDBACK_KEPT:
            records = await self.reactions(ref)
            oldest = sorted(records, key=lambda k: records[k]["ts"])[: len(records) - FEEDBACK_KEPT]
            await self.r.hdel(fb, *oldest)
            await self.r.hdel(vec, *oldest)

    async def reactions(self, ref: UserRef) -> dict[str, dict]:
        """``ref``'s reactions: {"chat/message": {"text", "value", "ts"}}."""
        raw = await self.r.hgetall(self.user_key(ref.owner, "fb"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def reaction_vectors(self, ref: UserRef) -> dict[str, np.ndarray]:
        """The stored embeddings of the replies ``ref`` reacted to (some may not be computed yet)."""
        raw = await self.r.hgetall(self.user_key(ref.owner, "fbvec"))
        return {k.decode(): np.frombuffer(v, dtype=np.float32).copy() for k, v in raw.items()}

    async def set_reaction_vectors(self, ref: UserRef, vectors: dict[str, np.ndarray]) -> None:
        """Store embeddings of replies ``ref`` reacted to."""
        if not vectors:
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.user_key(ref.owner, "fbvec"), mapping={k: v.astype(np.float32).tobytes() for k, v in vectors.items()})
        pipe.expire(self.user_key(ref.owner, "fbvec"), self.profile_ttl_s)
        await pipe.execute()
