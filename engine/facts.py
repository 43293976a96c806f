"""Rule-based extraction of facts people state about themselves ("my name is Ana", "I like jazz",
"I go running every morning"), in the form the model was trained on: lower case, first person, no
final punctuation ("i have a dog", "i work as a nurse", "my favorite food is pizza").

A sentence is a fact when it starts (after fillers like "well", "yeah") with a first-person subject,
is not a question, not a passing state ("i'm tired", "i'm glad", "i think ..."), not a plan or a wish
("i will", "i would love to"), and does not lean on the conversation ("i love that about them",
"i like it too"): those cannot stand alone in a profile.
"""
from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+|,?\s+(?:and|but|so)\s+(?=(?:i|my|i'm|im|i've)\b)", re.IGNORECASE)
_FILLERS = r"(?:(?:so|well|and|but|also|actually|oh|yeah|yes|yep|haha|lol|hey|hi|hello|wow|cool|nice|ok|okay|" \
           r"sure|same|me too|honestly|personally|well i|i mean)[,!.]? )*"
_FACT_START = re.compile(rf"^{_FILLERS}(my name is|my name's|call me|i'm|im|i am|i've|ive|i|my)\b", re.IGNORECASE)
# "i <verb>" that says something passing, uncertain or about the conversation rather than the person
_NOT_A_FACT = re.compile(
    r"\?|^(?:i|i'm|im|i am)\s+(?:also\s+|really\s+|just\s+|totally\s+|so\s+|very\s+|pretty\s+|definitely\s+)*"
    r"(?:think|thought|guess|hope|know|knew|mean|see|agree|understand|feel|felt|wonder|bet|believe|suppose|"
    r"would|will|'ll|ll|can|can't|cannot|could|should|might|may|must|wish|want|wanted|need|needed|hear|heard|"
    r"say|said|told|tell|ask|asked|was just|just|am not|m not|not|don't know|dont know|didn't|did|do not|don't|"
    r"dont|haven't|have to|had to|got to|gotta|am going|going|gonna|glad|happy|sorry|sure|fine|good|great|ok|"
    r"okay|alright|well|here|back|doing|thinking|trying|looking forward|excited|free|busy|tired|bored|hungry|"
    r"interested|curious|impressed|jealous|afraid that|sure that|thankful|grateful|lucky|welcome|kidding|"
    r"joking|sold|down for|in|on it|there|so|still|let|love that|like that|love it|like it|love to hear|"
    r"love hearing|would love|always happy|up for|on my way|about to|starting to|beginning to|"
    r"a little|kind of|sort of)\b",
    re.IGNORECASE,
)
# leaning on the conversation: an object that only the context explains
_CONTEXT_BOUND = re.compile(r"\b(?:it|them|that|this|those|these|they|him|her|he|she|there|one|you|your|"
                            r"yours|ours|we|us)\b", re.IGNORECASE)
_TRAILING = re.compile(r"(?:,?\s+(?:too|as well|also|either|lol|haha|though|actually|really))+$", re.IGNORECASE)
_NAME = re.compile(r"\b(?:my name is|my name's|call me|i am called|i'm called)\s+([A-Za-z][\w'-]{0,30})",
                   re.IGNORECASE)
_NON_NAMES = {"not", "a", "the", "just", "so", "very", "really", "also", "actually", "is"}


_STOP = set("""a an the i i'm im my me mine you your is am are was were be been being to of in on at for with and or but
so do does did have has had it its it's this that these those there here as by from about very really just also
too not no yes like love enjoy get got go going can will would could should want wanted lot lots much many some
any all one two than then when what who how why where which up out over into more most own i've i'd ive""".split())
_WORD = re.compile(r"[a-z0-9']+")


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` that carry content (no stop words), crudely singularised."""
    return {w.rstrip("s") if len(w) > 3 else w for w in _WORD.findall(text.lower()) if w not in _STOP}


def split_sentences(text: str) -> list[str]:
    """Split text into sentences on ., !, ?, ; and newlines (and "and I ...")."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def fact_of(sentence: str, min_words: int = 3, max_words: int = 20) -> str | None:
    """The fact a sentence states about its speaker, in profile form, or None."""
    start = _FACT_START.search(sentence)
    if not start:
        return None
    fact = sentence[start.start(1):].strip(" .!,;:").lower()
    fact = re.sub(r"^im\b", "i'm", re.sub(r"^ive\b", "i've", fact))
    fact = _TRAILING.sub("", fact).strip(" .!,;:")
    if "?" in sentence or _NOT_A_FACT.search(fact) or _CONTEXT_BOUND.search(fact) or re.search(r"[\[\]()<>]", fact):
        return None
    if re.fullmatch(r"my (?:favou?rite|fave)(?: one)? (?:is|are) .*", fact):  # "my favorite is ..." has no topic
        return None
    return fact if min_words <= len(fact.split()) <= max_words else None


def extract_facts(text: str, min_words: int = 3, max_words: int = 20) -> list[str]:
    """Self-disclosure sentences of ``text`` as profile facts (see the module docstring)."""
    facts = []
    for sentence in split_sentences(text):
        fact = fact_of(sentence, min_words, max_words)
        if fact and fact not in facts:
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
