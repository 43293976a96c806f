"""Rule-based extraction of facts people state about themselves ("my name is Ana", "I like jazz")."""
from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|,?\s+(?:and|but)\s+(?=(?:i|my|i'm|im)\b)", re.IGNORECASE)
_FACT_START = re.compile(
    r"^(?:so |well |and |but |also |actually |oh |yeah |yes |haha |lol )*"
    r"(my name is|my name's|call me|i am|i'm|im|i like|i love|i enjoy|i hate|i work|i live|"
    r"i have|i've got|i study|i go to|i play|i grew up|i was born|i'm from|i come from|"
    r"my favou?rite|my job|my major|my hobby|my hobbies|my wife|my husband|my dog|my cat|"
    r"my family|my brother|my sister|my mom|my dad|my parents|my kids|my son|my daughter)\b",
    re.IGNORECASE,
)
_NOT_A_FACT = re.compile(
    r"\?|^(?:i am|i'm|im) (?:not sure|sure|sorry|good|fine|ok|okay|doing|going to|gonna|glad|"
    r"great|well|here|so|just|pretty good|alright|thinking|trying|back)\b",
    re.IGNORECASE,
)
_NAME = re.compile(r"\b(?:my name is|my name's|call me|i am called|i'm called)\s+([A-Za-z][\w'-]{0,30})",
                   re.IGNORECASE)
_NON_NAMES = {"not", "a", "the", "just", "so", "very", "really", "also", "actually", "is"}


def split_sentences(text: str) -> list[str]:
    """Split text into sentences on ., !, ? and newlines."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def extract_facts(text: str, min_words: int = 3, max_words: int = 20) -> list[str]:
    """Self-disclosure sentences of ``text``, lower-cased, without trailing punctuation."""
    facts = []
    for sentence in split_sentences(text):
        start = _FACT_START.search(sentence)
        if not start or _NOT_A_FACT.search(sentence[start.start():]):
            continue
        fact = sentence[start.start():].strip(" .!,;").lower()
        if min_words <= len(fact.split()) <= max_words:
            facts.append(fact)
    name = extract_name(text)
    if name and not any(f.startswith(("my name", "call me")) for f in facts):
        facts.append(f"my name is {name.lower()}")
    return facts


def extract_name(text: str) -> str | None:
    """The name in "my name is X" / "call me X", capitalised, or None."""
    match = _NAME.search(text)
    if not match or match.group(1).lower() in _NON_NAMES:
        return None
    return match.group(1).capitalize()
