"""The engine end to end: real model, real Redis server, the fake adapter."""
import asyncio
import json
from dataclasses import replace

import pytest

from bots.fake import FakeAdapter
from engine.engine import EMPTY_REPLY, RATE_LIMITED, TOO_LONG, Engine
from engine.messages import IncomingMessage
from engine.model.replier import RankWeights, Replier


@pytest.fixture
async def engine(settings, replier):
    eng = Engine.from_settings(settings, replier=replier)
    async with eng:
        yield eng


async def test_commands(engine):
    bot = FakeAdapter(engine)
    assert "Rapport" in (await bot.send("u1", "/start", user_name="Ana")).text
    assert "/profile" in (await bot.send("u1", "/help")).text
    assert "/help" in (await bot.send("u1", "/nonsense")).text
    assert (await bot.send("u1", "/profile add I play the guitar")).text == "Added: i play the guitar"
    assert (await bot.send("u1", "/profile add I like tea")).text == "Added: i like tea"
    shown = (await bot.send("u1", "/profile")).text
    assert "1. i play the guitar" in shown and "2. i like tea" in shown
    assert (await bot.send("u1", "/profile forget 1")).text == "Forgotten: i play the guitar"
    assert "between 1 and 1" in (await bot.send("u1", "/profile forget 7")).text
    assert "short" in (await bot.send("u1", "/style short")).text
    assert "Usage: /style short" in (await bot.send("u1", "/style loud")).text
    assert "Choose one" in (await bot.send("u1", "/style")).text
    exported = json.loads((await bot.send("u1", "/export")).text)
    assert exported["facts"] == ["i like tea"] and exported["preferences"] == {"style": "short"}
    assert "forgot this conversation" in (await bot.send("u1", "/reset")).text
    assert (await engine.store.facts(engine_ref("u1"))) == ["i like tea"]
    assert "/forget yes" in (await bot.send("u1", "/forget")).text  # asks first
    assert "deleted everything" in (await bot.send("u1", "/forget yes")).text
    assert await engine.store.r.keys(f"{engine.settings.key_prefix}:*fake:u1*") == []


async def test_commands_match_exactly(engine):
    """Trailing words are not ignored: "/forget about that" deletes nothing, "/export please" exports nothing."""
    bot = FakeAdapter(engine)
    await bot.send("u2", "/profile add I like tea")
    for text in ("/forget about that last thing", "/export please now", "/reset everything", "/profile forget ²",
                 "/profile forget 1 2", "/profile remove 1", "/help me"):
        out = await bot.send("u2", text)
        assert out.kind == "command" and out.text.startswith("Usage: "), (text, out.text)
    assert await engine.store.facts(engine_ref("u2")) == ["i like tea"]
    assert "Send /forget first" in (await bot.send("u2", "/forget yes")).text  # no confirmation without asking
    assert await engine.store.facts(engine_ref("u2")) == ["i like tea"]


async def test_forget_confirmation_expires(engine):
    bot = FakeAdapter(engine)
    await bot.send("u3", "/profile add I like tea")
    await bot.send("u3", "/forget")
    await engine.store.r.delete(engine.store.user_key("fake:u3", "confirm"))  # what the 2-minute TTL does
    assert "Send /forget first" in (await bot.send("u3", "/forget yes")).text
    assert await engine.store.r.ttl(engine.store.user_key("fake:u3", "confirm")) == -2
    await bot.send("u3", "/forget")
    assert 0 < await engine.store.r.ttl(engine.store.user_key("fake:u3", "confirm")) <= 120


def engine_ref(user):
    from engine.state.store import UserRef
    return UserRef("fake", user, user)


async def test_conversation_remembers_name_and_likes(engine):
    bot = FakeAdapter(engine)
    reply = await bot.send("ana", "hi! my name is Ana and I like jazz")
    assert reply.kind == "reply" and reply.text.strip()
    assert (await bot.send("ana", "what's my name?")).text == "Your name is Ana."
    assert "you like jazz" in (await bot.send("ana", "what do you know about me?")).text
    assert "haven't told me" in (await bot.send("bob", "what's my name?")).text
    history = await engine.store.history(engine_ref("ana"))
    assert [t.role for t in history] == ["user", "bot"] * 3
    vec, seen = await engine.store.vector(engine_ref("ana"))
    assert seen == 3 and vec.shape == (384,)


async def test_memory_survives_restart(tmp_path, replier, prefix):
    from engine.config import Settings
    settings = Settings(redis_url=None, data_dir=tmp_path, key_prefix=prefix)
    async with Engine.from_settings(settings, replier=replier) as eng:
        await FakeAdapter(eng).send("ana", "My name is Ana. I love hiking")
    async with Engine.from_settings(settings, replier=replier) as eng:
        bot = FakeAdapter(eng)
        assert (await bot.send("ana", "what is my name")).text == "Your name is Ana."
        assert "i love hiking" in (await bot.send("ana", "/profile")).text


# 50 real first names, as users state them: this test is about order and memory under load, not about how the
# safety classifier reads odd names (round 2 gave "my name is Person38" its check-in reply; tests of templated
# talk live in test_safety_classifier.py)
NAMES = ("Ana Ben Cleo Dev Eli Fay Gus Hana Ivo Jade Kai Lena Milo Nia Omar Pia Quinn Rosa Sam Tara Ugo Vera Wes "
         "Xena Yuri Zoe Abel Bea Cruz Dana Emil Flor Gil Hugo Iris Joel Kira Leo Maya Nils Olga Paz Remy Sara Theo "
         "Uma Vik Wren Yara Zeke").split()


async def test_fifty_concurrent_users_get_their_own_replies_in_order(engine):
    bot = FakeAdapter(engine)

    async def user(k):
        uid = f"user{k}"
        tasks = [asyncio.create_task(bot.send(uid, text)) for text in (
            f"my name is {NAMES[k]}", f"/profile add fact {k} one", f"/profile add fact {k} two",
            "what's my name?", "tell me something fun")]
        return uid, await asyncio.gather(*tasks)

    results = await asyncio.wait_for(asyncio.gather(*(user(k) for k in range(50))), timeout=600)
    for uid, outs in results:
        k = uid.removeprefix("user")
        assert all(o.user_id == uid and o.chat_id == uid for o in outs)
        assert outs[1].text == f"Added: fact {k} one" and outs[2].text == f"Added: fact {k} two"
        assert outs[3].text == f"Your name is {NAMES[int(k)]}."
        assert outs[4].kind == "reply" and outs[4].text
        history = await engine.store.history(engine_ref(uid))
        assert [t.text for t in history if t.role == "user"] == [f"my name is {NAMES[int(k)]}", "what's my name?",
                                                                    "tell me something fun"]


async def test_a_redelivered_message_is_answered_once(engine):
    bot = FakeAdapter(engine)
    first = await bot.send("dup", "I like sailing", message_id="m1")
    again = await bot.send("dup", "I like sailing", message_id="m1")
    assert first.kind == "reply" and first.text
    assert again.kind == "duplicate" and again.text == ""
    assert len(bot.outbox["dup"]) == 1
    assert [t.text for t in await engine.store.history(engine_ref("dup"))] == ["I like sailing", first.text]
    same = await engine.answer(IncomingMessage("fake", "dup", "dup", "I like sailing", message_id="m1"))
    assert same.text == first.text  # answering it again (a reclaimed stream entry) repeats the stored reply
    assert len(await engine.store.history(engine_ref("dup"))) == 2


BAD_INPUTS = ["", "   \n\t ", "x" * 100_000, "\x00\x01\x02 hello \x7f", "😀🎉🔥" * 50, "你好，你叫什么名字？",
              "مرحبا كيف حالك", "zero\u200bwidth\u200d\ufeff text", "\u202eevil rtl", b"bad \xff\xfe utf8".decode(
                  "utf-8", errors="surrogateescape"), "/", "/profile forget -1", "/profile forget 99999999999999999999", "/profile forget ²",
              "/style", "/PROFILE", "/profile add " + "z" * 5000, "\n/reset", "@everyone <b>hi</b> [x](y)"]


@pytest.mark.parametrize("text", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
async def test_bad_input_gets_a_reply(engine, text):
    out = await FakeAdapter(engine).send("bad", text)
    assert out.text.strip() and out.user_id == "bad"
    if not text.strip():
        assert out.text == EMPTY_REPLY
    if len(text) == 100_000:
        assert out.text.endswith(TOO_LONG.format(n=engine.settings.max_message_chars))


async def test_rate_limit_keeps_the_message_and_never_blocks_commands(settings, replier):
    async with Engine.from_settings(replace(settings, rate_limit_per_minute=1), replier=replier) as eng:
        bot = FakeAdapter(eng)
        await bot.send("fast", "what's my name?")
        out = await bot.send("fast", "please remember this")
        assert out.text == RATE_LIMITED and out.kind == "rate_limited"
        assert (await eng.store.history(engine_ref("fast")))[-1].text == "please remember this"
        assert "/forget yes" in (await bot.send("fast", "/forget")).text  # commands always run
        assert "deleted everything" in (await bot.send("fast", "/forget yes")).text
        assert await eng.store.history(engine_ref("fast")) == []


async def test_group_chat_keeps_users_apart(engine):
    a = IncomingMessage("fake", "group1", "alice", "my name is Alice", is_private=False)
    b = IncomingMessage("fake", "group1", "bob", "what's my name?", is_private=False)
    await engine.handle(a)
    out = await engine.handle(b)
    assert "Alice" not in out.text and out.user_id == "bob"


async def test_unreachable_redis_is_a_clear_error(settings, replier):
    eng = Engine.from_settings(replace(settings, redis_url="redis://127.0.0.1:1/0"), replier=replier)
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        await eng.start()
    await eng.stop()


def test_ranking_uses_the_profile_and_avoids_repeats(replier):
    replier = Replier(replier.model, replier.codec, replier.encoder, replier.budget, RankWeights(profile=0.5))
    cands = [("i love playing football", -1.0), ("i enjoy baking cakes", -1.0)]
    context = "what do you like to do on weekends?"
    baker = replier.encoder.embed(["i bake bread and cakes every weekend, baking is my passion"])[0]

    def gap(ranked):
        by = {r.text: r for r in ranked}
        return by["i enjoy baking cakes"].score - by["i love playing football"].score

    context_vec = replier.encoder.embed([context])[0]
    with_profile = replier.rank(context_vec, cands, baker, [])
    without = replier.rank(context_vec, cands, None, [])
    assert all(r.profile == 0 for r in without)
    assert gap(with_profile) > gap(without)
    repeated = replier.rank(context_vec, cands, None, ["I enjoy baking cakes"])
    assert gap(repeated) == pytest.approx(gap(without) - 1.0, abs=1e-5)


def test_message_requires_ids():
    for bad in ({"user_id": ""}, {"chat_id": ""}, {"platform": "a:b"}):
        kwargs = {"platform": "fake", "chat_id": "c", "user_id": "u", "text": "hi", **bad}
        with pytest.raises(ValueError):
            IncomingMessage(**kwargs)


def test_style_scales_the_generator_weight(replier):
    assert replier.weights_for("precise").generator == pytest.approx(2 * replier.weights.generator)
    assert replier.weights_for("creative").generator == pytest.approx(0.5 * replier.weights.generator)
    assert replier.weights_for("balanced") == replier.weights


def test_shipped_ranking_weights_are_loaded(replier):
    """The weights tune-ranking chose on the valid split travel in the model's rapport_config.json."""
    from engine.config import DEFAULT_MODEL
    tuned = json.loads((DEFAULT_MODEL / "rapport_config.json").read_text())["rank_weights"]
    assert replier.weights == RankWeights(**tuned)


def test_mmi_prior_and_hubness_mark_generic_replies(replier):
    """The two terms against bland replies: a generic reply is likelier with no context at all (its MMI
    prior) and sits closer to every context (its hubness) than a specific one."""
    generic, specific = "i don't know.", "my grandmother keeps bees on a farm near lisbon."
    prior = replier.priors([generic, specific])
    assert prior[0] > prior[1] + 0.5
    hub = replier.index.hubness(replier.encoder.embed(["haha yeah", "the eiffel tower was finished in 1889."]))
    assert hub[0] > hub[1]


def test_greedy_mode_sends_the_greedy_reply_unless_it_cannot_be_sent(replier):
    from engine.model.prompt import Turn
    from engine.model.decoding import GREEDY, complete_sentences
    from engine.model.replier import LOST_FOR_WORDS, SAFE_FALLBACK, ReplyRequest
    greedy = Replier(replier.model, replier.codec, replier.encoder, replier.budget, replier.weights,
                     index=replier.index, mode="greedy")
    turns = [Turn("i just got back from a hike in the mountains", True)]
    cand = replier.model.generate(greedy.source_ids(turns, [], []), GREEDY)[0]
    text = replier.codec.decode(list(cand.ids))
    text = text if cand.ids and cand.ids[-1] == replier.model.eos_id else complete_sentences(text)
    assert greedy.reply(turns, [], [], None).text == text
    # the output filter drops the greedy reply: the full candidate pool answers instead
    request = ReplyRequest(turns, [], [], None, keep=lambda texts: [t != text for t in texts])
    fallback = greedy.reply_batch([request])[0][0].text
    assert fallback != text and fallback not in ("", LOST_FOR_WORDS, SAFE_FALLBACK)
    with pytest.raises(ValueError):
        Replier(replier.model, replier.codec, replier.encoder, mode="fastest")

