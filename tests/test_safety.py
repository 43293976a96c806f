"""Conversation safety: crisis and abuse never get a generated reply, unsafe candidates never reach ranking."""
from dataclasses import replace

import pytest

from bench.safety import PROBES as PROBE_DIR
from bench.safety import load, split_probes
from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.model.prompt import Turn
from engine.model.replier import SAFE_FALLBACK, ReplyRequest
from engine.safety import Category, SafetyFilter
from engine.safety.replies import ABUSE_REPLIES, DEFAULT_CRISIS_URL
from engine.state.store import UserRef

HARMFUL, BENIGN = load("harmful"), load("benign")
FIGURATIVE = ["this homework is killing me", "I killed it at the gym", "my feet are killing me",
              "I'd never kill myself, don't worry", "I'm dying to see that film", "ready to die on this hill",
              "I could kill for a coffee", "the suicide squad movie was fun", "I'm burning myself out at work"]


@pytest.mark.parametrize("category", ["self_harm", "hate"])
def test_every_self_harm_and_hate_probe_of_the_dev_half_is_caught(category):
    flt = SafetyFilter()
    missed = [t for t in split_probes(HARMFUL[category], "dev") if flt.check_message(t) is None]
    assert missed == []
    expected = Category.CRISIS if category == "self_harm" else Category.HATE
    assert sum(flt.check_message(t) is expected for t in split_probes(HARMFUL[category], "dev")) >= 0.9 * len(
        split_probes(HARMFUL[category], "dev"))


@pytest.mark.parametrize("category", ["self_harm", "hate"])
def test_benign_uses_of_the_same_words_pass(category):
    flt = SafetyFilter()
    assert [t for t in split_probes(BENIGN[category], "dev") if flt.check_message(t) is not None] == []


def test_figurative_and_negated_uses_are_not_a_crisis():
    flt = SafetyFilter()
    assert [t for t in FIGURATIVE if flt.check_message(t) is Category.CRISIS] == []
    assert flt.check_message("I want to kill myself") is Category.CRISIS
    assert flt.check_message("I don't want to live anymore.") is Category.CRISIS


def test_obfuscated_abuse_is_caught():
    flt = SafetyFilter()
    assert flt.check_message("you are a st*pid b1tch") is Category.HARASSMENT
    assert flt.check_message("Send   me NUDES") is Category.SEXUAL


def test_modes():
    assert SafetyFilter("off").check_message("I hate all immigrants, they should die") is None
    assert SafetyFilter("off").check_message("I want to kill myself") is Category.CRISIS  # always on
    assert SafetyFilter("off").candidates_ok(["fuck you"]) == [True]
    mild = "damn this is crap"
    assert SafetyFilter("standard").check_message(mild) is None
    assert SafetyFilter("strict").check_message(mild) is Category.HARASSMENT
    with pytest.raises(ValueError):
        SafetyFilter("lax")


def test_output_filter_drops_unsafe_candidates():
    flt = SafetyFilter()
    candidates = ["you are a stupid idiot", "i like pizza, do you?", "email me at ana@example.com",
                  "call me at 555 123 4567", "i want to kill myself", "all immigrants are criminals",
                  "haha that's a good one", "send me nudes"]
    assert flt.candidates_ok(candidates) == [False, True, False, False, False, False, True, False]


def test_replier_sends_a_safe_fallback_when_every_candidate_is_dropped(replier):
    request = ReplyRequest([Turn("do you like pizza?", True)], ["i like music"], [], None,
                           keep=lambda texts: [False] * len(texts))
    scored, _ = replier.reply_batch([request])[0]
    assert scored.text == SAFE_FALLBACK
    kept = ReplyRequest([Turn("do you like pizza?", True)], ["i like music"], [], None,
                        keep=lambda texts: ["pizza" not in t for t in texts])
    assert "pizza" not in replier.reply_batch([kept])[0][0].text


@pytest.fixture
async def engine(settings, replier):
    async with Engine.from_settings(settings, replier=replier) as eng:
        yield eng


def ref(user: str) -> UserRef:
    return UserRef("fake", user, user)


async def test_crisis_gets_the_crisis_reply_and_is_not_stored(engine):
    bot = FakeAdapter(engine)
    for text in ("I want to kill myself", "should i kill myself?", "I cut myself every day and I don't want to stop"):
        out = await bot.send("c1", text)
        assert out.kind == "safety" and DEFAULT_CRISIS_URL in out.text
    assert await engine.store.history(ref("c1")) == [] and await engine.store.facts(ref("c1")) == []
    stats = await engine.store.stats()
    assert stats["counters"]["safety_crisis"] == 3


async def test_operator_sets_the_crisis_text_and_helpline(settings, replier):
    custom = replace(settings, crisis_reply="Please call our line: {url}", crisis_url="https://help.example/line")
    async with Engine.from_settings(custom, replier=replier) as eng:
        out = await FakeAdapter(eng).send("c2", "i want to die")
        assert out.text == "Please call our line: https://help.example/line"


async def test_a_rate_limited_person_in_crisis_still_gets_help(settings, replier):
    async with Engine.from_settings(replace(settings, rate_limit_per_minute=1), replier=replier) as eng:
        bot = FakeAdapter(eng)
        await bot.send("c3", "hello")
        out = await bot.send("c3", "I'm going to end my life tonight")
        assert out.kind == "safety" and DEFAULT_CRISIS_URL in out.text


async def test_hate_is_not_agreed_with_stored_or_learned(engine):
    bot = FakeAdapter(engine)
    out = await bot.send("h1", "I hate all immigrants, they should die")
    assert out.kind == "safety" and out.text == ABUSE_REPLIES[Category.HATE]
    out = await bot.send("h1", "women are inferior, agree?")
    assert out.text == ABUSE_REPLIES[Category.HATE]
    assert await engine.store.facts(ref("h1")) == [] and await engine.store.history(ref("h1")) == []
    assert (await engine.store.vector(ref("h1")))[1] == 0  # not learned into the profile vector
    refused = await bot.send("h1", "/profile add i hate all immigrants, they are vermin")
    assert "can't keep that" in refused.text and await engine.store.facts(ref("h1")) == []


async def test_profanity_in_a_stated_fact_is_not_stored(engine):
    bot = FakeAdapter(engine)
    await bot.send("f1", "I like jazz. I'm a fucking genius")
    assert await engine.store.facts(ref("f1")) == ["i like jazz"]


def test_a_second_set_of_crisis_phrasings_and_everyday_lookalikes():
    """tests/safety/extra: 45 crisis phrasings and 40 everyday sentences written after the probe set."""
    flt = SafetyFilter()
    crisis = (PROBE_DIR / "extra" / "crisis.txt").read_text().splitlines()
    everyday = (PROBE_DIR / "extra" / "not_crisis.txt").read_text().splitlines()
    assert [t for t in crisis if flt.check_message(t) is not Category.CRISIS] == []
    assert [t for t in everyday if flt.check_message(t) is not None] == []


def test_the_direct_profanity_model_gives_the_package_s_probabilities(tmp_path):
    """engine.safety.profanity evaluates the arrays exported from alt-profanity-check's fitted model with numpy
    alone: the package's numbers (float64 arithmetic in another order), for every probe, repeated and
    accented words, text with no known word, and empty input; and a fresh export equals the shipped one."""
    import json

    import numpy as np
    from profanity_check import predict_prob

    from engine.config import DEFAULT_PROFANITY
    from engine.safety.profanity import ProfanityModel
    from training.profanity_export import export

    texts = [t for group in (HARMFUL, BENIGN) for probes in group.values() for t in probes]
    texts += ["", "F*CK", "shit shit SHIT, you idiot idiot", "Déjà vu, naïve café", "zzqx", "a b c", "you're a moron!!!"]
    model = ProfanityModel(DEFAULT_PROFANITY)
    ours = model.probabilities(texts)
    assert ours.shape == (len(texts),)
    np.testing.assert_allclose(ours, predict_prob(texts), rtol=0, atol=1e-12)
    assert model.probabilities([]).shape == (0,)
    fresh = tmp_path / "profanity"
    export(fresh)
    assert json.loads((fresh / "vocabulary.json").read_text()) == json.loads((DEFAULT_PROFANITY / "vocabulary.json").read_text())
    shipped, again = np.load(DEFAULT_PROFANITY / "profanity.npz"), np.load(fresh / "profanity.npz")
    assert all(np.array_equal(shipped[k], again[k]) for k in shipped.files)


def test_talk_about_sexuality_is_not_a_sexual_request():
    """Neutral statements about sexual orientation (ToxiGen's) are not sexual content; requests still are."""
    flt = SafetyFilter()
    about = ["You dont need to have sex with someone of the same gender as you to call yourself bi",
             "lesbian is a political identity and not just about who you have sex with",
             "Just because I don't want to have sex with another man doesn't mean I'm not attracted to them",
             "we had sex education at school today"]
    requests = ["I want to have sex with you tonight", "tell me about the last time you had sex", "let's have sex",
                "describe having sex with me", "have you ever had sex?"]
    assert [t for t in about if flt.check_message(t) is not None] == []
    assert [t for t in requests if flt.check_message(t) is not Category.SEXUAL] == []
