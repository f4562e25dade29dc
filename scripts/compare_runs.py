"""Do two builds agree run for run? The check that a change meant to keep behaviour kept it.

    python scripts/compare_runs.py OLD_BUILD NEW_BUILD [--figures OLD_FIGURES NEW_FIGURES]

Each build folder holds ``runs/<name>/`` (e.g. ``build/demo``). For every run in either build it compares the
record (``metrics.json`` read through its declaration, so an older version's file compares with its fields'
defaults: every figure, interval, screening and calibration value, exactly), the predictions
and the history (timing columns left out). What legitimately differs between two builds of the same settings
is left out and named: the folders (``config.data``, ``config.out``), the data fingerprint (it includes file
times) and the record's schema version. With ``--figures`` the PNGs of two figure folders are compared byte for
byte. Prints one line per difference; exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from retino_utils.evaluation.record import read_record

IGNORED = {("schema_version",), ("data_fingerprint",), ("config", "data"), ("config", "out")}
TIMING = ["seconds", "images_per_s"]


def differences(old, new, path=()) -> list[str]:
    """Where two JSON values differ, as ``a.b.c: old -> new`` lines (``IGNORED`` paths left out)."""
    if path in IGNORED:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in dict.fromkeys([*old, *new])
                for line in differences(old.get(key, "<absent>"), new.get(key, "<absent>"), (*path, key))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in differences(a, b, (*path, str(i)))]
    return [] if old == new else [f"{'.'.join(path)}: {str(old)[:60]} -> {str(new)[:60]}"]


def compare_run(old: Path, new: Path) -> list[str]:
    found = differences(*(read_record(folder).to_dict() for folder in (old, new)))
    for table, drop in (("predictions.csv", []), ("history.csv", TIMING)):
        a, b = (pd.read_csv(folder / table).drop(columns=drop, errors="ignore") for folder in (old, new))
        if not a.equals(b):
            found.append(f"{table} differs")
    return found


def compare_builds(old: Path, new: Path) -> list[str]:
    runs = sorted({p.parent.name for build in (old, new) for p in (build / "runs").glob("*/metrics.json")})
    lines = []
    for name in runs:
        missing = [str(build) for build in (old, new) if not (build / "runs" / name / "metrics.json").is_file()]
        found = [f"not finished in {', '.join(missing)}"] if missing else compare_run(old / "runs" / name,
                                                                                     new / "runs" / name)
        lines += [f"{name}: {line}" for line in found]
    print(f"{len(runs)} runs compared")
    return lines


def compare_figures(old: Path, new: Path) -> list[str]:
    names = sorted({p.name for folder in (old, new) for p in folder.glob("*.png")})
    print(f"{len(names)} figures compared")
    return [f"figure {name} differs" for name in names
            if not ((old / name).is_file() and (new / name).is_file()
                    and (old / name).read_bytes() == (new / name).read_bytes())]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--figures", nargs=2, type=Path, metavar=("OLD_FIGURES", "NEW_FIGURES"))
    args = parser.parse_args(argv)
    lines = compare_builds(args.old, args.new)
    if args.figures:
        lines += compare_figures(*args.figures)
    print("\n".join(lines) or "identical (paths, data fingerprint and schema version aside)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
