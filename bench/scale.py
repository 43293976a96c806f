"""The whole engine under load: reply latency at 1/10/50 concurrent users (batched vs one at a time),
where a batch's time goes, and messages/second with 1, 2 and 4 split-mode workers.

    python -m bench.scale [--workers 1 2 4] [--skip-latency] [--cluster-rounds 3] [--out bench/results/scale.json]

Everything talks to a real Redis-protocol server on 127.0.0.1. Latency: N users each send messages
one after another, all users at once, through the fake adapter; the same run with dynamic batching
off (RAPPORT_BATCH_MAX=1) is the baseline. Profile: the stages of the shipped reply path (greedy mode:
embed, encode, decode, output filter, embed for the echo check) timed for a batch of 1, 10 and 50 users. Workers: ``rapport worker`` subprocesses (2 // W inference threads each, at least 1)
answer 40 users x 3 messages sent at once through a stream gateway; messages/second from the first
message to the last reply, peak RSS per worker from /proc. Cluster (``--cluster-rounds``): the same
with one worker against a 3-master cluster on 127.0.0.1 (one replica each, the stream in 3 shards) and
against one server, alternated.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.latency import PROMPTS, peak_rss_mb, reply_latencies
from bots.fake import FakeAdapter
from engine.process_memory import tune_malloc
from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX, DEFAULT_MODEL, Settings
from engine.model.prompt import Turn
from engine.state.redis_server import EmbeddedRedis
from engine.model.decoding import DECODING
from engine.safety.filter import SafetyFilter
from engine.safety.loading import load_classifier
from engine.model.replier import Replier, ReplyRequest
from engine.split.gateway import StreamGateway

LOADS = {1: 10, 10: 3, 50: 2}  # concurrent users -> messages each


def text_for(user: int, i: int) -> str:
    return PROMPTS[(user + i) % len(PROMPTS)]


def profile(replier: Replier, users: int, safety: SafetyFilter) -> dict[str, float]:
    """Milliseconds per stage of the shipped reply path (greedy mode, default style) for ``users``
    different messages, each stage as Replier.reply_batch runs it, and the whole reply_batch timed apart."""
    requests = [ReplyRequest([Turn(text_for(k, 0) + f" ({k})", True)], ["i like music"], [], None,
                             keep=lambda texts, k=k: safety.candidates_ok(texts, text_for(k, 0)))
                for k in range(users)]
    stages: dict[str, float] = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        stages[name] = stages.get(name, 0.0) + 1000 * (time.perf_counter() - t)
        return value

    timed("embed messages + contexts", replier.encoder.embed, [r.message for r in requests] * 2)
    sources = timed("prompts", lambda: [replier.source_ids(r.turns, r.persona, r.user_facts) for r in requests])
    hidden, mask = timed("encode prompts", replier.model.encode_sources, sources)
    config = DECODING["greedy"][0].with_(time_budget_s=replier.time_budget_s / 2)
    found = timed("decode (greedy)", replier.model._sample_or_greedy, hidden, mask, config)
    texts = [replier.text_of(c.ids) for c in found]
    timed("output filter (safety)", replier._map_filters, [r.keep for r in requests], [[t] for t in texts])
    timed("embed replies + recent turns", replier.encoder.embed, texts + [r.message for r in requests])
    stages["sum of stages"] = sum(stages.values())
    stages["reply_batch (whole)"] = 1000 * min(_seconds(replier.reply_batch, requests) for _ in range(2))
    return stages


def _seconds(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


async def worker_throughput(url: str, prefix: str, workers: int, users: int = 40, messages: int = 3,
                            shards: int = 1) -> dict:
    """Messages/second of ``workers`` worker processes (the stream in ``shards`` shards); their peak RSS."""
    threads = max(1, 2 // workers)
    env = {**os.environ, "REDIS_URL": url, "RAPPORT_KEY_PREFIX": prefix, "RAPPORT_INFERENCE_THREADS": str(threads),
           "RAPPORT_RATE_LIMIT_PER_MINUTE": "100000", "RAPPORT_STREAM_SHARDS": str(shards)}
    procs = [subprocess.Popen([sys.executable, "-m", "bots.cli", "--env-file", "/nonexistent", "worker"], env=env,
                              stderr=subprocess.DEVNULL) for _ in range(workers)]
    settings = Settings(redis_url=url, key_prefix=prefix, mode="split", reply_timeout_s=600, stream_shards=shards)
    try:
        async with StreamGateway.from_settings(settings) as gateway:
            while len(await gateway.r.xinfo_consumers(gateway.shards[-1].in_stream, "workers")) < workers:
                await asyncio.sleep(0.2)  # every worker has loaded its models and is reading
            bot = FakeAdapter(gateway)
            t = time.perf_counter()

            async def user(k: int) -> None:
                for i in range(messages):
                    await bot.send(f"w{workers}-{k}", text_for(k, i))

            await asyncio.gather(*(user(k) for k in range(users)))
            elapsed = time.perf_counter() - t
        rss = [peak_rss_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    return {"workers": workers, "threads_each": threads, "messages": users * messages, "seconds": elapsed,
            "messages_per_s": users * messages / elapsed, "peak_rss_mb_each": rss}


def pct(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


async def run(args: argparse.Namespace) -> dict:
    replier = Replier.from_dirs(DEFAULT_MODEL, DEFAULT_ENCODER, index_dir=DEFAULT_INDEX)
    result: dict = {"latency": {}, "profile_ms": {}, "workers": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), persist=False) as server:
        base = Settings(redis_url=server.url, rate_limit_per_minute=100_000, data_dir=Path(tmp))
        for users, messages in ({} if args.skip_latency else LOADS).items():
            row = {}
            for label, settings in (("batched", base), ("one_at_a_time", replace(base, batch_max=1))):
                times = await reply_latencies(replier, users, messages, settings, tag=f"{label}{users}-")
                row[label] = {"p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "replies": len(times)}
                print(f"{users:>2} users, {label:<13}: p50 {row[label]['p50_ms']:8.0f} ms  "
                      f"p95 {row[label]['p95_ms']:8.0f} ms", flush=True)
            row["p50_speedup"] = row["one_at_a_time"]["p50_ms"] / row["batched"]["p50_ms"]
            result["latency"][str(users)] = row
        safety = SafetyFilter(base.safety, load_classifier(base.safety_model_dir))
        safety.warm_up()
        for users in (1, 10, 50):
            result["profile_ms"][str(users)] = stages = profile(replier, users, safety)
            print(f"profile, {users} users: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), flush=True)
        del replier
        for workers in args.workers:
            row = await worker_throughput(server.url, f"scale{workers}", workers)
            result["workers"].append(row)
            print(f"{workers} worker(s) x {row['threads_each']} thread(s): {row['messages_per_s']:.2f} messages/s, "
                  f"peak RSS {', '.join(f'{r:.0f}' for r in row['peak_rss_mb_each'])} MB", flush=True)
        one = result["workers"][0]["messages_per_s"] if result["workers"] else None
        for row in result["workers"]:
            row["vs_one_worker"] = row["messages_per_s"] / one
        if args.cluster_rounds:
            result["cluster"] = await cluster_vs_single(server.url, Path(tmp), args.cluster_rounds)
    return result


async def cluster_vs_single(single_url: str, tmp: Path, rounds: int) -> dict:
    """Split mode (1 worker, 2 threads) on one server and on a 3-master cluster with a replica each (the
    stream in 3 shards), alternated ``rounds`` times: messages/s of each and their ratio."""
    from engine.state.local_cluster import LocalCluster

    rates: dict[str, list[float]] = {"single": [], "cluster": []}
    with LocalCluster(tmp / "cluster", masters=3, replicas=1) as cluster:
        for r in range(rounds):
            for where, url, shards in (("single", single_url, 1), ("cluster", cluster.url, 3)):
                row = await worker_throughput(url, f"vs{r}", 1, shards=shards)
                rates[where].append(row["messages_per_s"])
                print(f"round {r + 1}, {where}: {row['messages_per_s']:.2f} messages/s", flush=True)
    ratio = float(np.median(rates["cluster"]) / np.median(rates["single"]))
    print(f"cluster / single server: {ratio:.2f}x (medians over {rounds} rounds)", flush=True)
    return {"messages_per_s": rates, "cluster_over_single": ratio}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4], help="worker counts to measure (none: skip)")
    p.add_argument("--skip-latency", action="store_true", help="only the profile and the workers")
    p.add_argument("--cluster-rounds", type=int, default=0,
                   help="also compare split mode on a 3-master local cluster with one server, alternating (0: skip)")
    p.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = p.parse_args(argv)
    tune_malloc()  # as `rapport` does: the process measured is the one that ships
    from engine.hardware import describe, machine
    host = machine()
    print(f"machine: {describe(host)}", flush=True)
    result = {"machine": host, **asyncio.run(run(args))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
