"""Build the retrieval index of real replies from the training split.

    rapport-train build-index --out exported_models/ccc-reply-index
    rapport-train build-index --out exported_models/ccc-reply-index --reembed   # after a new ranker

Replies are deduplicated (case and spacing), filtered (2-30 words; no URLs, e-mail addresses,
phone numbers or @handles; nothing the engine's output filter drops, see ``training/safe_data.py``) and sampled with a fixed seed; vectors come from the engine's own
sentence encoder so the index and the encoder always match (the sha256 of the encoder is recorded).
The index also keeps a fixed sample of training contexts (``contexts.npy``: half chit-chat, half
Synthetic-Persona-Chat) for the ranker's hubness correction. ``--reembed`` keeps the replies of the index
in ``--out`` (and what ``filter-index`` removed) and computes its vectors and contexts again with
``--encoder``: the index to ship with a newly trained ranker.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER
from engine.model.encoder import SentenceEncoder
from engine.model.retrieval import ReplyIndex, file_sha256

from .data import DEFAULT_DATA, load_splits
from .examples import all_examples, context_text
from .persona import load_persona_splits, persona_examples
from .safe_data import screen

CONTEXTS = 1024

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


def context_sample(data_dir: Path, n: int = CONTEXTS, seed: int = 0) -> list[str]:
    """``n`` training contexts as the ranker sees them (the last two turns), half from each corpus."""
    rng = random.Random(seed)
    chitchat = [context_text(ex) for ex in all_examples(load_splits(data_dir)["train"]) if ex.context]
    persona = [" ".join(ex.context[-2:]) for c in load_persona_splits()["train"] for ex in persona_examples(c)]
    return rng.sample(chitchat, n // 2) + rng.sample(persona, n - n // 2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train build-index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reembed", action="store_true", help="same replies as the index in --out, vectors from --encoder")
    args = p.parse_args(argv)
    encoder = SentenceEncoder.from_dir(args.encoder)
    contexts = ReplyIndex.quantize(encoder.embed(context_sample(args.data, seed=args.seed), batch_size=64))
    old_meta: dict = {}
    if args.reembed:
        old_meta = json.loads((args.out / "index_meta.json").read_text())
        replies = json.loads((args.out / "replies.json").read_text())
    else:
        replies = candidate_replies(args.data, args.size, args.seed)
    vectors, scales = ReplyIndex.quantize_4bit(encoder.embed(replies, batch_size=64))
    name = json.loads((args.encoder / "encoder_config.json").read_text())["name"]
    meta = {**old_meta, "encoder": name, "encoder_sha256": file_sha256(args.encoder / "model.onnx"),
            "size": len(replies), "source": "chitchat-dataset train split", "seed": args.seed,
            "contexts": len(contexts)}
    ReplyIndex(vectors, replies, meta, contexts, scales.astype(np.float32)).save(args.out)
    print(f"indexed {len(replies)} replies into {args.out}")


if __name__ == "__main__":
    main()
