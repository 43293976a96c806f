"""Fine-tune all-MiniLM-L6-v2 as Rapport's reply ranker: a bi-encoder, context -> reply.

    rapport-train train-ranker --run ~/.cache/rapport/runs/ranker --max-minutes 60
    rapport-train train-ranker --run /tmp/runs/ranker --device cuda --batch-size 256 --max-minutes 5

Context text = the last two turns (what the engine embeds); loss = cross-entropy over in-batch
negatives of 20 x cosine (multiple-negatives ranking). Token embeddings and the lowest layers stay
frozen (``--train-layers`` top layers train). Selection: Hits@1/20 on the valid split (19 random
replies of the same split as distractors, fixed seed), measured after every epoch; the best
model is written to ``<run>/best`` as a MiniLM-shaped folder that ``export-encoder --source`` takes.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tqdm import tqdm

from .data import DEFAULT_DATA, Example, load_splits
from .examples import all_examples, context_text
from .metrics import draw_distractors
from .modeling import copy_minilm_files, minilm_dir

SCALE = 20.0
MAX_CONTEXT_TOKENS, MAX_REPLY_TOKENS = 128, 64


def embed(model, ids: list[list[int]], device: str) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence vectors of a batch of token id lists."""
    width = max(len(x) for x in ids)
    input_ids = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
    input_ids = input_ids.to(device)
    mask = (input_ids != 0).long()
    states = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def valid_sets(exs: list[Example], n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """``n`` (context, [true reply, 19 distractors]) sets from ``exs``, fixed seed."""
    rng = random.Random(seed)
    pool = [e.reply for e in exs]
    out = []
    for ex in rng.sample(exs, min(n, len(exs))):
        out.append((context_text(ex), [ex.reply, *draw_distractors(pool, ex.reply, rng)]))
    return out


@torch.no_grad()
def hits_at_1(model, tok: Tokenizer, sets: list[tuple[str, list[str]]], device: str) -> float:
    """Share of sets whose true reply (first option) scores highest."""
    model.eval()
    hits = 0
    for start in range(0, len(sets), 16):
        chunk = sets[start: start + 16]
        ctx = embed(model, [e.ids for e in tok.encode_batch([c for c, _ in chunk])], device)
        opts = embed(model, [e.ids for e in tok.encode_batch([o for _, os in chunk for o in os])], device)
        scores = torch.einsum("bd,bkd->bk", ctx, opts.view(len(chunk), 20, -1))
        hits += int((scores.argmax(1) == 0).sum())
    model.train()
    return hits / len(sets)


def freeze_lower(model, train_layers: int) -> list[str]:
    """Freeze embeddings and all but the top ``train_layers`` layers; return the trained name prefixes."""
    n = model.config.num_hidden_layers
    prefixes = [f"encoder.layer.{i}." for i in range(n - train_layers, n)]
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(x) for x in prefixes))
    return prefixes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rapport-train train-ranker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (checkpoints, log, best/)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare`")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--train-layers", type=int, default=3, help="top transformer layers that train")
    p.add_argument("--valid-sets", type=int, default=1000, help="valid Hits@1/20 sets for model selection")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModel

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.run.mkdir(parents=True, exist_ok=True)
    source = minilm_dir()
    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    tok.no_padding()
    splits = load_splits(args.data)
    train = [e for e in all_examples(splits["train"]) if e.context]
    sets = valid_sets([e for e in all_examples(splits["valid"]) if e.context], args.valid_sets)
    tok.enable_truncation(MAX_CONTEXT_TOKENS)
    ctx_ids = [e.ids for e in tok.encode_batch([context_text(e) for e in train])]
    tok.enable_truncation(MAX_REPLY_TOKENS)
    rep_ids = [e.ids for e in tok.encode_batch([e.reply for e in train])]
    tok.enable_truncation(MAX_CONTEXT_TOKENS)

    model = AutoModel.from_pretrained(str(source), dtype=torch.float32).to(args.device)
    prefixes = freeze_lower(model, args.train_layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    state = {"epoch": 0, "step": 0, "seconds": 0.0, "best_hits": -1.0}
    if args.resume and (args.run / "last.pt").exists():
        ckpt = torch.load(args.run / "last.pt", map_location=args.device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    (args.run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    steps_per_epoch = len(train) // args.batch_size
    device_type = torch.device(args.device).type

    def log(record: dict) -> None:
        with open(args.run / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))

    def save_last() -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state},
                   args.run / "last.tmp")
        (args.run / "last.tmp").replace(args.run / "last.pt")

    def save_best() -> None:
        best = args.run / "best"
        best.mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(best / "model.safetensors"))
        copy_minilm_files(best)
        (best / "ranker.json").write_text(json.dumps(
            {"trained_prefixes": prefixes, "valid_hits_at_1": state["best_hits"], "epoch": state["epoch"],
             "step": state["step"], "seconds": round(state["seconds"]), "args": vars(args) | {
                 "run": str(args.run), "data": str(args.data)}}, indent=2))

    if state["step"] == 0:
        state["best_hits"] = hits_at_1(model, tok, sets, args.device)
        log({"epoch": 0, "step": 0, "valid_hits_at_1": state["best_hits"], "note": "zero-shot"})
        save_best()
    started, seconds_at_start, last_ckpt = time.time(), state["seconds"], time.time()
    total_steps = steps_per_epoch * args.epochs
    out_of_time = False
    loss = torch.zeros(())
    model.train()
    while state["epoch"] < args.epochs and not out_of_time:
        order = list(range(len(train)))
        random.Random(args.seed * 1000 + state["epoch"]).shuffle(order)
        done_in_epoch = state["step"] - state["epoch"] * steps_per_epoch
        bar = tqdm(range(done_in_epoch, steps_per_epoch), desc=f"epoch {state['epoch']}", mininterval=10)
        for b in bar:
            idx = order[b * args.batch_size: (b + 1) * args.batch_size]
            frac = max(state["step"] / total_steps, (time.time() - started) / (args.max_minutes * 60))
            for g in optimizer.param_groups:
                g["lr"] = args.lr * min(1.0, (state["step"] + 1) / 100) * max(0.0, 1.0 - frac)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
                c = embed(model, [ctx_ids[i] for i in idx], args.device)
                r = embed(model, [rep_ids[i] for i in idx], args.device)
            loss = torch.nn.functional.cross_entropy(SCALE * c @ r.T, torch.arange(len(idx), device=c.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["seconds"] = seconds_at_start + time.time() - started
            if state["step"] % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            out_of_time = time.time() - started > args.max_minutes * 60
            if out_of_time or time.time() - last_ckpt > args.checkpoint_minutes * 60:
                save_last()
                last_ckpt = time.time()
            if out_of_time:
                break
        else:
            state["epoch"] += 1
        hits = hits_at_1(model, tok, sets, args.device)
        log({"epoch": state["epoch"], "step": state["step"], "seconds": round(state["seconds"]),
             "valid_hits_at_1": hits, "loss": round(loss.item(), 4)})
        if hits > state["best_hits"]:
            state["best_hits"] = hits
            save_best()
        save_last()
    print(f"best valid Hits@1/20 {state['best_hits']:.3f} after {state['seconds'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()
