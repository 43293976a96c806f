"""Synthetic-Persona-Chat preparation: splits by conversation, both sides, facts in the engine's form."""
import pytest

from training.persona import DEFAULT_PERSONA_DATA, as_fact, load_persona_splits, parse, persona_examples

needs_data = pytest.mark.skipif(not (DEFAULT_PERSONA_DATA / "valid.jsonl.gz").exists(),
                                reason="../shared/data/synthetic-persona-chat is not on this machine")


def test_persona_lines_become_engine_facts_and_both_sides_reply():
    conv = parse({"id": "x", "persona_1": ["I have a dog.", "I love jazz!"], "persona_2": ["I am a nurse."],
                  "turns": [[1, "Hi!"], [2, "Hello."], [2, "How are you?"], [1, "Good, my dog is sleeping."]]})
    assert as_fact("  I have a dog. ") == "i have a dog"
    assert conv.turns == ("Hi!", "Hello. How are you?", "Good, my dog is sleeping.")  # same-speaker runs merged
    first, second = persona_examples(conv)
    assert (first.reply, first.bot_facts, first.user_facts) == ("Hello. How are you?", ("i am a nurse",),
                                                                ("i have a dog", "i love jazz"))
    assert (second.bot_facts, second.user_facts) == (("i have a dog", "i love jazz"), ("i am a nurse",))


@needs_data
@pytest.mark.slow  # reads the whole persona corpus
def test_no_conversation_is_in_two_splits():
    splits = load_persona_splits()
    ids = {name: {c.conv_id for c in convs} for name, convs in splits.items()}
    assert not (ids["train"] & ids["valid"]) and not (ids["train"] & ids["test"]) and not (ids["valid"] & ids["test"])
    assert abs(len(ids["valid"]) - len(ids["test"])) <= 1 and len(ids["train"]) > 19_000
    assert load_persona_splits()["test"][0].conv_id == splits["test"][0].conv_id  # fixed seed
