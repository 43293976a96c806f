"""Decode and reply latency of the shipped model, against the memory-bandwidth limit.

    python -m bench.latency [--model DIR] [--users 50] [--rounds 3] [--baseline DIR] [--out bench/results/latency.json]

Prints a table and writes JSON: measured memory bandwidth, the decoder weight bytes one step reads
(all but the token and position tables, of which it reads one row), the per-token limit (bytes / bandwidth), measured per-token decode latency at batch 1 (ratio to the limit), reply
latency p50/p95 through the whole engine (real Redis server) for 1 and N concurrent users, and for N users
who write at once after ``--history`` exchanges each (longer prompts: the steady state of a busy bot), peak
RSS. Each
load runs ``--rounds`` times (new users each round) and the percentiles pool every round's replies, with
each round's p95 listed too: on a shared 2-core machine one round's figures moved by 15-30%. With
``--baseline DIR`` (an earlier export of the same model), the decoder steps of both are timed in turns, 8
rounds, the bandwidth measured between them: their ratio holds where the absolute figures drift.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bots.fake import FakeAdapter
from engine.process_memory import tune_malloc
from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX, DEFAULT_MODEL, Settings
from engine.engine import Engine
from engine.model.generation import GenerationConfig
from engine.state.redis_server import EmbeddedRedis
from engine.model.replier import Replier
from engine.model.seq2seq import Seq2SeqModel

PROMPTS = ["hi, how are you today?", "what do you do for fun?", "i just got back from a hike in the mountains",
           "do you like pizza?", "what's the best movie you have seen?", "i'm so tired of school",
           "tell me about your family", "what music do you listen to?"]


def memory_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """Best-of copy bandwidth (bytes read + written per second), GB/s."""
    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t))
    return best / 1e9


def memory_bandwidth_in_child() -> float:
    """``memory_bandwidth_gbs`` in a child process, so its 1 GB of buffers is not counted in this process's
    peak RSS (it was, before: the reported peak of the engine included them)."""
    code = "from bench.latency import memory_bandwidth_gbs; print(memory_bandwidth_gbs())"
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a live process (VmHWM; unlike ru_maxrss it does not carry a parent's peak
    across exec), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def decoder_bytes_per_token(folder: Path) -> int:
    """Bytes of decoder weights one decoding step reads: every initializer of the decoder except the
    token and position tables, of which a step reads one row (needs the ``onnx`` package)."""
    import onnx

    name = "decoder_model_merged.onnx" if (folder / "decoder_model_merged.onnx").exists() else \
        "decoder_with_past_model.onnx"
    model = onnx.load(str(folder / name))
    tables = ("embed_tokens", "shared", "embed_positions")
    return sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer if not any(k in t.name for k in tables))


def limit_ms(step_bytes: int, bandwidth_gbs: float) -> float:
    """The least time a decoder step reading ``step_bytes`` of weights can take at ``bandwidth_gbs``."""
    return step_bytes / (bandwidth_gbs * 1e9) * 1000


def per_token_latency_ms(replier: Replier, tokens: int = 48, repeats: int = 5) -> float:
    """Median time of one cached decoder step at batch 1 (greedy, forced to run ``tokens`` steps)."""
    return float(np.median(step_times_ms(replier.model, replier.codec, tokens, repeats)))


def step_times_ms(model, codec, tokens: int = 48, repeats: int = 5) -> list[float]:
    """Each cached decoder step's time at batch 1 over ``repeats`` greedy replies forced to ``tokens`` steps."""
    src = codec.encode("hi, how are you today? i just got back from a long hike.")
    ids = np.asarray([[codec.special_ids["[CLS]"], *src, codec.special_ids["[SEP]"]]])
    mask = np.ones_like(ids)
    hidden = model.encode(ids, mask)
    times = []
    for _ in range(repeats):
        logits, past = model.first_step(np.asarray([[model.decoder_start_id]]), hidden, mask)
        for _ in range(tokens):
            tok = np.asarray([[int(logits.argmax())]])
            t = time.perf_counter()
            logits, past = model.next_step(tok, hidden, mask, past)
            times.append(time.perf_counter() - t)
    return [1000 * t for t in times]


def step_against_baseline(replier: Replier, baseline: Path, rounds: int = 8) -> dict:
    """The decoder step of ``replier``'s model and of the export in ``baseline`` (same tokenizer), measured
    in turns in this process, with the bandwidth measured between rounds: medians, each one's ratio to
    its own bandwidth limit, and baseline / model (above 1: the model's step is faster)."""
    other = Seq2SeqModel.from_dir(baseline)
    steps: dict[str, list[float]] = {"model": [], "baseline": []}
    bandwidths = []
    for r in range(rounds):
        bandwidths.append(memory_bandwidth_in_child())
        for name in ("model", "baseline") if r % 2 == 0 else ("baseline", "model"):
            steps[name].append(float(np.median(step_times_ms(replier.model if name == "model" else other,
                                                             replier.codec, repeats=1))))
    bandwidth = float(np.median(bandwidths))
    model_ms, baseline_ms = float(np.median(steps["model"])), float(np.median(steps["baseline"]))
    return {"baseline": str(baseline), "rounds": rounds, "memory_bandwidth_gb_s_median": bandwidth,
            "step_ms": model_ms, "baseline_step_ms": baseline_ms, "baseline_over_model": baseline_ms / model_ms,
            "step_ratio_to_limit": model_ms / limit_ms(decoder_bytes_per_token(Path(replier.model.folder)), bandwidth),
            "baseline_step_ratio_to_limit": baseline_ms / limit_ms(decoder_bytes_per_token(baseline), bandwidth)}


async def reply_latencies(replier: Replier, users: int, messages: int, settings: Settings | None = None,
                          tag: str = "bench", facts: list[str] = (), history: int = 0) -> list[float]:
    """Seconds from send to reply for ``users`` concurrent users sending ``facts`` then ``messages``
    messages each, one after another (user ids ``{tag}{k}``); on a throwaway Redis server unless
    ``settings`` name one. With ``history``, each user first has that many exchanges, not timed, and all
    users then send their timed messages at once."""
    if settings is None:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), persist=False) as server:
            settings = Settings(redis_url=server.url, rate_limit_per_minute=10_000, data_dir=Path(tmp))
            return await reply_latencies(replier, users, messages, settings, tag, facts, history)
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        out: list[float] = []

        async def earlier(k: int) -> None:
            for i in range(history):
                await bot.send(f"{tag}{k}", f"{PROMPTS[(k + i + 3) % len(PROMPTS)]} ({i})")

        async def user(k: int) -> None:
            for text in [*facts, *(PROMPTS[(k + i) % len(PROMPTS)] for i in range(messages))]:
                t = time.perf_counter()
                await bot.send(f"{tag}{k}", text)
                out.append(time.perf_counter() - t)

        if history:
            await asyncio.gather(*(earlier(k) for k in range(users)))
        await asyncio.gather(*(user(k) for k in range(users)))
        return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--messages", type=int, default=10, help="messages of the single user")
    p.add_argument("--rounds", type=int, default=3, help="times each load runs (new users each time)")
    p.add_argument("--history", type=int, default=10, help="exchanges each user has had before the third load")
    p.add_argument("--baseline", type=Path, help="another export of the same model: its decoder step is timed in "
                   "turns with this one's (ratios from one process)")
    p.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    args = p.parse_args(argv)
    tune_malloc()  # as `rapport` does: the process measured is the one that ships
    from engine.hardware import describe, machine
    host = machine()
    print(f"machine: {describe(host)}", flush=True)
    bandwidth = memory_bandwidth_in_child()
    replier = Replier.from_dirs(args.model, args.encoder, index_dir=DEFAULT_INDEX)
    decoder_bytes = decoder_bytes_per_token(args.model)
    step_limit_ms = limit_ms(decoder_bytes, bandwidth)
    token_ms = per_token_latency_ms(replier)
    single_rounds = [asyncio.run(reply_latencies(replier, 1, args.messages, tag=f"one{r}-")) for r in range(args.rounds)]
    many_rounds = [asyncio.run(reply_latencies(replier, args.users, 1, tag=f"many{r}-")) for r in range(args.rounds)]
    later_rounds = [asyncio.run(reply_latencies(replier, args.users, 1, tag=f"later{r}-", history=args.history))
                    for r in range(args.rounds)]
    single, many, later = sum(single_rounds, []), sum(many_rounds, []), sum(later_rounds, [])
    greedy_src = replier.source_ids([], [], [])
    t = time.perf_counter()
    greedy = replier.model.generate(greedy_src, GenerationConfig(max_new_tokens=20, min_new_tokens=20))
    greedy_20_ms = 1000 * (time.perf_counter() - t)
    result = {
        "memory_bandwidth_gb_s": bandwidth, "decoder_bytes_per_token": decoder_bytes, "per_token_limit_ms": step_limit_ms,
        "per_token_ms": token_ms, "per_token_ratio_to_limit": token_ms / step_limit_ms,
        "greedy_20_token_reply_ms": greedy_20_ms, "greedy_tokens": len(greedy[0].ids),
        "reply_1_user_p50_ms": 1000 * float(np.percentile(single, 50)),
        "reply_1_user_p95_ms": 1000 * float(np.percentile(single, 95)),
        f"reply_{args.users}_users_p50_ms": 1000 * float(np.percentile(many, 50)),
        f"reply_{args.users}_users_p95_ms": 1000 * float(np.percentile(many, 95)),
        f"reply_{args.users}_users_after_{args.history}_exchanges_p50_ms": 1000 * float(np.percentile(later, 50)),
        f"reply_{args.users}_users_after_{args.history}_exchanges_p95_ms": 1000 * float(np.percentile(later, 95)),
        "reply_1_user_p95_ms_each_round": [round(1000 * float(np.percentile(r, 95)), 1) for r in single_rounds],
        f"reply_{args.users}_users_p95_ms_each_round": [round(1000 * float(np.percentile(r, 95)), 1) for r in many_rounds],
        "peak_rss_mb": peak_rss_mb(),
        "model": str(args.model),
    }
    if args.baseline:
        result["against_baseline"] = step_against_baseline(replier, args.baseline)
    width = max(len(k) for k in result)
    result["machine"] = host
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
