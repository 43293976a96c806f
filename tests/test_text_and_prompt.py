from engine.facts import extract_facts, extract_name
from engine.memory import answer_from_memory, second_person
from engine.model.prompt import BOT_MARK, USER_MARK, PromptBudget, Turn, build_source_ids
from engine.sanitize import clean_text
from engine.model.text import detokenize

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


def test_a_cut_reply_is_trimmed_to_its_last_sentence():
    from engine.model.decoding import complete_sentences
    assert complete_sentences("i don't know. i'm going to go to bed. i") == "i don't know. i'm going to go to bed."
    assert complete_sentences("what?! no way") == "what?!"
    assert complete_sentences("i like the 3.5 version and") == ""


def test_habits_jobs_and_pets_are_facts_and_passing_states_are_not():
    assert extract_facts("I play tennis every Saturday with my brother.") == ["i play tennis every saturday with my brother"]
    assert extract_facts("I'm from Lisbon, and I love surfing") == ["i'm from lisbon", "i love surfing"]
    assert extract_facts("My dog is called Rex. I work as a nurse") == ["my dog is called rex", "i work as a nurse"]
    assert extract_facts("i love my dog too") == ["i love my dog"]
    for passing in ("I think it is great", "I would love to visit Japan", "I'm so tired today", "I love that about them",
                    "I like it too", "I'm [user 2's name]", "do I like jazz?"):
        assert extract_facts(passing) == [], passing


def test_questions_about_any_stored_fact_are_answered_from_memory():
    facts = ["my name is ana", "i have a dog named rex", "i work as a nurse", "i go running every morning",
             "i live in lisbon"]
    assert answer_from_memory("what's my dog's name?", facts) == "You told me: you have a dog named rex."
    assert answer_from_memory("what do I do for work?", facts) == "You told me: you work as a nurse."
    assert answer_from_memory("what are my hobbies?", facts) == "You told me: you go running every morning."
    assert answer_from_memory("where do I live?", facts) == "You told me: you live in lisbon."
    assert answer_from_memory("how old am I?", facts) == "You haven't told me about your age yet."
    assert answer_from_memory("what do you do for work?", facts) is None  # about the bot: the model answers
    assert answer_from_memory("I love my dog", facts) is None


def test_the_prompt_fits_five_bot_and_five_user_facts():
    """The persona-trained budget (192 tokens, 64 per side) holds 5 + 5 typical persona lines and the turns."""
    import json

    from engine.config import DEFAULT_MODEL
    from engine.model.prompt import PromptBudget, Turn, build_source_ids
    from engine.model.text import TextCodec
    codec = TextCodec.from_file(DEFAULT_MODEL / "tokenizer.json")
    bot = ["i love to bake cookies", "i have two dogs", "knitting is my passion", "i live near the sea",
           "my favorite band is the beatles"]
    user = ["i work as a nurse", "i go running every morning", "i have a cat named milo", "i grew up in ohio",
            "my sister is a teacher"]
    budget = PromptBudget(max_source_tokens=192, max_facts_tokens=64)
    ids = build_source_ids(codec.encode, codec.special_ids, [Turn("hi! how are you today?", True)], bot, user, budget)
    text = codec.decode(ids)
    assert all(fact.split()[-1] in text for fact in bot + user) and "how are you today" in text
    shipped = json.loads((DEFAULT_MODEL / "rapport_config.json").read_text())["prompt_budget"]
    assert PromptBudget(**shipped).max_source_tokens <= 256  # the model's positions


def test_template_slots_of_the_persona_data_are_recognised():
    from engine.model.replier import TEMPLATE_SLOT
    assert TEMPLATE_SLOT.search("hi, i'm [name].") and TEMPLATE_SLOT.search("hi, i'm [user 2's name].")
    assert not TEMPLATE_SLOT.search("i love jazz, and you?")
