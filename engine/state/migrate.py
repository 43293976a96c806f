"""``rapport migrate-keys``: move keys written before the hash-tagged schema to their new names.

    P:hist:C:U -> P:{U}:hist:C      P:facts:O -> P:{O}:facts      P:msg:U:C:M -> P:{U}:msg:C:M   ...
    split mode: P:seq:U -> P:{S}:seq:U (S: the user's stream shard); with one shard, P:in -> P:{S}:in and
    P:out:G, P:pub:R, P:answered:R likewise (with more shards, drain split mode before migrating)

Each key is copied with DUMP / RESTORE (its value and remaining TTL; this works across the slots of a
cluster, where RENAME does not), then the old key is deleted. Keys already in the new schema and shared
keys (stats, users, blocked, link codes, split mode's streams) are left alone, so running it again moves
nothing. A key whose new name already holds data (the bot ran on the new schema before the migration) is
kept in both places and reported: the newer data wins. Stop the bot while it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..split.common import shard_of, shard_tags
from .store import glob_escape

ONE_ACCOUNT = {"chats", "facts", "vec", "prefs", "seen", "lock", "rate", "link", "linked", "linkcodes", "fb",
               "fbvec", "confirm", "notice"}  # P:kind:U -> P:{U}:kind


@dataclass
class MigrationReport:
    """What ``migrate_keys`` did."""

    moved: int = 0
    already_new: int = 0
    shared: int = 0
    conflicts: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


SPLIT_KINDS = {"in", "out", "seq", "done", "pub", "answered"}


def new_name(key: str, prefix: str, stream_shards: int = 1) -> str | None:
    """The hash-tagged name of an old-schema key of one user or of split mode, or None (a shared key, not
    one of ours, or a split-mode stream key that cannot move to one of several shards)."""
    head = prefix + ":"
    if not key.startswith(head):
        return None
    kind, _, rest = key[len(head):].partition(":")
    parts = rest.split(":")
    if kind in SPLIT_KINDS:
        tags = shard_tags(stream_shards)
        if kind in ("seq", "done") and len(parts) == 2:
            return f"{head}{{{tags[shard_of(rest, stream_shards)]}}}:{kind}:{rest}"
        if stream_shards == 1 and (kind == "in" and not rest or kind in ("out", "pub", "answered") and rest):
            return f"{head}{{{tags[0]}}}:{kind}" + (f":{rest}" if rest else "")
        return None
    if kind in ONE_ACCOUNT and len(parts) == 2:
        return f"{head}{{{rest}}}:{kind}"
    if kind == "hist" and len(parts) == 4:  # hist:C:U
        return f"{head}{{{parts[2]}:{parts[3]}}}:hist:{parts[0]}:{parts[1]}"
    if kind in ("msg", "sent") and len(parts) >= 5:  # msg:U:C:M (M may hold colons)
        return f"{head}{{{parts[0]}:{parts[1]}}}:{kind}:{parts[2]}:{parts[3]}:{':'.join(parts[4:])}"
    if kind == "lastsent" and len(parts) == 4:  # lastsent:U:C
        return f"{head}{{{parts[0]}:{parts[1]}}}:lastsent:{parts[2]}:{parts[3]}"
    return None


async def migrate_keys(r: aioredis.Redis | RedisCluster, prefix: str, dry_run: bool = False,
                       stream_shards: int = 1) -> MigrationReport:
    """Move every old-schema key under ``prefix`` to its hash-tagged name (see the module docstring)."""
    report = MigrationReport()
    # redis-py's cluster client scans every master; keys are listed before any moves
    for raw in [k async for k in r.scan_iter(match=glob_escape(prefix) + ":*", count=500)]:
        key = raw.decode() if isinstance(raw, bytes) else raw
        if key.startswith(prefix + ":{"):
            report.already_new += 1
            continue
        target = new_name(key, prefix, stream_shards)
        kind = key[len(prefix) + 1:].partition(":")[0]
        if target is None:
            if kind in ONE_ACCOUNT | SPLIT_KINDS | {"hist", "msg", "sent", "lastsent"}:
                report.unknown.append(key)
            else:
                report.shared += 1
            continue
        if await r.exists(target):
            report.conflicts.append(key)
            continue
        if dry_run:
            report.moved += 1
            continue
        dumped, ttl_ms = await r.dump(key), await r.pttl(key)
        if dumped is None:  # expired meanwhile
            continue
        await r.restore(target, max(int(ttl_ms), 0), dumped)
        await r.delete(key)
        report.moved += 1
    return report
