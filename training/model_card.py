"""Write MODEL_CARD.md (and training_curve.png) from eval.json and the training logs."""
from __future__ import annotations

import json
from pathlib import Path

from .data import DEFAULT_DATA


def read_log(run: Path | None) -> list[dict]:
    """Evaluation records of a training run (empty when unknown)."""
    if not run or not (run / "log.jsonl").exists():
        return []
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def plot_curve(log: list[dict], out: Path) -> bool:
    """Held-out token perplexity and context gain of the shipped run against examples seen."""
    if not log:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot([r["examples"] for r in log], [r["valid_token_ppl"] for r in log], "o-", label="shipped run")
    b.plot([r["examples"] for r in log], [r["context_gain"] for r in log], "o-", label="shipped run")
    a.set(xlabel="training examples", ylabel="valid token perplexity", yscale="log", title="Held-out perplexity")
    b.set(xlabel="training examples", ylabel="nats/token", title="Context gain (shuffled - true NLL)")
    a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _fmt(m: dict, scale: str = "{:.1f}") -> str:
    lo, hi = m["ci95"]
    return f"{scale.format(m['value'])} [{scale.format(lo)}, {scale.format(hi)}]"


def _comparison(log: list[dict], scratch: list[dict]) -> list[str]:
    if not log or not scratch:
        return ["No from-scratch run was recorded for this export."]
    lines = ["| examples seen | CPU minutes | warm start: valid token ppl / context gain | "
             "from scratch: valid token ppl / context gain |", "|---|---|---|---|"]
    by_ex = {r["examples"]: r for r in log}
    for s in scratch:
        w = by_ex.get(s["examples"]) or min(log, key=lambda r: abs(r["examples"] - s["examples"]))
        lines.append(f"| {s['examples']} (warm: {w['examples']}) | {s['seconds'] / 60:.0f} / {w['seconds'] / 60:.0f} | "
                     f"{w['valid_token_ppl']:.1f} / {w['context_gain']:.3f} | "
                     f"{s['valid_token_ppl']:.1f} / {s['context_gain']:.3f} |")
    return lines


def _training_lines(model_dir: Path, run: Path | None, log: list[dict], sizes: dict, runtime: dict) -> list[str]:
    train_args = json.loads((run / "args.json").read_text()) if run and (run / "args.json").exists() else {}
    last = log[-1] if log else {}
    examples = runtime.get("trained_examples", last.get("examples", "?"))
    minutes = runtime.get("train_seconds", last.get("seconds", 0)) / 60
    device = train_args.get("device", "cpu")
    L = ["## Training", "",
         f"- Examples seen: {examples} (one epoch is {sizes.get('train_examples', '?')} examples), "
         f"{minutes:.1f} minutes of training on {'2 CPU cores' if device == 'cpu' else device}.",
         f"- Settings: `{json.dumps({k: v for k, v in train_args.items() if k not in ('run', 'data', 'command')})}`"]
    if device == "cpu":
        L.append("- Reproduce: `rapport-train prepare && rapport-train train --run ~/.cache/rapport/runs/warm "
                 f"--max-minutes {train_args.get('max_minutes', '?')} --max-examples {train_args.get('max_examples', '?')}`"
                 f" then `rapport-train export --checkpoint ~/.cache/rapport/runs/warm/best.pt --out "
                 f"exported_models/{model_dir.name}` (add `--resume` to continue a run).")
    else:
        L.append(f"- Reproduce on a GPU: `{train_args.get('command', 'bash training/gpu_run.sh')}` (after `rapport-train "
                 "prepare`; the script's header says which files it needs), then here `rapport-train shards unpack-chat "
                 "--shards <its output> --out ~/.cache/rapport/runs/gpu/best.pt` and `rapport-train export --checkpoint "
                 f"~/.cache/rapport/runs/gpu/best.pt --out exported_models/{model_dir.name}`. The token embeddings "
                 "(tied to the output layer) stay MiniLM's, frozen; the other weights travel back as fp16 shards "
                 "(`training/shards.py`). On this 2-core CPU the same number of examples would take about "
                 f"{(examples if isinstance(examples, int) else 0) / 10.5 / 3600:.0f} hours (10.5 examples/s measured).")
    L += ["- Data splits (by conversation, seed 0): " + ", ".join(f"{k} {v}" for k, v in sizes.items()), ""]
    return L


def write_card(model_dir: Path, results: dict, run: Path | None, warm_run: Path | None, scratch_run: Path | None,
               command: str, hybrid: dict | None = None) -> None:
    """Write ``MODEL_CARD.md`` into ``model_dir``."""
    log, warm, scratch = read_log(run), read_log(warm_run), read_log(scratch_run)
    has_plot = plot_curve(log, model_dir / "training_curve.png")
    report = json.loads((model_dir / "export_report.json").read_text()) if (model_dir / "export_report.json").exists() else {}
    runtime = json.loads((model_dir / "rapport_config.json").read_text())
    sizes_path = DEFAULT_DATA / "sizes.json"
    sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
    L = [f"# Model card: {model_dir.name}", ""]
    L += ["A BART-shaped seq2seq chat model (384-d, 6 encoder + 6 decoder layers, BERT uncased vocabulary, "
          "37M parameters) warm-started from all-MiniLM-L6-v2 and trained on the BYU Chit-Chat corpus. "
          "Shipped as int8 ONNX in the Hugging Face Optimum layout (encoder + merged decoder with "
          "`use_cache_branch`). The model input carries the bot's persona facts, the user's profile facts and "
          "the last turns (see `engine/model/prompt.py`); the user's profile *vector* is used by the ranker "
          "(P(u, c)), not by the generator.", ""]
    L += _training_lines(model_dir, run, log, sizes, runtime)
    if has_plot:
        L += ["![training curve](training_curve.png)", ""]
    L += ["### Warm start vs from scratch (same settings and CPU budget, held-out valid split)", "",
          "Measured on the CPU before the shipped run; the shipped model uses the warm start.", ""]
    L += _comparison(warm, scratch) + [""]
    L += ["## Export checks", "",
          f"- fp32 ONNX vs PyTorch, max |logit diff| over {report.get('parity_contexts', '?')} held-out contexts: "
          f"{report.get('fp32_vs_pytorch_max_abs_logit_diff', float('nan')):.2e}",
          "- int8 scheme (`training/onnx_quantize.py`): MatMuls as 8-bit blockwise MatMulNBits (blocks of 32, "
          "int8 compute), token-embedding tables as int8 rows with one fp32 scale per row.",
          f"- int8 vs fp32 identical greedy replies: {100 * report.get('int8_vs_fp32_greedy_agreement', 0):.1f}% "
          f"of {report.get('agreement_contexts', '?')} held-out contexts; mean |token log-prob difference| "
          f"{report.get('int8_vs_fp32_mean_abs_token_logprob_diff', float('nan')):.4f} nats",
          f"- Folder size: {report.get('size_bytes', 0) / 1e6:.1f} MB", ""]
    L += ["## Evaluation", "",
          f"Command: `{command}`", "",
          "Decoding for F1/distinct: greedy, no-repeat-3-gram, at most 32 tokens. Hits@1/20 ranks the true reply "
          "against 19 random replies of the same split by the generator's mean token log-probability. "
          "Word perplexity = exp(total NLL of the reply tokens / words of the reply). Intervals: 95% bootstrap, "
          "resampling conversations. Profile conditions change only the user's facts in the input: true (the "
          "addressee's facts from their training conversations), shuffled (another user's), none.", "",
          "| split | profile | word ppl | Hits@1/20 (%) | F1 | distinct-1 | distinct-2 |", "|---|---|---|---|---|---|---|"]
    for split, entry in results["splits"].items():
        for cond, m in entry["conditions"].items():
            hits = dict(m["hits_at_1_of_20"], value=100 * m["hits_at_1_of_20"]["value"],
                        ci95=[100 * x for x in m["hits_at_1_of_20"]["ci95"]])
            L.append(f"| {split} | {cond} | {_fmt(m['word_perplexity'])} | {_fmt(hits)} | {_fmt(m['f1'])} | "
                     f"{m['distinct_1']:.3f} | {m['distinct_2']:.3f} |")
    L += ["", "Baselines on the same samples (the shipped encoder is the fine-tuned MiniLM ranker; retrieval "
          "returns the reply of the nearest of 30,000 sampled training contexts by that encoder):", "",
          "| split | shipped encoder as ranker, Hits@1/20 (%) | retrieval F1 | retrieval distinct-2 | constant reply F1 |",
          "|---|---|---|---|---|"]
    for split, entry in results["splits"].items():
        b = entry["baselines"]
        r = b["encoder_ranker_hits_at_1_of_20"]
        r = dict(r, value=100 * r["value"], ci95=[100 * x for x in r["ci95"]])
        L.append(f"| {split} | {_fmt(r)} | {_fmt(b['retrieval_f1'])} | {b['retrieval_distinct_2']:.3f} | "
                 f"{_fmt(b['constant_reply_f1'])} |")
    gain = results["splits"].get("known_user", {}).get("profile_gain_true_minus_shuffled")
    if gain:
        L += ["", "Personalization gain on known users (true minus shuffled profile):", ""]
        L += [f"- Hits@1/20: {_fmt({'value': 100 * gain['hits_at_1_of_20']['value'], 'ci95': [100 * x for x in gain['hits_at_1_of_20']['ci95']]}, '{:+.2f}')} points",
              f"- NLL per word reduction: {_fmt(gain['nll_per_word_reduction'], '{:+.4f}')} nats",
              f"- F1: {_fmt(gain['f1'], '{:+.2f}')}"]
    if hybrid:
        L += _hybrid_lines(hybrid)
    L += _goal_lines(results, hybrid)
    L += ["", "## Sample replies (test split, 10 fixed random examples, unedited)", ""]
    for s in results["samples"]:
        L.append("- context: " + " / ".join(f"`{t[:150]}`" for t in s["context"]))
        L.append(f"  - true reply: `{s['true_reply'][:200]}`")
        L.append(f"  - model: `{s['model_reply']}`")
    L += ["", "## Licences", "", (model_dir / "LICENSES.txt").read_text() if (model_dir / "LICENSES.txt").exists() else ""]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(L) + "\n")


def _pct(m: dict) -> dict:
    return dict(m, value=100 * m["value"], ci95=[100 * x for x in m["ci95"]])


def _hybrid_lines(h: dict) -> list[str]:
    w = h["weights"]
    L = ["", "## Ranker and hybrid replies (the engine's reply path)", "",
         f"Command: `{h.get('command', 'rapport-train eval-hybrid')}`", "",
         "The ranker is all-MiniLM-L6-v2 fine-tuned as a bi-encoder (context = last two turns -> reply, in-batch "
         "negatives; `rapport-train train-ranker`, chosen by valid Hits@1/20), shipped in "
         "`exported_models/minilm-l6-v2-encoder` (int8). Hybrid = the engine's `Replier`: 4 beam + 4 sampled "
         "generator replies and the 8 nearest of 30,000 real training replies, scored by ranker cosine + "
         f"{w['generator']} x generator mean log-prob + {w['profile']} x P(u, c) (weights chosen on the valid split "
         "by `rapport-train tune-ranking`: best F1 with distinct-2 >= 0.30), minus 1 for repeating a recent turn. "
         "R_u = the engine's moving average of the user's message embeddings over their training conversations.", "",
         "| split | ranker | profile | Hits@1/20 (%) |", "|---|---|---|---|"]
    for split, e in h["splits"].items():
        for name, m in e["ranker_hits_at_1_of_20"].items():
            if name.startswith("zero_shot"):
                label, profile = "zero-shot MiniLM", "none"
            else:
                label, profile = "fine-tuned", name.removeprefix("fine_tuned_").removesuffix("_profile")
            L.append(f"| {split} | {label} | {profile} | {_fmt(_pct(m))} |")
    L += ["", "| split | system | profile | F1 | distinct-1 | distinct-2 | n |", "|---|---|---|---|---|---|---|"]
    for split, e in h["splits"].items():
        for name, m in e["replies"].items():
            system, _, cond = name.rpartition("_profile")[0].rpartition("_")
            L.append(f"| {split} | {system} | {cond} | {_fmt(m['f1'])} | {m['distinct_1']:.3f} | "
                     f"{m['distinct_2']:.3f} | {m['n']} |")
    for split, e in h["splits"].items():
        g = e.get("profile_gain_true_minus_shuffled")
        if g:
            L.append(f"\nPersonalization gain on {split} (true minus shuffled profile): ranker Hits@1/20 "
                     f"{_fmt(_pct(g['ranker_hits_at_1_of_20']), '{:+.2f}')} points, hybrid F1 "
                     f"{_fmt(g['hybrid_f1'], '{:+.2f}')}.")
    L += ["", "Sample hybrid replies (first 4 examples of each split, unedited):", ""]
    for s in h.get("samples", []):
        L.append(f"- [{s['split']}] context: " + " / ".join(f"`{t[:120]}`" for t in s["context"]))
        L.append(f"  - true: `{s['true_reply'][:150]}`")
        for k in ("hybrid", "generator_only", "retrieval_only"):
            if k in s:
                L.append(f"  - {k}: `{s[k]}`")
    return L


def _goal_lines(results: dict, hybrid: dict | None) -> list[str]:
    """Issue 2 / issue 7 goals against the measured values (known-user split)."""
    ku = results["splits"].get("known_user", {}).get("conditions", {}).get("true")
    if not ku:
        return []
    rows = [("generator Hits@1/20 >= 40%", f"{100 * ku['hits_at_1_of_20']['value']:.1f}%",
             ku["hits_at_1_of_20"]["value"] >= 0.40),
            ("generator greedy F1 >= 15", f"{ku['f1']['value']:.1f}", ku["f1"]["value"] >= 15),
            ("generator distinct-2 >= 0.30", f"{ku['distinct_2']:.3f}", ku["distinct_2"] >= 0.30)]
    base = results["splits"]["known_user"]["baselines"]
    rows.append(("generator greedy F1 above the retrieval baseline",
                 f"{ku['f1']['value']:.1f} vs {base['retrieval_f1']['value']:.1f}",
                 ku["f1"]["value"] > base["retrieval_f1"]["value"]))
    gain = results["splits"]["known_user"].get("profile_gain_true_minus_shuffled")
    if gain:
        lo, hi = gain["hits_at_1_of_20"]["ci95"]
        rows.append(("generator personalization gain CI excludes 0", f"[{100 * lo:+.2f}, {100 * hi:+.2f}] pts",
                     lo > 0))
    if hybrid and "known_user" in hybrid["splits"]:
        h = hybrid["splits"]["known_user"]
        r = h["ranker_hits_at_1_of_20"].get("fine_tuned_true_profile")
        if r:
            rows.append(("ranker Hits@1/20 >= 65%", f"{100 * r['value']:.1f}%", r["value"] >= 0.65))
        hy = h["replies"].get("hybrid_true_profile")
        gen = h["replies"].get("generator_only_true_profile")
        if hy:
            rows.append(("hybrid distinct-2 >= 0.30", f"{hy['distinct_2']:.3f}", hy["distinct_2"] >= 0.30))
            const = base["constant_reply_f1"]["value"]
            rows.append(("hybrid F1 above the constant reply's (other samples)", f"{hy['f1']['value']:.1f} vs {const:.1f}",
                         hy["f1"]["value"] > const))
        if hy and gen:
            rows.append(("hybrid F1 above generator-only (same samples)",
                         f"{hy['f1']['value']:.1f} vs {gen['f1']['value']:.1f}", hy["f1"]["value"] > gen["f1"]["value"]))
        g = h.get("profile_gain_true_minus_shuffled", {}).get("hybrid_f1")
        if g:
            rows.append(("hybrid personalization gain CI excludes 0",
                         f"[{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}] F1", g["ci95"][0] > 0))
    L = ["", "## Goals (known-user split) and where this model stands", "", "| goal | measured | met |", "|---|---|---|"]
    L += [f"| {goal} | {value} | {'yes' if ok else 'no'} |" for goal, value, ok in rows]
    return L
