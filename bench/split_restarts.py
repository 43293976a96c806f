"""Split mode under Redis restarts at random moments: does every message still get its one reply?

    python -m bench.split_restarts [--minutes 10] [--seed 1] [--users 4] [--messages 3]
                                   [--out bench/results/split_restarts.json]

Each round starts a persistent embedded Redis, one worker (the shipped model) and a gateway; ``--users``
users each send ``--messages`` messages at once (a name, numbered messages, "what's my name?"), and the
server is stopped after a random 0.1-2.5 s and started again after a random 0-1.5 s. A round passes when
every message is answered (no notice) within 45 s and each user's last reply is their own name. A round
that hangs prints where every task waits (the coroutine chain, innermost last) and ends the run: that is
how a lost cancellation in the user lock's renewer was found. A restart test in the suite samples one
moment; this samples hundreds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bots.fake import FakeAdapter
from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX, DEFAULT_MODEL, Settings
from engine.engine import Engine
from engine.model.replier import Replier
from engine.split.gateway import StreamGateway
from engine.split.worker import StreamWorker
from engine.state.redis_server import EmbeddedRedis

ROUND_TIMEOUT_S = 45.0


def awaits(task: asyncio.Task) -> str:
    """The chain of coroutines ``task`` is suspended in, innermost last (function@file:line of each)."""
    chain, coro = [], task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            chain.append(type(coro).__name__)
            break
        chain.append(f"{frame.f_code.co_name}@{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return " > ".join(chain)


def conversation(k: int, messages: int) -> list[str]:
    """User k's ``messages`` messages: a name, numbered messages, then "what's my name?"."""
    return [f"my name is Person{k}"] + [f"message {i} from user {k}" for i in range(messages - 2)] + ["what's my name?"]


async def talk(bot: FakeAdapter, k: int, messages: int) -> bool:
    """User k's messages, all at once; True when each got a reply and the last one knows the name."""
    texts = conversation(k, messages)
    outs = await asyncio.gather(*(bot.send(f"user{k}", t) for t in texts))
    return all(o.kind in ("reply", "command") for o in outs) and outs[-1].text == f"Your name is Person{k}."


async def one_round(replier: Replier, delay_s: float, down_s: float, users: int, messages: int) -> dict:
    """One round; its outcome ("passed", "wrong" or "stuck") and, when stuck, where the tasks wait."""
    data = Path(tempfile.mkdtemp(prefix="rapport-restarts-"))
    server = EmbeddedRedis(data / "redis", persist=True).start()
    settings = replace(Settings(redis_url=server.url, key_prefix="restarts", data_dir=data,
                                rate_limit_per_minute=1000, history_turns=10),
                       mode="split", claim_idle_s=1.0, lock_timeout_s=5.0, reply_timeout_s=60.0, order_timeout_s=20.0)
    engine = Engine.from_settings(settings, replier=replier)
    await engine.start()
    stop = asyncio.Event()
    worker = asyncio.create_task(StreamWorker(engine, name="w0").run(stop))
    try:
        async with StreamGateway.from_settings(settings) as gateway:
            bot = FakeAdapter(gateway)
            talks = asyncio.gather(*(talk(bot, k, messages) for k in range(users)))
            await asyncio.sleep(delay_s)
            server.stop()
            await asyncio.sleep(down_s)
            server.start()
            try:
                results = await asyncio.wait_for(asyncio.shield(talks), ROUND_TIMEOUT_S)
                return {"outcome": "passed" if all(results) else "wrong"}
            except TimeoutError:
                talks.cancel()
                return {"outcome": "stuck", "tasks": sorted(awaits(t) for t in asyncio.all_tasks())}
    finally:
        stop.set()
        await asyncio.wait([worker], timeout=10)
        await engine.stop()
        server.stop()


async def run(minutes: float, seed: int, users: int, messages: int) -> dict:
    replier = Replier.from_dirs(DEFAULT_MODEL, DEFAULT_ENCODER, threads=2, index_dir=DEFAULT_INDEX)
    rng, end = random.Random(seed), time.monotonic() + 60 * minutes
    rounds: list[dict] = []
    while time.monotonic() < end:
        delay_s, down_s = rng.uniform(0.1, 2.5), rng.uniform(0.0, 1.5)
        result = await one_round(replier, delay_s, down_s, users, messages)
        rounds.append({"delay_s": round(delay_s, 2), "down_s": round(down_s, 2), **result})
        print(f"round {len(rounds)}: {result['outcome']} (stopped after {delay_s:.2f} s, down {down_s:.2f} s)",
              flush=True)
        if result["outcome"] == "stuck":
            print("\n".join(result["tasks"]))
            break
    counts = {k: sum(r["outcome"] == k for r in rounds) for k in ("passed", "wrong", "stuck")}
    return {"seed": seed, "users": users, "messages": messages, "rounds": len(rounds), **counts,
            "failures": [r for r in rounds if r["outcome"] != "passed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--messages", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/split_restarts.json"))
    args = ap.parse_args()
    report = asyncio.run(run(args.minutes, args.seed, args.users, args.messages))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}))


if __name__ == "__main__":
    main()
