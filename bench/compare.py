"""Rapport's decoder against PyTorch ``generate`` and CTranslate2: same weights, inputs and decoding.

    python -m bench.compare [--model exported_models/rapport-chat-small] [--work ~/.cache/rapport/bench]
                            [--out bench/results/compare.json]

Needs torch + transformers (``pip install -e '.[train]'``) and ctranslate2 (``pip install -e '.[bench]'``).
The shipped int8 export is rebuilt as an fp32 PyTorch model holding exactly its weights
(``training.dequantize``; built again when the export's files change); that model is exported to fp32 ONNX and converted to CTranslate2 (fp32 and
int8), and PyTorch runs it as is and with dynamic int8 Linear layers. Every runtime then runs in its own
subprocess (so its peak RSS is its own), two threads, greedy decoding forced to exactly 20 new tokens
(EOS suppressed, so all do the same work), on the same 8 prompts:
- reply: a 20-token reply at batch 1, p50/p95 over 8 prompts x 3 repeats;
- per token: (20-token reply - 1-token reply) / 19, the marginal cost of one decoder step, against the
  memory-bandwidth limit of that runtime's decoder weights (bytes read per token / copy bandwidth);
- 10 and 50 users: one batched 20-token reply for 10 and 50 different prompts at once, warm (after one run of
  that batch, as in a serving process), the median of 3 runs;
- agreement: share of prompts whose 20 greedy tokens equal PyTorch fp32's;
- the 50-user batch of Rapport's int8 model and CTranslate2 int8 once more, in turns in one process (5 rounds):
  their ratio holds where the separate processes' figures drift with the machine.

onnxruntime picks its int8 kernels from the CPU it runs on. On a CPU with AVX-512, when ``qemu-x86_64``
(Debian's ``qemu-user``) is installed, Rapport's int8 model also runs on an emulated AVX2-only CPU
(``qemu-x86_64 -cpu Haswell``: AVX2 and FMA, no AVX-512), so onnxruntime takes its AVX2 kernels: the 8
prompts alone and 50 as one batch, greedy, compared token for token with the native run and with PyTorch
fp32. Emulation is 50-100x slower, so it checks the AVX2 path's tokens, never its speed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.latency import PROMPTS, memory_bandwidth_gbs, peak_rss_mb
from engine.config import DEFAULT_MODEL

TOKENS = 20
THREADS = 2
RUNTIMES = ("rapport-onnx-int8", "rapport-onnx-fp32", "pytorch-fp32", "pytorch-int8", "ctranslate2-fp32",
            "ctranslate2-int8")
TURNS_AGAINST = ("ctranslate2-int8",)  # runtimes whose 50-user batch is also timed in turns with Rapport's
EMULATED_AVX2 = ("qemu-x86_64", "-cpu", "Haswell")  # AVX2 + FMA, no AVX-512: onnxruntime's AVX2 kernels


def prompts(n: int, codec, layout=None) -> list[list[int]]:
    """``n`` sources: the benchmark prompts, numbered past the first 8 so no two are equal. A seq2seq model
    reads each alone between [CLS] and [SEP]; a decoder-only model (``layout``: its ChatBudget) reads it as
    one user turn of its chat layout."""
    texts = [PROMPTS[k % len(PROMPTS)] + ("" if k < len(PROMPTS) else f" ({k})") for k in range(n)]
    if layout is not None:
        from engine.model.prompt import Turn
        return [layout.build(codec, [Turn(t, True)]) for t in texts]
    cls, sep = codec.special_ids["[CLS]"], codec.special_ids["[SEP]"]
    return [[cls, *codec.encode(t), sep] for t in texts]


class OnnxRunner:
    """Rapport's own runtime (either family, ``engine.model.family``) on an export folder."""

    def __init__(self, folder: Path) -> None:
        from engine.model.family import load_chat_model
        self.model = load_chat_model(folder, THREADS).model

    def generate(self, sources: list[list[int]], tokens: int) -> list[list[int]]:
        from engine.model.generation import GenerationConfig
        config = GenerationConfig("greedy", max_new_tokens=tokens, min_new_tokens=tokens)
        return [list(c[0].ids) for c in self.model.generate_batch(sources, config)]


class TorchRunner:
    """Hugging Face ``generate`` on the rebuilt fp32 model, optionally with dynamic int8 Linear layers."""

    def __init__(self, folder: Path, int8: bool) -> None:
        import torch
        from transformers import BartForConditionalGeneration
        torch.set_num_threads(THREADS)
        self.torch = torch
        self.model = BartForConditionalGeneration.from_pretrained(folder).eval()
        if int8:
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model.generation_config.forced_eos_token_id = None

    def generate(self, sources: list[list[int]], tokens: int) -> list[list[int]]:
        width = max(len(s) for s in sources)
        ids = self.torch.tensor([s + [0] * (width - len(s)) for s in sources])
        mask = self.torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources])
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                      do_sample=False, num_beams=1)
        return [row[1:].tolist() for row in out]


class Ct2Runner:
    """CTranslate2's translator on the converted model."""

    def __init__(self, folder: Path, compute_type: str) -> None:
        import ctranslate2
        from tokenizers import Tokenizer
        self.translator = ctranslate2.Translator(str(folder), device="cpu", compute_type=compute_type,
                                                 inter_threads=1, intra_threads=THREADS)
        vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
        self.tokens = {i: t for t, i in vocab.items()}
        self.ids = vocab

    def generate(self, sources: list[list[int]], tokens: int) -> list[list[int]]:
        batch = [[self.tokens[i] for i in s] for s in sources]
        results = self.translator.translate_batch(batch, beam_size=1, max_decoding_length=tokens,
                                                  min_decoding_length=tokens)
        return [[self.ids[t] for t in r.hypotheses[0]] for r in results]


def make_runner(name: str, work: Path, model: Path):
    """The runner of runtime ``name`` over the artifacts in ``work``."""
    return {
        "rapport-onnx-int8": lambda: OnnxRunner(model),
        "rapport-onnx-fp32": lambda: OnnxRunner(work / "onnx-fp32"),
        "pytorch-fp32": lambda: TorchRunner(work / "hf-fp32", int8=False),
        "pytorch-int8": lambda: TorchRunner(work / "hf-fp32", int8=True),
        "ctranslate2-fp32": lambda: Ct2Runner(work / "ct2", "float32"),
        "ctranslate2-int8": lambda: Ct2Runner(work / "ct2", "int8"),
    }[name]()


def prompt_parts(model: Path):
    """The tokenizer of ``model`` and, for a decoder-only model, its chat layout (None for seq2seq)."""
    from engine.model.family import CAUSAL_LM, family_of, load_prompt_parts
    codec, layout, _ = load_prompt_parts(model)
    return codec, layout if family_of(model) == CAUSAL_LM else None


def measure(name: str, work: Path, model: Path, repeats: int = 3) -> dict:
    """Timings of one runtime (run in a child process)."""
    codec, layout = prompt_parts(model)
    runner = make_runner(name, work, model)
    one = prompts(len(PROMPTS), codec, layout)
    runner.generate(one[:1], TOKENS)  # warm-up
    replies, firsts, outputs = [], [], []
    for _ in range(repeats):
        for src in one:
            t = time.perf_counter()
            outputs.append(runner.generate([src], TOKENS)[0])
            replies.append(time.perf_counter() - t)
            t = time.perf_counter()
            runner.generate([src], 1)
            firsts.append(time.perf_counter() - t)
    result = {
        "reply_20_p50_ms": 1000 * float(np.percentile(replies, 50)),
        "reply_20_p95_ms": 1000 * float(np.percentile(replies, 95)),
        "per_token_ms": 1000 * (float(np.median(replies)) - float(np.median(firsts))) / (TOKENS - 1),
        "tokens": [o for o in outputs[: len(one)]],
    }
    for users in (10, 50):  # a serving process runs batches warm: one run first, then the median of ``repeats``
        batch = prompts(users, codec, layout)
        assert len(runner.generate(batch, TOKENS)) == users
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            runner.generate(batch, TOKENS)
            times.append(time.perf_counter() - t)
        result[f"batch_{users}_users_ms"] = 1000 * float(np.median(times))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def in_turns(name: str, work: Path, model: Path, users: int = 50, rounds: int = 5) -> dict:
    """Rapport's int8 model and runtime ``name`` on one ``users``-prompt batch, in turns in one process (run in a
    child): each warm, then ``rounds`` rounds of one batch each. Timings of different processes moved by up to
    2x on this shared machine (CTranslate2 int8's 50-user batch: 342-633 ms in three runs of one hour), and the
    ratio of runs in turns is what holds."""
    codec, layout = prompt_parts(model)
    batch = prompts(users, codec, layout)
    runners = {"rapport-onnx-int8": OnnxRunner(model), name: make_runner(name, work, model)}
    times: dict[str, list[float]] = {key: [] for key in runners}
    for runner in runners.values():
        runner.generate(batch, TOKENS)
    for _ in range(rounds):
        for key, runner in runners.items():
            t = time.perf_counter()
            runner.generate(batch, TOKENS)
            times[key].append(time.perf_counter() - t)
    return turns_summary(times["rapport-onnx-int8"], times[name])


def turns_summary(ours: list[float], theirs: list[float]) -> dict:
    """Median times (ms) of runs in turns and the median of the rounds' ratios (theirs / ours: above 1, ours is
    faster)."""
    return {"rapport_ms": 1000 * float(np.median(ours)), "other_ms": 1000 * float(np.median(theirs)),
            "speedup": float(np.median(np.asarray(theirs) / np.asarray(ours))), "rounds": len(ours)}


def greedy_tokens(model: Path) -> dict:
    """Rapport's int8 greedy tokens (``TOKENS`` each) for the 8 prompts one at a time and for 50 prompts as
    one batch, with the int8 kernel path of the CPU this runs on (run in a child process)."""
    from engine.hardware import machine
    codec, layout = prompt_parts(model)
    runner = OnnxRunner(model)
    alone = [runner.generate([src], TOKENS)[0] for src in prompts(len(PROMPTS), codec, layout)]
    return {"int8_path": machine()["int8_path"], "alone": alone,
            "batch_50": runner.generate(prompts(50, codec, layout), TOKENS)}


def avx2_emulator(host: dict) -> tuple[str, ...] | None:
    """The command prefix that runs a program on an emulated AVX2-only CPU, where this CPU's int8 path is
    another one and ``qemu-x86_64`` is installed; else None."""
    if host["int8_path"] == "AVX2" or shutil.which(EMULATED_AVX2[0]) is None:
        return None
    return EMULATED_AVX2


def same_share(outputs: list[list[int]], reference: list[list[int]]) -> float:
    """Share of prompts whose tokens in ``outputs`` equal those in ``reference``, prompt by prompt."""
    return float(np.mean([a == b for a, b in zip(outputs, reference)]))


def agreement(tokens: dict, native: dict, reference: list[list[int]] | None) -> dict:
    """Share of prompts whose tokens in ``tokens`` equal the native run's (alone and in the 50-prompt batch),
    and PyTorch fp32's (alone) where ``reference`` is given."""
    out = {"int8_path": tokens["int8_path"], "alone_same_as_native": same_share(tokens["alone"], native["alone"]),
           "batch_50_same_as_native": same_share(tokens["batch_50"], native["batch_50"])}
    if reference:
        out["alone_same_as_pytorch_fp32"] = same_share(tokens["alone"], reference)
    return out


ARTIFACTS = ("hf-fp32", "onnx-fp32", "ct2")  # what ``prepare`` builds in ``work`` from the int8 export
MODEL_FILES = ("encoder_model.onnx", "decoder_model_merged.onnx")


def model_fingerprint(model: Path) -> str:
    """A digest of the export's ONNX files: the artifacts built from another version of them are stale."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = model / name
        digest.update(name.encode())
        if path.exists():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def drop_stale_artifacts(model: Path, work: Path) -> bool:
    """Remove ``work``'s artifacts if they were built from other model files than ``model``'s (or from unknown
    ones); says whether any were removed. The files built next record which model they come from."""
    marker = work / "model_fingerprint"
    current = model_fingerprint(model)
    stale = not marker.exists() or marker.read_text().strip() != current
    removed = False
    if stale:
        for name in ARTIFACTS:
            if (work / name).exists():
                shutil.rmtree(work / name)
                removed = True
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(current)
    return removed


def prepare(model: Path, work: Path) -> dict:
    """Rebuild fp32 weights, export them to fp32 ONNX and convert them to CTranslate2 (cached in ``work``, and
    built again when the export's files change)."""
    from training.dequantize import rebuild
    from training.modeling import MINILM_FILES, minilm_dir
    from training.onnx_export import export_onnx, merge_decoder_files
    drop_stale_artifacts(model, work)
    hf = work / "hf-fp32"
    if not (hf / "config.json").exists():
        net = rebuild(model)
        net.save_pretrained(hf)
        for name in MINILM_FILES:
            if name != "config.json":  # the tokenizer files (CTranslate2 reads the vocabulary from them)
                shutil.copy(minilm_dir() / name, hf / name)
    if not (work / "onnx-fp32" / "decoder_model_merged.onnx").exists():
        from transformers import BartForConditionalGeneration
        net = BartForConditionalGeneration.from_pretrained(hf)
        export_onnx(net, work / "onnx-fp32")
        merge_decoder_files(work / "onnx-fp32")
        for name in ("tokenizer.json", "config.json", "rapport_config.json"):
            shutil.copy(model / name, work / "onnx-fp32" / name)
    if not (work / "ct2" / "model.bin").exists():
        import ctranslate2
        for name, extra in (("config.json", {"normalize_before": False}),  # BART is post-LayerNorm
                            ("tokenizer_config.json", {"bos_token": "[CLS]", "eos_token": "[SEP]"})):
            data = json.loads((hf / name).read_text())
            (hf / name).write_text(json.dumps({**data, **extra}, indent=2))
        ctranslate2.converters.TransformersConverter(str(hf)).convert(str(work / "ct2"), force=True)
        shutil.copy(model / "tokenizer.json", work / "ct2" / "tokenizer.json")
    from transformers import BartForConditionalGeneration
    net = BartForConditionalGeneration.from_pretrained(hf)
    per_token = sum(p.numel() for n, p in net.named_parameters()
                    if n.startswith("model.decoder.layers") and n.endswith("weight") and p.dim() == 2)
    per_token += net.lm_head.weight.numel()
    return {"decoder_weights_read_per_token": per_token}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/rapport/bench")
    p.add_argument("--out", type=Path, default=Path("bench/results/compare.json"))
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    p.add_argument("--no-emulation", action="store_true", help="skip the emulated AVX2 run of Rapport's int8 model")
    p.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    p.add_argument("--tokens-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--turns-child", choices=TURNS_AGAINST, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.turns_child:
        print(json.dumps(in_turns(args.turns_child, args.work, args.model)))
        return {}
    if args.child:
        print(json.dumps(measure(args.child, args.work, args.model)))
        return {}
    if args.tokens_child:
        print(json.dumps(greedy_tokens(args.model)))
        return {}
    from engine.hardware import describe, machine
    host = machine()
    emulator = None if args.no_emulation else avx2_emulator(host)
    print(f"machine: {describe(host)}; onnxruntime picks its int8 kernels by the CPU and cannot be made to "
          "take another CPU's path: " + ("its AVX2 path's tokens are checked on an emulated AVX2-only CPU "
                                         f"({' '.join(emulator)}; its speed is not measured there)" if emulator else
                                         "run this command on each CPU kind to compare them"), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    info = prepare(args.model, args.work)
    bandwidth = memory_bandwidth_gbs()
    results: dict[str, dict] = {}
    for name in args.runtimes:
        results[name] = _child([sys.executable], args, "--child", name)
    reference = results.get("pytorch-fp32", {}).get("tokens")
    for name, r in results.items():
        if "error" in r:
            continue
        width = 4 if name.endswith("fp32") else 1
        r["per_token_limit_ms"] = info["decoder_weights_read_per_token"] * width / (bandwidth * 1e9) * 1000
        r["per_token_ratio_to_limit"] = r["per_token_ms"] / r["per_token_limit_ms"]
        if reference:
            r["agreement_with_pytorch_fp32"] = same_share(r["tokens"], reference)
        r.pop("tokens")
    summary = {"machine": host, "memory_bandwidth_gb_s": bandwidth, **info, "tokens": TOKENS, "threads": THREADS,
               "runtimes": results}
    for other in TURNS_AGAINST:
        if other in args.runtimes and "rapport-onnx-int8" in args.runtimes:
            summary[f"batch_50_in_turns_vs_{other}"] = _child([sys.executable], args, "--turns-child", other)
    if emulator:
        native = _child([sys.executable], args, "--tokens-child")
        if "error" in native:
            raise RuntimeError(f"the native token run failed: {native['error']}")
        emulated = _child(list(emulator) + [sys.executable], args, "--tokens-child")
        summary["avx2_emulated"] = {"command": " ".join(emulator), "native_int8_path": native["int8_path"],
                                    **(emulated if "error" in emulated else agreement(emulated, native, reference))}
    ours = results.get("rapport-onnx-int8", {})
    for other in ("ctranslate2-int8", "ctranslate2-fp32", "pytorch-fp32", "pytorch-int8"):
        if "reply_20_p50_ms" in results.get(other, {}) and "reply_20_p50_ms" in ours:
            summary[f"speedup_vs_{other}"] = {
                "reply_20": results[other]["reply_20_p50_ms"] / ours["reply_20_p50_ms"],
                "per_token": results[other]["per_token_ms"] / ours["per_token_ms"],
                "batch_50_users": results[other]["batch_50_users_ms"] / ours["batch_50_users_ms"]}
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    return summary


def _child(command: list[str], args: argparse.Namespace, *flags: str) -> dict:
    """``python -m bench.compare`` with ``flags`` in a child process started by ``command``: the JSON of its
    last line, or ``{"error": its last line of stderr}`` if it failed."""
    proc = subprocess.run([*command, "-m", "bench.compare", *flags, "--work", str(args.work), "--model", str(args.model)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(summary: dict) -> None:
    """The comparison as a Markdown table (the README's)."""
    cols = ["reply_20_p50_ms", "reply_20_p95_ms", "per_token_ms", "per_token_ratio_to_limit",
            "batch_10_users_ms", "batch_50_users_ms", "peak_rss_mb", "agreement_with_pytorch_fp32"]
    print("| runtime | 20-token reply p50 ms | p95 ms | ms/token | x bandwidth limit | 10 users (batch) ms "
          "| 50 users (batch) ms | peak RSS MB | same tokens as PyTorch fp32 |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in summary["runtimes"].items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |")
            continue
        cells = [f"{r[c]:.2f}" if c.startswith("per_token") or c.startswith("agree") else f"{r[c]:.0f}"
                 for c in cols if c in r]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for key, value in summary.items():
        if key.startswith("speedup"):
            print(f"{key}: " + ", ".join(f"{k} {v:.2f}x" for k, v in value.items()))
    for key, value in summary.items():
        if key.startswith("batch_50_in_turns"):
            print(f"{key}: " + (f"failed: {value['error']}" if "error" in value else
                                f"rapport {value['rapport_ms']:.0f} ms, other {value['other_ms']:.0f} ms (medians of "
                                f"{value['rounds']} rounds), speedup {value['speedup']:.2f}x"))
    emulated = summary.get("avx2_emulated")
    if emulated:
        print(f"rapport-onnx-int8 on an emulated {emulated.get('int8_path', '?')} CPU ({emulated['command']}): " +
              (f"failed: {emulated['error']}" if "error" in emulated else
               ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in emulated.items() if isinstance(v, float))))


if __name__ == "__main__":
    main()
