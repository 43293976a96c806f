"""Fine-tune all-MiniLM-L6-v2 as Rapport's learned safety classifier (messages and context/reply pairs).

    rapport-train train-safety --run ~/.cache/rapport/runs/safety --max-minutes 40
    rapport-train train-safety --run ~/.cache/rapport/runs/safety --resume

One encoder, two heads over its mean-pooled, L2-normalised sentence vector (what the engine's
``SentenceEncoder`` computes):
- the message head (2 logits): crisis/self-harm and hate, trained on ``training.safety_sets.message_sets``
  (binary cross-entropy with each label's positives up-weighted to the negatives' total);
- the pair head (1 logit): is this reply unsafe *in this context*, trained on DiaSafety's train pairs,
  read as one cross-encoded text ``[CLS] context [SEP] reply [SEP]``.
Each step takes one batch of messages and one of pairs. Selection: the mean over the two message heads'
average precision and the pair head's ROC AUC on the valid sets, measured after every epoch; the best
model goes to ``<run>/best`` (a MiniLM-shaped folder plus ``heads.safetensors``), which
``rapport-train safety-export`` turns into ``exported_models/safety-classifier``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tqdm import tqdm

from engine.safety.classifier import MAX_TOKENS

from .data import DEFAULT_DATA
from .modeling import copy_minilm_files, minilm_dir
from .ranker import embed
from .safety_sets import HEADS, message_sets, pair_sets


class SafetyHeads(torch.nn.Module):
    """The message head (crisis, hate) and the pair head (unsafe reply) over a sentence vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.message = torch.nn.Linear(dim, len(HEADS))
        self.pair = torch.nn.Linear(dim, 1)


def encode_messages(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of single texts."""
    return [e.ids for e in tok.encode_batch(texts)]


def encode_pairs(tok: Tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
    """Token ids of (context, reply) pairs, cross-encoded."""
    return [e.ids for e in tok.encode_batch(pairs)]


def scores(model, heads: SafetyHeads, ids: list[list[int]], which: str, bf16: bool, batch: int = 64) -> np.ndarray:
    """Sigmoid scores of one head (``message``: (n, 2), ``pair``: (n,)) for token id lists."""
    out = []
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(ids), batch):
            vec = embed(model, ids[i: i + batch], "cpu")
            out.append(torch.sigmoid(getattr(heads, which)(vec).float()))
    model.train()
    result = torch.cat(out).numpy()
    return result[:, 0] if which == "pair" else result


def valid_metrics(message_scores: np.ndarray, message_labels: dict[str, list[int]], pair_scores: np.ndarray,
                  pair_labels: list[int]) -> dict[str, float]:
    """Average precision of each message head and ROC AUC of the pair head, and their mean."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    out = {f"ap_{h}": float(average_precision_score(message_labels[h], message_scores[:, k]))
           for k, h in enumerate(HEADS)}
    out["auc_pair"] = float(roc_auc_score(pair_labels, pair_scores))
    out["selection"] = float(np.mean(list(out.values())))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rapport-train train-safety", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (checkpoints, log, best/)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare` (everyday chit-chat)")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--max-minutes", type=float, default=40.0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
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
    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    messages, pairs = message_sets(args.data), pair_sets()
    msg_ids = {k: encode_messages(tok, s.texts) for k, s in messages.items()}
    msg_y = {k: torch.tensor([s.labels[h] for h in HEADS], dtype=torch.float32).T for k, s in messages.items()}
    pair_ids = {k: encode_pairs(tok, [(r["context"], r["response"]) for r in rows]) for k, rows in pairs.items()}
    pair_y = {k: [int(r["label"] == "Unsafe") for r in rows] for k, rows in pairs.items()}
    positives = msg_y["train"].sum(0)
    pos_weight = (len(msg_y["train"]) - positives) / positives.clamp(min=1)

    model = AutoModel.from_pretrained(str(minilm_dir()), dtype=torch.float32)
    heads = SafetyHeads(model.config.hidden_size)
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": args.lr},
                                   {"params": heads.parameters(), "lr": args.head_lr}], weight_decay=0.01)
    state = {"epoch": 0, "step": 0, "seconds": 0.0, "best": -1.0}
    if args.resume and (args.run / "last.pt").exists():
        ckpt = torch.load(args.run / "last.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        heads.load_state_dict(ckpt["heads"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    (args.run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    steps_per_epoch = len(pair_ids["train"]) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    def log(record: dict) -> None:
        with open(args.run / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))

    def save_last() -> None:
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                    "state": state}, args.run / "last.tmp")
        (args.run / "last.tmp").replace(args.run / "last.pt")

    def evaluate() -> None:
        metrics = valid_metrics(scores(model, heads, msg_ids["valid"], "message", args.bf16),
                                messages["valid"].labels,
                                scores(model, heads, pair_ids["valid"], "pair", args.bf16), pair_y["valid"])
        log({"epoch": state["epoch"], "step": state["step"], "seconds": round(state["seconds"])} | metrics)
        if metrics["selection"] > state["best"]:
            state["best"] = metrics["selection"]
            best = args.run / "best"
            best.mkdir(exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(best / "model.safetensors"))
            save_file({k: v.detach().contiguous() for k, v in heads.state_dict().items()},
                      str(best / "heads.safetensors"))
            copy_minilm_files(best)
            (best / "safety_training.json").write_text(json.dumps(
                {"valid": metrics, "epoch": state["epoch"], "step": state["step"], "seconds": round(state["seconds"]),
                 "train_messages": len(messages["train"].texts), "train_pairs": len(pair_ids["train"]),
                 "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}, indent=2))

    def batch_of(order: list[int], start: int) -> list[int]:  # messages cycle: there are fewer than pairs
        return [order[(start + i) % len(order)] for i in range(args.batch_size)]

    started, seconds_at_start = time.time(), state["seconds"]
    last_ckpt = time.time()
    out_of_time = False
    model.train()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    while state["epoch"] < args.epochs and not out_of_time:
        rng = random.Random(args.seed * 1000 + state["epoch"])
        pair_order = list(range(len(pair_ids["train"])))
        msg_order = list(range(len(msg_ids["train"])))
        rng.shuffle(pair_order)
        rng.shuffle(msg_order)
        done = state["step"] - state["epoch"] * steps_per_epoch
        bar = tqdm(range(done, steps_per_epoch), desc=f"epoch {state['epoch']}", mininterval=10)
        for b in bar:
            frac = max(state["step"] / total_steps, (time.time() - started) / (args.max_minutes * 60))
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * min(1.0, (state["step"] + 1) / 50) * max(0.0, 1.0 - frac)
            mi = batch_of(msg_order, b * args.batch_size)
            pi = pair_order[b * args.batch_size: (b + 1) * args.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                m_vec = embed(model, [msg_ids["train"][i] for i in mi], "cpu")
                p_vec = embed(model, [pair_ids["train"][i] for i in pi], "cpu")
            m_loss = bce(heads.message(m_vec), msg_y["train"][mi], pos_weight=pos_weight)
            p_loss = bce(heads.pair(p_vec)[:, 0], torch.tensor([pair_y["train"][i] for i in pi], dtype=torch.float32))
            loss = m_loss + p_loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["seconds"] = seconds_at_start + time.time() - started
            if state["step"] % 20 == 0:
                bar.set_postfix(msg=f"{m_loss.item():.3f}", pair=f"{p_loss.item():.3f}", refresh=False)
            out_of_time = time.time() - started > args.max_minutes * 60
            if out_of_time or time.time() - last_ckpt > args.checkpoint_minutes * 60:
                save_last()
                last_ckpt = time.time()
            if out_of_time:
                break
        else:
            state["epoch"] += 1
        evaluate()
        save_last()
    print(f"best valid selection score {state['best']:.4f} after {state['seconds'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()
