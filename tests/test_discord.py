"""End to end: the real discord.py against a fake Discord REST API + gateway on 127.0.0.1, through the
real engine, model and Redis-protocol server."""
import asyncio
import time
from dataclasses import replace

import pytest

from bots.settings import DiscordSettings
from bots.discord_bot import MESSAGE_LIMIT, NOT_TEXT, RapportDiscordClient, run_discord
from engine.config import ConfigError
from engine.engine import Engine
from tests.fakes.discord_api import BOT_ID, CHANNEL_ID, FakeDiscord


@pytest.fixture
async def fake():
    server = await FakeDiscord().start()
    yield server
    await server.stop()


@pytest.fixture
def dc_settings(fake):
    return DiscordSettings(token=fake.token, api_url=fake.api_url, gateway_url=fake.gateway_url)


@pytest.fixture
async def bot(settings, dc_settings, replier):
    async with Engine.from_settings(settings, replier=replier) as engine:
        client = RapportDiscordClient(engine, dc_settings)
        task = asyncio.create_task(client.start(dc_settings.token))
        await asyncio.wait_for(client.wait_until_ready(), 30)
        yield client
        await client.close()
        await asyncio.gather(task, return_exceptions=True)


def assert_no_pings(body: dict) -> None:
    assert body["allowed_mentions"]["parse"] == []
    assert not body["allowed_mentions"].get("users") and not body["allowed_mentions"].get("roles")


async def test_direct_message_gets_a_reply_that_cannot_ping(bot, fake):
    await fake.message(1, "hi! my name is Ana and I love hiking")
    sent = await fake.wait_sent(1)
    assert sent[0]["kind"] == "channel" and sent[0]["channel_id"] == 50_001
    assert sent[0]["body"]["content"].strip()
    assert_no_pings(sent[0]["body"])
    assert "50001" in fake.typing
    await fake.message(1, "what is my name?")
    sent = await fake.wait_sent(2)
    assert "Ana" in sent[1]["body"]["content"]
    assert {c["name"] for c in fake.commands} == {"chat", "profile", "reset", "forget", "link", "good", "bad"}


async def test_server_channel_answers_mentions_and_replies_only(bot, fake):
    await fake.message(2, "talking to my friends", guild=True)
    mention = await fake.message(2, f"<@{BOT_ID}> @everyone do you like pizza?", guild=True, mentions_bot=True)
    sent = await fake.wait_sent(1)
    await asyncio.sleep(1.0)
    assert len(fake.sent) == 1
    assert sent[0]["channel_id"] == CHANNEL_ID
    assert str(sent[0]["body"]["message_reference"]["message_id"]) == mention["id"]
    assert_no_pings(sent[0]["body"])
    await fake.message(3, "why do you say that?", guild=True, reply_to=sent[0]["message"])
    await fake.wait_sent(2)


async def test_two_users_in_one_channel_are_kept_apart(bot, fake):
    await fake.message(21, f"<@{BOT_ID}> my name is Zelda", guild=True, mentions_bot=True, name="zelda")
    await fake.wait_sent(1)
    await fake.message(22, f"<@{BOT_ID}> what is my name?", guild=True, mentions_bot=True, name="bob")
    sent = await fake.wait_sent(2)
    assert "Zelda" not in sent[1]["body"]["content"]


async def test_slash_commands_defer_at_once_then_follow_up(bot, fake):
    started = time.monotonic()
    interaction = await fake.slash(4, "chat", {"message": "my name is Ana"})
    sent = await fake.wait_sent(1)
    defer = fake.callbacks[0]
    assert defer["interaction_id"] == interaction["id"] and defer["type"] == 5
    assert defer["at"] - started < 3.0
    assert sent[0]["kind"] == "followup" and sent[0]["body"]["content"].strip()
    assert_no_pings(sent[0]["body"])
    await fake.slash(4, "profile")
    sent = await fake.wait_sent(2)
    assert "my name is ana" in sent[1]["body"]["content"].lower()
    assert sent[1]["body"]["flags"] & 64  # ephemeral: only the caller sees their profile
    await fake.slash(4, "forget")
    sent = await fake.wait_sent(3)
    assert "/forget yes" in sent[2]["body"]["content"]  # asks to confirm first
    await fake.slash(4, "forget", {"confirm": "yes"})
    sent = await fake.wait_sent(4)
    assert "deleted everything" in sent[3]["body"]["content"] and sent[3]["body"]["flags"] & 64


async def test_attachment_only_dm_gets_a_polite_text_only_answer(bot, fake):
    await fake.message(7, "", attachment=True)
    assert (await fake.wait_sent(1))[0]["body"]["content"] == NOT_TEXT


async def test_long_reply_is_split_at_the_limit(bot, fake):
    long_text = " ".join(f"Sentence number {i} is about my garden." for i in range(60))
    await fake.message(5, long_text[:1950])
    await fake.wait_sent(1)
    await fake.message(5, "/export")
    sent = await fake.wait_sent(3)
    pieces = [s["body"]["content"] for s in sent[1:]]
    assert all(len(p) <= MESSAGE_LIMIT for p in pieces)
    assert "Sentence number 5 is about my garden." in "".join(pieces)


async def test_platform_errors_are_retried_without_losing_the_reply(bot, fake):
    fake.fail_next[("POST", "channels/50006/messages")] = [429, 500]
    await fake.message(6, "hello there")
    sent = await fake.wait_sent(1, timeout=60)
    assert sent[0]["channel_id"] == 50_006 and sent[0]["body"]["content"].strip()
    assert fake.calls.count("POST /channels/50006/messages") == 3


async def test_a_refused_message_content_intent_is_a_clear_error(settings, dc_settings, fake, replier):
    fake.refuse_privileged_intents = True
    async with Engine.from_settings(settings, replier=replier) as engine:
        with pytest.raises(ConfigError, match="Message Content Intent"):
            await asyncio.wait_for(run_discord(RapportDiscordClient(engine, dc_settings), asyncio.Event()), 60)


async def test_missing_or_rejected_token_fails_fast(settings, dc_settings, replier):
    async with Engine.from_settings(settings, replier=replier) as engine:
        with pytest.raises(ConfigError, match="DISCORD_BOT_TOKEN is not set"):
            RapportDiscordClient(engine, replace(dc_settings, token=None))
        with pytest.raises(ConfigError, match="rejected"):
            await run_discord(RapportDiscordClient(engine, replace(dc_settings, token="wrong")),
                              asyncio.Event())
