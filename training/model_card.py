"""Write MODEL_CARD.md (and training_curve.png) from eval.json and the training logs."""
from __future__ import annotations

import json
from pathlib import Path

from .train import DEFAULT_DATA


def read_log(run: Path | None) -> list[dict]:
    """Evaluation records of a training run (empty when unknown)."""
    if not run or not (run / "log.jsonl").exists():
        return []
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def plot_curve(log: list[dict], scratch: list[dict], out: Path) -> bool:
    """Held-out token perplexity and context gain against examples seen."""
    if not log:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for records, label in ((log, "warm start (MiniLM)"), (scratch, "from scratch")):
        if records:
            a.plot([r["examples"] for r in records], [r["valid_token_ppl"] for r in records], "o-", label=label)
            b.plot([r["examples"] for r in records], [r["context_gain"] for r in records], "o-", label=label)
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


def write_card(model_dir: Path, results: dict, run: Path | None, scratch_run: Path | None, argv: list[str]) -> None:
    """Write ``MODEL_CARD.md`` into ``model_dir``."""
    log, scratch = read_log(run), read_log(scratch_run)
    has_plot = plot_curve(log, scratch, model_dir / "training_curve.png")
    report = json.loads((model_dir / "export_report.json").read_text()) if (model_dir / "export_report.json").exists() else {}
    runtime = json.loads((model_dir / "rapport_config.json").read_text())
    sizes_path = DEFAULT_DATA / "sizes.json"
    sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
    train_args = json.loads((run / "args.json").read_text()) if run and (run / "args.json").exists() else {}
    last = log[-1] if log else {}
    L = [f"# Model card: {model_dir.name}", ""]
    L += ["A BART-shaped seq2seq chat model (384-d, 6 encoder + 6 decoder layers, BERT uncased vocabulary, "
          "37M parameters) warm-started from all-MiniLM-L6-v2 and trained on the BYU Chit-Chat corpus. "
          "Shipped as int8 ONNX in the Hugging Face Optimum layout (encoder + merged decoder with "
          "`use_cache_branch`). The model input carries the bot's persona facts, the user's profile facts and "
          "the last turns (see `engine/prompt.py`).", ""]
    L += ["## Training", "",
          f"- Examples seen: {runtime.get('trained_examples', last.get('examples', '?'))} "
          f"(one epoch is {sizes.get('train_examples', '?')} examples), "
          f"CPU time {runtime.get('train_seconds', last.get('seconds', 0)) / 60:.0f} minutes on 2 cores.",
          f"- Settings: `{json.dumps({k: v for k, v in train_args.items() if k not in ('run', 'data')})}`",
          "- Reproduce: `rapport-train prepare && rapport-train train --run ~/.cache/rapport/runs/warm "
          f"--max-minutes {train_args.get('max_minutes', '118')} --max-examples {train_args.get('max_examples', '55000')}` "
          "then `rapport-train export --checkpoint ~/.cache/rapport/runs/warm/best.pt --out "
          f"exported_models/{model_dir.name}` (add `--resume` to continue a run).",
          "- Data splits (by conversation, seed 0): " + ", ".join(f"{k} {v}" for k, v in sizes.items()), ""]
    if has_plot:
        L += ["![training curve](training_curve.png)", ""]
    L += ["### Warm start vs from scratch (same settings, held-out valid split)", ""] + _comparison(log, scratch) + [""]
    L += ["## Export checks", "",
          f"- fp32 ONNX vs PyTorch, max |logit diff| over {report.get('parity_contexts', '?')} held-out contexts: "
          f"{report.get('fp32_vs_pytorch_max_abs_logit_diff', float('nan')):.2e}",
          f"- int8 vs fp32 identical greedy replies: {100 * report.get('int8_vs_fp32_greedy_agreement', 0):.1f}% "
          f"of {report.get('agreement_contexts', '?')} held-out contexts; mean |token log-prob difference| "
          f"{report.get('int8_vs_fp32_mean_abs_token_logprob_diff', float('nan')):.4f} nats",
          f"- Folder size: {report.get('size_bytes', 0) / 1e6:.1f} MB", ""]
    L += ["## Evaluation", "",
          f"Command: `rapport-train eval {' '.join(argv)}`", "",
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
    L += ["", "Baselines on the same samples:", "",
          "| split | zero-shot MiniLM ranker Hits@1/20 (%) | retrieval F1 | retrieval distinct-2 | constant reply F1 |",
          "|---|---|---|---|---|"]
    for split, entry in results["splits"].items():
        b = entry["baselines"]
        r = b["zero_shot_minilm_ranker_hits_at_1_of_20"]
        r = dict(r, value=100 * r["value"], ci95=[100 * x for x in r["ci95"]])
        L.append(f"| {split} | {_fmt(r)} | {_fmt(b['retrieval_f1'])} | {b['retrieval_distinct_2']:.3f} | "
                 f"{_fmt(b['constant_reply_f1'])} |")
    gain = results["splits"].get("known_user", {}).get("profile_gain_true_minus_shuffled")
    if gain:
        L += ["", "Personalization gain on known users (true minus shuffled profile):", ""]
        L += [f"- Hits@1/20: {_fmt({'value': 100 * gain['hits_at_1_of_20']['value'], 'ci95': [100 * x for x in gain['hits_at_1_of_20']['ci95']]}, '{:+.2f}')} points",
              f"- NLL per word reduction: {_fmt(gain['nll_per_word_reduction'], '{:+.4f}')} nats",
              f"- F1: {_fmt(gain['f1'], '{:+.2f}')}"]
    L += ["", "## Sample replies (test split, 10 fixed random examples, unedited)", ""]
    for s in results["samples"]:
        L.append("- context: " + " / ".join(f"`{t[:150]}`" for t in s["context"]))
        L.append(f"  - true reply: `{s['true_reply'][:200]}`")
        L.append(f"  - model: `{s['model_reply']}`")
    L += ["", "## Licences", "", (model_dir / "LICENSES.txt").read_text() if (model_dir / "LICENSES.txt").exists() else ""]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(L) + "\n")
