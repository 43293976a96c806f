"""Learning each user's taste from their reactions: emoji meaning, the taste in the ranking, the store keys,
and reactions arriving through the real python-telegram-bot and discord.py from the fake servers."""
import asyncio
import json

import numpy as np

from bots.discord_bot import RapportDiscordClient
from bots.fake import FakeAdapter
from bots.settings import DiscordSettings, TelegramSettings
from bots.telegram import TelegramAdapter
from engine.engine import Engine
from engine.feedback import reaction_value
from engine.model.taste import Taste, describe, style_features
from engine.state.reactions import FEEDBACK_KEPT
from engine.state.store import UserRef
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import FakeTelegramAPI


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


async def until_recorded(store, ref: UserRef) -> None:
    """Wait until the adapter has recorded which message carried the bot's reply (it does so right after
    the platform confirms the send, so a test's reaction could otherwise race it)."""
    for _ in range(100):
        if await store.last_sent(ref):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the sent reply was never recorded")


def test_emoji_meaning():
    assert reaction_value(["👍"]) == 1 and reaction_value(["❤️"]) == 1 and reaction_value(["🔥", "👀"]) == 1
    assert reaction_value(["👎"]) == -1 and reaction_value(["💩"]) == -1
    assert reaction_value([]) == 0 and reaction_value(["👀"]) == 0 and reaction_value(["👍", "👎"]) == 0


def test_taste_moves_the_ranking_towards_liked_replies_and_styles():
    rng = np.random.default_rng(0)
    liked, disliked = unit(rng.normal(size=384)), unit(rng.normal(size=384))
    texts = ["i love jazz.", "what kind of music do you like to listen to when you are at home alone?"]
    taste = Taste.from_reactions(np.stack([liked, disliked]), texts, [1, -1])
    assert taste.n_liked == 1 and taste.n_disliked == 1
    near_liked, near_disliked = unit(liked + 0.3 * rng.normal(size=384)), unit(disliked + 0.3 * rng.normal(size=384))
    scores = taste.score(None, np.stack([near_liked, near_disliked]), ["i like jazz too.", "i like jazz too."])
    assert scores[0] > scores[1]
    # the same embedding, different style: the short statement (like the liked reply) wins
    same = np.stack([near_liked, near_liked])
    short_long = taste.score(None, same, ["sure, jazz.", "do you ever go to concerts with your friends or family?"])
    assert short_long[0] > short_long[1]
    # λ grows with the number of reactions, from today's weight
    one = Taste.from_reactions(liked[None], ["a"], [1])
    many = Taste.from_reactions(np.stack([liked] * 20), ["a"] * 20, [1] * 20)
    assert 0.25 < one.weight(0.25) < many.weight(0.25) < one.settings.max_weight
    assert Taste.from_reactions(np.zeros((0, 384)), [], []) is None


def test_style_features_and_words():
    assert style_features(["hi?", " ".join(["word"] * 30)]).tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    lines = describe(["i love music.", "music is life.", "jazz music!"],
                     ["well, i think that going to the gym every single day is a very good habit for anyone"])
    assert "you liked 3 of my replies and disliked 1" in lines[0]
    assert "You like short replies." in lines and any("music" in line for line in lines)
    assert describe([], []) == []


async def test_store_keeps_reactions_per_person_and_forgets_them(store):
    ana, bo = UserRef("fake", "ana", "ana"), UserRef("fake", "bo", "bo")
    await store.remember_sent(ana, ["m1", "m2"], "i love jazz.")
    assert await store.sent_text(ana, "m2") == "i love jazz." and await store.last_sent(ana) == "m2"
    assert await store.sent_text(bo, "m1") is None  # a reply to someone else
    await store.set_reaction(ana, "m1", "i love jazz.", 1)
    await store.set_reaction_vectors(ana, {"fake:ana/m1": np.ones(4, dtype=np.float32)})
    assert [r["value"] for r in (await store.reactions(ana)).values()] == [1]
    assert await store.reactions(bo) == {}
    await store.set_reaction(ana, "m1", "i love jazz.", 0)  # taken back
    assert await store.reactions(ana) == {} and await store.reaction_vectors(ana) == {}
    for i in range(FEEDBACK_KEPT + 3):
        await store.set_reaction(ana, f"x{i}", f"reply {i}", 1 if i % 2 else -1)
    kept = await store.reactions(ana)
    assert len(kept) == FEEDBACK_KEPT and "fake:ana/x0" not in kept
    assert len((await store.export(ana))["reactions"]) == FEEDBACK_KEPT
    await store.forget_user(ana)
    assert [k async for k in store.r.scan_iter(match=f"{store.p}:*ana*")] == []


def record_requests(replier, monkeypatch) -> list:
    requests = []
    answer = replier.reply_batch

    def recording(batch):
        requests.extend(batch)
        return answer(batch)
    monkeypatch.setattr(replier, "reply_batch", recording)
    return requests


async def test_reactions_change_only_that_users_ranking(settings, replier, monkeypatch):
    requests = record_requests(replier, monkeypatch)
    monkeypatch.setattr(replier, "time_budget_s", 120.0)  # replies compared below: no cut by a busy machine
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        await bot.send("ana", "hi! i just got back from a long run")
        assert requests[-1].taste is None  # no reactions: today's path
        before = (await bot.send("bo", "do you like to cook?")).text
        await bot.react("ana", 1)
        out = await bot.send("ana", "what do you do on weekends?")
        assert out.kind == "reply" and requests[-1].taste is not None and requests[-1].taste.n_liked == 1
        assert "you liked 1 of my replies" in (await bot.send("ana", "/profile")).text
        assert (await bot.send("bo2", "do you like to cook?")).text == before  # ana's taste is hers alone
        assert requests[-1].taste is None
        assert "/good" in (await bot.send("ana", "/help")).text
        assert (await bot.send("ana", "/bad")).text.startswith("Thanks for telling me")
        assert "disliked 1" in (await bot.send("ana", "/profile")).text
        await bot.react("ana", 1, message_id="never-sent")  # unknown message: ignored
        assert len(await engine.store.reactions(UserRef("fake", "ana", "ana"))) == 2
        await bot.send("ana", "/forget")
        await bot.send("ana", "/forget yes")
        assert await engine.store.reactions(UserRef("fake", "ana", "ana")) == {}


async def test_good_without_a_known_reply_is_answered_politely(settings, replier):
    async with Engine.from_settings(settings, replier=replier) as engine:
        out = await FakeAdapter(engine).send("cy", "/good")
        assert "can't find that reply" in out.text


async def test_learning_can_be_switched_off(settings, replier, monkeypatch):
    from dataclasses import replace
    requests = record_requests(replier, monkeypatch)
    async with Engine.from_settings(replace(settings, learn_from_reactions=False), replier=replier) as engine:
        bot = FakeAdapter(engine)
        await bot.send("di", "hello there")
        await bot.react("di", 1)
        await bot.send("di", "how are you?")
        assert requests[-1].taste is None


async def test_telegram_reactions_reach_the_users_ranking(settings, replier, monkeypatch):
    requests = record_requests(replier, monkeypatch)
    api = await FakeTelegramAPI().start()
    try:
        async with Engine.from_settings(settings, replier=replier) as engine:
            adapter = TelegramAdapter(engine, TelegramSettings(token=api.token, api_url=api.url, poll_timeout_s=1))
            await adapter.start()
            try:
                api.push_message(7, 7, "hi! i love hiking in the mountains")
                sent = await api.wait_sent(1)
                assert "message_reaction" in api.allowed_updates
                ref = UserRef("telegram", "7", "7")
                await until_recorded(engine.store, ref)
                api.push_reaction(7, 7, sent[0]["message"]["message_id"], ["👍"])
                for _ in range(100):
                    if await engine.store.reactions(ref):
                        break
                    await asyncio.sleep(0.1)
                assert [r["value"] for r in (await engine.store.reactions(ref)).values()] == [1]
                api.push_message(7, 7, "what should i do this weekend?")
                await api.wait_sent(2)
                assert requests[-1].taste is not None and requests[-1].taste.n_liked == 1
                api.push_reaction(7, 8, sent[0]["message"]["message_id"], ["👎"])  # someone else: ignored
                api.push_reaction(7, 7, sent[0]["message"]["message_id"], [], old=["👍"])  # taken back
                for _ in range(100):
                    if not await engine.store.reactions(ref):
                        break
                    await asyncio.sleep(0.1)
                assert await engine.store.reactions(ref) == {}
                assert await engine.store.reactions(UserRef("telegram", "8", "7")) == {}
            finally:
                await adapter.stop()
    finally:
        await api.stop()


async def test_discord_reactions_reach_the_users_ranking(settings, replier, monkeypatch):
    requests = record_requests(replier, monkeypatch)
    fake = await FakeDiscord().start()
    dc = DiscordSettings(token=fake.token, api_url=fake.api_url, gateway_url=fake.gateway_url)
    try:
        async with Engine.from_settings(settings, replier=replier) as engine:
            client = RapportDiscordClient(engine, dc)
            task = asyncio.create_task(client.start(dc.token))
            await asyncio.wait_for(client.wait_until_ready(), 30)
            try:
                await fake.message(3, "hey, i play the guitar in a band")
                sent = await fake.wait_sent(1)
                ref = UserRef("discord", "3", str(50_003))
                await until_recorded(engine.store, ref)
                await fake.reaction(3, sent[0]["message"], "👎")
                for _ in range(100):
                    if await engine.store.reactions(ref):
                        break
                    await asyncio.sleep(0.1)
                assert [r["value"] for r in (await engine.store.reactions(ref)).values()] == [-1]
                await fake.message(3, "any plans for tonight?")
                await fake.wait_sent(2)
                assert requests[-1].taste is not None and requests[-1].taste.n_disliked == 1
                await fake.reaction(3, sent[0]["message"], "👎", add=False)
                for _ in range(100):
                    if not await engine.store.reactions(ref):
                        break
                    await asyncio.sleep(0.1)
                assert await engine.store.reactions(ref) == {}
                assert json.dumps(await engine.store.export(ref))  # reactions export as JSON
            finally:
                await client.close()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await fake.stop()


def test_simulated_user_reacts_by_words_and_counts_only():
    from bench.feedback import SimulatedUser, stems
    user = SimulatedUser(frozenset(stems("i love baking cookies")), likes_short=True, likes_questions=False,
                         openings=(0,))
    assert user.reacts("i baked cookies today.") == 1  # topic and length and a statement
    assert user.reacts("do you like cookies?") == 1  # topic and length
    assert user.reacts("what do you do for a living these days, and do you like your job?") == -1


def test_learning_users_get_replies_ranked_by_their_reactions(replier):
    from bench.feedback import build_pool, simulate, simulated_users
    from engine.safety import SafetyFilter
    from training.persona import PersonaConversation
    keep = SafetyFilter("standard").candidates_ok
    pools = [build_pool(replier, keep, text, []) for text in ("hi! how are you?", "i just got a puppy",
                                                            "what music do you like?")]
    convs = [PersonaConversation("c1", (("i love dogs.", "i play guitar.", "i bake bread."),
                                        ("i am a nurse.", "i like jazz.", "i live in paris.")), 1, ("hi",))]
    users = simulated_users(convs, 3, len(pools), 3, seed=0)
    reactions = {mode: simulate(replier, pools, users, mode)[0] for mode in ("greedy", "ranked", "learning")}
    assert all(r.shape == (3, 3) and set(np.unique(r)) <= {-1, 1} for r in reactions.values())
    # turn 1 is the greedy reply in both; the learning users' later replies come from the ranked pool
    assert (reactions["learning"][:, 0] == reactions["greedy"][:, 0]).all()


async def test_split_mode_gateway_records_what_workers_learn_from(redis_server, prefix):
    import redis.asyncio as aioredis
    from engine.config import Settings
    from engine.messages import OutgoingMessage, Reaction
    from engine.split.gateway import StreamGateway
    client = aioredis.from_url(redis_server.url)
    gateway = StreamGateway(Settings(redis_url=redis_server.url, key_prefix=prefix), client)
    await gateway.sent(OutgoingMessage("telegram", "5", "5", "i love jazz.", kind="reply"), ["77"])
    await gateway.sent(OutgoingMessage("telegram", "5", "5", "Usage: /profile", kind="command"), ["78"])
    await gateway.react(Reaction("telegram", "5", "5", "77", 1))
    await gateway.react(Reaction("telegram", "5", "5", "78", 1))  # a command's answer cannot be rated
    reactions = await gateway.store.reactions(UserRef("telegram", "5", "5"))
    assert [(r["text"], r["value"]) for r in reactions.values()] == [("i love jazz.", 1)]
    await client.aclose()
