"""Defaults for notebooks opened by hand: an empty path parameter means the demo build's folder.

Resolved from the package, so a notebook runs from any working directory. ``RETINO_DEMO_DIR`` and
``RETINO_FIGURES_DIR`` move those defaults elsewhere (the browser test runs the notebooks that way).
"""

from __future__ import annotations

import os
from pathlib import Path

from retino_utils.paths import BUILD_DIR, FIGURES_DIR
from retino_utils.report.pipeline import load_pipeline, runs_in_group

DEMO_DIR = Path(os.environ.get("RETINO_DEMO_DIR") or BUILD_DIR / "demo")


def data_dir(value: str = "") -> Path:
    """``value``, or the demo's synthetic data (generated here on first use, as the report would)."""
    if value:
        return Path(value)
    from retino_utils.synthetic import profile_dataset

    folder = DEMO_DIR / "data"
    if not (folder / "train_img.csv").is_file():
        print(f"generating the demo's synthetic fundus photos in {folder} (once; about a minute)", flush=True)
    return profile_dataset(load_pipeline()["profiles"]["demo"]["synthetic"], folder, progress=True)


def figures_dir(value: str = "") -> Path:
    path = Path(value or os.environ.get("RETINO_FIGURES_DIR") or FIGURES_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(value: str, name: str) -> Path:
    return Path(value) if value else DEMO_DIR / "runs" / name


DEFAULT_RUN = "resnet18_scratch"  # the demo run the training notebook trains when opened by hand


def run_name(value: str, run_folder: str) -> str:
    """The name a run's figures carry: ``value``, else its folder's name, else the demo's first run."""
    return value or (Path(run_folder).name if run_folder else DEFAULT_RUN)


def group_runs(given: dict, group: str) -> dict[str, Path]:
    """The runs a notebook reads: the ones given, or the demo build's runs of this pipeline group."""
    if given:
        return {name: Path(path) for name, path in given.items()}
    return {name: run_dir("", name) for name in runs_in_group(load_pipeline(), group)}


def external_sets(given: dict) -> dict[str, Path]:
    """The external sets a notebook grades: the ones given, or the demo's synthetic second camera (generated
    here on first use, as the report would)."""
    if given:
        return {name: Path(path) for name, path in given.items()}
    from retino_utils.synthetic.second_camera import SECOND_CAMERA, profile_second_camera

    spec = load_pipeline()["profiles"]["demo"]["second_camera"]
    return {SECOND_CAMERA: profile_second_camera(spec, DEMO_DIR / "external" / "second-camera", progress=True)}
