"""Per-user state in Redis: history, facts, profile vector, preferences, lock, rate limit.

Key schema (``P`` is the prefix, ``U`` = ``{platform}:{user_id}``, ``C`` = ``{platform}:{chat_id}``,
``O`` = the profile owner: ``U`` itself, or the account U was linked to with ``/link``). Every key of one
account or profile owner carries it as a hash tag (``{U}`` / ``{O}``), so on a Redis Cluster each user's
keys share one slot and each script or transaction of the store touches one slot:

  P:{U}:hist:C     list of JSON turns {"role","text","ts"}   capped by turns and tokens; TTL history_ttl_s
  P:{U}:chats      set of chat keys holding U's history          TTL history_ttl_s
  P:{O}:facts      list of fact strings                          TTL profile_ttl_s
  P:{O}:vec        string, float32 bytes of the profile vector   TTL profile_ttl_s
  P:{O}:prefs      hash of preferences (style, ...)              TTL profile_ttl_s
  P:{O}:seen       string, number of messages the vector has seen TTL profile_ttl_s
  P:{O}:lock       string, lock token                            PX lock_timeout
  P:{U}:rate       sorted set of U's message times (sliding one-minute window)  TTL 60 s
  P:{U}:link       string, the owner O whose profile U uses      until /forget
  P:{O}:linked     set of the accounts linked to O               until /forget
  P:linkcode:K     JSON {"owner","account"}: one-time code K, made by account U for owner O
                                                                 TTL link_code_ttl_s, deleted when used or on /forget
  P:{U}:linkcodes  set of the codes U made that may still be live TTL link_code_ttl_s
  P:{U}:msg:C:M    "1" once U's message M in chat C was accepted (drops platform retries)  TTL 1 day
  P:{U}:sent:C:M   JSON {"text","ts"}: the bot's reply to U carried by its message M in chat C  TTL history_ttl_s
  P:{U}:lastsent:C string, the id of the bot's latest reply to U in chat C (/good, /bad)  TTL history_ttl_s
  P:{O}:fb         hash "C/M" -> JSON {"text","value","ts"}: replies O reacted to (+1 / -1), the
                   latest FEEDBACK_KEPT                          TTL profile_ttl_s
  P:{O}:fbvec      hash "C/M" -> float32 bytes: the sentence embedding of that reply  TTL profile_ttl_s
  P:{U}:confirm    "forget" while U's /forget waits for "/forget yes"  TTL 120 s
  P:{U}:notice     "1" once U was told they may not use the bot (one notice a day)  TTL 1 day
  P:blocked        set of accounts an admin blocked (/block)     until /unblock
  P:users          set of accounts that talked to the bot (/stats)  until the account's /forget
  P:stats          hash of counters: messages, replies, commands, rate_limited, refused, safety_<category>
  P:latency        list of the latest 1,000 reply latencies in ms (/stats p50/p95)
No key holds message text except P:{U}:hist, P:{U}:sent and P:{O}:fb (the bot's replies) and P:{O}:facts
(the user's own statements). Keys written before the hash tags (``P:hist:C:U``, ...) are moved by
``rapport migrate-keys`` (engine/state/migrate.py).

Only /link and /forget touch two users' slots (an account's and its owner's): on a single server each is
one transaction; on a cluster their commands go to each slot's node, without a transaction over both.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import AsyncIterator, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.crc import key_slot
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import REDIS_ROUNDTRIP
from .reactions import ReactionKeys

DEDUPE_TTL_S = 86400
CONFIRM_TTL_S = 120
LATENCIES_KEPT = 1000
CLUSTER_CONNECTIONS = 1024  # per node
# Redis unreachable, or a cluster failing over (no master for a slot yet, or slots moving)
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, SlotNotCoveredError)
UNTIL_ANSWERED = 10**9  # "retry until Redis answers" for the cluster client (at most 1 s apart: decades)
PROFILE_KINDS = ("facts", "vec", "prefs", "seen", "linked", "fb", "fbvec")  # the keys of a profile owner
# Sliding-window rate limit: drop entries older than the window, admit if fewer than the limit remain.
_RATE = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return 1
"""


def glob_escape(text: str) -> str:
    """``text`` with the glob characters of SCAN MATCH (``* ? [ ] \\``) escaped, so a user id is literal."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


@dataclass(frozen=True)
class UserRef:
    """Who a message is from and where: all state is keyed by these."""

    platform: str
    user_id: str
    chat_id: str
    linked_to: str = ""  # the account whose profile this one uses (``/link``), if any

    @property
    def user(self) -> str:
        return f"{self.platform}:{self.user_id}"

    @property
    def owner(self) -> str:
        """Key of the profile (facts, vector, preferences) this account uses."""
        return self.linked_to or self.user

    @property
    def chat(self) -> str:
        return f"{self.platform}:{self.chat_id}"


@dataclass(frozen=True)
class StoredTurn:
    """One stored turn of a conversation."""

    role: str  # "user" or "bot"
    text: str
    ts: float
    mid: str = ""  # the platform's message id of a user turn (a redelivered message is answered from it)


def cluster_nodes(url: str) -> list[tuple[str, int]] | None:
    """The nodes of a cluster URL ``redis://host1:port1,host2:port2/...`` (None for a one-server URL)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    if "," not in netloc:
        return None
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        nodes.append((host or part, int(port) if host else 6379))
    return nodes


def connect(url: str, max_connections: int = 64, retries: int = 3,
            cluster: bool = False) -> aioredis.Redis | RedisCluster:
    """A client for ``url`` whose pool waits for a free connection rather than opening too many, and
    that retries a command ``retries`` times (-1: until Redis answers) on a dropped connection (a Redis
    restart), with redis-py's exponential backoff (capped at 1 s).

    A URL with several nodes (``redis://h1:p1,h2:p2``), or ``cluster``, gives redis-py's RedisCluster:
    it learns the slot map from any node, follows MOVED/ASK and re-reads the map after a failover."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)
    nodes = cluster_nodes(url)
    if nodes is None and not cluster:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=30, health_check_interval=30, retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        return aioredis.Redis(connection_pool=pool)
    if retries < 0:  # redis-py's cluster client runs a command range(retries) times: -1 would run it never
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=UNTIL_ANSWERED)
    parts = urlsplit(url)
    first = nodes[0] if nodes else (parts.hostname or "127.0.0.1", parts.port or 6379)
    rest = urlunsplit((parts.scheme, f"{parts.netloc.rpartition('@')[0]}@{first[0]}:{first[1]}".lstrip("@"),
                       parts.path, parts.query, parts.fragment))
    # redis-py's cluster pool fails a command when a node's connections are all busy (it does not wait, as
    # the one-server pool does): allow many, so a burst (a worker's 64 messages at once) does not fail
    return RedisCluster.from_url(rest, startup_nodes=[ClusterNode(h, p) for h, p in nodes or [first]],
                                 max_connections=max(max_connections, CLUSTER_CONNECTIONS), retry=retry)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


class LockTimeout(RuntimeError):
    """Another reply to the same user is still running after the lock timeout."""


class Store(Protocol):
    """What the engine needs from a state store (RedisStore is the implementation)."""

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...

    async def history(self, ref: UserRef) -> list[StoredTurn]: ...
    async def append_turns(self, ref: UserRef, turns: list[StoredTurn], token_count) -> None: ...
    async def clear_history(self, ref: UserRef) -> None: ...
    async def facts(self, ref: UserRef) -> list[str]: ...
    async def set_facts(self, ref: UserRef, facts: list[str]) -> None: ...
    async def vector(self, ref: UserRef) -> tuple[np.ndarray | None, int]: ...
    async def set_vector(self, ref: UserRef, vector: np.ndarray, seen: int) -> None: ...
    async def prefs(self, ref: UserRef) -> dict[str, str]: ...
    async def set_pref(self, ref: UserRef, key: str, value: str) -> None: ...
    async def forget_user(self, ref: UserRef) -> int: ...
    async def resolve(self, ref: UserRef) -> UserRef: ...
    async def create_link_code(self, ref: UserRef, ttl_s: int) -> str: ...
    async def redeem_link_code(self, code: str) -> tuple[str, str] | None: ...
    async def link(self, ref: UserRef, owner: str, max_facts: int) -> None: ...
    async def allow(self, ref: UserRef, per_minute: int) -> bool: ...
    async def export(self, ref: UserRef) -> dict: ...
    async def ask_confirmation(self, ref: UserRef) -> None: ...
    async def confirmed(self, ref: UserRef) -> bool: ...
    async def is_blocked(self, user: str) -> bool: ...
    async def set_blocked(self, user: str, blocked: bool) -> bool: ...
    async def notice_due(self, ref: UserRef) -> bool: ...
    async def count(self, *events: str, latency_ms: float | None = None, user: str | None = None) -> None: ...
    async def stats(self) -> dict: ...
    async def rewrite_disk(self) -> None: ...
    async def first_delivery(self, ref: UserRef, message_id: str) -> bool: ...
    async def remember_sent(self, ref: UserRef, message_ids: list[str], text: str) -> None: ...
    async def last_sent(self, ref: UserRef) -> str | None: ...
    async def sent_text(self, ref: UserRef, message_id: str) -> str | None: ...
    async def set_reaction(self, ref: UserRef, message_id: str, text: str, value: int) -> None: ...
    async def reactions(self, ref: UserRef) -> dict[str, dict]: ...
    async def reaction_vectors(self, ref: UserRef) -> dict[str, np.ndarray]: ...
    async def set_reaction_vectors(self, ref: UserRef, vectors: dict[str, np.ndarray]) -> None: ...
    def user_lock(self, ref: UserRef, timeout_s: float) -> "AsyncIterator[None]": ...


class RedisStore(ReactionKeys):
    """:class:`Store` on any Redis-protocol server (Redis, Valkey); the reaction keys live in
    :class:`ReactionKeys` (engine/state/reactions.py)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rapport", history_turns: int = 20,
                 history_tokens: int = 1000, history_ttl_s: int = 7 * 86400, profile_ttl_s: int = 365 * 86400):
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"the key prefix {prefix!r} may not hold braces: they would replace each user's hash tag")
        self.r = client
        self.cluster = isinstance(client, RedisCluster)
        self.p = prefix
        self.history_turns = history_turns
        self.history_tokens = history_tokens
        self.history_ttl_s = history_ttl_s
        self.profile_ttl_s = profile_ttl_s
        self._rate = self.r.register_script(_RATE)

    @classmethod
    def from_url(cls, url: str, max_connections: int = 64, cluster: bool = False, **kwargs) -> "RedisStore":
        """Connect lazily to ``url`` (redis://host:port/db, or several nodes of a cluster); at most
        ``max_connections`` at once (more concurrent calls wait for a free connection instead of failing)."""
        return cls(connect(url, max_connections, cluster=cluster), **kwargs)

    async def ping(self) -> bool:
        """True when the server answers (raises if it cannot be reached); the round trip goes to the metrics."""
        started = time.perf_counter()
        answered = bool(await self.r.ping())
        REDIS_ROUNDTRIP.observe(time.perf_counter() - started)
        return answered

    async def close(self) -> None:
        """Close the connection pool."""
        await self.r.aclose()

    def key(self, kind: str, *parts: str) -> str:
        """A shared key ``P:kind:part:...`` (schema above; split mode's keys in engine/split/__init__.py)."""
        return ":".join((self.p, kind, *parts))

    def user_key(self, who: str, kind: str, *parts: str) -> str:
        """A key of one account or profile owner, ``P:{who}:kind:part:...``: hash-tagged by ``who``."""
        return ":".join((self.p, "{" + who + "}", kind, *parts))

    async def _keys_of(self, account: str, kind: str) -> list[str]:
        """Every key ``P:{account}:kind:...``. On a cluster they all sit in the account's slot, which is read
        on the node that holds it (CLUSTER GETKEYSINSLOT); on one server, SCAN."""
        prefix = self.user_key(account, kind) + ":"
        if not self.cluster:
            pattern = glob_escape(prefix) + "*"
            return [key.decode() async for key in self.r.scan_iter(match=pattern, count=100)]
        slot = key_slot(prefix.encode())
        count = int(await self.r.cluster_countkeysinslot(slot))
        keys = await self.r.cluster_get_keys_in_slot(slot, count) if count else []
        names = [k.decode() if isinstance(k, bytes) else k for k in keys]
        return [k for k in names if k.startswith(prefix)]

    def _multi_slot_pipeline(self):
        """A pipeline for commands on several users' slots: one transaction on a single server; on a
        cluster, redis-py sends each command to its slot's node (no transaction spans slots there)."""
        return self.r.pipeline(transaction=not self.cluster)

    # --- history --------------------------------------------------------------------------------
    async def history(self, ref: UserRef) -> list[StoredTurn]:
        raw = await self.r.lrange(self.user_key(ref.user, "hist", ref.chat), 0, -1)
        return [StoredTurn(**json.loads(item)) for item in raw]

    async def append_turns(self, ref: UserRef, turns: list[StoredTurn], token_count) -> None:
        """Append ``turns``; then drop the oldest until within the turn and token caps."""
        key = self.user_key(ref.user, "hist", ref.chat)
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(key, *[json.dumps(t.__dict__, ensure_ascii=False) for t in turns])
        pipe.ltrim(key, -self.history_turns, -1)
        pipe.expire(key, self.history_ttl_s)
        pipe.sadd(self.user_key(ref.user, "chats"), ref.chat)
        pipe.expire(self.user_key(ref.user, "chats"), self.history_ttl_s)
        await pipe.execute()
        kept = await self.history(ref)
        total, drop = sum(token_count(t.text) for t in kept), 0
        while total > self.history_tokens and drop < len(kept) - 1:
            total -= token_count(kept[drop].text)
            drop += 1
        if drop:
            await self.r.ltrim(key, drop, -1)

    async def clear_history(self, ref: UserRef) -> None:
        await self.r.delete(self.user_key(ref.user, "hist", ref.chat))

    # --- profile ----------------------------------------------------------------------------------
    async def facts(self, ref: UserRef) -> list[str]:
        return [f.decode() for f in await self.r.lrange(self.user_key(ref.owner, "facts"), 0, -1)]

    async def set_facts(self, ref: UserRef, facts: list[str]) -> None:
        key = self.user_key(ref.owner, "facts")
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        if facts:
            pipe.rpush(key, *facts)
            pipe.expire(key, self.profile_ttl_s)
        await pipe.execute()

    async def vector(self, ref: UserRef) -> tuple[np.ndarray | None, int]:
        raw, seen = await self.r.mget(self.user_key(ref.owner, "vec"), self.user_key(ref.owner, "seen"))
        if raw is None:
            return None, 0
        return np.frombuffer(raw, dtype=np.float32).copy(), int(seen or 0)

    async def set_vector(self, ref: UserRef, vector: np.ndarray, seen: int) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.user_key(ref.owner, "vec"), vector.astype(np.float32).tobytes(), ex=self.profile_ttl_s)
        pipe.set(self.user_key(ref.owner, "seen"), seen, ex=self.profile_ttl_s)
        await pipe.execute()

    async def prefs(self, ref: UserRef) -> dict[str, str]:
        raw = await self.r.hgetall(self.user_key(ref.owner, "prefs"))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def set_pref(self, ref: UserRef, key: str, value: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.user_key(ref.owner, "prefs"), key, value)
        pipe.expire(self.user_key(ref.owner, "prefs"), self.profile_ttl_s)
        await pipe.execute()

    async def accounts(self, ref: UserRef) -> set[str]:
        """Every account that shares ``ref``'s profile (``ref`` itself, its owner and the owner's links)."""
        return {ref.user, ref.owner} | {a.decode() for a in await self.r.smembers(self.user_key(ref.owner, "linked"))}

    async def chats(self, account: str) -> set[str]:
        """The chat keys holding ``account``'s history."""
        return {c.decode() for c in await self.r.smembers(self.user_key(account, "chats"))}

    async def forget_user(self, ref: UserRef) -> int:
        """Delete every key about the person: the profile, and for every linked account its history in
        every chat, rate window, message-id markers, link, pending link codes, confirmation and notice
        markers, and its entry in the user list of /stats; returns keys deleted."""
        accounts = await self.accounts(ref)
        keys = []
        for account in accounts:  # an account's profile keys too: one linked before may have left some
            keys += [self.user_key(account, kind) for kind in PROFILE_KINDS]
            chats = await self.chats(account)
            if account == ref.user:
                chats.add(ref.chat)
            keys += [self.user_key(account, "hist", chat) for chat in chats]
            keys += [self.user_key(account, kind) for kind in ("chats", "link", "rate", "confirm", "notice", "linkcodes")]
            keys += [self.key("linkcode", c.decode()) for c in await self.r.smembers(self.user_key(account, "linkcodes"))]
            for kind in ("msg", "sent", "lastsent"):
                keys += await self._keys_of(account, kind)
        if self.cluster:  # redis-py splits a DEL of several slots into one DEL per slot
            deleted = await self.r.delete(*keys)
            await self.r.srem(self.key("users"), *accounts)
            return int(deleted)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.srem(self.key("users"), *accounts)
        deleted, _ = await pipe.execute()
        return int(deleted)

    async def export(self, ref: UserRef) -> dict:
        """Everything stored about the person: histories of every linked account in every chat, facts,
        profile vector, preferences and link state."""
        vector, seen = await self.vector(ref)
        accounts = sorted(await self.accounts(ref))
        histories = {}
        for account in accounts:
            for chat in sorted(await self.chats(account) | ({ref.chat} if account == ref.user else set())):
                raw = await self.r.lrange(self.user_key(account, "hist", chat), 0, -1)
                if raw:
                    histories[f"{chat} / {account}"] = [json.loads(item) for item in raw]
        return {
            "account": ref.user,
            "profile_owner": ref.owner,
            "linked_accounts": [a for a in accounts if a != ref.owner] if len(accounts) > 1 else [],
            "facts": await self.facts(ref),
            "preferences": await self.prefs(ref),
            "profile_vector": None if vector is None else [round(float(x), 5) for x in vector],
            "profile_messages_seen": seen,
            "reactions": sorted(({"reply": r["text"], "value": r["value"], "ts": r["ts"]}
                                 for r in (await self.reactions(ref)).values()), key=lambda r: r["ts"]),
            "history": histories,
        }

    async def ask_confirmation(self, ref: UserRef) -> None:
        """Remember for CONFIRM_TTL_S seconds that ``ref`` asked to /forget."""
        await self.r.set(self.user_key(ref.user, "confirm"), "forget", ex=CONFIRM_TTL_S)

    async def confirmed(self, ref: UserRef) -> bool:
        """True (once) when ``ref`` asked to /forget within the last CONFIRM_TTL_S seconds."""
        return bool(await self.r.getdel(self.user_key(ref.user, "confirm")))

    # --- one person on several platforms -------------------------------------------------------------
    async def resolve(self, ref: UserRef) -> UserRef:
        """``ref`` with the profile owner it is linked to, if any."""
        owner = await self.r.get(self.user_key(ref.user, "link"))
        return UserRef(ref.platform, ref.user_id, ref.chat_id, owner.decode() if owner else "")

    async def create_link_code(self, ref: UserRef, ttl_s: int) -> str:
        """A fresh one-time code (8 characters) naming ``ref``'s profile owner and the account that asked,
        valid ``ttl_s`` seconds; the account's list of codes lets /forget delete it."""
        value = json.dumps({"owner": ref.owner, "account": ref.user})
        while True:
            code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))
            if await self.r.set(self.key("linkcode", code), value, nx=True, ex=ttl_s):
                pipe = self.r.pipeline(transaction=True)
                pipe.sadd(self.user_key(ref.user, "linkcodes"), code)
                pipe.expire(self.user_key(ref.user, "linkcodes"), ttl_s)
                await pipe.execute()
                return code

    async def redeem_link_code(self, code: str) -> tuple[str, str] | None:
        """(owner, account that asked) of ``code``, or None; a code works once."""
        raw = await self.r.getdel(self.key("linkcode", code))
        if not raw:
            return None
        data = json.loads(raw)
        await self.r.srem(self.user_key(data["account"], "linkcodes"), code)
        return data["owner"], data["account"]

    async def link(self, ref: UserRef, owner: str, max_facts: int) -> None:
        """Make ``ref``'s account (and every account linked to it) use ``owner``'s profile. ``ref``'s own
        facts join the owner's; its vector, preferences and reactions are dropped (the owner's are kept)."""
        mine = await self.facts(ref)
        target = UserRef(*owner.split(":", 1), chat_id="-")
        theirs = await self.facts(target)
        merged = (theirs + [f for f in mine if f not in theirs])[-max_facts:]
        moved = {ref.user} | {a.decode() for a in await self.r.smembers(self.user_key(ref.owner, "linked"))}
        moved.discard(owner)
        pipe = self._multi_slot_pipeline()
        for account in moved:
            pipe.set(self.user_key(account, "link"), owner)
        pipe.sadd(self.user_key(owner, "linked"), *moved)
        for kind in PROFILE_KINDS:
            pipe.delete(self.user_key(ref.owner, kind))
        pipe.delete(self.user_key(owner, "link"))
        await pipe.execute()
        await self.set_facts(target, merged)

    # --- concurrency --------------------------------------------------------------------------------
    async def allow(self, ref: UserRef, per_minute: int, window_s: float = 60.0) -> bool:
        """Sliding-window rate limit: at most ``per_minute`` messages in any ``window_s`` seconds."""
        now = time.time()
        return bool(await self._rate(keys=[self.user_key(ref.user, "rate")],
                                     args=[now, window_s, per_minute, f"{now:.6f}-{secrets.token_hex(4)}"]))

    async def rewrite_disk(self, timeout_s: float = 60.0) -> None:
        """Rewrite the server's append-only file and snapshot from what is in memory now (deleted keys
        then leave the disk), and wait until both are written."""
        async def idle(*flags: str) -> None:
            deadline = time.monotonic() + timeout_s
            while True:
                info = await self.r.info("persistence")
                if not any(int(info.get(flag, 0)) for flag in flags):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Redis server is still busy with {flags} after {timeout_s} s")
                await asyncio.sleep(0.05)

        persistence = await self.r.info("persistence")
        if int(persistence.get("aof_enabled", 0)):
            await idle("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
            await self.r.execute_command("BGREWRITEAOF")
            await idle("aof_rewrite_in_progress", "aof_rewrite_scheduled")
        await idle("rdb_bgsave_in_progress", "aof_rewrite_in_progress")
        await self.r.execute_command("BGSAVE")
        await idle("rdb_bgsave_in_progress")

    # --- operators: blocks, notices, statistics -------------------------------------------------------
    async def is_blocked(self, user: str) -> bool:
        return bool(await self.r.sismember(self.key("blocked"), user))

    async def set_blocked(self, user: str, blocked: bool) -> bool:
        """Block or unblock ``user`` (``platform:id``); True when that changed anything."""
        if blocked:
            return bool(await self.r.sadd(self.key("blocked"), user))
        return bool(await self.r.srem(self.key("blocked"), user))

    async def notice_due(self, ref: UserRef) -> bool:
        """True at most once a day per account: may we tell it that it cannot use the bot?"""
        return bool(await self.r.set(self.user_key(ref.user, "notice"), 1, nx=True, ex=DEDUPE_TTL_S))

    async def count(self, *events: str, latency_ms: float | None = None, user: str | None = None) -> None:
        """Add 1 to each counter of ``events``; record a reply latency and an active user."""
        pipe = self.r.pipeline(transaction=False)
        for event in events:
            pipe.hincrby(self.key("stats"), event, 1)
        if latency_ms is not None:
            pipe.lpush(self.key("latency"), round(latency_ms, 1))
            pipe.ltrim(self.key("latency"), 0, LATENCIES_KEPT - 1)
        if user is not None:
            pipe.sadd(self.key("users"), user)
        await pipe.execute()

    async def stats(self) -> dict:
        """Counters, number of users, and reply latency p50/p95 (ms) over the latest replies."""
        counters = {k.decode(): int(v) for k, v in (await self.r.hgetall(self.key("stats"))).items()}
        latencies = sorted(float(x) for x in await self.r.lrange(self.key("latency"), 0, -1))

        def pct(q: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

        return {"users": int(await self.r.scard(self.key("users"))), "counters": counters,
                "blocked": int(await self.r.scard(self.key("blocked"))),
                "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "n": len(latencies)}}

    async def first_delivery(self, ref: UserRef, message_id: str) -> bool:
        """True the first time message ``message_id`` of ``ref``'s chat is seen (within a day)."""
        return bool(await self.r.set(self.user_key(ref.user, "msg", ref.chat, message_id), 1, nx=True, ex=DEDUPE_TTL_S))

    @asynccontextmanager
    async def user_lock(self, ref: UserRef, timeout_s: float) -> AsyncIterator[None]:
        """Cross-process lock on the user (redis-py's :class:`~redis.asyncio.lock.Lock`). While the block
        runs, the lock is renewed every ``timeout_s / 3`` (a slow reply keeps it); if its holder dies, it
        expires after ``timeout_s``. A waiter gives up after 1.5 x that (:class:`LockTimeout`)."""
        lock = self.r.lock(self.user_key(ref.owner, "lock"), timeout=timeout_s, sleep=0.01,
                           blocking_timeout=1.5 * timeout_s)
        if not await lock.acquire():
            raise LockTimeout(f"user {ref.user} is still locked after {timeout_s} s")

        done = asyncio.Event()

        async def renew() -> None:
            while not await _set_within(done, timeout_s / 3):
                await lock.reacquire()

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            # stopped by the event, not by cancelling: redis-py can lose a cancellation that arrives
            # mid-command (seen under load, with or without a Redis restart), and the renewer would then
            # run (and this block wait for it) for ever, holding the user
            done.set()
            await asyncio.gather(renewing, return_exceptions=True)
            with suppress(LockError):  # lost while held (Redis restarted empty): someone else may own it now
                await lock.release()
