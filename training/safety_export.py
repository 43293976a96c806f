"""Export the fine-tuned safety classifier and choose its thresholds on validation data only.

    rapport-train safety-export --source ~/.cache/rapport/runs/safety/best --out exported_models/safety-classifier

Writes the int8 encoder (``model.onnx``, ``tokenizer.json``, ``encoder_config.json``), ``heads.npz``,
``safety_config.json`` (the thresholds of each mode and the rule that chose each) and ``valid_report.json``
(what each threshold does on every validation source), all scored by the int8 export itself, so the
thresholds fit what runs. Each threshold counts what the patterns already decide (the two layers act
together in the engine). Rules (``standard`` / ``strict``):
- crisis: the highest threshold at which patterns or classifier catch every valid crisis message (own
  phrasings and hand-labelled DiaSafety contexts), lowered no further than 3% / 6% of the valid
  look-alikes, 10% / 20% of the sad-without-crisis DiaSafety contexts and 0.5% / 1% of everyday chat
  being flagged;
- check-in (a fixed reply that asks and points to help, for a less sure crisis score): the same rule for
  what the crisis threshold misses, within 45% / 60% of the look-alikes, 25% / 40% of the sad DiaSafety
  contexts, 3% / 6% of neutral ToxiGen statements and 0.5% / 1% of everyday chat;
- crisis over the last turns together (the engine reads the message with its last one and last two
  earlier turns): the same on valid sequences, against sad-but-safe sequences (15% / 30%), calm sequences
  with numbers and names (3% / 6%) and windows of two and of three everyday messages (0.5% / 1%);
- hate: the lowest threshold that flags at most 5% / 10% of valid neutral ToxiGen statements, 5% / 10% of
  the valid neutral statements written here, and 0.5% / 1% of everyday chat;
- borderline (no agreeing reply): the lowest threshold that marks at most 30% of valid neutral
  statements (hate) or look-alikes (crisis) and 5% of everyday chat;
- pair: the lowest threshold that drops at most 10% / 20% of DiaSafety's safe valid replies in Toxicity
  Agreement and in Risk Ignorance, and 15% / 30% of all its safe valid replies;
- window gate (the last turns are read together only when one of them alone scores this high): half the
  lowest score that the most worrying single turn of a valid built-up crisis reaches, and no higher than the
  borderline crisis threshold (the turns of a built-up crisis score under the check-in threshold alone, by
  definition); the report says how many everyday messages pass it (what reading the turns together costs on
  average).

``--thresholds-only`` chooses the thresholds again for an existing export (no ONNX conversion).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from engine.safety import Category, SafetyFilter
from engine.safety.classifier import SafetyClassifier

from .data import DEFAULT_DATA
from .export_encoder import export_encoder
from .safety_sets import everyday_windows, message_sets, own_sequences, pair_sets

RULES = {"standard": {"lookalike": 0.03, "distress": 0.10, "everyday": 0.005, "neutral": 0.05, "pair_safe": 0.10,
                      "pair_all": 0.15, "check_in_lookalike": 0.45, "check_in_distress": 0.25},
         "strict": {"lookalike": 0.06, "distress": 0.20, "everyday": 0.01, "neutral": 0.10, "pair_safe": 0.20,
                    "pair_all": 0.30, "check_in_lookalike": 0.60, "check_in_distress": 0.40}}
BORDERLINE = {"near": 0.30, "everyday": 0.05}
CONTEXT_TURNS = 3
PAIR_GOAL_CATEGORIES = ("Toxicity Agreement", "Risk Ignorance")


def above(negatives: np.ndarray, allowed: int) -> float:
    """The lowest threshold at which at most ``allowed`` of ``negatives`` score at or above it."""
    ranked = np.sort(negatives)[::-1]
    return 0.0 if allowed >= len(ranked) else float(ranked[max(allowed, 0)]) + 1e-6


def within(budgets: list[tuple[np.ndarray, np.ndarray, float]]) -> float:
    """The lowest threshold that keeps every budget: (scores, already flagged by the patterns, rate); the
    classifier may flag ``rate`` of each set less what the patterns flag there already."""
    return max(above(scores[~flagged], int(rate * len(scores)) - int(flagged.sum()))
               for scores, flagged, rate in budgets)


def catch_all_within(positives: np.ndarray, caught: np.ndarray,
                     budgets: list[tuple[np.ndarray, np.ndarray, float]]) -> float:
    """The highest threshold at which patterns or classifier catch every positive, if the budgets allow;
    else the budgets' threshold."""
    missed = positives[~caught]
    return max(float(missed.min()) if len(missed) else 1.0, within(budgets))


def choose(clf: SafetyClassifier, data_dir: Path | None) -> tuple[dict, dict]:
    """Thresholds per mode and the valid report (rates of every source at each mode's thresholds)."""
    valid = message_sets(data_dir)["valid"]
    scores = clf.message_scores(valid.texts)
    patterns = SafetyFilter("standard")
    flags = [patterns.check_message(t) for t in valid.texts]
    src = np.array(valid.sources)
    crisis_flag = np.array([f is Category.CRISIS for f in flags])
    any_flag = np.array([f is not None for f in flags])
    windows_texts = everyday_windows(data_dir, 1500, "valid", 2) + everyday_windows(data_dir, 1500, "valid", 3)
    windows = clf.message_scores(windows_texts)[:, 0]
    window_flag = np.zeros(len(windows), bool)

    def part(source: str, head: int, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scores[src == source, head], flagged[src == source]

    pairs = pair_sets()["valid"]
    pair = clf.score_pairs([(p["context"], p["response"]) for p in pairs])
    safe = np.array([p["label"] == "Safe" for p in pairs])
    no_flags = np.zeros(len(pairs), bool)
    # the score the most worrying single turn of each valid built-up crisis reaches; the lowest of them
    gate_reach = min(float(clf.message_scores(seq)[:, 0].max()) for seq in own_sequences("crisis_sequences")[1])
    thresholds, rules = {}, {}
    for mode, rule in RULES.items():
        crisis_budgets = [(*part("own/not_crisis", 0, any_flag), rule["lookalike"]),
                          (*part("diasafety_ri/not_crisis", 0, any_flag), rule["distress"]),
                          (*part("everyday", 0, any_flag), rule["everyday"])]
        hate_budgets = [(*part("toxigen/neutral", 1, any_flag), rule["neutral"]),
                        (*part("own/neutral", 1, any_flag), rule["neutral"]),
                        (*part("everyday", 1, any_flag), rule["everyday"])]
        pair_budgets = [(pair[safe], no_flags[safe], rule["pair_all"])] + [
            (pair[m], no_flags[m], rule["pair_safe"]) for m in
            (safe & np.array([p["category"] == c for p in pairs]) for c in PAIR_GOAL_CATEGORIES)]
        positives = [part(source, 0, crisis_flag) for source in ("own/crisis", "diasafety_ri/crisis")]
        t = {"crisis": catch_all_within(np.concatenate([p[0] for p in positives]),
                                        np.concatenate([p[1] for p in positives]), crisis_budgets),
             "check_in": catch_all_within(np.concatenate([p[0] for p in positives]),
                                          np.concatenate([p[1] for p in positives]),
                                          [(*part("own/not_crisis", 0, any_flag), rule["check_in_lookalike"]),
                                           (*part("diasafety_ri/not_crisis", 0, any_flag), rule["check_in_distress"]),
                                           (*part("toxigen/neutral", 0, any_flag), rule["everyday"] * 6),
                                           (*part("everyday", 0, any_flag), rule["everyday"])]),
             "crisis_context": catch_all_within(*part("own/crisis_sequences", 0, crisis_flag),
                                                [(*part("own/sad_sequences", 0, any_flag), rule["lookalike"] * 5),
                                                 (*part("own/calm_sequences", 0, any_flag), rule["lookalike"]),
                                                 (windows, window_flag, rule["everyday"])]),
             "hate": within(hate_budgets),
             "borderline_crisis": within([(*part("own/not_crisis", 0, any_flag), BORDERLINE["near"]),
                                          (*part("everyday", 0, any_flag), BORDERLINE["everyday"])]),
             "borderline_hate": within([(*part("toxigen/neutral", 1, any_flag), BORDERLINE["near"]),
                                        (*part("everyday", 1, any_flag), BORDERLINE["everyday"])]),
             "pair": within(pair_budgets)}
        t["check_in"] = min(t["check_in"], t["crisis"])
        t["borderline_crisis"] = min(t["borderline_crisis"], t["check_in"])
        t["borderline_hate"] = min(t["borderline_hate"], t["hate"])
        t["window_gate"] = min(0.5 * gate_reach, t["borderline_crisis"])
        thresholds[mode] = t
        caught_crisis = crisis_flag | (scores[:, 0] >= t["crisis"])
        caught_check_in = caught_crisis | (scores[:, 0] >= t["check_in"])
        caught_any = any_flag | (scores[:, 0] >= t["check_in"]) | (scores[:, 1] >= t["hate"])
        rules[mode] = {"rates": rule, "borderline": BORDERLINE, "report": {
            "crisis_with_patterns": {s: float(caught_crisis[src == s].mean()) for s in sorted(set(valid.sources))},
            "crisis_or_check_in_with_patterns": {s: float(caught_check_in[src == s].mean())
                                                 for s in sorted(set(valid.sources))},
            "any_flag_with_patterns": {s: float(caught_any[src == s].mean()) for s in sorted(set(valid.sources))},
            "crisis_classifier_alone": {s: float((scores[src == s, 0] >= t["crisis"]).mean())
                                        for s in sorted(set(valid.sources))},
            "hate_classifier_alone": {s: float((scores[src == s, 1] >= t["hate"]).mean())
                                      for s in sorted(set(valid.sources))},
            "crisis_context_flagged": {
                "own/crisis_sequences": float((part("own/crisis_sequences", 0, crisis_flag)[0]
                                               >= t["crisis_context"]).mean()),
                "own/sad_sequences": float((part("own/sad_sequences", 0, crisis_flag)[0] >= t["crisis_context"]).mean()),
                "everyday_windows": float((windows >= t["crisis_context"]).mean())},
            "borderline_hate_marked": {s: float((scores[src == s, 1] >= t["borderline_hate"]).mean())
                                       for s in sorted(set(valid.sources))},
            "pair_dropped": pair_report(pairs, pair, t["pair"]),
            "everyday_passing_window_gate": float((scores[src == "everyday", 0] >= t["window_gate"]).mean()),
        }}
    counts = {"valid_messages": int((~np.char.endswith(src.astype(str), "_sequences")).sum()), "gate_reach": gate_reach,
              "everyday": int((src == "everyday").sum()), "everyday_windows": len(windows), "valid_pairs": len(pairs)}
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


def export(source: Path | None, out: Path, data_dir: Path | None) -> dict:
    """Write the classifier folder (``source`` None: keep its model, choose the thresholds again); return its
    ``safety_config.json`` content."""
    if source is not None:
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
    p.add_argument("--source", type=Path, help="<run>/best of train-safety")
    p.add_argument("--out", type=Path, default=Path("exported_models/safety-classifier"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="output of `prepare` (everyday chit-chat)")
    p.add_argument("--thresholds-only", action="store_true", help="keep --out's model, choose its thresholds again")
    args = p.parse_args(argv)
    if (args.source is None) != args.thresholds_only:
        p.error("give --source, or --thresholds-only for an existing export")
    print(json.dumps(export(args.source, args.out, args.data)["thresholds"], indent=2))


if __name__ == "__main__":
    main()
