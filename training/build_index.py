"""Build the retrieval index of real replies from the training split.

    rapport-train build-index --out exported_models/ccc-reply-index

Replies are deduplicated (case and spacing), filtered (2-30 words; no URLs, e-mail addresses,
phone numbers or @handles; nothing the engine's output filter drops, see ``training/safe_data.py``) and sampled with a fixed seed; vectors come from the engine's own
sentence encoder so the index and the encoder always match (the sha256 of the encoder is recorded).
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from engine.config import DEFAULT_ENCODER
from engine.encoder import SentenceEncoder
from engine.retrieval import ReplyIndex, file_sha256

from .data import DEFAULT_DATA, load_splits
from .safe_data import screen

_PERSONAL = re.compile(r"https?://|www\.|\.com\b|@|\b\d[\d\s().-]{6,}\d\b|\b\d{5,}\b", re.IGNORECASE)


def keep_reply(text: str, min_words: int = 2, max_words: int = 30) -> bool:
    """Length limits and no personal-data patterns."""
    return min_words <= len(text.split()) <= max_words and not _PERSONAL.search(text)


def candidate_replies(data_dir: Path, limit: int, seed: int = 0) -> list[str]:
    """Deduplicated, filtered training turns (every turn is someone's reply to something)."""
    seen: dict[str, str] = {}
    for conv in load_splits(data_dir)["train"]:
        for text in conv.turns[1:]:
            key = " ".join(text.lower().split())
            if key not in seen and keep_reply(text):
                seen[key] = text
    replies = sorted(seen.values())
    replies = [t for t, reason in zip(replies, screen(replies)) if reason is None]
    random.Random(seed).shuffle(replies)
    return replies[:limit]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train build-index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    replies = candidate_replies(args.data, args.size, args.seed)
    encoder = SentenceEncoder.from_dir(args.encoder)
    vectors = ReplyIndex.quantize(encoder.embed(replies, batch_size=64))
    name = json.loads((args.encoder / "encoder_config.json").read_text())["name"]
    meta = {"encoder": name, "encoder_sha256": file_sha256(args.encoder / "model.onnx"),
            "size": len(replies), "source": "chitchat-dataset train split", "seed": args.seed}
    ReplyIndex(vectors, replies, meta).save(args.out)
    print(f"indexed {len(replies)} replies into {args.out}")


if __name__ == "__main__":
    main()
