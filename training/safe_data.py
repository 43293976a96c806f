"""Keep offensive, sexual, violent or hateful text and personal data out of what the bot learns from and
says: the reply index and the training conversations.

    rapport-train filter-index --index exported_models/ccc-reply-index

Reasons a text is removed (counted separately): ``unsafe`` (the engine's output filter: abuse and crisis
patterns and alt-profanity-check, see ``engine/safety``) and ``personal`` (e-mail addresses, URLs, phone
numbers, @handles, full names, "my address is ..."). A training conversation is cut at a removed turn, so
that text is neither a reply nor part of a context; the held-out splits stay as they are (metrics are
measured on real data).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from engine.model.retrieval import ReplyIndex
from engine.safety import SafetyFilter, has_personal_data

from .data import Conversation


def screen(texts: list[str], flt: SafetyFilter | None = None) -> list[str | None]:
    """For each text: None when it may be kept, else the reason ("personal" or "unsafe")."""
    flt = flt or SafetyFilter("standard")
    ok = flt.candidates_ok(texts)
    return [("personal" if has_personal_data(t) else "unsafe") if not good else None for t, good in zip(texts, ok)]


def cut_at_removed(conv: Conversation, reasons: list[str | None]) -> list[Conversation]:
    """The runs of ``conv`` between removed turns (each of at least two turns, speakers kept aligned)."""
    parts, start = [], 0
    for i in range(len(conv.turns) + 1):
        if i == len(conv.turns) or reasons[i] is not None:
            if i - start >= 2:
                speakers = conv.speakers if start % 2 == 0 else conv.speakers[::-1]
                parts.append(Conversation(f"{conv.conv_id}#{start}" if start else conv.conv_id, conv.start,
                                          list(speakers), conv.turns[start:i]))
            start = i + 1
    return parts


def filter_conversations(convs: list[Conversation]) -> tuple[list[Conversation], dict[str, int]]:
    """``convs`` cut at every removed turn, and the counts of removed turns by reason."""
    flt = SafetyFilter("standard")
    reasons = screen([t for c in convs for t in c.turns], flt)
    out, offset = [], 0
    for conv in convs:
        out += cut_at_removed(conv, reasons[offset: offset + len(conv.turns)])
        offset += len(conv.turns)
    counts = Counter(r for r in reasons if r)
    return out, {"turns": len(reasons), "removed_unsafe": counts["unsafe"], "removed_personal": counts["personal"]}


def filter_index(index_dir: Path) -> dict[str, int]:
    """Drop unsafe or personal replies (and their vectors) from a reply index in place; record the counts."""
    index = ReplyIndex.read(index_dir)
    reasons = screen(index.replies)
    keep = [i for i, r in enumerate(reasons) if r is None]
    counts = Counter(r for r in reasons if r)
    meta = dict(index.meta)
    removed = {"unsafe": meta.get("removed", {}).get("unsafe", 0) + counts["unsafe"],
               "personal": meta.get("removed", {}).get("personal", 0) + counts["personal"]}
    meta.update(size=len(keep), removed=removed, filter="rapport-train filter-index (engine.safety, standard)")
    ReplyIndex(index.vectors[keep], [index.replies[i] for i in keep], meta, index.contexts,
               None if index.scales is None else index.scales[keep]).save(index_dir)
    return {"before": len(index.replies), "after": len(keep), **{f"removed_{k}": v for k, v in counts.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train filter-index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, required=True, help="reply index folder (build-index's)")
    p.add_argument("--show", type=int, default=0, help="print this many removed replies of each reason")
    args = p.parse_args(argv)
    if args.show:
        replies = json.loads((args.index / "replies.json").read_text())
        for reason in ("unsafe", "personal"):
            print(reason, [t for t, r in zip(replies, screen(replies)) if r == reason][: args.show])
        return
    print(json.dumps(filter_index(args.index), indent=2))


if __name__ == "__main__":
    main()
