"""Answer questions about what the user told the bot ("what's my name?", "what do I do for work?",
"what's my dog called?") from their profile facts, instead of letting the model guess."""
from __future__ import annotations

import re

from .facts import extract_name

_NAME_Q = re.compile(r"\b(what'?s|what is|whats|do you (?:know|remember)|tell me|say)\b.*\bmy name\b|\bwho am i\b",
                     re.IGNORECASE)
_ABOUT_Q = re.compile(r"\bwhat do you (?:know|remember) about me\b|\bwhat (?:did) i (?:tell you)\b|"
                      r"\bdo you remember me\b|\bwhat have i told you\b", re.IGNORECASE)
_FAVOURITE_Q = re.compile(r"\bwhat'?s? (?:is )?my fav(?:ou?rite)? (\w+)", re.IGNORECASE)
# (question about the user's ..., facts that answer it, how to name it when nothing is known)
_TOPICS = [
    (r"\bwhat (?:do|did) i do(?: for (?:work|a living))?\b|\bmy (?:job|work|profession|occupation|major)\b|"
     r"\bwhere do i (?:work|study)\b|\bwhat do i (?:work|study)\b",
     r"\b(?:work|works|job|profession|career|i'm an? |i am an? |student|major|study|studying|retired)\b", "your job"),
    (r"\bwhere (?:do|did) i (?:live|come from|grow up)\b|\bwhere am i from\b|\bmy (?:home ?town|city|country)\b",
     r"\b(?:live|living|lived|from|grew up|born|moved)\b", "where you live"),
    (r"\bdo i have (?:a |any )?(?:pets?|dogs?|cats?)\b|\bmy (?:pets?|dogs?|cats?|puppy|kitten|bird|fish|hamster|"
     r"horse)\b", r"\b(?:pets?|dogs?|cats?|puppy|kitten|birds?|fish|hamsters?|horses?)\b", "your pets"),
    (r"\bmy (?:hobby|hobbies|interests?)\b|\bwhat do i (?:like|love|enjoy)(?: to do| doing)?\b|\bwhat do i do for fun\b|"
     r"\bwhat (?:did|do) i (?:like|love|enjoy)\b",
     r"\b(?:like|love|enjoy|hobby|hobbies|play|every (?:day|morning|week|weekend)|on weekends)\b", "what you like"),
    (r"\bmy (?:family|brothers?|sisters?|siblings|mom|mum|mother|dad|father|wife|husband|kids|children|son|"
     r"daughter|parents|partner|girlfriend|boyfriend)\b|\bdo i have (?:any )?(?:kids|children|siblings|brothers|sisters)\b",
     r"\b(?:family|brothers?|sisters?|siblings|mom|mum|mother|dad|father|wife|husband|kids|children|sons?|"
     r"daughters?|parents|partner|girlfriend|boyfriend|married)\b", "your family"),
    (r"\bhow old am i\b|\bmy age\b", r"\byears old\b|\bi'm \d+\b|\bi am \d+\b|\bmy age\b", "your age"),
]
_TOPICS_RE = [(re.compile(q, re.IGNORECASE), re.compile(f, re.IGNORECASE), name) for q, f, name in _TOPICS]
_ASKING = re.compile(r"\?|^(?:what|where|who|how|do|did|which|tell me|remind me|can you remember)\b", re.IGNORECASE)
_NAMED = re.compile(r"(your name is |call you )(\w+)")
_SWAPS = {"i": "you", "i'm": "you're", "im": "you're", "my": "your", "me": "you", "am": "are",
          "myself": "yourself", "mine": "yours", "i've": "you've", "i'll": "you'll", "i'd": "you'd", "was": "were"}


def second_person(fact: str) -> str:
    """'i like jazz' -> 'you like jazz'."""
    words = fact.split()
    out = []
    for i, w in enumerate(words):
        swapped = _SWAPS.get(w.lower(), w)
        if w.lower() == "was" and (i == 0 or words[i - 1].lower() not in ("i",)):
            swapped = w
        out.append(swapped)
    return " ".join(out)


def _listed(facts: list[str]) -> str:
    return "; ".join(_NAMED.sub(lambda m: m.group(1) + m.group(2).capitalize(), second_person(f)) for f in facts)


def answer_from_memory(text: str, facts: list[str]) -> str | None:
    """A reply to a question about the user's own profile, or None if ``text`` is not one."""
    if _NAME_Q.search(text):
        for fact in reversed(facts):
            name = extract_name(fact)
            if name:
                return f"Your name is {name}."
        return "You haven't told me your name yet. Tell me with \"my name is ...\"."
    favourite = _FAVOURITE_Q.search(text)
    if favourite:
        topic = favourite.group(1).lower()
        hits = [f for f in facts if ("favorite" in f or "favourite" in f) and topic in f]
        if hits:
            return second_person(hits[-1]).capitalize() + "."
        return f"You haven't told me your favorite {topic} yet."
    if _ABOUT_Q.search(text):
        if not facts:
            return "I don't know much about you yet. Tell me about yourself!"
        return f"Here is what I remember: {_listed(facts[-5:])}."
    if not _ASKING.search(text.strip()):
        return None
    for question, answers, name in _TOPICS_RE:
        if question.search(text):
            hits = [f for f in facts if answers.search(f)]
            if not hits:
                return f"You haven't told me about {name} yet."
            return f"You told me: {_listed(hits[-3:])}."
    return None
