"""``rapport-train prepare``: write the splits and profile facts, print the split sizes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .data import DEFAULT_DATA, prepare


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train prepare", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(prepare(args.out, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
