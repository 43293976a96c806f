"""Prepare the BYU chit-chat corpus: clean, split by conversation, extract profile facts.

    rapport-train prepare --out ~/.cache/rapport/data

Splits (fixed seed, by conversation, never by message):
  new_user   every conversation of a random set of held-out speakers (never seen in training)
  known_user the latest conversation of speakers with >= 5 conversations (earlier ones stay in train)
  valid/test random conversations of the rest; train is what remains.
"""
from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.facts import extract_facts

SPLITS = ("train", "valid", "test", "known_user", "new_user")
DEFAULT_DATA = Path.home() / ".cache/rapport/data"  # where `rapport-train prepare` writes by default


@dataclass
class Conversation:
    """A cleaned conversation: alternating turns of two speakers."""

    conv_id: str
    start: str
    speakers: list[str]
    turns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Example:
    """One training/evaluation example: reply ``reply`` by ``speaker`` to ``addressee``."""

    conv_id: str
    turn_index: int
    speaker: str
    addressee: str
    context: tuple[str, ...]
    reply: str


def normalise(text: str) -> str:
    """Collapse whitespace and strip control characters."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def clean_conversations(raw: dict) -> list[Conversation]:
    """Merge same-speaker runs, normalise text, drop empty turns and one-speaker conversations."""
    out: list[Conversation] = []
    for conv_id, conv in raw.items():
        turns: list[tuple[str, str]] = []
        for block in conv["messages"]:
            for msg in block:
                text = normalise(msg["text"])
                if not text:
                    continue
                if turns and turns[-1][0] == msg["sender"]:
                    turns[-1] = (msg["sender"], turns[-1][1] + " " + text)
                else:
                    turns.append((msg["sender"], text))
        speakers = list(dict.fromkeys(s for s, _ in turns))
        if len(speakers) != 2 or len(turns) < 2:
            continue
        out.append(
            Conversation(conv_id, conv.get("start", ""), [turns[0][0], turns[1][0]], [t for _, t in turns])
        )
    return out


def split_conversations(
    convs: list[Conversation], seed: int = 0, new_user_frac: float = 0.05, eval_frac: float = 0.05
) -> dict[str, list[Conversation]]:
    """Assign each conversation to exactly one split (see module docstring)."""
    rng = random.Random(seed)
    convs = sorted(convs, key=lambda c: c.conv_id)
    by_speaker: dict[str, list[Conversation]] = defaultdict(list)
    for c in convs:
        for s in c.speakers:
            by_speaker[s].append(c)
    speakers = sorted(by_speaker)
    rng.shuffle(speakers)
    assigned: dict[str, str] = {}
    target = new_user_frac * len(convs)
    held_out: set[str] = set()
    for s in speakers:
        if sum(1 for v in assigned.values() if v == "new_user") >= target:
            break
        held_out.add(s)
        for c in by_speaker[s]:
            assigned[c.conv_id] = "new_user"
    train_count = {s: sum(1 for c in cs if c.conv_id not in assigned) for s, cs in by_speaker.items()}
    for s in sorted(by_speaker, key=lambda s: (rng.random(), s)):
        if s in held_out or train_count[s] < 5:
            continue
        free = [c for c in by_speaker[s] if c.conv_id not in assigned]
        latest = max(free, key=lambda c: (c.start, c.conv_id))
        if any(train_count[o] <= 1 for o in latest.speakers):
            continue
        assigned[latest.conv_id] = "known_user"
        for o in latest.speakers:
            train_count[o] -= 1
    rest = [c for c in convs if c.conv_id not in assigned]
    rng.shuffle(rest)
    n_eval = int(eval_frac * len(convs))
    for c in rest[:n_eval]:
        assigned[c.conv_id] = "valid"
    for c in rest[n_eval: 2 * n_eval]:
        assigned[c.conv_id] = "test"
    splits: dict[str, list[Conversation]] = {k: [] for k in SPLITS}
    for c in convs:
        splits[assigned.get(c.conv_id, "train")].append(c)
    return splits


def make_examples(conv: Conversation) -> list[Example]:
    """Every turn after the first is a reply to the turns before it."""
    out = []
    for i in range(1, len(conv.turns)):
        speaker = conv.speakers[i % 2]
        addressee = conv.speakers[(i + 1) % 2]
        out.append(Example(conv.conv_id, i, speaker, addressee, tuple(conv.turns[:i]), conv.turns[i]))
    return out


def speaker_facts(train: list[Conversation]) -> dict[str, dict[str, list[str]]]:
    """Self-disclosure facts of each speaker, per training conversation: {speaker: {conv_id: facts}}."""
    facts: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for c in train:
        for i, text in enumerate(c.turns):
            found = extract_facts(text)
            if found:
                facts[c.speakers[i % 2]].setdefault(c.conv_id, []).extend(found)
    return facts


def prepare(out_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write ``splits.json`` (conversations per split) and ``facts.json``; return split sizes."""
    import chitchat_dataset

    raw = json.load(open(chitchat_dataset._PATH))
    from .safe_data import filter_conversations

    convs = clean_conversations(raw)
    splits = split_conversations(convs, seed=seed)
    splits["train"], removed = filter_conversations(splits["train"])  # held-out splits stay as they are
    facts = speaker_facts(splits["train"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "splits.json").write_text(
        json.dumps({k: [asdict(c) for c in v] for k, v in splits.items()})
    )
    (out_dir / "facts.json").write_text(json.dumps(facts))
    sizes = {f"{k}_conversations": len(v) for k, v in splits.items()}
    sizes.update({f"{k}_examples": sum(len(c.turns) - 1 for c in v) for k, v in splits.items()})
    sizes["raw_conversations"] = len(raw)
    sizes["two_speaker_conversations"] = len(convs)
    sizes["speakers_with_facts"] = len(facts)
    sizes.update({f"train_{k}": v for k, v in removed.items()})
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return sizes


def load_splits(data_dir: Path) -> dict[str, list[Conversation]]:
    """Read the splits written by :func:`prepare`."""
    raw = json.loads((data_dir / "splits.json").read_text())
    return {k: [Conversation(**c) for c in v] for k, v in raw.items()}


def load_facts(data_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Read the facts written by :func:`prepare`."""
    return json.loads((data_dir / "facts.json").read_text())


def facts_for(
    facts: dict[str, dict[str, list[str]]], speaker: str, exclude_conv: str, k: int, rng: random.Random
) -> list[str]:
    """Up to ``k`` facts of ``speaker`` from conversations other than ``exclude_conv``."""
    pool = [f for conv, fs in sorted(facts.get(speaker, {}).items()) if conv != exclude_conv for f in fs]
    pool = list(dict.fromkeys(pool))
    rng.shuffle(pool)
    return pool[:k]
