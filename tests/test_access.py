"""Operators decide who may use the bot: allowlists, admins, /block, /unblock, /stats."""
from dataclasses import replace

import pytest

from bots.fake import FakeAdapter
from engine.access import BLOCKED, NOT_ALLOWED
from engine.config import ConfigError, Settings
from engine.engine import Engine
from engine.messages import IncomingMessage
from engine.state.store import UserRef


async def keys_of(engine, user: str) -> list[str]:
    return sorted(k.decode() for k in await engine.store.r.keys(f"{engine.settings.key_prefix}:*{user}*"))


async def test_allowlist_refuses_others_without_storing_their_messages(settings, replier):
    s = replace(settings, allowed_users=("fake:alice",), admins=("fake:root",))
    async with Engine.from_settings(s, replier=replier) as eng:
        bot = FakeAdapter(eng)
        assert "haven't told me" in (await bot.send("alice", "what's my name?")).text
        first = await bot.send("bob", "hi, my name is Bob")
        assert first.text == NOT_ALLOWED and first.kind == "notice"
        again = await bot.send("bob", "hello?")
        assert again.silent  # one notice a day at most
        assert await keys_of(eng, "fake:bob") == [f"{s.key_prefix}:{{fake:bob}}:notice"]  # no text, no history
        assert (await bot.send("root", "/help")).kind == "command"  # admins are always allowed


async def test_allowed_chats_let_everyone_in_that_chat_talk(settings, replier):
    s = replace(settings, allowed_chats=("fake:club",))
    async with Engine.from_settings(s, replier=replier) as eng:
        inside = await eng.handle(IncomingMessage("fake", "club", "zoe", "/help", is_private=False))
        outside = await eng.handle(IncomingMessage("fake", "zoe", "zoe", "/help"))
        assert inside.kind == "command" and outside.text == NOT_ALLOWED


async def test_admin_blocks_unblocks_and_reads_stats(settings, replier):
    s = replace(settings, admins=("fake:root",))
    async with Engine.from_settings(s, replier=replier) as eng:
        bot = FakeAdapter(eng)
        await bot.send("mallory", "hello there")
        await bot.send("mallory", "I want to kill myself")
        assert "I don't know /block" in (await bot.send("mallory", "/block fake:root")).text  # not an admin
        assert (await bot.send("root", "/block fake:mallory")).text == "Blocked fake:mallory."
        out = await bot.send("mallory", "are you there?")
        assert out.text == BLOCKED
        assert (await bot.send("mallory", "still there?")).silent
        history = await eng.store.history(UserRef("fake", "mallory", "mallory"))
        assert [t.text for t in history if t.role == "user"] == ["hello there"]  # blocked messages are not stored
        exported = await bot.send("mallory", "/export")  # data rights stay
        assert '"account": "fake:mallory"' in exported.text
        stats = (await bot.send("root", "/stats")).text
        assert "Users: 2" in stats and "blocked: 1" in stats and "crisis 1" in stats and "p50" in stats
        assert "hello there" not in stats and "kill" not in stats
        assert (await bot.send("root", "/unblock mallory")).text == "Unblocked fake:mallory."
        assert (await bot.send("mallory", "/help")).kind == "command"
        assert "Usage: /block" in (await bot.send("root", "/block")).text
        assert "/stats" in (await bot.send("root", "/help")).text and "/stats" not in (await bot.send("x", "/help")).text


def test_access_lists_are_checked():
    s = Settings.from_env({"RAPPORT_ALLOWED_USERS": "telegram:1, discord:2", "RAPPORT_ADMINS": "telegram:1"}, dotenv=None)
    assert s.allowed_users == ("telegram:1", "discord:2") and s.admins == ("telegram:1",)
    with pytest.raises(ConfigError, match="platform:id"):
        Settings.from_env({"RAPPORT_ADMINS": "12345"}, dotenv=None)
    with pytest.raises(ConfigError, match="RAPPORT_SAFETY"):
        Settings.from_env({"RAPPORT_SAFETY": "lax"}, dotenv=None)
