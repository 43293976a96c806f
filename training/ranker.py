"""Fine-tune all-MiniLM-L6-v2 as Rapport's reply ranker: a bi-encoder, context -> reply.

    rapport-train train-ranker --run ~/.cache/rapport/runs/ranker --max-minutes 60
    rapport-train train-ranker --run /tmp/runs/ranker --device cuda --batch-size 256 --max-minutes 5
    rapport-train train-ranker --run ~/.cache/rapport/runs/ranker-mix --persona-data ../shared/data/synthetic-persona-chat

Context text = the last two turns (what the engine embeds); loss = cross-entropy over in-batch
negatives of 20 x cosine (multiple-negatives ranking). Token embeddings and the lowest layers stay
frozen (``--train-layers`` top layers train). ``--persona-data`` mixes Synthetic-Persona-Chat's training
turns into every epoch (``--persona-share`` of the examples; turns with a template slot such as "[name]"
are left out); each batch comes from one corpus, so its negatives are replies of the same kind.
Selection: Hits@1/20 on the valid split (19 random replies of the same split as distractors, fixed
seed), and with ``--persona-data`` the mean of that and the same on the persona valid half, measured
every ``--eval-minutes`` and after every epoch; the best model is written to ``<run>/best`` as a
MiniLM-shaped folder that ``export-encoder --source`` takes.
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

from engine.model.replier import TEMPLATE_SLOT, context_text

from .data import DEFAULT_DATA, load_splits
from .examples import all_examples
from .metrics import draw_distractors
from .modeling import copy_minilm_files, minilm_dir
from .persona import load_persona_splits, persona_examples

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


Pair = tuple[str, str, str]  # (conversation id, context text, reply)
RankingSet = tuple[str, str, list[str]]  # (conversation id, context text, [true reply, 19 distractors])


def pairs_of(examples) -> list[Pair]:
    """(conversation, last two turns, reply) of examples that have a context (chit-chat or persona examples)."""
    return [(e.conv_id, context_text(e.context), e.reply) for e in examples if e.context]


def persona_pairs(convs) -> list[Pair]:
    """Pairs of Synthetic-Persona-Chat conversations, without replies that carry a template slot."""
    return [p for p in pairs_of(ex for c in convs for ex in persona_examples(c)) if not TEMPLATE_SLOT.search(p[2])]


def ranking_sets(pairs: list[Pair], n: int, seed: int = 0) -> list[RankingSet]:
    """``n`` Hits@1/20 sets from ``pairs`` (fixed seed): 19 distractors drawn from the same pairs' replies."""
    rng = random.Random(seed)
    pool = [r for _, _, r in pairs]
    return [(g, c, [r, *draw_distractors(pool, r, rng)]) for g, c, r in rng.sample(pairs, min(n, len(pairs)))]


def epoch_batches(parts: list[tuple[int, int, int]], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch as batches of example indices. ``parts`` are (first index, count, take) per corpus:
    ``take`` of its ``count`` examples are drawn; each batch holds one corpus, so its in-batch negatives
    are replies of the same kind; the batches come in a random order (fixed by ``seed``)."""
    rng = random.Random(seed)
    batches = []
    for start, count, take in parts:
        picks = [start + i for i in rng.sample(range(count), min(take, count))]
        batches += [picks[i: i + batch_size] for i in range(0, len(picks) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def hits_at_1(model, tok: Tokenizer, sets: list[RankingSet], device: str, bf16: bool = False) -> float:
    """Share of sets whose true reply (first option) scores highest (``bf16``: under autocast, as trained)."""
    model.eval()
    hits = 0
    for start in range(0, len(sets), 16):
        chunk = sets[start: start + 16]
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            ctx = embed(model, [e.ids for e in tok.encode_batch([c for _, c, _ in chunk])], device)
            opts = embed(model, [e.ids for e in tok.encode_batch([o for _, _, os in chunk for o in os])], device)
        scores = torch.einsum("bd,bkd->bk", ctx, opts.view(len(chunk), 20, -1))
        hits += int((scores.argmax(1) == 0).sum())
    model.train()
    return hits / len(sets)


def lineage(init_from: Path | None) -> dict | None:
    """What training started from: the record of the ranker that ``dequantize-encoder`` rebuilt, if any."""
    if init_from is None:
        return None
    record = init_from / "dequantized_from.json"
    return json.loads(record.read_text()) if record.exists() else {"folder": str(init_from)}


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
    p.add_argument("--persona-data", type=Path, help="Synthetic-Persona-Chat folder to mix in (see above)")
    p.add_argument("--persona-share", type=float, default=0.5, help="share of persona examples in an epoch")
    p.add_argument("--init-from", type=Path, help="MiniLM-shaped folder to start from (default: the pretrained "
                   "MiniLM; `dequantize-encoder` rebuilds the shipped ranker)")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--train-layers", type=int, default=3, help="top transformer layers that train")
    p.add_argument("--valid-sets", type=int, default=1000, help="valid Hits@1/20 sets per corpus for model selection")
    p.add_argument("--eval-minutes", type=float, default=15.0, help="measure valid Hits@1 this often within an epoch")
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
    corpora = {"chitchat": (pairs_of(all_examples(splits["train"])), pairs_of(all_examples(splits["valid"])))}
    if args.persona_data:
        persona = load_persona_splits(args.persona_data)
        corpora["persona"] = (persona_pairs(persona["train"]), persona_pairs(persona["valid"]))
    train = [pair for tr, _ in corpora.values() for pair in tr]
    sets = {name: ranking_sets(va, args.valid_sets) for name, (_, va) in corpora.items()}
    n_chat = len(corpora["chitchat"][0])
    parts = [(0, n_chat, n_chat)]
    if args.persona_data:
        parts.append((n_chat, len(train) - n_chat, round(n_chat * args.persona_share / (1 - args.persona_share))))
    tok.enable_truncation(MAX_CONTEXT_TOKENS)
    ctx_ids = [e.ids for e in tok.encode_batch([c for _, c, _ in train])]
    tok.enable_truncation(MAX_REPLY_TOKENS)
    rep_ids = [e.ids for e in tok.encode_batch([r for _, _, r in train])]
    tok.enable_truncation(MAX_CONTEXT_TOKENS)

    model = AutoModel.from_pretrained(str(args.init_from or source), dtype=torch.float32).to(args.device)
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
    steps_per_epoch = len(epoch_batches(parts, args.batch_size, 0))
    device_type = torch.device(args.device).type

    def log(record: dict) -> None:
        with open(args.run / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))

    def save_last() -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state},
                   args.run / "last.tmp")
        (args.run / "last.tmp").replace(args.run / "last.pt")

    def save_best(per_corpus: dict[str, float]) -> None:
        best = args.run / "best"
        best.mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(best / "model.safetensors"))
        copy_minilm_files(best)
        (best / "ranker.json").write_text(json.dumps(
            {"trained_prefixes": prefixes, "valid_hits_at_1": state["best_hits"], "valid_hits_at_1_by_corpus":
             per_corpus, "epoch": state["epoch"], "step": state["step"], "seconds": round(state["seconds"]),
             "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "started_from": lineage(args.init_from)}, indent=2))

    def evaluate(note: str = "") -> None:
        per_corpus = {name: hits_at_1(model, tok, s, args.device, args.bf16) for name, s in sets.items()}
        hits = sum(per_corpus.values()) / len(per_corpus)
        log({"epoch": state["epoch"], "step": state["step"], "seconds": round(state["seconds"]),
             "valid_hits_at_1": round(hits, 4), "by_corpus": per_corpus, "loss": round(loss.item(), 4)}
            | ({"note": note} if note else {}))
        if hits > state["best_hits"]:
            state["best_hits"] = hits
            save_best(per_corpus)

    loss = torch.zeros(())
    if state["step"] == 0:
        evaluate("zero-shot")
    started, seconds_at_start = time.time(), state["seconds"]
    last_ckpt = last_eval = time.time()
    total_steps = steps_per_epoch * args.epochs
    out_of_time = False
    model.train()
    while state["epoch"] < args.epochs and not out_of_time:
        batches = epoch_batches(parts, args.batch_size, args.seed * 1000 + state["epoch"])
        done_in_epoch = state["step"] - state["epoch"] * steps_per_epoch
        bar = tqdm(range(done_in_epoch, steps_per_epoch), desc=f"epoch {state['epoch']}", mininterval=10)
        for b in bar:
            idx = batches[b]
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
            if time.time() - last_eval > args.eval_minutes * 60 and b + 1 < steps_per_epoch:
                evaluate()
                last_eval = time.time()
        else:
            state["epoch"] += 1
        evaluate()
        last_eval = time.time()
        save_last()
    print(f"best valid Hits@1/20 {state['best_hits']:.3f} after {state['seconds'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()
