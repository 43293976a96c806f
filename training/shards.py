"""Move trained weights between machines in small fp16 shards (e.g. back from a rented GPU).

    rapport-train shards pack-chat --checkpoint /tmp/runs/gpu/best.pt --out $OUT
    rapport-train shards unpack-chat --shards DIR --out ~/.cache/rapport/runs/gpu/best.pt
    rapport-train shards pack-ranker --model /tmp/runs/ranker/best --out $OUT
    rapport-train shards unpack-ranker --shards DIR --out ~/.cache/rapport/runs/ranker/best
    rapport-train shards pack-init --checkpoint ~/.cache/rapport/runs/persona2/best.pt --out DIR
    rapport-train shards unpack-init --shards DIR --out /tmp/init            # on the GPU machine
    rapport-train shards unpack-chat --shards DIR --base ~/.cache/rapport/runs/persona2/best.pt --out OUT.pt

Only the weights that training changed travel back; frozen ones (the token embeddings and the output
layer, the lower ranker layers) are rebuilt here: from the MiniLM package, or with ``--base`` from the
checkpoint that training continued (sent over with ``pack-init``: the frozen tables as int8 rows, as the
shipped models store them, the rest as fp16). Unpacking rounds the rebuilt base the way it travelled:
the result is exactly the model that was trained, with the trained weights rounded to fp16 (relative
error 5e-4).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import BartConfig, BartForConditionalGeneration

from .modeling import build_model, copy_minilm_files, minilm_dir

SHARD_BYTES = 15 * 2**20
CHAT_FROZEN = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "lm_head.weight")


def int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (2-D) as int8 rows and one float32 scale per row (the shipped models' embedding format)."""
    scale = (t.detach().float().abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
    return (t.detach().float() / scale).round().clamp(-127, 127).to(torch.int8), scale


def round_int8_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as it arrives after travelling as int8 rows."""
    q, scale = int8_rows(t)
    return q.float() * scale


def as_fp16(name: str, t: torch.Tensor) -> torch.Tensor:
    """A weight as it arrives after travelling as fp16."""
    return t.half().float() if t.is_floating_point() else t


def as_sent_by_pack_init(name: str, t: torch.Tensor) -> torch.Tensor:
    """A weight as ``pack-init`` sends it: the frozen tables as int8 rows, the rest as fp16."""
    return round_int8_rows(t) if name in CHAT_FROZEN else as_fp16(name, t)


def pack(tensors: dict[str, torch.Tensor], out_dir: Path, prefix: str, metadata: dict,
         int8_names: tuple[str, ...] = ()) -> list[Path]:
    """Write ``tensors`` as safetensors shards of at most 15 MiB; ``metadata`` goes in each.

    Tensors named in ``int8_names`` travel as int8 rows (``NAME`` plus ``NAME.row_scale``), the rest as fp16."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        if name in int8_names:
            q, scale = int8_rows(tensors[name].cpu())
            parts = {name: q.contiguous(), f"{name}.row_scale": scale.contiguous()}
        else:
            parts = {name: tensors[name].detach().to("cpu", torch.float16).contiguous()}
        nbytes = sum(t.numel() * t.element_size() for t in parts.values())
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1].update(parts)
        size += nbytes
    meta = {"rapport": json.dumps(metadata)}
    paths = []
    for i, shard in enumerate(shards):
        path = out_dir / f"{prefix}-{i:02d}.safetensors"
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
    return paths


def unpack(shards_dir: Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors (as float32, int8 rows multiplied out) and the metadata of ``prefix``'s shards."""
    paths = sorted(shards_dir.glob(f"{prefix}-*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no {prefix}-*.safetensors shards in {shards_dir}")
    raw: dict[str, torch.Tensor] = {}
    for path in paths:
        raw.update(load_file(str(path)))
    tensors = {k: v.float() * raw[f"{k}.row_scale"] if f"{k}.row_scale" in raw else v.float()
               for k, v in raw.items() if not k.endswith(".row_scale")}
    with safe_open(str(paths[0]), "pt") as f:
        metadata = json.loads(f.metadata()["rapport"])
    return tensors, metadata


def overlay(base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
            as_sent: Callable[[str, torch.Tensor], torch.Tensor] = as_fp16) -> dict[str, torch.Tensor]:
    """``base`` as the training machine saw it (``as_sent``: rounded through fp16), with ``trained`` on top."""
    unknown = set(trained) - set(base)
    if unknown:
        raise KeyError(f"shards hold weights the model does not have: {sorted(unknown)[:5]}")
    return {k: trained[k] if k in trained else as_sent(k, v) for k, v in base.items()}


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the entries that share storage with an earlier one (tied embeddings)."""
    seen: set[int] = set()
    out = {}
    for name, t in state.items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[name] = t
    return out


def pack_init(checkpoint: Path, out_dir: Path) -> list[Path]:
    """Every weight of a chat checkpoint as fp16 shards, to continue training it on another machine."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return pack(unique_tensors(ckpt["model"]), out_dir, "init", {"config": ckpt["config"], "state": ckpt["state"]},
                int8_names=CHAT_FROZEN)


def unpack_init(shards_dir: Path, out_dir: Path) -> None:
    """A Hugging Face model folder (for ``train --init-from``) from ``pack-init`` shards."""
    tensors, meta = unpack(shards_dir, "init")
    model = BartForConditionalGeneration(BartConfig(**meta["config"]))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    tied = {n for n in missing if any(state[n].data_ptr() == state[k].data_ptr() for k in tensors)}
    changed = [k for k in tensors if not torch.equal(state[k], tensors[k])]  # e.g. tables tied here, not there
    if unexpected or set(missing) - tied or changed:
        raise KeyError(f"init shards do not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                       f"unexpected {unexpected[:5]}, not kept {changed[:5]}")
    model.save_pretrained(out_dir)


def pack_chat(checkpoint: Path, out_dir: Path) -> list[Path]:
    """Shards of a chat-model checkpoint trained with ``--freeze-embeddings``."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not ckpt.get("frozen_embeddings"):
        raise ValueError("pack-chat needs a checkpoint trained with --freeze-embeddings")
    tensors = {k: v for k, v in ckpt["model"].items() if k not in CHAT_FROZEN}
    return pack(tensors, out_dir, "chat", {"config": ckpt["config"], "state": ckpt["state"],
                                           "budget": ckpt.get("budget", {}), "persona_data": ckpt.get("persona_data")})


def unpack_chat(shards_dir: Path, out: Path, base: Path | None = None) -> None:
    """Rebuild a full checkpoint (no optimizer state) from chat shards, on MiniLM or on ``base``."""
    trained, meta = unpack(shards_dir, "chat")
    extra = {"budget": meta.get("budget") or {}, "persona_data": meta.get("persona_data")}
    if base:
        from .export import model_from_checkpoint
        base_ckpt = torch.load(base, map_location="cpu", weights_only=False)
        model = model_from_checkpoint(base_ckpt)
        model.load_state_dict(overlay(model.state_dict(), trained, as_sent_by_pack_init))
        extra = {k: v or base_ckpt.get(k) for k, v in extra.items()}  # shards packed without the prompt budget
    else:
        model = build_model(warm_start=True)
        model.load_state_dict(overlay(model.state_dict(), trained))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "state": meta["state"], "config": meta["config"], **extra,
                "warm_start": True, "frozen_embeddings": True, "unpacked_from_fp16_shards": True}, out)


def pack_ranker(model_dir: Path, out_dir: Path) -> list[Path]:
    """Shards of the ranker layers that training changed (listed in ``ranker.json``)."""
    info = json.loads((model_dir / "ranker.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    trained = {k: v for k, v in weights.items() if any(k.startswith(p) for p in info["trained_prefixes"])}
    return pack(trained, out_dir, "ranker", info)


def unpack_ranker(shards_dir: Path, out_dir: Path) -> None:
    """Rebuild the ranker's model folder (weights, config, tokenizer) from ranker shards."""
    trained, info = unpack(shards_dir, "ranker")
    base = load_file(str(minilm_dir() / "model.safetensors"))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(overlay(base, trained), str(out_dir / "model.safetensors"))
    copy_minilm_files(out_dir)
    (out_dir / "ranker.json").write_text(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["pack-chat", "unpack-chat", "pack-ranker", "unpack-ranker", "pack-init",
                                      "unpack-init"])
    p.add_argument("--checkpoint", type=Path, help="pack-chat, pack-init: training checkpoint")
    p.add_argument("--base", type=Path, help="unpack-chat: the checkpoint training continued (else MiniLM)")
    p.add_argument("--model", type=Path, help="pack-ranker: ranker model folder")
    p.add_argument("--shards", type=Path, help="unpack-*: folder of shards")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.action == "pack-chat":
        print(*pack_chat(args.checkpoint, args.out), sep="\n")
    elif args.action == "pack-ranker":
        print(*pack_ranker(args.model, args.out), sep="\n")
    elif args.action == "pack-init":
        print(*pack_init(args.checkpoint, args.out), sep="\n")
    elif args.action == "unpack-init":
        unpack_init(args.shards, args.out)
    elif args.action == "unpack-chat":
        unpack_chat(args.shards, args.out, args.base)
    else:
        unpack_ranker(args.shards, args.out)


if __name__ == "__main__":
    main()
