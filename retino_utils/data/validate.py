"""Check a dataset before training on it: every label a grade, every image present and decodable.

``python -m retino_utils.data validate ROOT`` prints grade counts per split and every problem, and
exits 1 when there is any. The per-image result is cached under the split's fingerprint, so
``open_dataset(..., skip_bad=True)`` can leave bad files out without decoding everything again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from retino_utils import GRADE_NAMES, GRADES
from retino_utils.atomic import write_json
from retino_utils.data.cachedir import dataset_cache_dir, derived_prefix, remove_stale
from retino_utils.data.images import decode_problem
from retino_utils.data.layouts import (
    SPLITS,
    ScannedSplit,
    SplitIndex,
    excluded_message,
    nested_folder_message,
    nested_image_folder,
    resolve_layout,
    scan_split,
    shared_photos,
)
from retino_utils.data.parallel import parallel_map
from retino_utils.errors import RetinoError

PROBLEMS_SHOWN = 20


@dataclass
class ValidationReport:
    root: Path
    layout: str
    problems: list[tuple[str, str]]  # (where, reason)
    counts: pd.DataFrame  # one row per split; columns: grades 0-4, then "total"
    bad_names: dict[str, set[str]]  # split -> names whose image is missing or does not decode
    notes: list[str] = field(default_factory=list)  # not problems, but said: rows a layout leaves out on purpose

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, limit: int = PROBLEMS_SHOWN) -> str:
        lines = [f"{self.root} ({self.layout} layout)"]
        if len(self.counts):
            table = self.counts.rename(columns={g: f"{g} {GRADE_NAMES[g]}" for g in GRADES})
            lines[0] += ": images per grade"
            lines += [table.to_string(), ""]
        lines += [f"note: {note}" for note in self.notes]
        if self.ok:
            lines.append("OK: no problems found")
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
        lines += [f"  {where}: {reason}" for where, reason in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def validate_dataset(
    root: str | os.PathLike,
    layout: str = "auto",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    root = Path(root).resolve()
    layout = resolve_layout(root, layout)
    problems: list[tuple[str, str]] = []
    counts: dict[str, list[int]] = {}
    bad_names: dict[str, set[str]] = {}
    scanned: dict[str, ScannedSplit] = {}
    notes: list[str] = []
    for split in SPLITS:
        try:
            scanned[split] = scan = scan_split(root, split, layout, test_fraction, split_seed)
        except RetinoError as exc:
            _add_new(problems, [(f"{split} split", str(exc))])
            continue
        index = scan.index
        _add_new(problems, scan.problems)
        if scan.excluded and excluded_message(layout, scan.excluded) not in notes:
            notes.append(excluded_message(layout, scan.excluded))
        counts[split] = [*index.grade_counts().tolist(), len(index)]
        if not len(index):
            problems.append((f"{split} split", "no entries (an empty split cannot be trained or tested on)"))
        bad = image_problems(index, workers=workers, progress=progress)
        bad_names[split] = set(bad)
        where = {name: path for name, path in zip(index.names, index.paths)}
        nested = nested_image_folder(index)
        if nested:  # one line for the whole folder, not one "file not found" per image
            problems.append((f"{split} split", nested_folder_message(index, nested)))
            bad = {name: reason for name, reason in bad.items() if where[name] not in nested[2]}
        problems += [(_relative(root, where[name]), reason) for name, reason in bad.items()]
    if len(scanned) == len(SPLITS):
        problems += shared_photos(scanned["train"].index, scanned["test"].index)
    table = pd.DataFrame.from_dict(counts, orient="index", columns=[*GRADES, "total"])
    return ValidationReport(root, layout, problems, table, bad_names, notes)


def image_problems(index: SplitIndex, workers: int | None = None, progress: bool = True) -> dict[str, str]:
    """``name -> reason`` for each entry whose image is missing or does not decode.

    Cached in the dataset's cache folder under the split's fingerprint: any change to the file list,
    a label, or a file's size or mtime makes a new key.
    """
    fingerprint = index.fingerprint()
    folder = dataset_cache_dir(index.root)
    prefix = derived_prefix(index, "validate")
    cached = folder / f"{prefix}{fingerprint}.json"
    if cached.is_file():
        try:
            return json.loads(cached.read_text())["bad"]
        except (ValueError, KeyError):
            pass  # a damaged cache file is recomputed
    tasks = [(i, (path,)) for i, path in enumerate(index.paths)]
    bad = {}
    outcomes = parallel_map(decode_problem, tasks, workers=workers, desc=f"validating {index.split}", progress=progress)
    for i, reason, error in outcomes:
        if reason or error:
            bad[index.names[i]] = reason or f"cannot check ({error})"
    bad = dict(sorted(bad.items()))
    remove_stale(folder, prefix, fingerprint)
    write_json(cached, {"root": str(index.root), "fingerprint": fingerprint, "bad": bad})
    return bad


def _add_new(problems: list[tuple[str, str]], found: list[tuple[str, str]]) -> None:
    """Add problems not already listed (Kaggle and APTOS read one table for both splits)."""
    problems += [problem for problem in found if problem not in problems]


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
