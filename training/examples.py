"""Turn conversations into tokenized (source, target) pairs with the engine's prompt layout."""
from __future__ import annotations

import random
from dataclasses import dataclass

from engine.model.prompt import PromptBudget, Turn, build_source_ids
from engine.model.replier import context_text as engine_context_text
from engine.model.text import TextCodec

from .data import Conversation, Example, facts_for, make_examples
from .persona import PersonaExample

MAX_TARGET_TOKENS = 40
FACTS_PER_SIDE = 4


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example; ``target`` ends with [SEP] unless the reply was cut."""

    source: list[int]
    target: list[int]


class ExampleEncoder:
    """Encodes examples, caching token ids of turns and facts (the corpus repeats them a lot)."""

    def __init__(self, codec: TextCodec, facts: dict[str, dict[str, list[str]]],
                 budget: PromptBudget = PromptBudget()) -> None:
        self.codec = codec
        self.facts = facts
        self.budget = budget
        self._cache: dict[str, list[int]] = {}

    def encode_text(self, text: str) -> list[int]:
        """Cached ``codec.encode``."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.codec.encode(text)
        return ids

    def profile(self, ex: Example, speaker: str, rng: random.Random, drop: float) -> list[str]:
        """Facts of ``speaker`` from other training conversations, dropped with probability ``drop``."""
        if rng.random() < drop:
            return []
        return facts_for(self.facts, speaker, ex.conv_id, FACTS_PER_SIDE, rng)

    def encode(self, ex: Example | PersonaExample, user_facts: list[str], persona_facts: list[str]) -> Encoded:
        """Source ids (persona, user facts, context) and target ids of ``ex``."""
        source = build_source_ids(self.encode_text, self.codec.special_ids, turns_of(ex),
                                  persona_facts, user_facts, self.budget)
        reply = self.encode_text(ex.reply)
        sep = self.codec.special_ids["[SEP]"]
        target = reply[:MAX_TARGET_TOKENS] if len(reply) > MAX_TARGET_TOKENS else reply + [sep]
        return Encoded(source, target)


def sample_facts(facts: tuple[str, ...], rng: random.Random, drop: float, line_drop: float) -> list[str]:
    """Persona facts as training sees them: all dropped with probability ``drop`` (the model must work
    for someone it knows nothing about), else each line kept with probability 1 - ``line_drop``, shuffled."""
    if rng.random() < drop:
        return []
    kept = [f for f in facts if rng.random() >= line_drop]
    rng.shuffle(kept)
    return kept


def encode_persona(encoder: ExampleEncoder, ex: PersonaExample, rng: random.Random, drop: float,
                   line_drop: float = 0.2) -> Encoded:
    """A Synthetic-Persona-Chat example with the bot's and the user's persona facts (sampled)."""
    return encoder.encode(ex, sample_facts(ex.user_facts, rng, drop, line_drop),
                          sample_facts(ex.bot_facts, rng, drop, line_drop))


def turns_of(ex: Example | PersonaExample) -> list[Turn]:
    """The example's context as engine turns (the last one is the user's)."""
    n = len(ex.context)
    return [Turn(t, from_user=(n - i) % 2 == 1) for i, t in enumerate(ex.context)]


def all_examples(convs: list[Conversation]) -> list[Example]:
    """Examples of every conversation, in order."""
    return [ex for c in convs for ex in make_examples(c)]


def context_text(ex: Example) -> str:
    """The last two turns: what the engine's sentence encoder sees as the context."""
    return engine_context_text(ex.context)
