"""Reading ``pipeline.yaml``: the runs, their groups and settings per profile (see the file's comments)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import yaml

from .errors import RetinoError
from .paths import PACKAGE_DIR

PIPELINE_FILE = PACKAGE_DIR / "pipeline.yaml"


def load_pipeline(path: str | Path = PIPELINE_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def run_settings(pipeline: dict, profile: str, run: str) -> dict:
    """Training settings of ``run`` under ``profile``: profile train < run < profile overrides."""
    spec = pipeline["profiles"][profile]
    settings = dict(spec.get("train") or {})
    settings.update({k: v for k, v in pipeline["runs"][run].items() if k != "groups"})
    for pattern, overrides in (spec.get("runs") or {}).items():
        if fnmatch.fnmatchcase(run, pattern):
            settings.update(overrides)
    return settings


def runs_in_group(pipeline: dict, group: str) -> list[str]:
    runs = [name for name, spec in pipeline["runs"].items() if group in spec.get("groups", ())]
    if not runs:
        known = sorted({g for spec in pipeline["runs"].values() for g in spec.get("groups", ())})
        raise RetinoError(f"no run of group {group!r} in the pipeline: groups are {', '.join(known)}")
    return runs
