"""Move trained weights between machines in small fp16 shards (e.g. back from a rented GPU).

    rapport-train shards pack-chat --checkpoint /tmp/runs/gpu/best.pt --out $OUT
    rapport-train shards unpack-chat --shards DIR --out ~/.cache/rapport/runs/gpu/best.pt
    rapport-train shards pack-ranker --model /tmp/runs/ranker/best --out $OUT
    rapport-train shards unpack-ranker --shards DIR --out ~/.cache/rapport/runs/ranker/best

Only the weights that training changed travel; frozen ones (the token embeddings, the lower ranker
layers) are rebuilt from the MiniLM package. The training machine starts from an fp16 copy of
MiniLM (``RAPPORT_MINILM_DIR``), so unpacking rounds the rebuilt base to fp16 too: the result is
exactly the model that was trained, with the trained weights rounded to fp16 (relative error 5e-4).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .modeling import build_model, copy_minilm_files, minilm_dir

SHARD_BYTES = 15 * 2**20
CHAT_FROZEN = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "lm_head.weight")


def pack(tensors: dict[str, torch.Tensor], out_dir: Path, prefix: str, metadata: dict) -> list[Path]:
    """Write ``tensors`` as fp16 safetensors shards of at most 15 MiB; ``metadata`` goes in each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float16).contiguous()
        if size + t.numel() * 2 > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * 2
    meta = {"rapport": json.dumps(metadata)}
    paths = []
    for i, shard in enumerate(shards):
        path = out_dir / f"{prefix}-{i:02d}.safetensors"
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
    return paths


def unpack(shards_dir: Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors (as float32) and the metadata of ``prefix``'s shards."""
    paths = sorted(shards_dir.glob(f"{prefix}-*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no {prefix}-*.safetensors shards in {shards_dir}")
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        tensors.update({k: v.float() for k, v in load_file(str(path)).items()})
    with safe_open(str(paths[0]), "pt") as f:
        metadata = json.loads(f.metadata()["rapport"])
    return tensors, metadata


def overlay_on_fp16_base(base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``base`` rounded through fp16 (as the training machine saw it), with ``trained`` on top."""
    unknown = set(trained) - set(base)
    if unknown:
        raise KeyError(f"shards hold weights the model does not have: {sorted(unknown)[:5]}")
    return {k: trained[k] if k in trained else (v.half().float() if v.is_floating_point() else v)
            for k, v in base.items()}


def pack_chat(checkpoint: Path, out_dir: Path) -> list[Path]:
    """Shards of a chat-model checkpoint trained with ``--freeze-embeddings``."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not ckpt.get("frozen_embeddings"):
        raise ValueError("pack-chat needs a checkpoint trained with --freeze-embeddings")
    tensors = {k: v for k, v in ckpt["model"].items() if k not in CHAT_FROZEN}
    return pack(tensors, out_dir, "chat", {"config": ckpt["config"], "state": ckpt["state"]})


def unpack_chat(shards_dir: Path, out: Path) -> None:
    """Rebuild a full checkpoint (no optimizer state) from chat shards."""
    trained, meta = unpack(shards_dir, "chat")
    model = build_model(warm_start=True)
    model.load_state_dict(overlay_on_fp16_base(model.state_dict(), trained))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "state": meta["state"], "config": meta["config"],
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
    save_file(overlay_on_fp16_base(base, trained), str(out_dir / "model.safetensors"))
    copy_minilm_files(out_dir)
    (out_dir / "ranker.json").write_text(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["pack-chat", "unpack-chat", "pack-ranker", "unpack-ranker"])
    p.add_argument("--checkpoint", type=Path, help="pack-chat: training checkpoint")
    p.add_argument("--model", type=Path, help="pack-ranker: ranker model folder")
    p.add_argument("--shards", type=Path, help="unpack-*: folder of shards")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.action == "pack-chat":
        print(*pack_chat(args.checkpoint, args.out), sep="\n")
    elif args.action == "pack-ranker":
        print(*pack_ranker(args.model, args.out), sep="\n")
    elif args.action == "unpack-chat":
        unpack_chat(args.shards, args.out)
    else:
        unpack_ranker(args.shards, args.out)


if __name__ == "__main__":
    main()
