"""End to end: the real python-telegram-bot against a fake Bot API server on 127.0.0.1, through the
real engine, model and Redis-protocol server."""
import asyncio
import contextlib
import json
import logging
import socket
from dataclasses import replace

import aiohttp
import pytest

from bots.split import split_message
from bots.settings import TelegramSettings
from bots.telegram import MESSAGE_LIMIT, NOT_TEXT, TelegramAdapter
from engine.config import ConfigError
from engine.engine import Engine
from tests.fakes.telegram_api import BOT_ID, BOT_USERNAME, FakeTelegramAPI

GROUP = -100123


@pytest.fixture
async def api():
    server = await FakeTelegramAPI().start()
    yield server
    await server.stop()


@pytest.fixture
def tg_settings(api):
    return TelegramSettings(token=api.token, api_url=api.url, poll_timeout_s=1)


@pytest.fixture
async def bot(settings, tg_settings, replier):
    async with Engine.from_settings(settings, replier=replier) as engine:
        adapter = TelegramAdapter(engine, tg_settings)
        await adapter.start()
        yield adapter
        await adapter.stop()


async def test_private_chat_gets_a_plain_text_reply_with_typing(bot, api):
    api.push_message(7, 7, "hi! my name is Ana and I love hiking")
    sent = await api.wait_sent(1)
    assert sent[0]["chat_id"] == 7 and sent[0]["text"].strip()
    assert "parse_mode" not in sent[0]  # plain text: user text can never become markup
    assert any(a["chat_id"] == 7 and a["action"] == "typing" for a in api.actions)
    names = {c["command"] for c in api.commands}
    assert {"start", "help", "reset", "profile", "forget"} <= names
    api.push_message(7, 7, "what is my name?")
    sent = await api.wait_sent(2)
    assert "Ana" in sent[1]["text"]


async def test_group_answers_only_mentions_replies_and_own_commands(bot, api):
    api.push_message(GROUP, 1, "just chatting with friends", chat_type="group")
    api.push_message(GROUP, 1, "/help@some_other_bot", chat_type="group")
    mention = api.push_message(GROUP, 1, f"@{BOT_USERNAME} do you like pizza?", chat_type="group")
    sent = await api.wait_sent(1)
    await asyncio.sleep(1.5)
    assert len(api.sent) == 1
    assert sent[0]["chat_id"] == GROUP
    assert sent[0]["reply_parameters"]["message_id"] == mention["message"]["message_id"]
    bot_message = sent[0]["message"]
    api.push_message(GROUP, 2, "why do you say that?", chat_type="group", reply_to=bot_message)
    api.push_message(GROUP, 2, f"/help@{BOT_USERNAME}", chat_type="group")
    sent = await api.wait_sent(3)
    assert any("/reset" in s["text"] for s in sent[1:])


async def test_two_users_in_one_group_are_kept_apart(bot, api):
    api.push_message(GROUP, 11, f"@{BOT_USERNAME} my name is Zelda", chat_type="group", first_name="Zelda")
    await api.wait_sent(1)
    api.push_message(GROUP, 12, f"@{BOT_USERNAME} what is my name?", chat_type="group", first_name="Bob")
    sent = await api.wait_sent(2)
    assert "Zelda" not in sent[1]["text"]
    api.push_message(12, 12, "/profile")
    sent = await api.wait_sent(3)
    assert "Zelda" not in sent[2]["text"]


async def test_long_reply_is_split_at_the_limit(bot, api):
    long_text = " ".join(f"Sentence number {i} is about my garden." for i in range(100))
    api.push_message(8, 8, long_text[:3900])
    await api.wait_sent(1)
    api.push_message(8, 8, "/export")
    count, export = 3, None
    while export is None:  # as many pieces as the export needs (its length depends on the profile vector's digits)
        pieces = [s["text"] for s in (await api.wait_sent(count, timeout=60))[1:]]
        with contextlib.suppress(json.JSONDecodeError):
            export = json.loads("\n".join(pieces), strict=False)  # a cut inside a string leaves a line break there
        count += 1
    assert all(len(p) <= MESSAGE_LIMIT for p in pieces) and len(pieces) >= 2
    assert "Sentence number 5 is about my garden." in "".join(pieces)
    assert export["history"] and export["account"] == "telegram:8"


async def test_platform_errors_are_retried_without_losing_the_reply(bot, api):
    api.fail_next["sendMessage"] = [429, 500]
    api.push_message(9, 9, "hello there")
    sent = await api.wait_sent(1, timeout=60)
    assert sent[0]["chat_id"] == 9 and sent[0]["text"].strip()
    assert api.calls.count("sendMessage") == 3


async def test_media_gets_a_polite_text_only_answer_and_captions_are_read(bot, api):
    api.push_message(6, 6, "", photo=True)
    assert (await api.wait_sent(1))[0]["text"] == NOT_TEXT
    api.push_message(6, 6, "my name is Ana, this is my cat", photo=True)
    await api.wait_sent(2)
    api.push_message(6, 6, "what is my name?")
    assert "Ana" in (await api.wait_sent(3))[2]["text"]
    api.push_message(GROUP, 6, "", chat_type="group", photo=True)
    await asyncio.sleep(1.0)
    assert len(api.sent) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_webhook_mode(settings, tg_settings, replier, api):
    port = _free_port()
    webhook = replace(tg_settings, mode="webhook", webhook_url=f"http://127.0.0.1:{port}/tg-hook",
                      webhook_listen="127.0.0.1", webhook_port=port,
                      webhook_secret="s3cret")
    async with Engine.from_settings(settings, replier=replier) as engine:
        adapter = TelegramAdapter(engine, webhook)
        await adapter.start()
        try:
            assert api.webhook["url"] == f"http://127.0.0.1:{port}/tg-hook"
            assert api.webhook["secret_token"] == "s3cret"
            update = api.message(5, 5, "hello from a webhook")
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/tg-hook", data=json.dumps(update),
                                     headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 403  # no secret: refused
                async with http.post(f"http://127.0.0.1:{port}/tg-hook", data=json.dumps(update),
                                     headers={"Content-Type": "application/json",
                                              "X-Telegram-Bot-Api-Secret-Token": "s3cret"}) as r:
                    assert r.status == 200
                sent = await api.wait_sent(1)
                async with http.post(f"http://127.0.0.1:{port}/tg-hook", data=json.dumps(update),
                                     headers={"Content-Type": "application/json",
                                              "X-Telegram-Bot-Api-Secret-Token": "s3cret"}) as r:
                    assert r.status == 200  # Telegram redelivers an update it thinks failed
            assert sent[0]["chat_id"] == 5
            await asyncio.sleep(1.0)
            assert len(api.sent) == 1  # the redelivery is not answered twice
            assert "getUpdates" not in api.calls
        finally:
            await adapter.stop()


async def test_missing_or_rejected_token_fails_fast(settings, tg_settings, replier):
    async with Engine.from_settings(settings, replier=replier) as engine:
        with pytest.raises(ConfigError, match="TELEGRAM_BOT_TOKEN is not set"):
            TelegramAdapter(engine, replace(tg_settings, token=None))
        adapter = TelegramAdapter(engine, replace(tg_settings, token="1:wrong"))
        with pytest.raises(ConfigError, match="rejected"):
            await adapter.start()


def test_split_message_prefers_line_and_sentence_boundaries():
    text = "First line.\n" + "A sentence here. " * 30
    pieces = split_message(text, 100)
    assert pieces[0] == "First line."
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.endswith(".") for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    assert split_message("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]
    assert split_message("   ", 10) == []
    assert BOT_ID > 0


async def test_webhook_mode_refuses_to_start_without_a_secret(settings, tg_settings, replier):
    webhook = replace(tg_settings, mode="webhook", webhook_url="https://bot.example/hook",
                      webhook_secret=None)
    async with Engine.from_settings(settings, replier=replier) as engine:
        with pytest.raises(ConfigError, match="RAPPORT_TELEGRAM_WEBHOOK_SECRET"):
            TelegramAdapter(engine, webhook)


async def test_forged_webhook_update_is_refused(settings, tg_settings, replier, api):
    port = _free_port()
    webhook = replace(tg_settings, mode="webhook", webhook_url=f"http://127.0.0.1:{port}/hook",
                      webhook_listen="127.0.0.1", webhook_port=port, webhook_secret="right")
    async with Engine.from_settings(settings, replier=replier) as engine:
        adapter = TelegramAdapter(engine, webhook)
        await adapter.start()
        try:
            forged = api.message(5, 666, "/forget yes")  # someone posing as user 666
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/hook", data=json.dumps(forged),
                                     headers={"Content-Type": "application/json",
                                              "X-Telegram-Bot-Api-Secret-Token": "wrong"}) as r:
                    assert r.status == 403
            await asyncio.sleep(0.5)
            assert api.sent == []
        finally:
            await adapter.stop()


async def test_logs_hold_no_token_and_no_message_text(settings, tg_settings, replier, api, caplog):
    """httpx logs request URLs (which hold the token) at INFO; a failing update used to be logged whole."""
    caplog.set_level(logging.DEBUG)
    async with Engine.from_settings(settings, replier=replier) as engine:
        adapter = TelegramAdapter(engine, tg_settings)
        await adapter.start()
        try:
            api.push_message(7, 7, "my secret diary entry about zebras")
            await api.wait_sent(1)
            api.fail_next["sendMessage"] = [400] * 4  # the reply cannot be sent: the update fails
            api.push_message(7, 7, "another private zebra thought")
            sent = await api.wait_sent(2)
            assert "went wrong" in sent[1]["text"]
        finally:
            await adapter.stop()
    logged = caplog.text
    assert "failed" in logged  # the failure is logged, by update id and type
    assert api.token not in logged and api.token.split(":")[1] not in logged
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "zebra" not in info  # (python-telegram-bot's own DEBUG lines show updates: -v is for developers)


async def test_a_taken_webhook_port_is_a_clear_error(settings, tg_settings, replier, api):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        webhook = replace(tg_settings, mode="webhook", webhook_url=f"http://127.0.0.1:{port}/hook",
                          webhook_listen="127.0.0.1", webhook_port=port, webhook_secret="right")
        async with Engine.from_settings(settings, replier=replier) as engine:
            adapter = TelegramAdapter(engine, webhook)
            with pytest.raises(ConfigError, match=f"cannot listen for the webhook on 127.0.0.1:{port}"):
                await adapter.start()
