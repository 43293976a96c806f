"""How well the engine's fact extraction recovers what people say about themselves.

    python -m training.fact_eval [--split valid] [--show 20]

On Synthetic-Persona-Chat conversations (``valid`` while improving the extractor; ``test`` once, at the
end), each speaker's persona lines are the truth. A persona line counts as *stated* when most of its
content words occur in that speaker's own turns; an extracted fact *matches* a line when it shares at
least half of the line's content words (and one at least). Recall: stated lines matched by a fact
extracted from the speaker's turns; precision: extracted facts that match one of the speaker's lines.
"""
from __future__ import annotations

import argparse
import json

from engine.facts import content_words, extract_facts

from .persona import load_persona_splits

def matches(fact: str, line: str) -> bool:
    """Does extracted ``fact`` say persona ``line``?"""
    line_words = content_words(line)
    shared = content_words(fact) & line_words
    return bool(shared) and len(shared) >= 0.5 * len(line_words)


def stated(line: str, said: str) -> bool:
    """Did the speaker state ``line`` (most of its content words are in their turns)?"""
    words = content_words(line)
    return bool(words) and len(words & content_words(said)) >= 0.6 * len(words)


def evaluate(split: str = "valid") -> dict:
    """Recall and precision of :func:`extract_facts` on the persona statements of ``split``."""
    n_stated = n_recalled = n_extracted = n_correct = 0
    misses, wrong = [], []
    for conv in load_persona_splits()[split]:
        for speaker in (1, 2):
            turns = [t for i, t in enumerate(conv.turns) if conv.speaker(i) == speaker]
            said = " ".join(turns)
            lines = [line for line in conv.personas[speaker - 1] if stated(line, said)]
            facts = list(dict.fromkeys(f for t in turns for f in extract_facts(t)))
            n_stated += len(lines)
            for line in lines:
                if any(matches(f, line) for f in facts):
                    n_recalled += 1
                else:
                    misses.append(line)
            n_extracted += len(facts)
            for f in facts:
                if any(matches(f, line) for line in conv.personas[speaker - 1]):
                    n_correct += 1
                else:
                    wrong.append(f)
    return {"split": split, "stated_lines": n_stated, "recall": n_recalled / max(1, n_stated),
            "extracted": n_extracted, "precision": n_correct / max(1, n_extracted),
            "examples_missed": misses, "examples_wrong": wrong}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--show", type=int, default=0, help="print this many missed lines and wrong facts")
    args = p.parse_args(argv)
    result = evaluate(args.split)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("examples")}, indent=1))
    if args.show:
        print("missed:", result["examples_missed"][: args.show])
        print("wrong:", result["examples_wrong"][: args.show])


if __name__ == "__main__":
    main()
