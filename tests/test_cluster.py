"""The store on a real Redis Cluster (3 masters, 1 replica each, started by the tests from the same server
binary as every other test), and the migration of keys written before the hash-tagged schema."""
import asyncio
import itertools
import json
from contextlib import asynccontextmanager

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bots.fake import FakeAdapter
from engine.config import Settings
from engine.engine import Engine
from engine.state.local_cluster import LocalCluster
from engine.state.migrate import migrate_keys, new_name
from engine.split.gateway import StreamGateway
from engine.state.store import RedisStore, StoredTurn, UserRef, cluster_nodes, connect

from .test_split_mode import (FULL, answered_within, converse, kill_a_worker_mid_batch, stream_is_drained,
                              user_turns, workers)

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1) as running:
        yield running


@pytest.fixture
def cluster_prefix() -> str:
    return f"c{next(_prefixes)}"


@pytest.fixture
async def cluster_store(cluster, cluster_prefix):
    store = RedisStore(connect(cluster.url), prefix=cluster_prefix, history_turns=6, history_tokens=200)
    yield store
    await store.close()


async def no_keys_anywhere(cluster: LocalCluster, pattern: str) -> list[bytes]:
    """Keys matching ``pattern`` on any node, replicas included, once replication caught up (<= 2 s)."""
    for _ in range(40):
        found = cluster.keys_everywhere(pattern)
        if not found:
            return []
        await asyncio.sleep(0.05)
    return found


def test_a_url_with_several_nodes_is_a_cluster():
    assert cluster_nodes("redis://10.0.0.1:7000,10.0.0.2:7001/0") == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert cluster_nodes("redis://:secret@a:1,b:2") == [("a", 1), ("b", 2)]
    assert cluster_nodes("redis://127.0.0.1:6379/0") is None
    with pytest.raises(ValueError, match="braces"):
        RedisStore(aioredis.Redis(), prefix="bot{1}")


async def test_every_key_of_one_person_shares_a_slot(store):
    """Each user's keys hash to one slot, an owner's profile keys to the owner's slot."""
    ana = UserRef("fake", "ana", "c1")
    await store.append_turns(ana, [StoredTurn("user", "hi", 1.0)], len)
    await store.set_facts(ana, ["i like tea"])
    await store.set_vector(ana, np.ones(4, np.float32), 1)
    await store.first_delivery(ana, "m1")
    await store.remember_sent(ana, ["b1"], "hello")
    await store.set_reaction(ana, "b1", "hello", 1)
    await store.allow(ana, 10)
    keys = [k.decode() for k in await store.r.keys(f"{store.p}:{{fake:ana}}:*")]
    assert len(keys) == 10 and len({key_slot(k.encode()) for k in keys}) == 1


async def test_the_store_works_on_a_cluster_and_forget_leaves_no_key_on_any_node(cluster, cluster_store):
    store = cluster_store
    users = [UserRef("telegram", str(100 + i), str(100 + i)) for i in range(12)]  # spread over the 3 masters
    masters = {cluster.master_of(store.user_key(u.user, "hist", u.chat)) for u in users}
    assert len(masters) == 3
    for u in users:
        await store.append_turns(u, [StoredTurn("user", f"hello from {u.user_id}", 1.0),
                                     StoredTurn("bot", "hi!", 2.0)], len)
        await store.set_facts(u, [f"i am user {u.user_id}"])
        await store.set_vector(u, np.full(4, float(u.user_id), np.float32), 2)
        await store.set_pref(u, "style", "short")
        assert await store.allow(u, 5) and await store.first_delivery(u, "m1")
        await store.remember_sent(u, ["b1", "b2"], "hi!")
        await store.set_reaction(u, "b2", "hi!", -1)
        await store.set_reaction_vectors(u, {"x/b2": np.ones(3, np.float32)})
        await store.count("messages", latency_ms=12.0, user=u.user)
        async with store.user_lock(u, timeout_s=2.0):
            pass
    assert [t.text for t in await store.history(users[3])] == ["hello from 103", "hi!"]
    assert (await store.vector(users[5]))[0].tolist() == [105.0] * 4
    assert await store.last_sent(users[1]) == "b2" and await store.sent_text(users[1], "b1") == "hi!"
    assert (await store.stats())["users"] == 12
    # /link: the account of users[1] takes users[0]'s profile (two slots, maybe two masters)
    code = await store.create_link_code(users[0], ttl_s=60)
    owner, _ = await store.redeem_link_code(code)
    await store.link(users[1], owner, max_facts=50)
    linked = await store.resolve(users[1])
    assert linked.owner == users[0].user
    assert await store.facts(linked) == ["i am user 100", "i am user 101"]
    exported = await store.export(linked)
    assert exported["profile_owner"] == "telegram:100" and set(exported["history"]) == {
        "telegram:100 / telegram:100", "telegram:101 / telegram:101"}
    # /forget of the linked pair: nothing of either account stays on any node
    assert await store.forget_user(linked) > 0
    for account in ("telegram:100", "telegram:101"):
        assert await no_keys_anywhere(cluster, f"{store.p}:*{account}*") == []
    assert (await store.stats())["users"] == 10
    assert await store.history(users[2])  # the others keep theirs


async def test_a_conversation_through_the_engine_on_a_cluster(cluster, cluster_prefix, replier, tmp_path):
    settings = Settings(redis_url=cluster.url, key_prefix=cluster_prefix, data_dir=tmp_path,
                        rate_limit_per_minute=1000, history_turns=10)
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        for uid in ("ana", "bob", "cy"):
            await bot.send(uid, f"hi, my name is {uid} and i like jazz")
            reply = await bot.send(uid, "what should i cook tonight?")
            assert reply.kind == "reply" and reply.text
        exported = json.loads((await bot.send("ana", "/export")).text)
        assert "i like jazz" in " ".join(exported["facts"]) and len(exported["history"]["fake:ana / fake:ana"]) == 4
        await bot.send("ana", "/forget")
        assert "deleted everything" in (await bot.send("ana", "/forget yes")).text
        assert await no_keys_anywhere(cluster, f"{cluster_prefix}:*fake:ana*") == []
        assert (await bot.send("bob", "/profile")).text.count("jazz") == 1


OLD_SCHEMA = {  # written by the releases before the hash tags: key -> (type, value)
    "hist:fake:c1:fake:ana": ("list", [json.dumps({"role": "user", "text": "hi", "ts": 1.0}),
                                       json.dumps({"role": "bot", "text": "hello!", "ts": 2.0})]),
    "chats:fake:ana": ("set", ["fake:c1"]),
    "facts:fake:ana": ("list", ["i like tea"]),
    "prefs:fake:ana": ("hash", {"style": "short"}),
    "link:fake:bob": ("string", "fake:ana"),
    "linked:fake:ana": ("set", ["fake:bob"]),
    "msg:fake:ana:fake:c1:17": ("string", "1"),
    "sent:fake:ana:fake:c1:99": ("string", json.dumps({"text": "hello!", "ts": 2.0})),
    "lastsent:fake:ana:fake:c1": ("string", "99"),
    "stats": ("hash", {"messages": "2"}),
    "users": ("set", ["fake:ana", "fake:bob"]),
}


async def write_old_schema(client, prefix: str) -> None:
    """The keys of OLD_SCHEMA under ``prefix`` (one key per command: this works on a cluster too, as if an
    old store's keys were restored onto one)."""
    for key, (kind, value) in OLD_SCHEMA.items():
        name = f"{prefix}:{key}"
        if kind == "list":
            await client.rpush(name, *value)
        elif kind == "set":
            await client.sadd(name, *value)
        elif kind == "hash":
            await client.hset(name, mapping=value)
        else:
            await client.set(name, value)
    await client.expire(f"{prefix}:hist:fake:c1:fake:ana", 5000)


def test_old_key_names_map_to_the_hash_tagged_ones():
    assert new_name("p:hist:fake:c1:fake:ana", "p") == "p:{fake:ana}:hist:fake:c1"
    assert new_name("p:msg:fake:ana:fake:c1:17", "p") == "p:{fake:ana}:msg:fake:c1:17"
    assert new_name("p:facts:telegram:42", "p") == "p:{telegram:42}:facts"
    assert new_name("p:stats", "p") is None and new_name("p:linkcode:ABCD2345", "p") is None
    assert new_name("other:facts:fake:ana", "p") is None


@pytest.mark.parametrize("where", ["one server", "cluster"])
async def test_migrate_keys_moves_an_old_store_once_and_the_store_reads_it(where, redis_server, cluster, prefix):
    client = aioredis.from_url(redis_server.url) if where == "one server" else connect(cluster.url)
    try:
        await write_old_schema(client, prefix)
        report = await migrate_keys(client, prefix, dry_run=True)
        assert report.moved == 9 and await client.exists(f"{prefix}:facts:fake:ana")
        report = await migrate_keys(client, prefix)
        assert (report.moved, report.shared, report.conflicts, report.unknown) == (9, 2, [], [])
        again = await migrate_keys(client, prefix)
        assert (again.moved, again.already_new, again.shared) == (0, 9, 2)
        store = RedisStore(client, prefix=prefix)
        ana = await store.resolve(UserRef("fake", "ana", "c1"))
        bob = await store.resolve(UserRef("fake", "bob", "c1"))
        assert [t.text for t in await store.history(ana)] == ["hi", "hello!"]
        assert 4000 < await client.ttl(store.user_key("fake:ana", "hist", "fake:c1")) <= 5000
        assert bob.owner == "fake:ana" and await store.facts(bob) == ["i like tea"]
        assert await store.prefs(ana) == {"style": "short"} and await store.last_sent(ana) == "99"
        assert await store.sent_text(ana, "99") == "hello!"
        assert not await store.first_delivery(ana, "17")  # the redelivery marker moved too
        assert await store.forget_user(ana) == 9  # everything of ana and bob, found under the new names
    finally:
        await client.aclose()


@asynccontextmanager
async def split_on_cluster(cluster, prefix, replier, tmp_path, worker_count: int = 2):
    """A gateway and ``worker_count`` workers in split mode on the cluster, the stream in 3 shards."""
    settings = Settings(redis_url=cluster.url, key_prefix=prefix, data_dir=tmp_path, rate_limit_per_minute=1000,
                        history_turns=50, history_tokens=10_000, mode="split", stream_shards=3, claim_idle_s=2.0,
                        lock_timeout_s=5.0, reply_timeout_s=600.0)
    async with workers(settings, replier, worker_count) as crew, StreamGateway.from_settings(settings) as gateway:
        yield settings, gateway, crew


async def check_conversations(settings, gateway, crew, results, lost_writes: set[str] = frozenset(),
                              answered_before: int = 0) -> None:
    """Each message answered once (its user's history holds every message once, in order), from its
    user's memory; the streams drained. Users in ``lost_writes`` had their state on a master that was
    killed: Redis replicates asynchronously, so turns written just before the kill may be missing from
    their history (at most ``answered_before`` in all), but none is duplicated or out of order."""
    missing = 0
    for k, (uid, texts, outs) in enumerate(results):
        assert all(o.kind in ("reply", "command") for o in outs), [(o.kind, o.text) for o in outs]
        assert outs[-1].text == f"Your name is Person{k}."
        turns = await user_turns(settings, uid)
        if uid in lost_writes:
            rest = iter(texts)
            assert all(turn in rest for turn in turns), (turns, texts)  # in order, each once
            missing += len(texts) - len(turns)
        else:
            assert turns == texts
    assert missing <= answered_before
    await stream_is_drained(gateway)


async def test_split_mode_on_a_cluster_with_two_workers(cluster, cluster_prefix, replier, tmp_path):
    users, messages = (50, 20) if FULL else (12, 4)
    async with split_on_cluster(cluster, cluster_prefix, replier, tmp_path) as (settings, gateway, crew):
        assert len({cluster.master_of(shard.in_stream) for shard in gateway.shards}) == 3  # one per master
        bot = FakeAdapter(gateway)
        talks = asyncio.gather(*(converse(bot, k, messages) for k in range(users)))
        results = await answered_within(talks, 3000 if FULL else 600, gateway, crew)
        await check_conversations(settings, gateway, crew, results)
        assert sum(w.answered for w in crew) == users * messages and all(w.answered for w in crew)


async def test_a_master_failing_over_mid_run_loses_nothing(tmp_path_factory, cluster_prefix, replier, tmp_path):
    users, messages = (50, 20) if FULL else (12, 4)
    with LocalCluster(tmp_path_factory.mktemp("failover"), masters=3, replicas=1) as doomed_cluster:
        async with split_on_cluster(doomed_cluster, cluster_prefix, replier, tmp_path) as (settings, gateway, crew):
            bot = FakeAdapter(gateway)
            talks = asyncio.gather(*(converse(bot, k, messages) for k in range(users)))
            victim = doomed_cluster.master_of(gateway.shards[0].in_stream)
            for _ in range(600):  # kill the master of shard 0 once its stream is in use
                if sum(w.answered for w in crew) >= users // 2:
                    break
                await asyncio.sleep(0.05)
            answered_before = sum(w.answered for w in crew)
            lost_writes = {f"user{k}" for k in range(users)
                           if doomed_cluster.master_of(gateway.store.user_key(f"fake:user{k}", "hist")) == victim}
            doomed_cluster.kill(victim)
            results = await answered_within(talks, 3000 if FULL else 600, gateway, crew)
            assert doomed_cluster.master_of(gateway.shards[0].in_stream) != victim  # its replica took over
            await check_conversations(settings, gateway, crew, results, lost_writes, answered_before)


async def test_a_killed_worker_loses_nothing_on_a_cluster(cluster, cluster_prefix, replier, tmp_path):
    """A worker (its own process) killed while it holds messages of the sharded stream: another takes them
    over with XAUTOCLAIM on every shard's master; each message is answered once, in its user's order."""
    settings = Settings(redis_url=cluster.url, key_prefix=cluster_prefix, data_dir=tmp_path, rate_limit_per_minute=1000,
                        mode="split", stream_shards=3, claim_idle_s=2.0, lock_timeout_s=5.0, reply_timeout_s=600.0)
    await kill_a_worker_mid_batch(settings, replier, users=6, polls=1200)
