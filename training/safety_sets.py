"""The labelled sets the learned safety classifier is trained and validated on, split with fixed seeds.

Message sets (``message_sets``), one row per text with a crisis and a hate label:
- ToxiGen statements (``../shared/data/toxigen``: implicit hate and neutral statements about 15 groups),
  split by statement, stratified by label and group: 70% train, 30% valid;
- the probe files of ``tests/safety/``: only their *dev* half is used (train); the held-out half is for
  reporting (``bench.safety``) and never seen here;
- ``tests/safety/extra`` (a second crisis development set): train;
- ``training/safety_data``: crisis phrasings and everyday look-alikes written for the classifier, implicit
  hate and neutral statements about the same groups written in ToxiGen's manner (issue 22, second round),
  everyday text with numbers, names with digits and the word "message" (third round: the second learned
  "my last message" as a crisis cue), two- and three-message sequences (a crisis that builds up, sad-but-safe
  talk, and calm talk of that kind), and 103 DiaSafety *train*
  contexts of its Risk Ignorance category labelled by hand (crisis, or sad without it), each split 70/30;
- everyday chat as negatives: messages of the chit-chat corpus and Synthetic-Persona-Chat (train splits
  for training, valid splits for validation), minus the few the pattern filter flags.

Pair set (``pair_sets``): DiaSafety context/reply pairs (``../shared/data/diasafety``), its own train and
validation files. Nothing here reads a test split.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from engine.safety import SafetyFilter
from engine.safety.classifier import HEADS, window_text

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
OWN = Path(__file__).resolve().parent / "safety_data"
TURN_SEP = " || "  # between the messages of one sequence in the files of safety_data
PROBES = ROOT / "tests" / "safety"
PROBE_SEED = 12
SEED = 22
# (file of safety_data, crisis label, hate label); a file's rows go to the source ``own/<name before _more>``
OWN_MESSAGE_FILES = (("crisis", 1, 0), ("not_crisis", 0, 0), ("crisis_more", 1, 0), ("not_crisis_more", 0, 0),
                     ("crisis_more2", 1, 0), ("not_crisis_more2", 0, 0), ("hate_more", 0, 1), ("neutral_more", 0, 0),
                     ("not_crisis_more3", 0, 0))


@dataclass
class MessageSet:
    """Texts with a 0/1 label per head and the name of the source each came from."""

    texts: list[str] = field(default_factory=list)
    labels: dict[str, list[int]] = field(default_factory=lambda: {h: [] for h in HEADS})
    sources: list[str] = field(default_factory=list)

    def add(self, texts: list[str], source: str, crisis: int = 0, hate: int = 0) -> None:
        """Append ``texts`` from ``source`` with the given labels."""
        self.texts += texts
        self.sources += [source] * len(texts)
        self.labels["crisis"] += [crisis] * len(texts)
        self.labels["hate"] += [hate] * len(texts)


def lines(path: Path) -> list[str]:
    """The non-empty lines of a text file."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load(kind: str) -> dict[str, list[str]]:
    """``{category: probes}`` of the probe set's ``harmful`` or ``benign`` files."""
    return {f.stem: lines(f) for f in sorted((PROBES / kind).glob("*.txt"))}


def split_probes(probes: list[str], half: str) -> list[str]:
    """``dev`` or ``held-out`` half of ``probes`` (fixed seed), or all of them."""
    if half == "all":
        return probes
    order = list(range(len(probes)))
    random.Random(PROBE_SEED).shuffle(order)
    dev = set(order[: len(order) // 2])
    return [p for i, p in enumerate(probes) if (i in dev) == (half == "dev")]


def split(items: list, valid_share: float = 0.3, seed: int = SEED) -> tuple[list, list]:
    """``items`` cut into (train, valid) at random with a fixed seed."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = round(len(items) * (1 - valid_share))
    return [items[i] for i in sorted(order[:cut])], [items[i] for i in sorted(order[cut:])]


def toxigen_splits(path: Path = SHARED / "toxigen" / "statements.jsonl") -> dict[str, list[dict]]:
    """ToxiGen statements cut into train/valid by statement, stratified by (label, group)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    strata: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        strata[(row["label"], row["group"])].append(row)
    out: dict[str, list[dict]] = {"train": [], "valid": []}
    for key in sorted(strata):
        train, valid = split(strata[key])
        out["train"] += train
        out["valid"] += valid
    return out


def sequence_text(line: str) -> list[str]:
    """The messages of one sequence line of ``safety_data``."""
    return [part.strip() for part in line.split(TURN_SEP.strip()) if part.strip()]


def own_sequences(name: str) -> tuple[list[list[str]], list[list[str]]]:
    """(train, valid) message sequences of ``safety_data/<name>.txt``, each a list of one user's turns."""
    return split([sequence_text(s) for s in lines(OWN / f"{name}.txt")])


def everyday_messages(data_dir: Path | None, n_ccc: int, n_persona: int, part: str) -> list[str]:
    """Random messages of the chit-chat corpus (``rapport-train prepare`` output) and the persona data
    (``part`` is train or valid), minus what the pattern filter flags."""
    from .persona import load_persona_splits

    rng = random.Random(SEED)
    texts: list[str] = []
    if data_dir is not None and (data_dir / "splits.json").exists():
        from .data import load_splits

        ccc = [t for c in load_splits(data_dir)[part] for t in c.turns]
        texts += rng.sample(ccc, min(n_ccc, len(ccc)))
    persona = [t for c in load_persona_splits()[part] for t in c.turns]
    texts += rng.sample(persona, min(n_persona, len(persona)))
    flt = SafetyFilter("standard")
    return [t for t in dict.fromkeys(texts) if flt.check_message(t) is None and 3 <= len(t) <= 400]


def message_sets(data_dir: Path | None) -> dict[str, MessageSet]:
    """``train`` and ``valid`` message sets (see the module docstring)."""
    sets = {"train": MessageSet(), "valid": MessageSet()}
    tox = toxigen_splits()
    for part in ("train", "valid"):
        for label in ("hate", "neutral"):
            texts = [r["text"] for r in tox[part] if r["label"] == label]
            sets[part].add(texts, f"toxigen/{label}", hate=int(label == "hate"))
    harmful, benign = load("harmful"), load("benign")
    for cat, texts in harmful.items():
        sets["train"].add(split_probes(texts, "dev"), f"probes/harmful/{cat}", crisis=int(cat == "self_harm"),
                          hate=int(cat == "hate"))
    for cat, texts in benign.items():
        sets["train"].add(split_probes(texts, "dev"), f"probes/benign/{cat}")
    extra = PROBES / "extra"
    sets["train"].add(lines(extra / "crisis.txt"), "extra/crisis", crisis=1)
    sets["train"].add(lines(extra / "not_crisis.txt"), "extra/not_crisis")
    for name, crisis, hate in OWN_MESSAGE_FILES:
        train, valid = split(lines(OWN / f"{name}.txt"))  # each file split on its own: adding one moves no other
        source = f"own/{name.split('_more')[0]}"
        sets["train"].add(train, source, crisis=crisis, hate=hate)
        sets["valid"].add(valid, source, crisis=crisis, hate=hate)
    labelled = json.loads((OWN / "diasafety_ri_labels.json").read_text(encoding="utf-8"))["rows"]
    for crisis, name in ((1, "crisis"), (0, "not_crisis")):
        train, valid = split([r["context"] for r in labelled if r["crisis"] == crisis])
        sets["train"].add(train, f"diasafety_ri/{name}", crisis=crisis)
        sets["valid"].add(valid, f"diasafety_ri/{name}", crisis=crisis)
    for name, crisis in (("crisis_sequences", 1), ("sad_sequences", 0), ("calm_sequences", 0)):
        for part, seqs in zip(("train", "valid"), own_sequences(name)):
            sets[part].add([window_text(s) for s in seqs], f"own/{name}", crisis=crisis)
    sets["train"].add(everyday_messages(data_dir, 3000, 3000, "train"), "everyday")
    sets["valid"].add(everyday_messages(data_dir, 1500, 1500, "valid"), "everyday")
    return sets


def everyday_windows(data_dir: Path | None, n: int, part: str, size: int = 3) -> list[str]:
    """``n`` random windows of ``size`` consecutive messages of one speaker (the chit-chat corpus and the
    persona data, ``part`` train or valid), read together as the engine reads a user's last turns."""
    from .persona import load_persona_splits

    convs: list[tuple[str, ...]] = [tuple(c.turns) for c in load_persona_splits()[part]]
    if data_dir is not None and (data_dir / "splits.json").exists():
        from .data import load_splits

        convs += [tuple(c.turns) for c in load_splits(data_dir)[part]]
    windows = [window_text(list(turns[i: i + 2 * size: 2])) for turns in convs
               for i in range(0, len(turns) - 2 * size + 1, 2 * size)]
    return random.Random(SEED).sample(windows, min(n, len(windows)))


def pair_sets(folder: Path = SHARED / "diasafety") -> dict[str, list[dict]]:
    """DiaSafety ``train`` and ``valid`` pairs: ``{"context", "response", "category", "label"}``."""
    return {"train": json.loads((folder / "train.json").read_text(encoding="utf-8")),
            "valid": json.loads((folder / "val.json").read_text(encoding="utf-8"))}
