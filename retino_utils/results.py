"""Reading finished runs back: what the comparison, confusion and imbalance notebooks tabulate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import GRADE_NAMES, GRADES


@dataclass
class RunResult:
    name: str
    path: Path
    history: pd.DataFrame
    metrics: dict

    @property
    def config(self) -> dict:
        return self.metrics.get("config", {})

    @property
    def label(self) -> str:
        """A human label such as ``ResNet-18, ImageNet`` for legends."""
        config = self.config
        arch = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}.get(config.get("arch"), config.get("arch", "?"))
        weights = config.get("weights")
        init = "scratch" if not weights else ("ImageNet" if weights == "imagenet" else Path(weights).stem)
        return f"{arch}, {init}"

    @property
    def confusion(self) -> np.ndarray:
        """Normalised over true grades (each row sums to one)."""
        return np.asarray(self.metrics["confusion"], dtype=float)

    @property
    def counts(self) -> np.ndarray:
        """Photos per (true grade, predicted grade)."""
        return np.asarray(self.metrics["confusion_counts"], dtype=int)


def load_run(path: str | Path, name: str | None = None) -> RunResult | None:
    """A finished run (history.csv and metrics.json present), or None when it is missing or unfinished."""
    path = Path(path)
    if not (path / "metrics.json").is_file() or not (path / "history.csv").is_file():
        return None
    metrics = json.loads((path / "metrics.json").read_text())
    return RunResult(name or path.name, path, pd.read_csv(path / "history.csv"), metrics)


def load_runs(run_dirs: dict[str, str | Path]) -> tuple[dict[str, RunResult], list[str]]:
    """The finished runs by name, and the names of those that are missing."""
    found, missing = {}, []
    for name, path in run_dirs.items():
        run = load_run(path, name)
        if run is None:
            missing.append(name)
        else:
            found[name] = run
    return found, missing


def summary_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """One row per run: the settings that differ and the best checkpoint's test figures."""
    rows = []
    for name, run in runs.items():
        config, metrics, history = run.config, run.metrics, run.history
        rows.append({
            "run": name,
            "model": run.label,
            "loss": config.get("loss"),
            "sampler": config.get("sampler"),
            "epochs": len(history),
            "best epoch": metrics.get("best_epoch"),
            "best train acc": history.train_acc.max(),
            "accuracy": metrics["accuracy"],
            "QWK": metrics["qwk"],
            "macro-F1": metrics["macro_f1"],
            "referable AUC": metrics.get("referable_auc"),
        })
    return pd.DataFrame(rows).set_index("run")


def recall_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Recall per grade (rows: runs), the column a collapsed model leaves at zero."""
    data = {name: run.metrics["recall"] for name, run in runs.items()}
    columns = [f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)]
    return pd.DataFrame.from_dict(data, orient="index", columns=columns)


def majority_baseline(run: RunResult) -> float:
    """Accuracy of always answering the training split's most frequent grade on the evaluated split."""
    train_counts = np.asarray(run.metrics["train_counts"])
    eval_counts = np.asarray(run.metrics["eval_counts"])
    return float(eval_counts[train_counts.argmax()] / eval_counts.sum())


def percent(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Format fractions as percentages for display (a copy)."""
    shown = frame.copy()
    for column in columns:
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    return shown


# -- tables the notebooks show (numbers always computed, never typed in) ------------------------------
ARCH_LABELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}


def fmt(value, spec: str = ".3f") -> str:
    """A figure for the notebooks' text; ``n/a`` where it is undefined (e.g. an AUC with one class)."""
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def missing_note(missing: list[str]) -> str:
    if not missing:
        return "All runs this notebook reads are present."
    names = ", ".join(f"`{name}`" for name in missing)
    return (f"**Missing runs: {names}.** They are left out below. Pretrained runs are missing when the "
            f"ImageNet weights file could not be found or downloaded; the report's index page says which file "
            f"goes where.")


def metrics_table(run: RunResult) -> pd.DataFrame:
    """Per grade: photos in the evaluated split, how often the model predicted it, recall, precision."""
    counts = run.counts
    return pd.DataFrame({
        "photos": counts.sum(1),
        "predicted": counts.sum(0),
        "recall": np.round(run.metrics["recall"], 3),
        "precision": np.round(run.metrics["precision"], 3),
    }, index=[f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)])


def confusion_panels(runs: dict[str, RunResult], names: list[str]) -> dict[str, np.ndarray | None]:
    """Panel title -> confusion counts, ``None`` for a missing run (an empty labelled panel)."""
    return {(f"{name}: {runs[name].label}" if name in runs else name): (runs[name].counts if name in runs else None)
            for name in names}


def prediction_shares(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Share of test photos each run assigns to each grade, beside the true shares."""
    rows = {}
    for name, run in runs.items():
        counts = run.counts
        rows.setdefault("true grades", counts.sum(1) / counts.sum())
        rows[name] = counts.sum(0) / counts.sum()
    columns = [f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)]
    return (100 * pd.DataFrame.from_dict(rows, orient="index", columns=columns)).round(1).astype(str) + "%"


def grade0_share(run: RunResult) -> float:
    """Share of the evaluated photos the run calls grade 0."""
    return float(run.counts[:, 0].sum() / run.counts.sum())


def pretraining_pairs(runs: dict[str, RunResult]) -> dict[str, dict[str, RunResult]]:
    """Per architecture, its runs by initialisation (``scratch`` / ``imagenet``), read from their configs."""
    pairs: dict[str, dict[str, RunResult]] = {}
    for run in runs.values():
        init = "imagenet" if run.config.get("weights") == "imagenet" else "scratch"
        pairs.setdefault(run.config.get("arch"), {})[init] = run
    return pairs
