"""Simulated users who react to every reply: does learning from reactions raise their like-rate?

    python -m bench.feedback [--users 200] [--turns 30] [--openings 200] [--tune] [--out bench/results/feedback.json]

Each simulated user has a hidden taste: topics (the content words of the three persona lines of a
held-out Synthetic-Persona-Chat speaker), a reply length (short, at most 8 words, or long, at least 12)
and questions or statements. They send 30 messages, the openings of held-out conversations in a random
order, and react to each reply: 👍 when it meets at least two of the three (a topic word, the length,
question or not), else 👎. The rule uses word overlap and counts only, never the ranker's sentence
encoder, so the benchmark cannot be won by the ranker agreeing with itself.

The candidate pool of each opening is the engine's own (generated and retrieved candidates, with their
score parts); it is built once per opening and shared by the users. Three ways to reply, on the same pools:
``greedy`` (today's default for a user who never reacted), ``ranked`` (the engine's ranking without the
taste) and ``learning`` (the ranking with the taste of the user's reactions so far: ``Replier.rank`` with
``Taste``). Reported: the like-rate of turns 1-5 and 26-30 of each, and the ratio of the learning
like-rate at turns 26-30 to each baseline, with bootstrap 95% intervals over users. ``--tune`` picks the
taste settings on the validation half's users and openings; the report uses the test half only.

Latency: the whole engine (real Redis server, fake adapter): after the same 20 messages, replies to a user
with 20 stored reactions and to one without, both in hybrid mode, and to one on the default greedy path,
in turn, in the same process, as p50 ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pickle
import random
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bots.fake import FakeAdapter
from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX, DEFAULT_MODEL, Settings
from engine.engine import Engine
from engine.model.decoding import GREEDY
from engine.model.profile import update_profile
from engine.model.prompt import Turn
from engine.model.replier import Replier
from engine.model.taste import Taste, TasteSettings
from engine.safety import SafetyFilter
from training.metrics import bootstrap_ci
from training.persona import load_persona_splits

from .throwaway import throwaway_settings

_WORD = re.compile(r"[a-z]+")
_STOP = set("""the a an and or but to of in on at for with is am are was were be been i my me you your it this that
have has had do does did not no so just like love really very too also can will would what how who when where
they them their we our he she his her there here about from into out up get got go going one all some any
""".split())
GRID = {"beta": (0.5, 1.0, 2.0), "gamma": (1.0, 2.0, 4.0), "max_weight": (2.0, 4.0, 8.0)}


def stems(text: str) -> set[str]:
    """Lower-case words of ``text`` minus stop words, a plural or -ing ending cut (the simulated user's reading)."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if len(w) > 2 and w not in _STOP:
            out.add(re.sub(r"(ing|s)$", "", w) if len(w) > 4 else w)
    return out


@dataclass(frozen=True)
class SimulatedUser:
    """A hidden taste and the order of the openings the user sends."""

    topics: frozenset[str]
    likes_short: bool
    likes_questions: bool
    openings: tuple[int, ...]

    def reacts(self, reply: str) -> int:
        """+1 when ``reply`` meets two of topic, length and question-or-not; else -1."""
        words = len(reply.split())
        points = bool(stems(reply) & self.topics) + ((words <= 8) if self.likes_short else (words >= 12)) \
            + (("?" in reply) == self.likes_questions)
        return 1 if points >= 2 else -1


@dataclass
class OpeningPool:
    """The engine's candidates for one opening, with what ``Replier.rank`` needs."""

    opening: str
    context_vec: np.ndarray
    cands: list[tuple[str, float]]
    vectors: np.ndarray  # candidate embeddings, then the opening's
    prior: np.ndarray | None
    greedy: str
    greedy_vec: np.ndarray


def build_pool(replier: Replier, keep, opening: str, persona: list[str]) -> OpeningPool:
    """The engine's pool for a first message (no history, no user facts), unsafe candidates removed."""
    turns = [Turn(opening, True)]
    source = replier.source_ids(turns, persona, [])
    context_vec = replier.context_vector(turns)
    cands = dict(replier.candidates(source, "balanced"))
    for text, score in replier.retrieved(source, context_vec):
        cands.setdefault(text, score)
    cands = {t: s for (t, s), ok in zip(cands.items(), keep(list(cands))) if ok}
    texts = list(cands)
    greedy_text = replier.text_of(replier.model.generate(source, GREEDY)[0].ids)
    prior = replier.priors(texts) if replier.weights.mmi else None
    vectors = replier.encoder.embed(texts + [opening, greedy_text])
    return OpeningPool(opening, context_vec, list(cands.items()), vectors[:-1], prior, greedy_text, vectors[-1])


def pools_for(replier: Replier, openings: list[str], persona: list[str], cache: Path) -> list[OpeningPool]:
    """Pools of ``openings`` (cached on disk per model and openings; the MMI priors are added when the
    model's weights use them and the cached pools lack them)."""
    if cache.exists():
        pools = pickle.loads(cache.read_bytes())
    else:
        keep = SafetyFilter("standard").candidates_ok
        pools = [build_pool(replier, keep, o, persona) for o in openings]
    if replier.weights.mmi and any(pool.prior is None for pool in pools):
        for pool in pools:
            pool.prior = replier.priors([text for text, _ in pool.cands])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(pools))
    return pools


def simulated_users(conversations, n_users: int, n_openings: int, turns: int, seed: int) -> list[SimulatedUser]:
    """``n_users`` tastes from the personas of ``conversations``, each with ``turns`` openings in a random order."""
    rng = random.Random(seed)
    personas = [p for c in conversations for p in c.personas if len(p) >= 3]
    users = []
    for _ in range(n_users):
        lines = rng.sample(list(rng.choice(personas)), 3)
        users.append(SimulatedUser(frozenset(set().union(*(stems(line) for line in lines))), rng.random() < 0.5,
                                   rng.random() < 0.5, tuple(rng.sample(range(n_openings), turns))))
    return users


def simulate(replier: Replier, pools: list[OpeningPool], users: list[SimulatedUser], mode: str,
             settings: TasteSettings = TasteSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Reactions (users x turns, +1/-1) when replies are chosen by ``mode`` (greedy, ranked or learning),
    and the relevance of each reply: its cosine to the opening in the ranker's space (not what the users
    judge; it shows whether following a taste costs on-topic replies)."""
    out = np.zeros((len(users), len(users[0].openings)), dtype=np.int8)
    relevance = np.zeros(out.shape, dtype=np.float32)
    for u, user in enumerate(users):
        profile, seen = None, 0
        rated_vecs: list[np.ndarray] = []
        rated_texts: list[str] = []
        values: list[int] = []
        for t, k in enumerate(user.openings):
            pool = pools[k]
            texts = [c for c, _ in pool.cands]
            # as the engine: the greedy reply until the user's first reaction (and always, without learning)
            if mode == "greedy" or (mode == "learning" and not values):
                reply, vec = pool.greedy, pool.greedy_vec
            else:
                taste = Taste.from_reactions(np.stack(rated_vecs), rated_texts, values, settings) \
                    if mode == "learning" else None
                reply = replier.rank(pool.context_vec, pool.cands, profile, [pool.opening], vectors=pool.vectors,
                                     prior=pool.prior, taste=taste)[0].text
                vec = pool.vectors[texts.index(reply)]
            out[u, t] = user.reacts(reply)
            relevance[u, t] = float(vec @ pool.context_vec)
            rated_vecs.append(vec)
            rated_texts.append(reply)
            values.append(int(out[u, t]))
            profile, seen = update_profile(profile, seen, pool.vectors[-1])
    return out, relevance


def like_rate(reactions: np.ndarray, first: int, last: int) -> np.ndarray:
    """Per user: the share of 👍 among turns ``first``..``last`` (1-based, inclusive)."""
    return (reactions[:, first - 1: last] > 0).mean(1)


def ratio_ci(a: np.ndarray, b: np.ndarray, seed: int = 0) -> list[float]:
    """mean(a) / mean(b) with a bootstrap 95% interval over users (paired: user i gives a[i] and b[i])."""
    return list(bootstrap_ci(np.stack([a, b], 1), [str(i) for i in range(len(a))], seed=seed,
                             statistic=lambda v: v[:, 0].mean() / max(v[:, 1].mean(), 1e-9)))


def tune(replier: Replier, pools: list[OpeningPool], users: list[SimulatedUser]) -> tuple[TasteSettings, list[dict]]:
    """The grid setting with the best like-rate over turns 6-30 on the validation users."""
    rows = []
    for values in itertools.product(*GRID.values()):
        s = TasteSettings(**dict(zip(GRID, values)), half_at=TasteSettings().half_at)
        rate = float(like_rate(simulate(replier, pools, users, "learning", s)[0], 6, len(users[0].openings)).mean())
        rows.append({"settings": asdict(s), "like_rate_6_30": rate})
        print(f"  {values}: {rate:.3f}", flush=True)
    best = max(rows, key=lambda r: r["like_rate_6_30"])
    return TasteSettings(**best["settings"]), rows


async def engine_latency(model: Path, rounds: int) -> dict:
    """p50 reply latency through the engine: a user with 20 reactions vs one without (hybrid mode for both,
    the only difference being the taste), and the default greedy path of a user without reactions."""
    prompts = ["what do you do for fun?", "i just got back from a hike", "do you like pizza?",
               "what music do you listen to?", "tell me about your weekend", "i'm so tired of school"]
    hybrid = Replier.from_dirs(model, DEFAULT_ENCODER, index_dir=DEFAULT_INDEX, mode="hybrid")
    greedy = Replier.from_dirs(model, DEFAULT_ENCODER, index_dir=DEFAULT_INDEX, mode="greedy")
    times: dict[str, list[float]] = {"taste_hybrid": [], "no_taste_hybrid": [], "no_taste_greedy": []}
    with throwaway_settings(model) as settings:
        async with Engine.from_settings(settings, replier=hybrid) as eng_h, \
                Engine.from_settings(replace(settings, key_prefix="g"), replier=greedy) as eng_g:
            bots = {"taste_hybrid": FakeAdapter(eng_h), "no_taste_hybrid": FakeAdapter(eng_h),
                    "no_taste_greedy": FakeAdapter(eng_g)}
            for i in range(20):  # the same 20 messages for each user; only the taste user reacts
                for name, bot in bots.items():
                    user = "taste" if name == "taste_hybrid" else name
                    await bot.send(user, prompts[i % len(prompts)])
                await bots["taste_hybrid"].react("taste", 1 if i % 3 else -1)
            for _ in range(rounds):
                for prompt in prompts:
                    for name, bot in bots.items():
                        user = "taste" if name == "taste_hybrid" else name
                        started = time.perf_counter()
                        await bot.send(user, prompt)
                        times[name].append(time.perf_counter() - started)
    p50 = {name: 1000 * float(np.percentile(t, 50)) for name, t in times.items()}
    return {"p50_ms": p50, "taste_vs_no_taste_hybrid": p50["taste_hybrid"] / p50["no_taste_hybrid"],
            "taste_hybrid_vs_default_greedy": p50["taste_hybrid"] / p50["no_taste_greedy"],
            "replies_each": len(times["taste_hybrid"])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.feedback", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--openings", type=int, default=200, help="held-out openings per half (users draw from them)")
    p.add_argument("--tune", action="store_true", help="choose the taste settings on the validation half first")
    p.add_argument("--latency-rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "rapport" / "feedback-pools")
    p.add_argument("--out", type=Path, default=Path("bench/results/feedback.json"))
    args = p.parse_args(argv)
    replier = Replier.from_dirs(args.model, DEFAULT_ENCODER, index_dir=DEFAULT_INDEX, mode="hybrid")
    persona = list(Settings().persona)  # the engine's default persona
    splits = load_persona_splits()
    result: dict = {"model": str(args.model), "users": args.users, "turns": args.turns, "seed": args.seed}
    halves = ("valid", "test") if args.tune else ("test",)
    settings = TasteSettings()
    for half in halves:
        convs = sorted(splits[half], key=lambda c: c.conv_id)
        openings = [c.turns[0] for c in random.Random(args.seed).sample(convs, args.openings)]
        pools = pools_for(replier, openings, persona,
                          args.cache / f"{args.model.name}-{half}-{args.openings}-{args.seed}.pkl")
        users = simulated_users(convs, args.users, len(pools), args.turns, args.seed + (half == "test"))
        if half == "valid":
            settings, table = tune(replier, pools, users)
            result["tuning"] = {"split": "valid half", "grid": table, "chosen": asdict(settings)}
            print("chosen on valid:", asdict(settings))
            continue
        sims = {mode: simulate(replier, pools, users, mode, settings) for mode in ("greedy", "ranked", "learning")}
        runs = {mode: reactions for mode, (reactions, _) in sims.items()}
        rows = {}
        for mode, (reactions, relevance) in sims.items():
            early, late = like_rate(reactions, 1, 5), like_rate(reactions, args.turns - 4, args.turns)
            rows[mode] = {"turns_1_5": float(early.mean()), f"turns_{args.turns - 4}_{args.turns}": float(late.mean()),
                          "relevance_late": float(relevance[:, args.turns - 5:].mean())}
        late = {mode: like_rate(r, args.turns - 4, args.turns) for mode, r in runs.items()}
        result["test"] = {"like_rate": rows, "settings": asdict(settings),
                          "learning_vs_greedy_late": ratio_ci(late["learning"], late["greedy"]),
                          "learning_vs_ranked_late": ratio_ci(late["learning"], late["ranked"]),
                          "learning_late_minus_early": list(bootstrap_ci(
                              late["learning"] - like_rate(runs["learning"], 1, 5), [str(i) for i in range(len(users))]))}
    result["latency"] = asyncio.run(engine_latency(args.model, args.latency_rounds))
    print(json.dumps({k: v for k, v in result.items() if k != "tuning"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
