"""Synthetic-Persona-Chat (CC BY 4.0, Jandaghi et al. 2023): conversations where both speakers have
persona lines, so a reply can depend on what the bot knows about the user and about itself.

    from training.persona import load_persona_splits
    splits = load_persona_splits(Path("../shared/data/synthetic-persona-chat"))  # train, valid, test

Splits: ``train`` = the dataset's train file + its new-personas file; the dataset's valid file is cut
by conversation into ``valid`` and ``test`` halves with a fixed seed (the test half is for the final
measurement only). Every conversation gives examples from both sides: the replying speaker is the
bot (its persona lines are the bot's persona facts), the other speaker is the user (their persona lines
are the user facts, written the way the engine stores facts: lower case, no final punctuation).
"""
from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from engine.facts import content_words

from .data import normalise

DEFAULT_PERSONA_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "synthetic-persona-chat"
PERSONA_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PersonaConversation:
    """Alternating turns of speakers 1 and 2 (``turns[0]`` by ``first``), with both persona line sets."""

    conv_id: str
    personas: tuple[tuple[str, ...], tuple[str, ...]]  # persona facts of speaker 1, speaker 2
    first: int  # 1 or 2: who speaks turns[0]
    turns: tuple[str, ...]

    def speaker(self, i: int) -> int:
        """Speaker (1 or 2) of turn ``i``."""
        return self.first if i % 2 == 0 else 3 - self.first


@dataclass(frozen=True)
class PersonaExample:
    """The reply at ``turn_index`` with the bot's (replying speaker's) and the user's facts."""

    conv_id: str
    turn_index: int
    context: tuple[str, ...]
    reply: str
    bot_facts: tuple[str, ...]
    user_facts: tuple[str, ...]


def as_fact(line: str) -> str:
    """A persona line in the engine's fact form: "I have a dog." -> "i have a dog"."""
    return re.sub(r"\s+", " ", line).strip().strip(" .!").lower()


def parse(record: dict) -> PersonaConversation | None:
    """One JSON line -> a conversation with same-speaker runs merged; None if fewer than two turns."""
    turns: list[tuple[int, str]] = []
    for speaker, text in record["turns"]:
        text = normalise(text)
        if not text:
            continue
        if turns and turns[-1][0] == speaker:
            turns[-1] = (speaker, turns[-1][1] + " " + text)
        else:
            turns.append((speaker, text))
    if len(turns) < 2:
        return None
    personas = tuple(tuple(as_fact(p) for p in record[f"persona_{k}"] if as_fact(p)) for k in (1, 2))
    return PersonaConversation(record["id"], personas, turns[0][0], tuple(t for _, t in turns))


def read(path: Path) -> list[PersonaConversation]:
    """Conversations of one ``.jsonl.gz`` file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [c for c in (parse(json.loads(line)) for line in f if line.strip()) if c is not None]


def load_persona_splits(folder: Path = DEFAULT_PERSONA_DATA, seed: int = 0) -> dict[str, list[PersonaConversation]]:
    """``train`` (train + new personas), ``valid`` and ``test`` (the dataset's valid file, halved)."""
    valid = sorted(read(folder / "valid.jsonl.gz"), key=lambda c: c.conv_id)
    random.Random(seed).shuffle(valid)
    half = len(valid) // 2
    train = read(folder / "train.jsonl.gz") + read(folder / "new_personas.jsonl.gz")
    return {"train": train, "valid": sorted(valid[:half], key=lambda c: c.conv_id),
            "test": sorted(valid[half:], key=lambda c: c.conv_id)}


def persona_examples(conv: PersonaConversation) -> list[PersonaExample]:
    """Every turn after the first, as the reply of its speaker (the bot) to the turns before it."""
    out = []
    for i in range(1, len(conv.turns)):
        bot = conv.speaker(i)
        out.append(PersonaExample(conv.conv_id, i, conv.turns[:i], conv.turns[i], conv.personas[bot - 1],
                                  conv.personas[2 - bot]))
    return out


def persona_line_overlap(test: list[PersonaConversation], train: list[PersonaConversation]) -> float:
    """Share of the test split's distinct persona lines that also occur in training."""
    seen = {line for c in train for p in c.personas for line in p}
    lines = {line for c in test for p in c.personas for line in p}
    return len(lines & seen) / max(1, len(lines))


def depends_on(ex: PersonaExample, facts: tuple[str, ...], other: tuple[str, ...]) -> bool:
    """Does the reply use a content word of ``facts`` that is neither in the history nor in ``other``?
    (a *fact-dependent* turn: only the facts explain it)"""
    seen = content_words(" ".join(ex.context)) | content_words(" ".join(other))
    return bool((content_words(ex.reply) & content_words(" ".join(facts))) - seen)


def fact_dependent(ex: PersonaExample) -> bool:
    """True when the reply draws on the user's facts or on the bot's persona (see :func:`depends_on`)."""
    return depends_on(ex, ex.user_facts, ex.bot_facts) or depends_on(ex, ex.bot_facts, ex.user_facts)
