"""The bot keeps its own persona: questions about it are answered from its persona facts, and a
candidate that claims the user's facts as the bot's own is ranked down."""

from bench.persona import claims, confusion_probes
from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.persona_guard import IDENTITY, answer_about_self, claims_user_facts

PERSONA = ["i am a chatbot who likes to talk about anything", "i like music and movies", "i live on a server"]


def test_questions_about_the_bot_are_answered_from_its_persona():
    assert answer_about_self("where do you live?", PERSONA) == "I live on a server."
    assert "I like music and movies." in answer_about_self("what do you do for fun?", PERSONA)
    assert answer_about_self("are you human?", PERSONA).startswith(IDENTITY)  # never claims to be a person
    assert answer_about_self("do you have any pets?", PERSONA) is None  # not in the persona: the model answers
    assert answer_about_self("what's the weather like?", PERSONA) is None


def test_candidates_that_claim_the_users_facts_are_marked():
    marked = claims_user_facts(["i'm a nurse. what about you?", "what do you do?", "i work in a hospital",
                                "nurses are great"], ["i work as a nurse"], PERSONA)
    assert marked.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert claims_user_facts(["i like music"], ["i like music"], PERSONA).tolist() == [0.0]  # shared with the persona


async def test_the_bot_does_not_claim_the_users_facts(settings, replier):
    """A fixed subset of bench.persona's confusion probes (every fourth), through the engine."""
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        claimed = []
        for i, (statement, key, question) in enumerate(confusion_probes()[::4]):
            await bot.send(f"p{i}", statement)
            reply = (await bot.send(f"p{i}", question)).text
            if claims(reply, key):
                claimed.append((statement, question, reply))
        assert claimed == []


def test_a_name_that_is_not_the_bots_is_a_claim():
    from engine.persona_guard import claims_a_name
    texts = ["hiia, my name is emily!", "hi, my name is Rapport.", "hi, i'm emily! nice to meet you.",
             "hi, i'm good, thanks", "hello there!"]
    assert claims_a_name(texts, "Rapport").tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
