"""The model families side by side (issue 23): Transformer and LSTM + attention, and retrieval alone.

    python -m bench.families --models exported_models/rapport-chat-persona exported_models/rapport-chat-lstm \
        --zero-shot-encoder ~/.cache/rapport/zero-shot-encoder [--n 300] [--fact-n 2000] \
        [--out bench/results/families.json]

Every system answers the same held-out examples (seed 0): Synthetic-Persona-Chat's test half (the bot's
persona and the user's facts in the prompt) and the chit-chat corpus's test split (the addressee's mined
facts, the speaker's as the bot's persona, as ``rapport-train eval`` builds them).
- Generators (the ONNX exports, int8 as shipped, run by the engine's runtime, each in its family's prompt
  layout): NLL per token of the true reply (its first 40 tokens and EOS; the mean over examples) and per word
  (the same NLL over the reply's words: the measure that compares models with different tokenizers), the greedy reply (at most 32 tokens, no
  repeated 3-gram) with its unigram F1 and the set's distinct-2.
- Retrieval only: the reply of the shipped index nearest the last two turns, by the shipped fine-tuned
  ranker, and by the zero-shot MiniLM (``--zero-shot-encoder``, the index's replies embedded again by it).
Intervals: 95% bootstrap over conversations; every difference is paired against the first model.
Per generator also: the user-facts and bot-persona NLL gains on fact-dependent turns of the persona test half
(``training.fact_use``, ``--fact-n`` examples), the persona probes (``bench.persona``, the whole engine),
and in a child process of its own (``bench.compare``'s measure, 2 threads): a 20-token reply at batch 1
(p50), the marginal cost of one token, 20 tokens for 50 users in one batch, and the child's peak RSS; the
export's file size, the weights its ONNX files hold and its training budget.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
from engine.model.encoder import SentenceEncoder
from engine.model.family import load_chat_model
from engine.model.prompt import Turn
from engine.model.replier import context_text
from engine.model.retrieval import ReplyIndex
from training.data import DEFAULT_DATA, facts_for, load_facts, load_splits
from training.evaluate import DECODING, user_facts
from training.examples import FACTS_PER_SIDE, all_examples, turns_of
from training.fact_use import nll_per_token
from training.metrics import bootstrap_ci, distinct_n, unigram_f1
from training.persona import load_persona_splits, persona_examples

TARGET_TOKENS = 40


@dataclass
class EvalSet:
    """One held-out set: each example's turns and facts, its true reply, and its conversation (bootstrap unit)."""

    name: str
    turns: list[list[Turn]]
    bot_facts: list[list[str]]
    user_facts: list[list[str]]
    contexts: list[str]
    replies: list[str]
    groups: list[str]


def build_sets(data: Path, n: int, seed: int = 0) -> list[EvalSet]:
    """The persona test half and the chit-chat test split, ``n`` examples each (each model lays the
    prompts out in its own family's layout)."""
    facts = load_facts(data)
    persona = [ex for c in load_persona_splits()["test"] for ex in persona_examples(c)]
    persona = random.Random(f"{seed}:families:persona").sample(persona, min(n, len(persona)))
    sets = [EvalSet("persona_test", [turns_of(ex) for ex in persona], [list(ex.bot_facts) for ex in persona],
                    [list(ex.user_facts) for ex in persona], [context_text(list(ex.context)) for ex in persona],
                    [ex.reply for ex in persona], [ex.conv_id for ex in persona])]
    chitchat = [ex for ex in all_examples(load_splits(data)["test"]) if ex.context]
    chitchat = random.Random(f"{seed}:families:chitchat").sample(chitchat, min(n, len(chitchat)))
    speakers = sorted(facts)
    bots = [facts_for(facts, ex.speaker, ex.conv_id, FACTS_PER_SIDE, random.Random(f"p:{ex.conv_id}")) for ex in chitchat]
    users = [user_facts(ex, facts, "true", speakers, seed) for ex in chitchat]
    sets.append(EvalSet("chitchat_test", [turns_of(ex) for ex in chitchat], bots, users,
                        [context_text(list(ex.context)) for ex in chitchat], [ex.reply for ex in chitchat],
                        [ex.conv_id for ex in chitchat]))
    return sets


def generator_answers(model_dir: Path, sets: list[EvalSet], threads: int = 2) -> dict[str, dict]:
    """Per set: NLL per token and per word of each true reply (its first TARGET_TOKENS tokens and the end
    token; words: the reply's words, so models with different tokenizers compare) and the greedy reply."""
    parts = load_chat_model(model_dir, threads)
    model, codec = parts.model, parts.codec
    out = {}
    for s in sets:
        sources = [parts.layout.build(codec, t, b, u) for t, b, u in zip(s.turns, s.bot_facts, s.user_facts)]
        targets = [codec.encode(r)[:TARGET_TOKENS] + [model.eos_id] for r in s.replies]
        replies = [codec.decode(list(c[0].ids)) for c in model.generate_batch(sources, DECODING)]
        per_token = nll_per_token(model, sources, targets)
        words = np.array([max(1, len(codec.decode(t[:-1]).split())) for t in targets])
        tokens = np.array([len(t) for t in targets])
        out[s.name] = {"nll": per_token, "nll_word": per_token * tokens / words, "replies": replies}
        print(f"{model_dir.name}: {s.name} done", flush=True)
    return out


def retrieval_answers(index_dir: Path, encoder_dir: Path, sets: list[EvalSet],
                      ranker: SentenceEncoder | None = None) -> dict[str, dict]:
    """Per set: the index reply nearest each context, by ``ranker`` (default: the shipped encoder, whose
    vectors the index holds; another ranker embeds the index's replies itself)."""
    index = ReplyIndex.load(index_dir, encoder_dir / "model.onnx")
    shipped = ranker is None
    ranker = ranker or SentenceEncoder.from_dir(encoder_dir)
    matrix = None if shipped else ranker.embed(index.replies)
    out = {}
    for s in sets:
        queries = ranker.embed(s.contexts)
        if shipped:
            replies = [index.search(q, 1)[0][0] for q in queries]
        else:
            replies = [index.replies[int(i)] for i in (queries @ matrix.T).argmax(1)]
        out[s.name] = {"replies": replies}
    return out


def _ci(values: np.ndarray, groups: list[str]) -> list[float]:
    return list(bootstrap_ci(values, groups))


def summarize(sets: list[EvalSet], answers: dict[str, dict[str, dict]], first: str) -> dict[str, dict]:
    """Per system and set: NLL, F1 (x100), distinct-2, and paired differences against ``first``."""
    table: dict[str, dict] = {}
    for system, by_set in answers.items():
        table[system] = {}
        for s in sets:
            got = by_set[s.name]
            f1 = 100 * np.array([unigram_f1(r, t) for r, t in zip(got["replies"], s.replies)])
            got["f1"] = f1
            row = {"n": len(s.replies), "f1": _ci(f1, s.groups), "distinct_2": distinct_n(got["replies"], 2)}
            if "nll" in got:
                row["nll_per_token"] = _ci(got["nll"], s.groups)
                row["nll_per_word"] = _ci(got["nll_word"], s.groups)
            table[system][s.name] = row
    for system, by_set in answers.items():
        if system == first:
            continue
        for s in sets:
            ours, base = by_set[s.name], answers[first][s.name]
            row = table[system][s.name]
            row[f"f1_minus_{first}"] = _ci(ours["f1"] - base["f1"], s.groups)
            if "nll" in ours:
                row[f"nll_minus_{first}"] = _ci(ours["nll"] - base["nll"], s.groups)
                row[f"nll_word_minus_{first}"] = _ci(ours["nll_word"] - base["nll_word"], s.groups)
    return table


def fact_gains(model: Path, n: int) -> dict:
    """``training.fact_use`` on the persona test half: the model folder's own run when it has that many
    examples, else one computed here and kept under bench/results (a model's files are never rewritten)."""
    from training.fact_use import evaluate
    for path in (model / "fact_use_test.json", Path("bench/results") / f"fact_use_test_{model.name}_{n}.json"):
        if path.exists():
            done = json.loads(path.read_text())
            if done.get("examples") == n and done.get("seed") == 0 and done.get("split") == "test":
                return done
    result = evaluate(model, "test", n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def persona_probes(model: Path) -> dict:
    """``bench.persona`` through the whole engine with ``model``."""
    from bench.persona import run
    from bench.throwaway import throwaway_settings
    with throwaway_settings(model) as settings:
        result = asyncio.run(run(settings, 100))
    return {k: result[k] for k in ("confusion_rate", "confusion_probes", "self_consistency", "self_probes")}


def cost(model: Path) -> dict:
    """Latency and peak RSS (a child process of its own), file size, weights and training budget."""
    child = subprocess.run([sys.executable, "-m", "bench.families", "--child-latency", str(model)],
                           check=True, capture_output=True, text=True)
    timings = json.loads(child.stdout.strip().splitlines()[-1])
    runtime = json.loads((model / "rapport_config.json").read_text())
    files = sorted(model.glob("*.onnx"))
    stored = files + sorted(model.glob("*.onnx.weights.*"))  # large graphs keep their weights in parts
    total = runtime.get("training_total") or {"examples": runtime.get("trained_examples") or 0,
                                              "cpu_minutes": round(runtime.get("train_seconds", 0) / 60, 1),
                                              "gpu_minutes": 0, "start": "unknown"}
    return {**timings, "onnx_mb": sum(f.stat().st_size for f in stored) / 2**20,
            "onnx_weights": onnx_weights(files), "training": total}


def onnx_weights(files: list[Path]) -> int:
    """Weights the runtime holds: elements of every matrix-shaped initializer in ``files``, a tensor that
    two graphs hold byte for byte counted once."""
    import hashlib

    import onnx
    from onnx import numpy_helper
    seen: dict[str, int] = {}
    for f in files:
        for init in onnx.load(str(f)).graph.initializer:
            if len(init.dims) >= 2:
                data = init.raw_data or numpy_helper.to_array(init).tobytes()
                seen[hashlib.blake2b(data, digest_size=16).hexdigest()] = int(np.prod(init.dims))
    return sum(seen.values())


def child_latency(model: Path) -> dict:
    """``bench.compare``'s measure of the engine's runtime on ``model``, without the token lists."""
    from bench.compare import measure
    result = measure("rapport-onnx-int8", model, model)
    result.pop("tokens")
    return result


def markdown(result: dict) -> str:
    """The comparison as two markdown tables (quality, cost)."""
    def ci(v: list[float], digits: int = 2) -> str:
        return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"

    lines = ["| system | persona NLL/token | persona NLL/word | persona F1 | persona distinct-2 | chit-chat NLL/token "
             "| chit-chat NLL/word | chit-chat F1 | chit-chat distinct-2 | user-facts gain (dependent turns) "
             "| bot-persona gain (dependent turns) | persona probes: claims user's fact / consistent self |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for system, sets in result["quality"].items():
        p, c = sets["persona_test"], sets["chitchat_test"]
        extra = result["generators"].get(system)
        gains = (f"{ci(extra['facts']['user_facts_gain_dependent'], 3)} | {ci(extra['facts']['persona_gain_dependent'], 3)}"
                 if extra else "- | -")
        probes = (f"{100 * extra['probes']['confusion_rate']:.0f}% / {100 * extra['probes']['self_consistency']:.0f}%"
                  if extra else "-")
        nll = (lambda row, key: ci(row[key]) if key in row else "-")
        lines.append(f"| {system} | {nll(p, 'nll_per_token')} | {nll(p, 'nll_per_word')} | {ci(p['f1'], 1)} "
                     f"| {p['distinct_2']:.3f} | {nll(c, 'nll_per_token')} | {nll(c, 'nll_per_word')} "
                     f"| {ci(c['f1'], 1)} | {c['distinct_2']:.3f} | {gains} | {probes} |")
    first = result["first"]
    lines += ["", f"Paired differences against {first} (same examples):", "",
              "| system | persona NLL/word | persona F1 | chit-chat NLL/word | chit-chat F1 |", "|---|---|---|---|---|"]
    for system, sets in result["quality"].items():
        if system == first:
            continue
        p, c = sets["persona_test"], sets["chitchat_test"]
        nll = (lambda row: ci(row[f"nll_word_minus_{first}"], 3) if f"nll_word_minus_{first}" in row else "-")
        lines.append(f"| {system} | {nll(p)} | {ci(p[f'f1_minus_{first}'], 1)} | {nll(c)} "
                     f"| {ci(c[f'f1_minus_{first}'], 1)} |")
    lines += ["", "| generator | weights in the ONNX files | ONNX MB | 20-token reply, 1 user (p50 ms) | ms per token, 1 user "
              "| 20 tokens for 50 users in one batch (ms) | ms per token step, 50 users | peak RSS MB | training examples "
              "| CPU / GPU minutes | starts from |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for system, extra in result["generators"].items():
        k, t = extra["cost"], extra["cost"]["training"]
        lines.append(f"| {system} | {k['onnx_weights'] / 1e6:.1f}M | {k['onnx_mb']:.1f} | {k['reply_20_p50_ms']:.0f} "
                     f"| {k['per_token_ms']:.1f} | {k['batch_50_users_ms']:.0f} | {k['batch_50_users_ms'] / 20:.1f} | {k['peak_rss_mb']:.0f} "
                     f"| {t['examples']:,} | {t['cpu_minutes']} / {t['gpu_minutes']} | {t['start']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.families", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, nargs="+", default=[Path("exported_models/rapport-chat-persona")])
    p.add_argument("--encoder", type=Path, default=DEFAULT_ENCODER)
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    p.add_argument("--zero-shot-encoder", type=Path, help="export of the pretrained MiniLM (rapport-train export-encoder)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--n", type=int, default=300, help="examples per set")
    p.add_argument("--fact-n", type=int, default=2000, help="persona test examples for the fact gains")
    p.add_argument("--out", type=Path, default=Path("bench/results/families.json"))
    p.add_argument("--child-latency", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_latency:
        result = child_latency(args.child_latency)
        print(json.dumps(result))
        return result
    from engine.hardware import describe, machine
    host = machine()
    print(f"machine: {describe(host)}", flush=True)
    sets = build_sets(args.data, args.n)
    answers = {m.name: generator_answers(m, sets) for m in args.models}
    answers["retrieval, fine-tuned ranker"] = retrieval_answers(args.index, args.encoder, sets)
    if args.zero_shot_encoder:
        answers["retrieval, zero-shot ranker"] = retrieval_answers(
            args.index, args.encoder, sets, SentenceEncoder.from_dir(args.zero_shot_encoder))
    first = args.models[0].name
    result = {"command": "python -m bench.families " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": host, "first": first, "quality": summarize(sets, answers, first),
              "generators": {m.name: {"facts": fact_gains(m, args.fact_n), "probes": persona_probes(m),
                                      "cost": cost(m)} for m in args.models},
              "samples": {name: {s.name: got[s.name]["replies"][:5] for s in sets} for name, got in answers.items()}}
    result["markdown"] = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(result["markdown"])
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main()
