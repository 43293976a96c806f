from engine.facts import extract_facts, extract_name
from engine.memory import answer_from_memory, second_person
from engine.prompt import BOT_MARK, USER_MARK, PromptBudget, Turn, build_source_ids
from engine.sanitize import clean_text
from engine.text import detokenize

SPECIAL = {"[CLS]": 101, "[SEP]": 102, "[unused1]": 2, "[unused2]": 3, "[unused3]": 4, "[unused4]": 5}


def encode(text):
    return [len(w) + 1000 for w in text.split()]


def test_prompt_layout_and_oldest_turn_dropped_first():
    turns = [Turn("a b c d e", True), Turn("f g", False), Turn("h i j", True)]
    ids = build_source_ids(encode, SPECIAL, turns, ["x y"], ["z"], PromptBudget(max_source_tokens=16))
    assert ids[0] == 101 and ids[-1] == 102
    assert ids[1] == 4 and ids[4] == 5  # persona mark, facts mark
    body = ids[6:-1]
    assert body == [SPECIAL[BOT_MARK], 1001, 1001, SPECIAL[USER_MARK], 1001, 1001, 1001]
    assert len(ids) <= 16


def test_newest_turn_always_kept_even_when_too_long():
    turns = [Turn(" ".join(["w"] * 100), True)]
    ids = build_source_ids(encode, SPECIAL, turns, budget=PromptBudget(max_source_tokens=20, max_turn_tokens=48))
    assert len(ids) == 20 and ids[-2] == 1001


def test_detokenize():
    assert detokenize("i ' m fine , thanks ! do n't worry") == "i'm fine, thanks! do n't worry"
    assert detokenize("it ' s well - known ( really )") == "it's well-known (really)"


def test_fact_extraction():
    assert extract_facts("Hi! My name is Ana and I like jazz. How are you?") == ["my name is ana", "i like jazz"]
    assert extract_facts("im doing good") == []
    assert extract_facts("what do you like?") == []
    assert extract_name("call me bob") == "Bob"
    assert extract_name("my name is not important") is None


def test_memory_answers():
    facts = ["my name is ana", "i like jazz", "my favorite food is pizza"]
    assert answer_from_memory("what's my name?", facts) == "Your name is Ana."
    assert answer_from_memory("Whats my favorite food", facts) == "Your favorite food is pizza."
    assert answer_from_memory("what do you know about me?", facts).startswith(
        "Here is what I remember: your name is Ana; you like jazz")
    assert answer_from_memory("what's your name?", facts) is None
    assert "haven't told me your name" in answer_from_memory("what is my name", [])
    assert second_person("i am a nurse and my dog is old") == "you are a nurse and your dog is old"


def test_clean_text():
    assert clean_text("  hi\x00there\u200b \u202e!  ", 100) == ("hi there !", False)
    assert clean_text(b"caf\xc3\xa9 \xff", 100) == ("café \ufffd", False)
    assert clean_text("x" * 50, 10) == ("x" * 10, True)
    assert clean_text("\ud800 ok", 10)[0].endswith("ok")
