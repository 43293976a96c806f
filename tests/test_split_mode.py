"""Split mode: adapters -> Redis Streams -> engine workers, against a real Redis-protocol server.

Load and fault tests run reduced by default; RAPPORT_FULL_LOAD=1 runs the full size (50 users x 20
messages) of the load test.
"""
import asyncio
import json
import os
import signal
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, replace

import pytest

from bench.split_restarts import awaits, conversation
from bots.fake import FakeAdapter
from bots.settings import TelegramSettings
from bots.telegram import TelegramAdapter
from engine.config import ConfigError
from engine.engine import Engine
from engine.state.redis_server import EmbeddedRedis, free_port
from engine.state.store import UserRef
from engine.messages import OutgoingMessage
from engine.split.gateway import PENDING_CHECK_S, SLOW, StreamGateway
from engine.split.worker import StreamWorker
from tests.fakes.telegram_api import FakeTelegramAPI

FULL = os.environ.get("RAPPORT_FULL_LOAD") == "1"


@pytest.fixture
def split_settings(settings):
    return replace(settings, mode="split", claim_idle_s=1.0, lock_timeout_s=5.0, reply_timeout_s=300.0)


@asynccontextmanager
async def workers(settings, replier, count: int):
    """``count`` workers, each with its own engine (one shared model in memory)."""
    stop = asyncio.Event()
    engines = [Engine.from_settings(settings, replier=replier) for _ in range(count)]
    for engine in engines:
        await engine.start()
    crew = [StreamWorker(engine, name=f"w{i}") for i, engine in enumerate(engines)]
    tasks = [asyncio.create_task(w.run(stop)) for w in crew]
    try:
        yield crew
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for engine in engines:
            await engine.stop()


async def user_turns(settings, uid: str) -> list[str]:
    gateway = StreamGateway.from_settings(settings)
    try:
        return [t.text for t in await gateway.store.history(UserRef("fake", uid, uid)) if t.role == "user"]
    finally:
        await gateway.r.aclose()


async def stream_is_drained(gateway: StreamGateway) -> None:
    for shard in gateway.shards:
        assert await gateway.r.xlen(shard.in_stream) == 0
        assert (await gateway.r.xpending(shard.in_stream, "workers"))["pending"] == 0
        assert await gateway.r.xlen(shard.out_stream(gateway.id)) == 0


async def stream_state(gateway: StreamGateway, crew: list[StreamWorker]) -> str:
    """Where the messages stand, for a test that timed out: the streams, the pending entries, what each
    worker holds and where its tasks wait."""
    r = gateway.r
    lines = [f"gateway waits for {len(gateway._waiting)} replies; its tasks: {gateway._tasks!r}"]
    for shard in gateway.shards:
        lines.append(f"shard {shard.index}: in {await r.xlen(shard.in_stream)} entries; "
                     f"out {await r.xlen(shard.out_stream(gateway.id))}")
        for e in await r.xpending_range(shard.in_stream, "workers", "-", "+", 100):
            entry = await r.xrange(shard.in_stream, e["message_id"], e["message_id"])
            fields = entry[0][1] if entry else {}
            user = json.loads(fields[b"msg"])["user_id"] if fields else "(deleted)"
            lines.append(f"pending {e['message_id']!r} ({user} #{fields.get(b'seq', b'?').decode()}) at "
                         f"{e['consumer']!r}, idle {e['time_since_delivered']} ms, {e['times_delivered']} deliveries")
    for w in crew:
        lines.append(f"worker {w.name}: answered {w.answered}, reclaimed {w.reclaimed}, holds {list(w._inflight)}")
    lines += ["tasks and where they wait:"] + [f"  {awaits(task)}" for task in asyncio.all_tasks()]
    return "\n".join(lines)


async def answered_within(talks, timeout: float, gateway: StreamGateway, crew: list[StreamWorker]):
    """``talks``' results, or a failure that says where the messages stand after ``timeout`` s."""
    try:
        return await asyncio.wait_for(asyncio.shield(talks), timeout)
    except TimeoutError:
        state = await stream_state(gateway, crew)
        talks.cancel()
        pytest.fail(f"not every message was answered in {timeout:.0f} s:\n{state}")


async def converse(bot: FakeAdapter, k: int, messages: int) -> tuple[str, list[str], list]:
    """User k states a name, sends numbered messages, asks for the name: all at once (order is the system's job)."""
    uid = f"user{k}"
    texts = conversation(k, messages)
    outs = await asyncio.gather(*(bot.send(uid, t) for t in texts))
    return uid, texts, outs


async def test_many_users_through_two_workers_each_answered_once_in_order(split_settings, replier):
    users, messages = (50, 20) if FULL else (8, 4)
    # a user's 20th message waits for 19 replies; no worker dies here, so nothing should be taken over
    # (on a loaded machine a 1 s claim_idle_s would let a stalled event loop look like a dead worker)
    split_settings = replace(split_settings, reply_timeout_s=3600, claim_idle_s=30.0)
    async with workers(split_settings, replier, 2) as crew, StreamGateway.from_settings(split_settings) as gateway:
        bot = FakeAdapter(gateway)
        talks = asyncio.gather(*(converse(bot, k, messages) for k in range(users)))
        results = await answered_within(talks, 3000 if FULL else 600, gateway, crew)
        for k, (uid, texts, outs) in enumerate(results):
            assert all(o.user_id == uid and o.chat_id == uid for o in outs)
            assert all(o.kind in ("reply", "command") for o in outs), [(o.kind, o.text) for o in outs]
            assert outs[-1].text == f"Your name is Person{k}."  # this user's memory, nobody else's
            assert await user_turns(split_settings, uid) == texts[-split_settings.history_turns // 2:]
        assert sum(w.answered for w in crew) == users * messages
        assert all(w.answered for w in crew)  # both workers took part
        await stream_is_drained(gateway)


async def test_platform_redelivery_through_the_gateway_is_dropped(split_settings, replier):
    async with workers(split_settings, replier, 1), StreamGateway.from_settings(split_settings) as gateway:
        bot = FakeAdapter(gateway)
        first, again = await asyncio.gather(bot.send("dup", "I like kayaks", message_id="42"),
                                            bot.send("dup", "I like kayaks", message_id="42"))
        assert sorted([first.kind, again.kind]) == ["duplicate", "reply"]
        assert await user_turns(split_settings, "dup") == ["I like kayaks"]


async def kill_a_worker_mid_batch(settings, replier, users: int, polls: int) -> None:
    """A worker (its own process) SIGKILLed while it holds messages of any shard; a fresh worker must take them
    over (XAUTOCLAIM) and answer each message once, in its user's order, without the slow-reply notice."""
    env = {**os.environ, "REDIS_URL": settings.redis_url, "RAPPORT_KEY_PREFIX": settings.key_prefix,
           "RAPPORT_STREAM_SHARDS": str(settings.stream_shards), "RAPPORT_WORKER_NAME": "doomed",
           "RAPPORT_LOCK_TIMEOUT_S": "5"}
    doomed = await asyncio.create_subprocess_exec(sys.executable, "-m", "bots.cli", "--env-file", "/nonexistent",
                                                  "worker", env=env, stderr=asyncio.subprocess.DEVNULL)
    async with StreamGateway.from_settings(settings) as gateway:
        bot = FakeAdapter(gateway)
        talks = asyncio.gather(*(converse(bot, k, 3) for k in range(users)))
        for _ in range(polls):  # wait until the doomed worker holds messages, then kill it mid-batch
            held = [c for shard in gateway.shards
                    for c in (await gateway.r.xpending(shard.in_stream, "workers")).get("consumers", [])
                    if c["name"] == b"doomed" and c["pending"]]
            if held:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the worker never took a message")
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        async with workers(settings, replier, 1) as crew:
            results = await answered_within(talks, 300, gateway, crew)
        assert crew[0].reclaimed >= 1
        for k, (uid, texts, outs) in enumerate(results):
            assert outs[-1].text == f"Your name is Person{k}." and SLOW not in [o.text for o in outs]
            assert await user_turns(settings, uid) == texts  # each message once, in order
        await stream_is_drained(gateway)


async def test_a_killed_worker_loses_nothing(split_settings, replier):
    await kill_a_worker_mid_batch(split_settings, replier, users=4, polls=600)


async def test_redis_restart_mid_run_loses_nothing(tmp_path, split_settings, replier):
    server = EmbeddedRedis(tmp_path / "redis", persist=True).start()
    settings = replace(split_settings, redis_url=server.url)
    try:
        async with workers(settings, replier, 1) as crew, StreamGateway.from_settings(settings) as gateway:
            bot = FakeAdapter(gateway)
            talks = asyncio.gather(*(converse(bot, k, 3) for k in range(4)))
            await asyncio.sleep(1.0)
            server.stop()  # a normal restart: the server writes its data before it exits
            await asyncio.sleep(1.0)
            server.start()
            results = await answered_within(talks, 300, gateway, crew)
            for k, (uid, texts, outs) in enumerate(results):
                assert outs[-1].text == f"Your name is Person{k}."
                assert all(o.kind in ("reply", "command") for o in outs), [o.text for o in outs]
                assert await user_turns(settings, uid) == texts
            await stream_is_drained(gateway)
    finally:
        server.stop()


async def test_a_reply_left_pending_by_a_dropped_read_still_reaches_the_user(split_settings):
    """A read that took a reply from Redis but whose answer never came back (the connection dropped: a Redis
    restart) leaves the reply pending at this gateway, where no new read (">") finds it. The reader's
    periodic look at its own pending entries delivers it."""
    delivered = asyncio.Queue()
    async with StreamGateway.from_settings(split_settings, late_reply=delivered.put) as gateway:
        first = OutgoingMessage("fake", "u1", "u1", "a reply read as usual")
        await gateway.r.xadd(gateway.out_stream, {"req": "late", "reply": json.dumps(asdict(first))})
        assert await asyncio.wait_for(delivered.get(), 10) == first  # the reader waits for new replies now
        out = OutgoingMessage("fake", "u1", "u1", "the reply a dropped read took")
        async with gateway.r.pipeline(transaction=True) as pipe:  # taken as the gateway, before its reader can
            pipe.xadd(gateway.out_stream, {"req": "lost", "reply": json.dumps(asdict(out))})
            pipe.xreadgroup("gateways", gateway.id, {gateway.out_stream: ">"})
            _, taken = await pipe.execute()
        assert taken and len(taken[0][1]) == 1
        assert await asyncio.wait_for(delivered.get(), 3 * PENDING_CHECK_S) == out
        await asyncio.sleep(0.2)
        assert await gateway.r.xlen(gateway.out_stream) == 0


async def test_unreachable_redis_is_a_clear_error(split_settings, tmp_path):
    settings = replace(split_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        await StreamGateway.from_settings(settings).start()
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bots.cli", "--env-file", "/nonexistent",
                                                "worker", env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 1 and b"cannot reach Redis" in err
    with pytest.raises(ConfigError, match="needs REDIS_URL"):
        StreamGateway.from_settings(replace(settings, redis_url=None))


@asynccontextmanager
async def telegram_on_a_gateway(settings, replier):
    """The real python-telegram-bot adapter on a stream gateway, one worker, the fake Bot API."""
    api = await FakeTelegramAPI().start()
    try:
        adapters = {}

        async def late_reply(out):
            await adapters[out.platform].deliver(out)

        async with workers(settings, replier, 1), StreamGateway.from_settings(settings, late_reply) as gateway:
            adapter = adapters["telegram"] = TelegramAdapter(
                gateway, TelegramSettings(token=api.token, api_url=api.url, poll_timeout_s=1))
            await adapter.start()
            try:
                yield api
            finally:
                await adapter.stop()
    finally:
        await api.stop()


async def test_telegram_adapter_in_split_mode(split_settings, replier):
    async with telegram_on_a_gateway(split_settings, replier) as api:
        api.push_message(31, 31, "my name is Kim")
        api.push_message(31, 31, "what is my name?")
        sent = await api.wait_sent(2)
        assert sent[1]["chat_id"] == 31 and sent[1]["text"] == "Your name is Kim."


async def test_a_slow_reply_is_announced_then_delivered(split_settings, replier):
    """When a worker needs longer than RAPPORT_REPLY_TIMEOUT_S, the user hears so, then gets the reply."""
    async with telegram_on_a_gateway(replace(split_settings, reply_timeout_s=0.05), replier) as api:
        api.push_message(32, 32, "tell me about the best concert you have been to")
        sent = await api.wait_sent(2)
        assert sent[0]["text"] == SLOW
        assert sent[1]["chat_id"] == 32 and sent[1]["text"].strip() and sent[1]["text"] != SLOW


async def test_safety_and_access_hold_in_split_mode(split_settings, replier):
    """Workers run the same engine: a crisis gets the crisis reply, hate the neutral one, a blocked user nothing."""
    from engine.access import BLOCKED
    from engine.safety.replies import DEFAULT_CRISIS_URL
    s = replace(split_settings, admins=("fake:root",))
    async with workers(s, replier, 1):
        async with StreamGateway.from_settings(s) as gateway:
            bot = FakeAdapter(gateway)
            crisis = await bot.send("sm1", "I want to kill myself")
            assert crisis.kind == "safety" and DEFAULT_CRISIS_URL in crisis.text
            hate = await bot.send("sm1", "all muslims are terrorists")
            assert hate.kind == "safety" and "don't agree" in hate.text
            await bot.send("root", "/block fake:sm2")
            assert (await bot.send("sm2", "hello")).text == BLOCKED
            assert await user_turns(s, "sm1") == [] and await user_turns(s, "sm2") == []
