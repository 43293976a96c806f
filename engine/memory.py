"""Answer questions about what the user told the bot ("what's my name?") from their profile facts."""
from __future__ import annotations

import re

from .facts import extract_name

_NAME_Q = re.compile(r"\b(what'?s|what is|whats|do you (?:know|remember)|tell me|say)\b.*\bmy name\b|\bwho am i\b",
                     re.IGNORECASE)
_ABOUT_Q = re.compile(r"\bwhat do you (?:know|remember) about me\b|\bwhat (?:do|did) i (?:like|love|enjoy|tell you)\b|"
                      r"\bwhat are my (?:hobbies|interests)\b|\bdo you remember me\b", re.IGNORECASE)
_FAVOURITE_Q = re.compile(r"\bwhat'?s? (?:is )?my fav(?:ou?rite)? (\w+)", re.IGNORECASE)
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
        hits = [f for f in facts if "favorite" in f or "favourite" in f]
        hits = [f for f in hits if topic in f] or []
        if hits:
            return second_person(hits[-1]).capitalize() + "."
        return f"You haven't told me your favorite {topic} yet."
    if _ABOUT_Q.search(text):
        if not facts:
            return "I don't know much about you yet. Tell me about yourself!"
        listed = "; ".join(_NAMED.sub(lambda m: m.group(1) + m.group(2).capitalize(), second_person(f))
                           for f in facts[-5:])
        return f"Here is what I remember: {listed}."
    return None
