"""Sequence-level distillation data (Kim & Rush 2016): the fine-tuned SmolLM2 writes the bot's replies.

    rapport-train distill --teacher ~/.cache/rapport/runs/smol1/best.pt --out ~/.cache/rapport/distill/smol1.jsonl \\
        --persona-data ../shared/data/synthetic-persona-chat --bf16 --max-minutes 100     # again: continues

For every training conversation side (the same sides and facts ``finetune-lm`` trains on, persona facts
kept whole, chit-chat facts drawn once with a fixed seed), the teacher reads the real conversation and
writes, greedily, a reply for every bot turn in place of the real one. One prompt pass per window serves
all of its bot turns: each turn's reply decodes from the window's cache cut at that turn's header, so the
history is read once, not once per turn. Each line of the output is one reply with what the student
needs to train on it: the real history, both fact lists and the teacher's text. Sides already in the file
are skipped, so a stopped run continues.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch

from engine.model.chat_prompt import ChatBudget, header_ids
from engine.model.prompt import Turn

from .causal_export import ExportLlama, load_checkpoint
from .data import DEFAULT_DATA, facts_for, load_facts, load_splits
from .lm_finetune import ChatEncoder, base_folder, persona_sides
from .persona import PersonaExample, load_persona_splits

MAX_REPLY_TOKENS = 48


_HEDGE = re.compile(r"^(?:i'm|i am) not sure\b|^i (?:don't|do not) know\b")
_TWICE = re.compile(r"\b(\w+)\s+\1\b(?![-'])")


def worth_imitating(reply: str) -> bool:
    """Whether the student should learn a teacher reply: not one that opens with a hedge ("I'm not sure ...",
    "I don't know ...": a quarter of the fine-tuned SmolLM2's chit-chat replies, most going nowhere, as in
    "I'm not sure I'm a runner but I'm a pretty good runner") and no word said twice back to back."""
    text = reply.strip().lower().replace("’", "'")
    return bool(text) and not _HEDGE.search(text) and not _TWICE.search(text)


def distilled_examples(path: Path) -> list[PersonaExample]:
    """The teacher's replies of a ``distill`` file as training examples: the real history before each bot
    turn, the teacher's reply, and the facts the teacher read (turns the bot opens are left out, as
    ``persona_examples`` leaves them out; so are replies not ``worth_imitating``)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        side = json.loads(line)
        texts = [t for t, _ in side["turns"]]
        for index, reply in side["replies"].items():
            i = int(index)
            if i > 0 and worth_imitating(reply):
                out.append(PersonaExample(side_key(side), i, tuple(texts[:i]), reply.strip(),
                                          tuple(side["bot_facts"]), tuple(side["user_facts"])))
    return out


def sides(persona_train, chat_train, facts: dict, seed: int, persona_share: float) -> list[dict]:
    """Every conversation side to distill, in a fixed order: persona and chit-chat interleaved so that any
    prefix of the list keeps the ``persona_share`` mix."""
    rng = random.Random(seed)
    persona = [{"source": "persona", "conv_id": c.conv_id, "bot": k, "bot_facts": list(p), "user_facts": list(u),
                "turns": [(t.text, t.from_user) for t in turns]}
               for c in persona_train for k, (p, u, turns) in zip((1, 2), persona_sides(c))]
    chat = []
    for c in chat_train:
        for k in (0, 1):
            bot, user = c.speakers[k], c.speakers[1 - k]
            chat.append({"source": "chitchat", "conv_id": c.conv_id, "bot": k,
                         "bot_facts": facts_for(facts, bot, c.conv_id, 4, rng),
                         "user_facts": facts_for(facts, user, c.conv_id, 4, rng),
                         "turns": [(t, (i % 2) != k) for i, t in enumerate(c.turns)]})
    rng.shuffle(persona)
    rng.shuffle(chat)
    out, p, q = [], 0, 0
    while p < len(persona) or q < len(chat):
        if q >= len(chat) or (p < len(persona) and p * (1 - persona_share) <= q * persona_share):
            out.append(persona[p])
            p += 1
        else:
            out.append(chat[q])
            q += 1
    return out


def side_key(side: dict) -> str:
    """The identity of a conversation side in the output file."""
    return f"{side['source']}:{side['conv_id']}:{side['bot']}"


class Teacher:
    """The fine-tuned model's forward pass with an explicit cache (``causal_export.ExportLlama``)."""

    def __init__(self, model, tokenizer_json: Path, bf16: bool, max_tokens: int = 384) -> None:
        self.net = ExportLlama(model).eval()
        self.enc = ChatEncoder(tokenizer_json, ChatBudget(), max_tokens)
        self.end = self.enc.tokenizer.token_to_id("<|im_end|>")
        self.header = header_ids(self.enc.encode, "assistant")
        self.bf16 = bf16

    def _run(self, ids, mask, index, past):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(ids, mask, (mask.cumsum(1) - 1).clamp(min=0)[:, -ids.shape[1]:], index, *past)
        return out[0].float(), list(out[1:])

    def replies(self, windows: list[list[int]], starts: list[list[int]]) -> list[list[str]]:
        """For each window, the greedy reply at each of its ``starts`` (the position after a bot header)."""
        width = max(map(len, windows))
        ids = torch.tensor([[self.end] * (width - len(w)) + w for w in windows])
        mask = torch.tensor([[0] * (width - len(w)) + [1] * len(w) for w in windows])
        layers = self.net.layers
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        empty = [torch.zeros(len(windows), self.net.kv_heads, 0, self.net.head_dim, dtype=dtype) for _ in range(2 * layers)]
        _, cache = self._run(ids, mask, torch.full((len(windows), 1), width - 1), empty)
        rows = [(w, width - len(windows[w]) + s) for w, ss in enumerate(starts) for s in ss]  # (window, column)
        longest = max(c for _, c in rows)
        past = [torch.zeros(len(rows), self.net.kv_heads, longest, self.net.head_dim, dtype=cache[0].dtype)
                for _ in range(2 * layers)]
        branch_mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, (w, c) in enumerate(rows):
            for k in range(2 * layers):
                past[k][r, :, longest - c:] = cache[k][w, :, :c]
            branch_mask[r, longest - c:] = mask[w, :c]
        del cache
        # the last header token is not in the cache cut: feed it as the first step
        tokens = ids[[w for w, _ in rows], [c - 1 for _, c in rows]]
        branch_mask[:, -1] = 1
        past = [p[:, :, :-1] for p in past]
        out: list[list[int]] = [[] for _ in rows]
        live = torch.arange(len(rows))
        for _ in range(MAX_REPLY_TOKENS):
            logits, past = self._run(tokens[:, None], branch_mask, torch.zeros(len(live), 1, dtype=torch.long), past)
            chosen = logits[:, 0].argmax(-1)
            writing = chosen != self.end
            for k, r in enumerate(live.tolist()):
                if writing[k]:
                    out[r].append(int(chosen[k]))
            if not writing.any():
                break
            keep = writing.nonzero()[:, 0]
            live, tokens = live[keep], chosen[keep]
            past = [p[keep] for p in past]
            branch_mask = torch.cat([branch_mask[keep], torch.ones(len(keep), 1, dtype=torch.long)], 1)
        texts = [self.enc.decode(o) for o in out]
        grouped, k = [], 0
        for ss in starts:
            grouped.append(texts[k: k + len(ss)])
            k += len(ss)
        return grouped


def bot_turn_starts(teacher: Teacher, window_ids: list[int], target: list[bool]) -> list[int]:
    """Positions right after each bot header in a training window (where the bot's turn begins)."""
    starts = []
    for i in range(1, len(target)):
        if target[i] and not target[i - 1] and window_ids[i - len(teacher.header): i] == teacher.header:
            starts.append(i)
    return starts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path,
                   help="finetune-lm checkpoint, or a dequantized export folder (default: the base model)")
    p.add_argument("--out", type=Path, required=True, help="JSONL file (appended to)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--persona-data", type=Path, required=True)
    p.add_argument("--persona-share", type=float, default=0.7)
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--max-sides", type=int, default=0, help="stop after this many sides in the file (0: all)")
    p.add_argument("--sides-per-batch", type=int, default=4)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    splits, facts = load_splits(args.data), load_facts(args.data)
    todo = sides(load_persona_splits(args.persona_data)["train"], splits["train"], facts, args.seed, args.persona_share)
    done = set()
    if args.out.exists():
        done = {side_key(json.loads(line)) for line in args.out.read_text().splitlines() if line.strip()}
    if args.max_sides:
        todo = todo[: args.max_sides]
    todo = [s for s in todo if side_key(s) not in done]
    base = base_folder()
    teacher = Teacher(load_checkpoint(base, args.teacher), base / "tokenizer.json", args.bf16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with args.out.open("a") as f:
        for b in range(0, len(todo), args.sides_per_batch):
            batch = todo[b: b + args.sides_per_batch]
            windows, starts, owners = [], [], []
            for side in batch:
                turns = [Turn(t, u) for t, u in side["turns"]]
                for w in teacher.enc.windows(side["bot_facts"], side["user_facts"], turns):
                    windows.append(w.ids)
                    starts.append(bot_turn_starts(teacher, w.ids, w.target))
                    owners.append(side)
            replies = teacher.replies(windows, starts)
            per_side: dict[str, list[str]] = {}
            for side, texts in zip(owners, replies):
                per_side.setdefault(side_key(side), []).extend(texts)
            for side in batch:
                bot_turns = [i for i, (_, from_user) in enumerate(side["turns"]) if not from_user]
                texts = per_side.get(side_key(side), [])
                f.write(json.dumps({**side, "replies": dict(zip(map(str, bot_turns), texts))}) + "\n")
            f.flush()
            written += len(batch)
            if written % 40 < args.sides_per_batch:
                rate = written / (time.monotonic() - start)
                print(f"{written} sides ({len(done) + written} in the file), {rate:.2f} sides/s", flush=True)
            if time.monotonic() - start > 60 * args.max_minutes:
                break


if __name__ == "__main__":
    main()
