"""One learned safety classifier per folder and process: engines in one process share it (it is read-only)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .classifier import SafetyClassifier


@lru_cache(maxsize=4)
def load_classifier(folder: Path) -> SafetyClassifier:
    """The classifier in ``folder``, loaded once; a clear error when the folder is not an export."""
    folder = Path(folder)
    if not (folder / "safety_config.json").is_file():
        raise FileNotFoundError(f"no safety classifier in {folder} (RAPPORT_SAFETY_MODEL_DIR); build one with "
                                "`rapport-train safety-export`, or set RAPPORT_SAFETY_CLASSIFIER=0 to run on the "
                                "patterns alone")
    return SafetyClassifier.from_dir(folder)
