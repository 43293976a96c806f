"""Export the fine-tuned safety classifier and choose its thresholds on validation data only.

    rapport-train safety-export --source ~/.cache/rapport/runs/safety/best --out exported_models/safety-classifier

Writes the int8 encoder (``model.onnx``, ``tokenizer.json``, ``encoder_config.json``), ``heads.npz``,
``safety_config.json`` (the thresholds of each mode and the rule that chose each) and ``valid_report.json``
(what each threshold does on every validation source), all scored by the int8 export itself, so the
thresholds fit what runs. Rules (``standard`` / ``strict``):
- crisis: the highest threshold that still catches every valid crisis message, lowered until at most
  3% / 6% of the valid everyday look-alikes are flagged would be exceeded (or at most 0.5% / 1% of
  everyday chat);
- crisis over the last turns together: the same on valid sequences against windows of everyday chat;
- hate: the lowest threshold that flags at most 5% / 10% of valid neutral ToxiGen statements (and 0.5% /
  1% of everyday chat);
- borderline (no agreeing reply): the lowest threshold that marks at most 30% of valid neutral
  statements (hate) or look-alikes (crisis) and 5% of everyday chat;
- pair: the lowest threshold that drops at most 10% / 20% of DiaSafety's safe valid replies.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from engine.safety.classifier import SafetyClassifier

from .data import DEFAULT_DATA
from .export_encoder import export_encoder
from .safety_sets import everyday_windows, message_sets, pair_sets

RULES = {"standard": {"lookalike": 0.03, "everyday": 0.005, "neutral": 0.05, "pair_safe": 0.10},
         "strict": {"lookalike": 0.06, "everyday": 0.01, "neutral": 0.10, "pair_safe": 0.20}}
BORDERLINE = {"near": 0.30, "everyday": 0.05}
CONTEXT_TURNS = 3


def lowest_within(negatives: list[np.ndarray], rates: list[float]) -> float:
    """The lowest threshold at which each negative score set is flagged (score >= t) at most at its rate."""
    return max(float(np.quantile(neg, 1 - rate, method="higher")) + 1e-6 if len(neg) else 0.0
               for neg, rate in zip(negatives, rates))


def crisis_threshold(positives: np.ndarray, negatives: list[np.ndarray], rates: list[float]) -> float:
    """The threshold that catches every positive if the false-positive budgets allow, else the budgets'."""
    return max(min(float(positives.min()), 1.0), lowest_within(negatives, rates)) if len(positives) else 0.5


def by_source(scores: np.ndarray, sources: list[str]) -> dict[str, np.ndarray]:
    """Scores grouped by source name."""
    src = np.array(sources)
    return {s: scores[src == s] for s in sorted(set(sources))}


def choose(clf: SafetyClassifier, data_dir: Path | None) -> tuple[dict, dict]:
    """Thresholds per mode and the valid report (rates of every source at each mode's thresholds)."""
    valid = message_sets(data_dir)["valid"]
    scores = clf.message_scores(valid.texts)
    crisis, hate = by_source(scores[:, 0], valid.sources), by_source(scores[:, 1], valid.sources)
    singles = [t for t, s in zip(valid.texts, valid.sources) if not s.endswith("_sequences")]
    everyday_texts = [t for t, s in zip(valid.texts, valid.sources) if s == "everyday"]
    windows = clf.message_scores(everyday_windows(data_dir, 3000, "valid"))[:, 0]
    pairs = pair_sets()["valid"]
    pair = clf.score_pairs([(p["context"], p["response"]) for p in pairs])
    safe = np.array([p["label"] == "Safe" for p in pairs])
    thresholds, rules = {}, {}
    for mode, rule in RULES.items():
        thresholds[mode] = {
            "crisis": crisis_threshold(crisis["own/crisis"], [crisis["own/not_crisis"], crisis["everyday"]],
                                       [rule["lookalike"], rule["everyday"]]),
            "crisis_context": crisis_threshold(crisis["own/crisis_sequences"],
                                               [crisis["own/sad_sequences"], windows],
                                               [rule["lookalike"] * 5, rule["everyday"]]),
            "hate": lowest_within([hate["toxigen/neutral"], hate["everyday"]], [rule["neutral"], rule["everyday"]]),
            "borderline_crisis": lowest_within([crisis["own/not_crisis"], crisis["everyday"]],
                                               [BORDERLINE["near"], BORDERLINE["everyday"]]),
            "borderline_hate": lowest_within([hate["toxigen/neutral"], hate["everyday"]],
                                             [BORDERLINE["near"], BORDERLINE["everyday"]]),
            "pair": lowest_within([pair[safe]], [rule["pair_safe"]]),
        }
        t = thresholds[mode]
        t["borderline_crisis"] = min(t["borderline_crisis"], t["crisis"])
        t["borderline_hate"] = min(t["borderline_hate"], t["hate"])
        rules[mode] = {"rates": rule, "borderline": BORDERLINE, "report": {
            "crisis_flagged": {s: float((v >= t["crisis"]).mean()) for s, v in crisis.items()},
            "crisis_context_flagged": {"own/crisis_sequences": float((crisis["own/crisis_sequences"]
                                                                      >= t["crisis_context"]).mean()),
                                       "own/sad_sequences": float((crisis["own/sad_sequences"]
                                                                   >= t["crisis_context"]).mean()),
                                       "everyday_windows": float((windows >= t["crisis_context"]).mean())},
            "hate_flagged": {s: float((v >= t["hate"]).mean()) for s, v in hate.items()},
            "borderline_hate_marked": {s: float((v >= t["borderline_hate"]).mean()) for s, v in hate.items()},
            "pair_dropped": pair_report(pairs, pair, t["pair"]),
        }}
    counts = {"valid_messages": len(singles), "everyday": len(everyday_texts), "everyday_windows": len(windows),
              "valid_pairs": len(pairs)}
    return thresholds, {"modes": rules, "counts": counts}


def pair_report(pairs: list[dict], scores: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """Per DiaSafety category: share of unsafe replies dropped (caught) and of safe replies dropped."""
    out = {}
    for cat in sorted({p["category"] for p in pairs}):
        rows = [i for i, p in enumerate(pairs) if p["category"] == cat]
        unsafe = [i for i in rows if pairs[i]["label"] == "Unsafe"]
        safe = [i for i in rows if pairs[i]["label"] == "Safe"]
        out[cat] = {"unsafe_caught": float((scores[unsafe] >= threshold).mean()),
                    "safe_dropped": float((scores[safe] >= threshold).mean()),
                    "n_unsafe": len(unsafe), "n_safe": len(safe)}
    return out


def export(source: Path, out: Path, data_dir: Path | None) -> dict:
    """Write the classifier folder; return its ``safety_config.json`` content."""
    export_encoder(out, source, quantize=True, data_dir=None)
    trained = json.loads((source / "safety_training.json").read_text())
    config = json.loads((out / "encoder_config.json").read_text())
    config.update(name="all-MiniLM-L6-v2, fine-tuned as Rapport's safety classifier", fine_tuned=trained)
    (out / "encoder_config.json").write_text(json.dumps(config, indent=2))
    heads = load_file(str(source / "heads.safetensors"))
    np.savez(out / "heads.npz", message_weight=heads["message.weight"], message_bias=heads["message.bias"],
             pair_weight=heads["pair.weight"], pair_bias=heads["pair.bias"])
    (out / "safety_config.json").write_text(json.dumps({"context_turns": CONTEXT_TURNS, "thresholds": {}}))
    clf = SafetyClassifier.from_dir(out)
    thresholds, report = choose(clf, data_dir)
    safety_config = {"context_turns": CONTEXT_TURNS, "thresholds": thresholds,
                     "chosen_on": "validation data only (training/safety_sets.py, training/safety_export.py)"}
    (out / "safety_config.json").write_text(json.dumps(safety_config, indent=2))
    (out / "valid_report.json").write_text(json.dumps(report, indent=2))
    return safety_config


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train safety-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True, help="<run>/best of train-safety")
    p.add_argument("--out", type=Path, default=Path("exported_models/safety-classifier"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare` (everyday chit-chat)")
    args = p.parse_args(argv)
    print(json.dumps(export(args.source, args.out, args.data)["thresholds"], indent=2))


if __name__ == "__main__":
    main()
