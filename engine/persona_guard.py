"""Keep the bot's persona apart from the user's: questions about the bot are answered from its persona
facts, and a candidate reply that claims one of the user's facts as the bot's own, or a name that is not
the bot's, is ranked down."""
from __future__ import annotations

import re

import numpy as np

from .facts import content_words

_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|ive|i'd|my|me|myself)\b", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+")
_OWN_NAME = re.compile(r"\b(?:my name is|my name's|call me)\s+([a-z]+)|"
                       r"\b(?:hi|hello|hey|hiya)\W+(?:i'm|i am|im)\s+([a-z]+)", re.IGNORECASE)
_NOT_NAMES = set("""good fine great well ok okay doing so not a an the here glad happy sorry sure just also really very
tired bored new back excited from in at still pretty alright all sad busy there doing going""".split())
IDENTITY = "I'm a chatbot, not a person: a program you can talk to."
# words too common to tell one person's facts from another's
_GENERIC = {"work", "live", "play", "make", "time", "day", "year", "thing", "people", "friend", "good", "great",
            "new", "big", "little", "home", "favorite", "favourite", "family", "life", "name", "every", "week",
            "weekend", "really", "always", "never", "now", "well", "fun", "kind"}
# (question about the bot, persona lines that answer it)
_SELF_TOPICS = [
    (r"\bwhat do you (?:like|love|enjoy)(?: to (?:do|talk about)| doing)?\b|\bwhat do you do for fun\b|"
     r"\byour (?:hobby|hobbies|interests|favou?rite thing)\b|\bwhat kind of things do you (?:like|enjoy)\b|"
     r"\bdo you like (?:music|movies|films)\b",
     r"\b(?:like|love|enjoy|hobby|hobbies|talk about|passion)\b"),
    (r"\bwhere (?:do you live|are you from|do you come from)\b|\byour home\b",
     r"\b(?:live|living|from|grew up|born)\b"),
    (r"\bwhat do you do(?: for (?:work|a living))?\b(?! for fun)|\byour (?:job|work)\b|\bwhere do you work\b",
     r"\b(?:work|job|i am an? |i'm an? |chatbot)\b"),
    (r"\bdo you have (?:a |any )?(?:pets?|dogs?|cats?)\b|\byour (?:pets?|dog|cat)\b",
     r"\b(?:pets?|dogs?|cats?|puppy|kitten|birds?|fish)\b"),
    (r"\byour family\b|\bdo you have (?:any )?(?:kids|children|siblings|brothers|sisters)\b",
     r"\b(?:family|brothers?|sisters?|siblings|mom|dad|mother|father|kids|children|married)\b"),
]
_SELF_TOPICS_RE = [(re.compile(q, re.IGNORECASE), re.compile(f, re.IGNORECASE)) for q, f in _SELF_TOPICS]
_IDENTITY_Q = re.compile(r"\bare you (?:a |an )?(?:human|real|person|robot|bot|chatbot|ai|computer|machine|alive)\b|"
                         r"\bwhat are you\b|\bwho are you\b|\btell me about yourself\b", re.IGNORECASE)


def _sentence(fact: str) -> str:
    text = fact.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def answer_about_self(text: str, persona: list[str]) -> str | None:
    """A reply to a question about the bot itself from its persona facts, or None."""
    if _IDENTITY_Q.search(text):
        about = [f for f in persona if "chatbot" not in f and "bot" not in f.split()][:2]
        return " ".join([IDENTITY] + [_sentence(f) for f in about])
    for question, answers in _SELF_TOPICS_RE:
        if question.search(text):
            hits = [f for f in persona if answers.search(f)]
            return " ".join(_sentence(f) for f in hits[:2]) if hits else None
    return None


def claims_user_facts(texts: list[str], user_facts: list[str], persona: list[str]) -> np.ndarray:
    """1 for each candidate with a first-person sentence that holds a content word of the user's facts
    that the bot's persona does not have ("i'm a nurse" after the user said "i work as a nurse")."""
    theirs = content_words(" ".join(user_facts)) - content_words(" ".join(persona)) - _GENERIC
    out = np.zeros(len(texts), dtype=np.float32)
    if not theirs:
        return out
    for i, text in enumerate(texts):
        for sentence in _SENTENCES.split(text):
            if _FIRST_PERSON.search(sentence) and content_words(sentence) & theirs:
                out[i] = 1.0
                break
    return out


def claims_a_name(texts: list[str], bot_name: str) -> np.ndarray:
    """1 for each candidate that gives the bot a name other than ``bot_name`` ("hi, my name is emily!": a
    real person's reply retrieved from the corpus, or the model imitating one)."""
    def names(text: str) -> set[str]:
        return {(m.group(1) or m.group(2)).lower() for m in _OWN_NAME.finditer(text)} - _NOT_NAMES

    return np.array([bool(names(t) - {bot_name.lower()}) for t in texts], dtype=np.float32)
