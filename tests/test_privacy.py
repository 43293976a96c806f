"""Privacy: nothing of a forgotten user stays (keys, disk), ids cannot widen a key pattern, /export is whole,
and the rate limit is a sliding window."""
import asyncio
import json
from dataclasses import replace

from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.messages import IncomingMessage
from engine.state.store import StoredTurn, UserRef, glob_escape


def test_glob_escape():
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


async def test_a_star_user_id_forgets_only_itself(store):
    victims = [UserRef("fake", name, name) for name in ("ana", "bob")]
    for victim in victims:
        await store.append_turns(victim, [StoredTurn("user", "hello", 0.0)], len)
        await store.first_delivery(victim, "m1")
    star = UserRef("fake", "*", "*")
    await store.first_delivery(star, "m1")
    await store.forget_user(star)
    for victim in victims:
        assert await store.history(victim) and await store.r.exists(store.user_key(victim.user, "msg", victim.chat, "m1"))
    assert not await store.r.exists(store.user_key("fake:*", "msg", "fake:*", "m1"))


async def test_rate_limit_is_a_sliding_window(store):
    """The fixed-minute windows let 35 of 45 messages through in 0.8 s across a minute boundary."""
    who = UserRef("fake", "rl", "rl")
    accepted = [await store.allow(who, per_minute=20) for _ in range(45)]
    assert sum(accepted) == 20 and all(accepted[:20])
    short = UserRef("fake", "rl2", "rl2")
    assert [await store.allow(short, 2, window_s=0.3) for _ in range(3)] == [True, True, False]
    await asyncio.sleep(0.35)
    assert await store.allow(short, 2, window_s=0.3)


async def test_export_holds_everything_about_the_person(settings, replier):
    async with Engine.from_settings(settings, replier=replier) as eng:
        bot = FakeAdapter(eng)
        await bot.send("ana", "/profile add I like jazz")
        await bot.send("ana", "what's my name?")
        await eng.handle(IncomingMessage("fake", "group7", "ana", "what's my name?", is_private=False))
        await eng.handle(IncomingMessage("other", "d1", "ana-d", "what's my name?"))
        code = (await eng.handle(IncomingMessage("fake", "ana", "ana", "/link"))).text.split("code is ")[1][:8]
        await eng.handle(IncomingMessage("other", "d1", "ana-d", f"/link {code}"))
        await bot.send("ana", "/style short")
        data = json.loads((await bot.send("ana", "/export")).text)
        assert set(data["history"]) == {"fake:ana / fake:ana", "fake:group7 / fake:ana", "other:d1 / other:ana-d"}
        assert data["facts"] == ["i like jazz"] and data["preferences"] == {"style": "short"}
        assert data["linked_accounts"] == ["other:ana-d"] and data["profile_owner"] == "fake:ana"
        assert data["profile_vector"] and data["profile_messages_seen"] >= 1


async def test_forget_leaves_no_key_and_no_text_on_disk(tmp_path, replier, settings):
    """The embedded server's append-only file and snapshot are rewritten after /forget."""
    local = replace(settings, redis_url=None, data_dir=tmp_path)
    async with Engine.from_settings(local, replier=replier) as eng:
        bot = FakeAdapter(eng)
        await bot.send("zed", "my name is Quetzalcoatlus and I like xylophonics")
        await eng.store.r.execute_command("BGREWRITEAOF")  # the text is now in the base file and the increments
        await asyncio.sleep(1.0)
        files = [p for p in (tmp_path / "redis").rglob("*") if p.is_file() and p.suffix != ".log"]
        assert any(b"Quetzalcoatlus" in p.read_bytes() for p in files)
        await bot.send("zed", "/forget")
        assert "deleted everything" in (await bot.send("zed", "/forget yes")).text
        await eng.disk_purged()
        assert await eng.store.r.keys(f"{local.key_prefix}:*zed*") == []
    files = [p for p in (tmp_path / "redis").rglob("*") if p.is_file() and p.suffix != ".log"]
    assert files and not any(b"Quetzalcoatlus" in p.read_bytes() or b"xylophonics" in p.read_bytes() for p in files)
