"""Export alt-profanity-check's fitted model as plain arrays, so the engine scores profanity without
scikit-learn (whose import alone held about 106 MB of every bot process, issue 24).

    rapport-train export-profanity [--out exported_models/profanity-check]

The package (MIT) fits a TF-IDF vectorizer (unigrams of ``(?u)\\b\\w\\w+\\b`` on lower-cased text, l2
norm, smooth idf) and five linear SVMs with sigmoid calibration (``CalibratedClassifierCV``). Written:
``vocabulary.json`` (the words, in feature order), ``profanity.npz`` (idf, the five SVMs' weights and
biases, the calibrations' a and b) and the package's licence. :class:`engine.safety.profanity.ProfanityModel`
reads them; a test compares its probabilities with the package's own ``predict_prob``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

from engine.config import DEFAULT_PROFANITY
from engine.safety.profanity import TOKEN_PATTERN

PACKAGE = "alt-profanity-check"


def export(out: Path) -> dict:
    """Write the arrays of the installed package's model into ``out``; returns what was written."""
    from profanity_check import profanity_check as package

    vectorizer, model = package.vectorizer, package.model
    expected = {"token_pattern": TOKEN_PATTERN, "lowercase": True, "ngram_range": (1, 1), "analyzer": "word",
                "norm": "l2", "use_idf": True, "sublinear_tf": False, "binary": False, "strip_accents": None,
                "preprocessor": None, "tokenizer": None}
    found = {k: getattr(vectorizer, k) for k in expected}
    if found != expected or model.method != "sigmoid" or list(model.classes_) != [0, 1]:
        raise ValueError(f"{PACKAGE}'s model is not the one this export expects: {found}, {model.method}")
    words = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    calibrated = model.calibrated_classifiers_
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocabulary.json").write_text(json.dumps(words, ensure_ascii=False))
    np.savez(out / "profanity.npz", idf=vectorizer.idf_.astype(np.float64),
             weights=np.stack([c.estimator.coef_[0] for c in calibrated], axis=1).astype(np.float64),
             bias=np.array([c.estimator.intercept_[0] for c in calibrated], dtype=np.float64),
             a=np.array([c.calibrators[0].a_ for c in calibrated], dtype=np.float64),
             b=np.array([c.calibrators[0].b_ for c in calibrated], dtype=np.float64))
    dist = metadata.distribution(PACKAGE)
    licence = next(f for f in dist.files if f.name.upper().startswith("LICENSE"))
    shutil.copy(dist.locate_file(licence), out / f"LICENSE-{PACKAGE}.txt")
    return {"package": f"{PACKAGE}=={dist.version}", "words": len(words), "classifiers": len(calibrated)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train export-profanity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_PROFANITY)
    args = p.parse_args(argv)
    print(json.dumps(export(args.out)))


if __name__ == "__main__":
    main()
