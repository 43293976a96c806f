"""One person on Telegram and Discord: /link with a one-time code, one profile, one /forget."""
import asyncio
import re

import pytest

from bots.discord_bot import RapportDiscordClient
from bots.settings import DiscordSettings, TelegramSettings
from bots.telegram import TelegramAdapter
from engine.engine import Engine
from engine.state.store import UserRef
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import BOT_USERNAME, FakeTelegramAPI


async def test_link_codes_are_single_use_and_expire(store):
    ana = UserRef("telegram", "1", "1")
    code = await store.create_link_code(ana, ttl_s=600)
    assert re.fullmatch(r"[A-Z2-9]{8}", code)
    assert 590 <= await store.r.ttl(store.key("linkcode", code)) <= 600
    assert await store.redeem_link_code(code) == ("telegram:1", "telegram:1")  # (owner, the account that asked)
    assert await store.redeem_link_code(code) is None


async def test_forget_deletes_pending_link_codes(store):
    ana = UserRef("telegram", "1", "1")
    code = await store.create_link_code(ana, ttl_s=600)
    await store.forget_user(ana)
    assert await store.redeem_link_code(code) is None
    assert not await store.r.keys(f"{store.p}:*")


async def test_linked_accounts_share_one_profile_and_one_forget(store):
    tg, dc = UserRef("telegram", "1", "1"), UserRef("discord", "9", "9")
    await store.set_facts(tg, ["my name is ana"])
    await store.set_facts(dc, ["i like jazz"])
    await store.link(dc, tg.owner, max_facts=50)
    dc = await store.resolve(dc)
    assert dc.owner == "telegram:1"
    assert await store.facts(dc) == ["my name is ana", "i like jazz"]
    assert await store.facts(UserRef("discord", "9", "9")) == []  # the old own profile is gone
    await store.forget_user(dc)
    assert await store.facts(tg) == [] and (await store.resolve(UserRef("discord", "9", "9"))).owner == "discord:9"
    assert not await store.r.keys(f"{store.p}:*")


@pytest.fixture
async def both(settings, replier):
    tg_api, dc_api = await FakeTelegramAPI().start(), await FakeDiscord().start()
    discord_settings = DiscordSettings(token=dc_api.token, api_url=dc_api.api_url, gateway_url=dc_api.gateway_url)
    async with Engine.from_settings(settings, replier=replier) as engine:
        telegram = TelegramAdapter(engine, TelegramSettings(token=tg_api.token, api_url=tg_api.url, poll_timeout_s=1))
        await telegram.start()
        discord_client = RapportDiscordClient(engine, discord_settings)
        task = asyncio.create_task(discord_client.start(discord_settings.token))
        await asyncio.wait_for(discord_client.wait_until_ready(), 30)
        yield tg_api, dc_api
        await discord_client.close()
        await asyncio.gather(task, return_exceptions=True)
        await telegram.stop()
    await tg_api.stop()
    await dc_api.stop()


async def test_link_across_telegram_and_discord(both):
    tg, dc = both
    tg.push_message(7, 7, "hi, my name is Ana")
    await tg.wait_sent(1)
    tg.push_message(7, 7, "/link")
    code = re.search(r"code is ([A-Z2-9]{8})", (await tg.wait_sent(2))[1]["text"]).group(1)
    await dc.slash(70, "link", {"code": code}, guild=False)
    sent = await dc.wait_sent(1)
    assert sent[0]["body"]["content"].startswith("Linked") and sent[0]["body"]["flags"] & 64
    await dc.message(70, "what is my name?")
    assert "Ana" in (await dc.wait_sent(2))[1]["body"]["content"]
    await dc.slash(70, "link", {"code": code}, guild=False)  # a code works once
    assert "unknown or has expired" in (await dc.wait_sent(3))[2]["body"]["content"]
    # someone else in a Telegram group never sees Ana's profile
    tg.push_message(-5, 8, f"@{BOT_USERNAME} what is my name?", chat_type="group", first_name="Bob")
    assert "Ana" not in (await tg.wait_sent(3))[2]["text"]
    await dc.slash(70, "forget", guild=False)
    assert "/forget yes" in (await dc.wait_sent(4))[3]["body"]["content"]
    await dc.slash(70, "forget", {"confirm": "yes"}, guild=False)
    assert "deleted everything" in (await dc.wait_sent(5))[4]["body"]["content"]
    tg.push_message(7, 7, "what is my name?")
    assert "Ana" not in (await tg.wait_sent(4))[3]["text"]


async def test_link_in_a_group_gives_no_code(both):
    """A code posted in a group could be redeemed by any member: /link works only in private chats."""
    tg, dc = both
    tg.push_message(-5, 7, f"/link@{BOT_USERNAME}", chat_type="group", first_name="Ana")
    text = (await tg.wait_sent(1))[0]["text"]
    assert "private chat" in text and not re.search(r"\b[A-Z2-9]{8}\b", text)
    await dc.slash(70, "link", guild=True)  # the Discord slash command in a server channel
    text = (await dc.wait_sent(1))[0]["body"]["content"]
    assert "private chat" in text and not re.search(r"\b[A-Z2-9]{8}\b", text)


async def test_rapport_bots_serves_both_platforms_and_stops_cleanly_on_sigterm(redis_server, tmp_path):
    """The shipped command line, as docker-compose runs it: both adapters in one process, SIGTERM ends it."""
    import os
    import signal
    import sys
    tg, dc = await FakeTelegramAPI().start(), await FakeDiscord().start()
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": tg.token, "RAPPORT_TELEGRAM_API_URL": tg.url,
           "RAPPORT_TELEGRAM_POLL_TIMEOUT_S": "1", "DISCORD_BOT_TOKEN": dc.token,
           "RAPPORT_DISCORD_API_URL": dc.api_url, "RAPPORT_DISCORD_GATEWAY_URL": dc.gateway_url,
           "REDIS_URL": redis_server.url, "RAPPORT_KEY_PREFIX": "sigterm-test"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bots.cli", "--env-file", str(tmp_path / "none"),
                                                "bots", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        tg.push_message(3, 3, "hello from telegram")
        assert (await tg.wait_sent(1, timeout=120))[0]["chat_id"] == 3
        await asyncio.wait_for(dc.ready.wait(), 60)
        await dc.message(3, "hello from discord")
        assert (await dc.wait_sent(1, timeout=60))[0]["channel_id"] == 50_003
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await tg.stop()
        await dc.stop()


async def test_rapport_discord_with_the_intent_off_ends_with_an_error_line(redis_server, tmp_path):
    """Close code 4014 (Message Content intent not enabled): what to do, exit code 1, no traceback."""
    import os
    import sys
    dc = await FakeDiscord(refuse_privileged_intents=True).start()
    env = {**os.environ, "DISCORD_BOT_TOKEN": dc.token, "RAPPORT_DISCORD_API_URL": dc.api_url,
           "RAPPORT_DISCORD_GATEWAY_URL": dc.gateway_url, "REDIS_URL": redis_server.url,
           "RAPPORT_KEY_PREFIX": "intent-test"}
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bots.cli", "--env-file",
                                                    str(tmp_path / "none"), "discord", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await dc.stop()
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith("error: Discord refused the Message Content intent"), text
