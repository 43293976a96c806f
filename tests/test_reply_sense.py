"""The reply-sense checks (bench/reply_sense.py) on replies the issue quotes and on lines written here."""
from bench.reply_sense import (BAD_NEWS, GOOD_NEWS, NEUTRAL, QUESTIONS, answers, dodges, repeated_word,
                               score_heldout, stray_self_description, wrong_tone)


def test_tone():
    assert wrong_tone("oh no, i'm so sorry to hear that.", good_news=True)
    assert wrong_tone("Congratulations! That's great news.", good_news=False)
    assert wrong_tone("that's awesome, have fun!", good_news=False)
    assert not wrong_tone("congrats! when do you start?", good_news=True)
    assert not wrong_tone("i'm sorry for your loss. how old was he?", good_news=False)


def test_questions_answered_or_dodged():
    assert not answers("can you recommend a good book?", "wh", "sure, i'll check it out.")
    assert not answers("what's your favorite food?", "wh", "what's yours?")
    assert not answers("do you like jazz?", "yn", "i'm not sure. what about you?")
    assert not answers("do you like jazz?", "yn", "music is a big part of life.")
    assert answers("do you like jazz?", "yn", "i love jazz! i'm a big fan of the jazz.")
    assert answers("do you like horror movies?", "yn", "Not really, they scare me.")
    assert answers("what's your favorite food?", "wh", "pizza, for sure. what's yours?")
    assert answers("do you play any sports?", "yn", "I play soccer and basketball.")  # the asked verb, said of itself
    assert not answers("do you play any sports?", "yn", "sports are fun to watch.")
    assert dodges("what do you mean?") and dodges("I don't know.") and not dodges("I'd go to Japan.")


def test_repeated_words():
    assert repeated_word("hi! i'm a chat bot bot.")
    assert repeated_word("I I think so")
    assert not repeated_word("i love jazz, jazz is great")  # not back to back
    assert not repeated_word("that's a good good-bye")  # "good-bye" is another word


def test_stray_self_descriptions():
    assert stray_self_description("i'm so bored", "me too! i'm a nurse at a hospital.")
    assert stray_self_description("it's raining here", "i love rain. i have a dog named max.")
    assert not stray_self_description("i'm a nurse", "nice! i'm a nurse too.")  # shares "nurse"
    assert not stray_self_description("what do you do?", "i'm a teacher.")  # asked about the bot
    assert not stray_self_description("i'm so bored", "me too. want to play a game?")


def test_probe_sets_are_distinct_and_sized():
    lines = GOOD_NEWS + BAD_NEWS + [q for q, _ in QUESTIONS] + NEUTRAL
    assert len(lines) == len(set(lines)) == 110
    assert {kind for _, kind in QUESTIONS} == {"yn", "wh"}


def test_heldout_scoring():
    rows = [{"message": "do you like dogs?", "reply": "what about you?"},
            {"message": "i walked my dog", "reply": "nice nice. i'm a pilot."}]
    scored = score_heldout(rows)
    assert scored["repeat_replies"] == 1 and scored["dodged"] == 1.0 and scored["stray_self"] == 0.5
