"""The safety filter on both sides of the model.

- :meth:`SafetyFilter.assess` sorts a user's message (read with the user's last turns) into a
  :class:`Category` (crisis, hate, violence, sexual, harassment, jailbreak) or ``None`` when the bot may
  answer it with the model, and says whether it is *borderline* (close to a threshold: no reply that
  agrees with it may be sent);
- :meth:`SafetyFilter.candidates_ok` drops a candidate reply (generated or retrieved) that is offensive,
  sexual, violent, hateful or carries personal data, that the pair classifier finds unsafe as an answer
  to its context, or that agrees with a borderline message, before ranking; :meth:`fact_ok` keeps such
  text out of a user's stored facts.

Layers, fastest first: the pattern sets of :mod:`engine.safety.lexicon`; the learned classifier
(:mod:`engine.safety.classifier`, when the engine has one); alt-profanity-check (a linear model over
TF-IDF features trained on toxic comments, evaluated by :mod:`engine.safety.profanity`; see the README for
why it was chosen over better-profanity).
Modes: ``standard`` (default), ``strict`` (lower thresholds everywhere, any profanity in a message counts
as abuse) and ``off`` (no abuse or output filter; a crisis is still answered with the crisis reply in
every mode, with the standard crisis thresholds, because a person in crisis must never get a generated
reply).
"""
from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from ..config import DEFAULT_PROFANITY
from . import lexicon
from .classifier import SafetyClassifier, window_text
from .profanity import ProfanityModel

MODES = ("standard", "strict", "off")
_LEET = str.maketrans({"@": "a", "$": "s", "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "!": "i"})
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_SECOND_PERSON = re.compile(r"\b(?:you|u|ya|your|ur|you're|youre|yourself|bot)\b")


class Category(str, Enum):
    """Why a message is not answered by the model."""

    CRISIS = "crisis"
    CHECK_IN = "check_in"  # maybe a crisis (the classifier is less sure): a fixed reply that asks and points to help
    HATE = "hate"
    VIOLENCE = "violence"
    SEXUAL = "sexual"
    HARASSMENT = "harassment"
    JAILBREAK = "jailbreak"


# Checked in this order: a crisis first (it gets the helpful reply), then the abuse categories.
_ABUSE = ((Category.HATE, lexicon.HATE), (Category.VIOLENCE, lexicon.VIOLENCE), (Category.SEXUAL, lexicon.SEXUAL),
          (Category.HARASSMENT, lexicon.HARASSMENT), (Category.JAILBREAK, lexicon.JAILBREAK))


@dataclass(frozen=True)
class Thresholds:
    """alt-profanity-check probabilities above which text counts as abusive."""

    directed: float  # a message aimed at the bot ("you ...") -> harassment
    anywhere: float  # any message -> harassment
    candidate: float  # any candidate reply or fact -> dropped (the model also scores "that sucks" near 1)


THRESHOLDS = {"standard": Thresholds(directed=0.9, anywhere=1.01, candidate=1.01),
              "strict": Thresholds(directed=0.7, anywhere=0.8, candidate=0.6)}


@dataclass(frozen=True)
class Assessment:
    """What the filter found in a message: the category that gets a fixed reply (or None), which layer found
    it (``pattern``, ``classifier``, ``context`` for the last few turns together, ``profanity``), and whether
    an unflagged message is borderline."""

    category: Category | None = None
    source: str | None = None
    borderline: bool = False


def normalise(text: str) -> str:
    """Lower-case, NFKC, straight apostrophes, one space: the form every pattern is written for."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    return re.sub(r"\s+", " ", text).strip()


def _unleet(text: str) -> str:
    """``b1tch`` -> ``bitch``, ``a**hole`` -> ``asshole``, ``f*ck`` -> ``fuck`` (only for the abuse patterns:
    digits matter elsewhere)."""
    text = re.sub(r"(?<=\w)\*\*(?=\w)", "ss", text)
    return re.sub(r"(?<=\w)\*(?=\w)", "u", text).translate(_LEET)


def _variants(plain: str) -> set[str]:
    """``plain`` and its de-obfuscated forms (a masked vowel is usually u or i: st*pid, sh*t)."""
    return {plain, _unleet(plain), _unleet(re.sub(r"(?<=\w)\*(?=\w)", "i", plain))}


class SafetyFilter:
    """Classifies messages and candidate replies; one instance is shared by the whole engine."""

    def __init__(self, mode: str = "standard", classifier: SafetyClassifier | None = None,
                 profanity_dir: Path = DEFAULT_PROFANITY) -> None:
        if mode not in MODES:
            raise ValueError(f"safety mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.classifier = classifier
        self.profanity_dir = profanity_dir
        self._profanity: ProfanityModel | None = None
        self._profanity_lock = threading.Lock()

    def profanity(self, texts: list[str]) -> list[float]:
        """alt-profanity-check's probability that each text is offensive (model loaded on first use)."""
        if not texts:
            return []
        with self._profanity_lock:  # engine threads assess at once: one loads the model, the others wait for it
            if self._profanity is None:
                self._profanity = ProfanityModel(self.profanity_dir)
        return [float(p) for p in self._profanity.probabilities(texts)]

    def warm_up(self) -> None:
        """Judge a made-up message and candidate: loads the profanity model and runs each classifier
        session once (the first run of a session is slow), before any user waits for it."""
        self.assess("hello there, how are you?")
        self.verdicts(["hi! i'm good, thanks."], context="hello there, how are you?")

    def check_message(self, text: str, earlier: Sequence[str] = ()) -> Category | None:
        """The category of a user's message that must not get a generated reply, or None."""
        return self.assess(text, earlier).category

    def assess(self, text: str, earlier: Sequence[str] = ()) -> Assessment:
        """Judge ``text``, a user's message, with ``earlier``, that user's previous messages in this chat
        (oldest first; the classifier reads the last few together with ``text``)."""
        plain = normalise(text)
        if _is_crisis(plain):
            return Assessment(Category.CRISIS, "pattern", True)
        learned = self._learned(text, earlier)
        if learned is not None and learned.category in (Category.CRISIS, Category.CHECK_IN):
            return learned
        if self.mode == "off":
            return Assessment()
        category = _abuse_pattern(plain)
        if category is not None:
            return Assessment(category, "pattern", True)
        if learned is not None and learned.category is not None:
            return learned
        profanity = self.profanity([plain])[0]
        limits = THRESHOLDS[self.mode]
        if profanity >= limits.anywhere or (profanity >= limits.directed and _SECOND_PERSON.search(plain)):
            return Assessment(Category.HARASSMENT, "profanity", True)
        return Assessment(borderline=learned is not None and learned.borderline)

    def _learned(self, text: str, earlier: Sequence[str]) -> Assessment | None:
        """The classifier's view of ``text`` and of the last few user turns together (None without one)."""
        if self.classifier is None:
            return None
        limits = self.classifier.thresholds["standard" if self.mode == "off" else self.mode]
        recent = [t for t in earlier if t.strip()][-(self.classifier.context_turns - 1):]
        singles = self.classifier.message_scores_cached([text, *recent])  # the message, then its last turns
        crisis, hate = float(singles[0, 0]), float(singles[0, 1])
        if crisis >= limits.crisis:
            return Assessment(Category.CRISIS, "classifier", True)
        # each head reads the turns together only when one of the turns alone concerns it
        crisis_gate = bool(singles[:, 0].max() >= limits.window_gate)
        hate_gate = bool(singles[:, 1].max() >= limits.borderline_hate)
        windows = np.zeros((0, 2), dtype=np.float32)
        if recent and (crisis_gate or hate_gate):
            # the message with its last 1, 2, ... turns: an unrelated older turn must not dilute a crisis
            windows = self.classifier.message_scores([window_text([*recent[-k:], text])
                                                      for k in range(1, len(recent) + 1)])
        if crisis_gate and windows[:, 0].max(initial=0.0) >= limits.crisis_context:
            return Assessment(Category.CRISIS, "context", True)
        if hate >= limits.hate:
            return Assessment(Category.HATE, "classifier", True)
        if crisis >= limits.check_in:
            return Assessment(Category.CHECK_IN, "classifier", True)
        return Assessment(borderline=bool(crisis >= limits.borderline_crisis or hate >= limits.borderline_hate
                                          or (hate_gate and windows[:, 1].max(initial=0.0) >= limits.borderline_hate)))

    def candidates_ok(self, texts: list[str], context: str | None = None, wary: bool = False) -> list[bool]:
        """For each candidate reply: may it be sent? (:meth:`verdicts` says why not.)"""
        return [v is None for v in self.verdicts(texts, context, wary)]

    def verdicts(self, texts: list[str], context: str | None = None, wary: bool = False) -> list[str | None]:
        """For each candidate reply, None when it may be sent, else why not: ``unsafe`` (patterns, strong
        profanity, alt-profanity-check), ``agreeing`` (``wary`` is set for a borderline message, and the
        candidate agrees) or ``pair`` (the pair classifier finds it unsafe as an answer to ``context``, the
        user's message). All None in mode ``off``."""
        if self.mode == "off" or not texts:
            return [None] * len(texts)
        plains = [normalise(t) for t in texts]
        limits = THRESHOLDS[self.mode]
        out: list[str | None] = [
            "unsafe" if (self.unsafe_text(plain) or any(lexicon.STRONG_PROFANITY.search(v) for v in _variants(plain))
                         or p >= limits.candidate) else None
            for plain, p in zip(plains, self.profanity(plains))]
        if wary:
            out = [v or ("agreeing" if lexicon.AGREEING.search(plain) else None) for v, plain in zip(out, plains)]
        judged = [i for i, v in enumerate(out) if v is None]
        if context is not None and self.classifier is not None and judged:
            scores = self.classifier.pair_scores(context, [texts[i] for i in judged])
            for i, score in zip(judged, scores):
                if score >= self.classifier.thresholds[self.mode].pair:
                    out[i] = "pair"
        return out

    def candidate_ok(self, text: str) -> bool:
        """:meth:`candidates_ok` for one text, out of context."""
        return self.candidates_ok([text])[0]

    def fact_ok(self, fact: str) -> bool:
        """May ``fact`` be stored in a profile and put into the model input?"""
        return self.candidate_ok(fact)

    def unsafe_text(self, plain: str) -> bool:
        """True when normalised ``plain`` matches a crisis, abuse or personal-data pattern (no model call)."""
        return _is_crisis(plain) or _abuse_pattern(plain) is not None or bool(lexicon.PERSONAL_DATA.search(plain))


def _is_crisis(plain: str) -> bool:
    """A crisis phrase that is not negated or figurative."""
    return bool(lexicon.CRISIS.search(plain)) and not lexicon.NOT_CRISIS.search(plain)


def _abuse_pattern(plain: str) -> Category | None:
    """The first abuse category whose patterns match ``plain`` or a de-obfuscated form of it."""
    variants = _variants(plain)
    for category, pattern in _ABUSE:
        if any(pattern.search(v) for v in variants):
            return category
    return None


def has_personal_data(text: str) -> bool:
    """E-mails, URLs, phone numbers, @handles or a full name (cased text) in ``text``."""
    return bool(lexicon.PERSONAL_DATA.search(text))
