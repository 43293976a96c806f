"""Export the LSTM family (:mod:`training.lstm`) in the engine's runtime layout, so it runs unchanged.

    rapport-train export-lstm --checkpoint ~/.cache/rapport/runs/lstm1/best.pt --out exported_models/rapport-chat-lstm

The engine's contract is the Optimum seq2seq layout with a merged decoder (``engine/model/seq2seq.py``):
  encoder_model.onnx          input_ids, attention_mask -> last_hidden_state
  decoder_model_merged.onnx   input_ids, encoder_attention_mask, encoder_hidden_states,
                              past_key_values.0.decoder.{h,c} -> logits, present.0.decoder.{h,c}
The recurrent state is the decoder's "cache": (batch, layers, past, hidden), where ``past`` is 0 before the
first step (the graph then starts from the encoder bridge) and 1 after it (the graph continues from it), just
as a Transformer's self-attention cache is empty before step 0. Beam search reorders it along the batch axis
like any cache, and a teacher-forced call (scoring) passes the whole reply with an empty state. So the
engine does not know which family it runs; ``config.json`` says ``"model_type": "lstm"``.

Weights: the LSTM and linear layers dynamically quantized to int8 (onnxruntime ``quantize_dynamic``,
per-channel), and the token table, which both graphs hold, stored as int8 too (its Gather dequantizes the
rows it reads; 200 persona valid examples: NLL/token within 0.0004 of fp32's, the files 78 -> 32 MB). The
fp32 files are kept with ``--keep-fp32``.

Parity (``export_report.json``): on 16 held-out chit-chat prompts (valid split, seed 1), PyTorch's greedy
tokens (at most 20), their log-probabilities under PyTorch, and how many prompts the fp32 and int8 ONNX
graphs decode to exactly the same tokens, with their mean absolute log-prob difference on those tokens.
``tests/test_lstm_family.py`` checks the shipped int8 export against the recorded PyTorch tokens.
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
from .lstm import LstmConfig, LstmSeq2Seq
from .modeling import minilm_dir

OPSET = 17
PARITY_PROMPTS = 16
PARITY_TOKENS = 20


class _Encoder(torch.nn.Module):
    def __init__(self, model: LstmSeq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode(input_ids, attention_mask)


class _Decoder(torch.nn.Module):
    """Logits for the given tokens and the state after them; an empty past starts from the bridge."""

    def __init__(self, model: LstmSeq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states, past_h, past_c):
        bridge_h, bridge_c = self.model.initial_state(encoder_hidden_states, encoder_attention_mask)
        h = torch.cat([past_h, bridge_h[:, :, None]], dim=2)[:, :, 0]  # the past when there is one
        c = torch.cat([past_c, bridge_c[:, :, None]], dim=2)[:, :, 0]
        logits, (h, c) = self.model.decode(input_ids, encoder_hidden_states, encoder_attention_mask, (h, c))
        return logits, h[:, :, None], c[:, :, None]


def export_lstm_onnx(model: LstmSeq2Seq, folder: Path) -> None:
    """Write ``encoder_model.onnx`` and ``decoder_model_merged.onnx`` (fp32) for ``model`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    c = model.config
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = (ids != c.pad_token_id).long()
    with torch.no_grad():
        hidden = model.encode(ids, mask)
        torch.onnx.export(_Encoder(model), (ids, mask), str(folder / "encoder_model.onnx"), dynamo=False,
                          opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch_size", 1: "encoder_sequence_length"},
                                        "attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
                                        "last_hidden_state": {0: "batch_size", 1: "encoder_sequence_length"}})
        past = torch.zeros(2, c.decoder_layers, 1, c.hidden)
        state_axes = {0: "batch_size", 2: "past_sequence_length"}
        torch.onnx.export(_Decoder(model), (torch.tensor([[c.decoder_start_token_id]] * 2), mask, hidden, past, past),
                          str(folder / "decoder_model_merged.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "encoder_attention_mask", "encoder_hidden_states",
                                       "past_key_values.0.decoder.h", "past_key_values.0.decoder.c"],
                          output_names=["logits", "present.0.decoder.h", "present.0.decoder.c"],
                          dynamic_axes={"input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
                                        "encoder_attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
                                        "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
                                        "past_key_values.0.decoder.h": state_axes,
                                        "past_key_values.0.decoder.c": state_axes,
                                        "logits": {0: "batch_size", 1: "decoder_sequence_length"},
                                        "present.0.decoder.h": {0: "batch_size"},
                                        "present.0.decoder.c": {0: "batch_size"}})
    (folder / "config.json").write_text(json.dumps(c.to_dict(), indent=2))


def quantize_lstm(folder: Path) -> None:
    """Replace both graphs with int8 dynamic quantization of their LSTM, MatMul, Gemm and token-table weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
        path = folder / name
        tmp = folder / f"{name}.int8"
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["LSTM", "MatMul", "Gemm", "Gather"])
        tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[LstmSeq2Seq, dict]:
    """The model of a ``train --family lstm`` checkpoint, and the checkpoint's other entries."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = LstmSeq2Seq(LstmConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def pytorch_logprobs(model: LstmSeq2Seq, source: list[int], target: list[int]) -> list[float]:
    """Log-probability of each ``target`` token given ``source``, teacher-forced in PyTorch."""
    c = model.config
    with torch.no_grad():
        logits = model(torch.tensor([source]), torch.ones(1, len(source), dtype=torch.long),
                       torch.tensor([[c.decoder_start_token_id, *target[:-1]]])).logits[0].float()
    logp = torch.log_softmax(logits, -1)[torch.arange(len(target)), torch.tensor(target)]
    return [round(float(x), 5) for x in logp]


def parity_report(model: LstmSeq2Seq, graphs: dict[str, Path], sources: list[list[int]]) -> dict:
    """PyTorch's greedy tokens on ``sources`` and how each ONNX folder in ``graphs`` agrees (module docstring)."""
    from engine.model.generation import GenerationConfig
    from engine.model.seq2seq import Seq2SeqModel

    c = model.eval().float().config
    greedy = []
    for source in sources:
        row = model.generate(torch.tensor([source]), max_new_tokens=PARITY_TOKENS)[0].tolist()[1:]
        greedy.append([t for t in row if t not in (c.pad_token_id, c.eos_token_id)])
    targets = [g + [c.eos_token_id] for g in greedy]
    want = [pytorch_logprobs(model, s, t) for s, t in zip(sources, targets)]
    report = {"sources": sources, "pytorch_greedy": greedy, "pytorch_logprobs": want,
              "max_new_tokens": PARITY_TOKENS}
    for name, folder in graphs.items():
        runtime = Seq2SeqModel.from_dir(folder)
        config = GenerationConfig(max_new_tokens=PARITY_TOKENS)
        got = [[t for t in runtime.generate(s, config)[0].ids if t != c.eos_token_id] for s in sources]
        scores = runtime.score(sources, targets)
        diffs = np.concatenate([np.abs(scores[i, : len(t)] - want[i]) for i, t in enumerate(targets)])
        report[f"{name}_greedy_equal"] = sum(g == w for g, w in zip(got, greedy))
        report[f"{name}_mean_abs_logprob_diff"] = float(diffs.mean())
    return report


def training_total(checkpoint: Path, state: dict) -> dict:
    """Examples and minutes of the run, on the device its ``args.json`` names (a run resumed on another
    device is counted on the last one)."""
    args = checkpoint.parent / "args.json"
    device = json.loads(args.read_text()).get("device", "cpu") if args.exists() else "cpu"
    minutes = round(state.get("seconds", 0) / 60, 1)
    gpu = device.startswith("cuda")
    return {"examples": state.get("examples"), "cpu_minutes": 0 if gpu else minutes, "gpu_minutes": minutes if gpu else 0,
            "start": "random initialisation"}


def export(checkpoint: Path, out: Path, keep_fp32: Path | None = None, quantize: bool = True,
           data: Path = DEFAULT_DATA) -> dict:
    """Write a complete model folder (ONNX, tokenizer, ``rapport_config.json``, ``export_report.json``);
    return the runtime config."""
    from engine.model.prompt import PromptBudget
    from .export import heldout_sources

    model, ckpt = load_checkpoint(checkpoint)
    export_lstm_onnx(model, out)
    shutil.copy(minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = keep_fp32 or Path(tmp)
        fp32.mkdir(parents=True, exist_ok=True)
        for name in ("encoder_model.onnx", "decoder_model_merged.onnx", "config.json", "tokenizer.json"):
            shutil.copy(out / name, fp32 / name)
        if quantize:
            quantize_lstm(out)
        sources = heldout_sources(data, PARITY_PROMPTS, PromptBudget(**ckpt.get("budget", {})), seed=1)
        graphs = {"fp32": fp32, **({"int8": out} if quantize else {})}
        (out / "export_report.json").write_text(json.dumps(parity_report(model, graphs, sources)))
    state = ckpt.get("state", {})
    runtime = {"model_type": "lstm", "decoder_start_token_id": model.config.decoder_start_token_id,
               "eos_token_id": model.config.eos_token_id, "pad_token_id": model.config.pad_token_id,
               "num_layers": model.config.decoder_layers, "prompt_budget": ckpt.get("budget", {}),
               "trained_examples": state.get("examples"), "train_seconds": round(state.get("seconds", 0)),
               "parameters": sum(p.numel() for p in model.parameters()), "reply_mode": "greedy",
               "int8": quantize,
               "training_total": training_total(checkpoint, state)}
    (out / "rapport_config.json").write_text(json.dumps(runtime, indent=2))
    return runtime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train export-lstm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of `train --family lstm`")
    p.add_argument("--out", type=Path, default=Path("exported_models/rapport-chat-lstm"))
    p.add_argument("--keep-fp32", type=Path, help="also keep the fp32 ONNX files here")
    p.add_argument("--fp32", action="store_true", help="ship fp32 (no int8 quantization)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare` (held-out parity prompts)")
    args = p.parse_args(argv)
    runtime = export(args.checkpoint, args.out, args.keep_fp32, quantize=not args.fp32, data=args.data)
    report = json.loads((args.out / "export_report.json").read_text())
    print(json.dumps(runtime, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k.endswith(("_equal", "_diff"))}, indent=2))


if __name__ == "__main__":
    main()
