"""Train the seq2seq chat model (CPU or one GPU) with checkpoints, --resume and a wall-clock budget.

    rapport-train train --run ~/.cache/rapport/runs/warm --max-minutes 110
    rapport-train train --run ~/.cache/rapport/runs/warm --max-minutes 30 --resume
    rapport-train train --run ~/.cache/rapport/runs/scratch --scratch --max-examples 12000
    rapport-train train --run /tmp/runs/gpu --device cuda --bf16 --freeze-embeddings \
        --batch-size 128 --lr 2e-4 --max-minutes 6.5 --time-schedule --max-examples 100000000
    rapport-train train --run ~/.cache/rapport/runs/lstm --family lstm --persona-data ../shared/data/synthetic-persona-chat \
        --facts-tokens 64 --source-tokens 192 --lr 1e-3 --bf16 --max-minutes 60 --time-schedule
    rapport-train train --run ~/.cache/rapport/runs/persona --init-from ~/.cache/rapport/dequantized \
        --persona-data ../shared/data/synthetic-persona-chat --persona-share 0.7 \
        --facts-tokens 64 --source-tokens 192 --lr 5e-5 --bf16 --max-minutes 100 --time-schedule

``--distilled FILE`` (from ``rapport-train distill``) adds the teacher's replies to the training
conversations, ``--distilled-share`` of every epoch (1: nothing else), with the facts the teacher read.
``--persona-data`` mixes Synthetic-Persona-Chat into every epoch (``--persona-share`` of the examples,
the rest the chit-chat corpus), with the replying speaker's persona lines as the bot's facts and the
other speaker's as the user's; ``--init-from`` continues from a Hugging Face folder (the shipped model,
rebuilt by ``rapport-train dequantize``) instead of the MiniLM warm start.

With ``--time-schedule`` the learning rate decays with the wall-clock budget instead of the
planned example count (for a machine whose speed is not known in advance). The next epoch's
examples are encoded in a helper process while the current epoch trains.

Logs one JSON line per evaluation to <run>/log.jsonl: held-out token NLL with the true context,
NLL with a shuffled context (their difference shows whether the decoder uses the encoder) and
a few greedy replies.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from engine.model.text import TextCodec

from engine.model.prompt import PromptBudget

from .data import DEFAULT_DATA, load_facts, load_splits
from .distill import distilled_examples
from .examples import Encoded, ExampleEncoder, all_examples, encode_persona
from .persona import depends_on, fact_dependent, load_persona_splits, persona_examples
from .lstm import LstmConfig, build_lstm
from .modeling import (CLS_ID, MINILM_VOCAB, PAD_ID, SEP_ID, build_model, cross_attention_parameters,
                       freeze_embeddings, minilm_dir)


def collate(batch: list[Encoded]) -> dict[str, torch.Tensor]:
    """Pad a batch; labels use -100 on padding."""
    src_len = max(len(e.source) for e in batch)
    tgt_len = max(len(e.target) for e in batch)
    input_ids = torch.full((len(batch), src_len), PAD_ID)
    attention = torch.zeros((len(batch), src_len), dtype=torch.long)
    dec_in = torch.full((len(batch), tgt_len), PAD_ID)
    labels = torch.full((len(batch), tgt_len), -100)
    for i, e in enumerate(batch):
        input_ids[i, : len(e.source)] = torch.tensor(e.source)
        attention[i, : len(e.source)] = 1
        dec_in[i, 0] = CLS_ID
        dec_in[i, 1: len(e.target)] = torch.tensor(e.target[:-1])
        labels[i, : len(e.target)] = torch.tensor(e.target)
    return {"input_ids": input_ids, "attention_mask": attention, "decoder_input_ids": dec_in, "labels": labels}


def bucketed_batches(items: list[Encoded], batch_size: int, rng: random.Random) -> list[list[Encoded]]:
    """Batches of similar source length (sorted within chunks of 50 batches), in random order."""
    items = items[:]
    rng.shuffle(items)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(items), chunk):
        part = sorted(items[start: start + chunk], key=lambda e: (len(e.source), len(e.target)))
        batches += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """Move a collated batch to ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def token_nll(model, items: list[Encoded], batch_size: int = 64) -> float:
    """Mean NLL per target token (nats) over ``items``."""
    model.eval()
    device = next(model.parameters()).device.type
    total, count = 0.0, 0
    for i in range(0, len(items), batch_size):
        batch = to_device(collate(items[i: i + batch_size]), device)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), batch["labels"], ignore_index=-100, reduction="sum")
        total += loss.item()
        count += (batch["labels"] != -100).sum().item()
    model.train()
    return total / count


@torch.no_grad()
def greedy_samples(model, codec: TextCodec, items: list[Encoded]) -> list[dict[str, str]]:
    """Greedy replies to a few held-out sources, for the log."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for e in items:
        gen = model.generate(torch.tensor([e.source], device=device), max_new_tokens=30, num_beams=1,
                             do_sample=False)
        out.append({"context": codec.decode(e.source)[-120:], "reply": codec.decode(gen[0].tolist())})
    model.train()
    return out


def encode_split(encoder: ExampleEncoder, convs, rng: random.Random, drop: float) -> list[Encoded]:
    """Encode every example of ``convs``, sampling profiles with ``rng``."""
    return encode_examples(encoder, all_examples(convs), rng, drop)


def encode_examples(encoder: ExampleEncoder, examples, rng: random.Random, drop: float) -> list[Encoded]:
    """Encode chit-chat ``examples``, sampling profiles with ``rng``."""
    out = []
    for ex in examples:
        user = encoder.profile(ex, ex.addressee, rng, drop)
        persona = encoder.profile(ex, ex.speaker, rng, drop)
        out.append(encoder.encode(ex, user, persona))
    return out


_worker_encoder: ExampleEncoder | None = None
_worker_splits: dict | None = None
_worker_persona: list | None = None
_worker_dependent: list | None = None
_worker_user_dependent: list | None = None
_worker_distilled: list | None = None


def _init_epoch_worker(data_dir: Path, persona_dir: Path | None, budget: PromptBudget,
                       distilled: Path | None = None) -> None:
    global _worker_encoder, _worker_splits, _worker_persona, _worker_dependent, _worker_user_dependent
    global _worker_distilled
    codec = TextCodec.from_file(minilm_dir() / "tokenizer.json")
    _worker_splits = load_splits(data_dir)
    _worker_encoder = ExampleEncoder(codec, load_facts(data_dir), budget)
    _worker_persona = [ex for c in load_persona_splits(persona_dir)["train"] for ex in persona_examples(c)] \
        if persona_dir else []
    _worker_dependent = [ex for ex in _worker_persona if fact_dependent(ex)]
    _worker_user_dependent = [ex for ex in _worker_persona if depends_on(ex, ex.user_facts, ex.bot_facts)]
    _worker_distilled = distilled_examples(distilled) if distilled else []


def _boosted(examples: list, times: int, cap: int, rng: random.Random) -> list[Encoded]:
    """``examples`` ``times`` over (at most ``cap``), encoded with every fact kept."""
    pool = [ex for ex in examples for _ in range(times)]
    return [encode_persona(_worker_encoder, ex, rng, 0.0, line_drop=0.0) for ex in rng.sample(pool, min(len(pool), cap))]


def _encode_epoch(seed: int, epoch: int, drop: float, persona_share: float, fact_boost: int = 0,
                  user_fact_boost: int = 0, distilled_share: float = 0.0) -> list[Encoded]:
    rng = random.Random(seed * 1000 + epoch)
    chat = list(all_examples(_worker_splits["train"]))
    with_persona = bool(_worker_persona) and persona_share > 0
    n = min(len(_worker_persona), round(len(chat) * persona_share / (1 - persona_share))) if with_persona else 0
    if _worker_distilled and 0 < distilled_share < 1:
        # fewer teacher replies than their share of a whole epoch: the real part shrinks, so the share holds
        keep = len(_worker_distilled) * (1 - distilled_share) / distilled_share / (len(chat) + n)
        if keep < 1:
            chat, n = rng.sample(chat, round(len(chat) * keep)), round(n * keep)
    out = encode_examples(_worker_encoder, chat, rng, drop)
    if with_persona:
        out += [encode_persona(_worker_encoder, ex, rng, drop) for ex in rng.sample(_worker_persona, n)]
        # turns only the facts explain, again, with their facts kept: make the facts salient
        out += _boosted(_worker_dependent, fact_boost, n // 4, rng)
        out += _boosted(_worker_user_dependent, user_fact_boost, n // 4, rng)
    if _worker_distilled and distilled_share > 0:  # the teacher's replies, with the facts it read
        n = round(len(out) * distilled_share / (1 - distilled_share)) if distilled_share < 1 else len(_worker_distilled)
        picked = rng.sample(_worker_distilled, min(n, len(_worker_distilled)))
        distilled = [encode_persona(_worker_encoder, ex, rng, 0.0, line_drop=0.0) for ex in picked]
        out = distilled if distilled_share >= 1 else out + distilled
    return out


class EpochPrefetcher:
    """Encodes training epochs (fresh profile sampling each) one ahead, in a helper process."""

    def __init__(self, data_dir: Path, seed: int, drop: float, persona_dir: Path | None = None,
                 persona_share: float = 0.0, budget: PromptBudget = PromptBudget(), fact_boost: int = 0,
                 user_fact_boost: int = 0, distilled: Path | None = None, distilled_share: float = 0.0) -> None:
        self.seed, self.drop, self.persona_share = seed, drop, persona_share
        self.fact_boost, self.user_fact_boost = fact_boost, user_fact_boost
        self.distilled_share = distilled_share
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_epoch_worker,
                                        initargs=(data_dir, persona_dir, budget, distilled))
        self.pending: dict[int, Future] = {}

    def _submit(self, epoch: int) -> Future:
        return self.pool.submit(_encode_epoch, self.seed, epoch, self.drop, self.persona_share, self.fact_boost,
                                self.user_fact_boost, self.distilled_share)

    def start(self, epoch: int) -> None:
        """Begin encoding ``epoch`` now."""
        if epoch not in self.pending:
            self.pending[epoch] = self._submit(epoch)

    def get(self, epoch: int) -> list[Encoded]:
        """Examples of ``epoch``; starts encoding ``epoch + 1``."""
        self.start(epoch)
        self.start(epoch + 1)
        return self.pending.pop(epoch).result()

    def close(self) -> None:
        """Stop the helper process."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rapport-train train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (checkpoints, log)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare`")
    p.add_argument("--scratch", action="store_true", help="random init instead of MiniLM warm start")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--max-minutes", type=float, default=95.0, help="wall-clock budget of this call")
    p.add_argument("--max-examples", type=int, default=50_000, help="planned examples (LR schedule, stop)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--cross-attn-lr-mult", type=float, default=5.0)
    p.add_argument("--profile-drop", type=float, default=0.4, help="probability of dropping each profile")
    p.add_argument("--eval-every", type=int, default=6000, help="examples between evaluations")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-only", action="store_true", help="evaluate <run>/last.pt once (adds a log line)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (3x slower on CPUs without bf16 units)")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep MiniLM's (tied) token embeddings fixed; `shards` then moves only the rest")
    p.add_argument("--time-schedule", action="store_true",
                   help="decay the learning rate over --max-minutes instead of --max-examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", type=Path, help="start from this Hugging Face folder (rapport-train dequantize)")
    p.add_argument("--persona-data", type=Path, help="Synthetic-Persona-Chat folder to mix in (see above)")
    p.add_argument("--persona-share", type=float, default=0.7, help="share of persona examples in an epoch")
    p.add_argument("--fact-boost", type=int, default=0,
                   help="add fact-dependent persona turns this many times over (facts kept), up to 1/4 of the persona part")
    p.add_argument("--user-fact-boost", type=int, default=0,
                   help="add turns that draw on the user's facts this many times over (facts kept), up to 1/4 too")
    p.add_argument("--distilled", type=Path, help="a `rapport-train distill` file: the teacher's replies to train on")
    p.add_argument("--distilled-share", type=float, default=0.5,
                   help="share of an epoch from --distilled (1: the distilled examples alone; fewer teacher "
                        "replies than that share of a whole epoch: the real examples are subsampled)")
    p.add_argument("--facts-tokens", type=int, default=PromptBudget.max_facts_tokens,
                   help="prompt budget of the bot's and of the user's facts, each")
    p.add_argument("--source-tokens", type=int, default=PromptBudget.max_source_tokens, help="prompt budget")
    p.add_argument("--family", choices=("bart", "lstm"), default="bart",
                   help="bart: the Transformer (MiniLM warm start); lstm: training/lstm.py, from scratch")
    p.add_argument("--lstm-embed", type=int, default=256, help="lstm: token embedding width")
    p.add_argument("--lstm-hidden", type=int, default=512, help="lstm: decoder width (each encoder direction half)")
    p.add_argument("--lstm-layers", type=int, default=2, help="lstm: layers of the encoder and of the decoder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    codec = TextCodec.from_file(minilm_dir() / "tokenizer.json")
    splits, facts = load_splits(args.data), load_facts(args.data)
    budget = PromptBudget(args.source_tokens, args.facts_tokens)
    prefetch = EpochPrefetcher(args.data, args.seed, args.profile_drop, args.persona_data, args.persona_share, budget,
                               args.fact_boost, args.user_fact_boost, args.distilled, args.distilled_share)
    if not (args.resume or args.eval_only):  # the helper encodes epoch 0 while this process loads the model
        prefetch.start(0)
    encoder = ExampleEncoder(codec, facts, budget)
    valid = encode_split(encoder, splits["valid"], random.Random(1), drop=0.0)
    valid = random.Random(2).sample(valid, 600)
    shuffled = [Encoded(valid[(i + 97) % len(valid)].source, e.target) for i, e in enumerate(valid)]
    persona_valid, persona_other_facts, user_dependent, user_dependent_other = [], [], [], []
    if args.persona_data:  # the valid half: true facts, and another conversation's user facts
        persona_valid_examples = [ex for c in load_persona_splits(args.persona_data)["valid"]
                                  for ex in persona_examples(c)]
        exs = random.Random(3).sample(persona_valid_examples, 600)
        persona_valid = [encoder.encode(ex, list(ex.user_facts), list(ex.bot_facts)) for ex in exs]
        persona_other_facts = [encoder.encode(ex, list(exs[(i + 97) % len(exs)].user_facts), list(ex.bot_facts))
                               for i, ex in enumerate(exs)]
        dependent = [ex for ex in persona_valid_examples if depends_on(ex, ex.user_facts, ex.bot_facts)]
        dependent = random.Random(4).sample(dependent, min(300, len(dependent)))
        user_dependent = [encoder.encode(ex, list(ex.user_facts), list(ex.bot_facts)) for ex in dependent]
        user_dependent_other = [encoder.encode(ex, list(dependent[(i + 97) % len(dependent)].user_facts),
                                               list(ex.bot_facts)) for i, ex in enumerate(dependent)]

    if args.family == "lstm":
        model = build_lstm(LstmConfig(MINILM_VOCAB, args.lstm_embed, args.lstm_hidden, args.lstm_layers,
                                      args.lstm_layers, pad_token_id=PAD_ID, decoder_start_token_id=CLS_ID,
                                      eos_token_id=SEP_ID), seed=args.seed)
    elif args.init_from:
        from transformers import BartForConditionalGeneration
        model = BartForConditionalGeneration.from_pretrained(args.init_from)
    else:
        model = build_model(warm_start=not args.scratch, seed=args.seed)
    if args.freeze_embeddings:
        freeze_embeddings(model)
    model.to(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    cross = set() if args.family == "lstm" else {id(p) for p in cross_attention_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in cross], "lr": args.lr},
        {"params": [p for p in trainable if id(p) in cross], "lr": args.lr * args.cross_attn_lr_mult},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    base_lrs = [g["lr"] for g in groups]
    state = {"step": 0, "examples": 0, "epoch": 0, "seconds": 0.0, "best_nll": math.inf}
    if args.resume and (args.run / "last.pt").exists():
        ckpt = torch.load(args.run / "last.pt", map_location=args.device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        print(f"resumed at {state['examples']} examples")
    (args.run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))

    def save(name: str) -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                    "config": model.config.to_dict(), "warm_start": not args.scratch,
                    "frozen_embeddings": args.freeze_embeddings, "budget": budget.__dict__,
                    "init_from": str(args.init_from or ""), "persona_data": bool(args.persona_data)},
                   args.run / f"{name}.tmp")
        (args.run / f"{name}.tmp").replace(args.run / name)

    def evaluate() -> None:
        nll = token_nll(model, valid)
        nll_shuffled = token_nll(model, shuffled)
        record = {"examples": state["examples"], "step": state["step"], "seconds": round(state["seconds"]),
                  "valid_token_nll": nll, "valid_token_ppl": math.exp(nll),
                  "context_gain": nll_shuffled - nll, "samples": greedy_samples(model, codec, valid[:4])}
        if persona_valid:
            record["persona_valid_token_nll"] = token_nll(model, persona_valid)
            record["persona_user_facts_gain"] = token_nll(model, persona_other_facts) - record["persona_valid_token_nll"]
            record["persona_user_dependent_gain"] = token_nll(model, user_dependent_other) - token_nll(model, user_dependent)
            record["samples"] += greedy_samples(model, codec, persona_valid[:4])
        with open(args.run / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps({k: v for k, v in record.items() if k != "samples"}))
        for s in record["samples"]:
            tqdm.write(f"  > {s['reply']}")
        score = nll + record.get("persona_valid_token_nll", 0.0)  # with persona data: the sum of both
        if score < state["best_nll"]:
            state["best_nll"] = score
            save("best.pt")

    if args.eval_only:
        evaluate()
        prefetch.close()
        return
    model.train()
    started = time.time()
    seconds_at_start = state["seconds"]
    last_ckpt = time.time()
    next_eval = (state["examples"] // args.eval_every + 1) * args.eval_every
    bar = tqdm(total=None if args.time_schedule else args.max_examples, initial=state["examples"], unit="ex",
               mininterval=10)
    device_type = torch.device(args.device).type
    done = False
    while not done:
        train = prefetch.get(state["epoch"])
        batches = bucketed_batches(train, args.batch_size, random.Random(args.seed * 1000 + state["epoch"]))
        skip = state["step"] - state.get("epoch_start_step", 0)
        for batch in batches[skip:]:
            if args.time_schedule:
                frac = (time.time() - started) / (args.max_minutes * 60)
            else:
                frac = state["examples"] / args.max_examples
            warm = min(1.0, (state["step"] + 1) / 300)
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * warm * max(0.1, 1.0 - 0.9 * frac)
            t = to_device(collate(batch), args.device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**t).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["examples"] += len(batch)
            state["seconds"] = seconds_at_start + time.time() - started
            bar.update(len(batch))
            if state["step"] % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if state["examples"] >= next_eval:
                evaluate()
                next_eval += args.eval_every
            out_of_time = time.time() - started > args.max_minutes * 60
            done = out_of_time or state["examples"] >= args.max_examples
            if done or time.time() - last_ckpt > args.checkpoint_minutes * 60:
                save("last.pt")
                last_ckpt = time.time()
            if done:
                break
        else:
            state["epoch"] += 1
            state["epoch_start_step"] = state["step"]
    prefetch.close()
    evaluate()
    save("last.pt")
    bar.close()
    print(f"stopped at {state['examples']} examples, {state['seconds'] / 60:.1f} minutes of training in total")


if __name__ == "__main__":
    main()
