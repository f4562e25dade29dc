"""Reading finished runs back: what the comparison, confusion and imbalance notebooks tabulate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from retino_utils import GRADE_NAMES, GRADES
from retino_utils.errors import RetinoError
from retino_utils.evaluation.record import (
    RECORD_FILE,
    ExternalRecord,
    RunRecord,
    Scores,
    Screening,
    read_json_record,
    read_record,
)
from retino_utils.models.architectures import ARCHITECTURES


@dataclass
class RunResult:
    name: str
    path: Path
    history: pd.DataFrame
    metrics: RunRecord

    @property
    def config(self) -> dict:
        return self.metrics.config

    @property
    def label(self) -> str:
        """A human label such as ``ResNet-18, ImageNet`` for legends."""
        config = self.config
        arch = arch_label(config.get("arch", "?"))
        weights = config.get("weights")
        init = "scratch" if not weights else ("ImageNet" if weights == "imagenet" else Path(weights).stem)
        return f"{arch}, {init}"

    @property
    def confusion(self) -> np.ndarray:
        """Normalised over true grades (each row sums to one)."""
        return np.asarray(self.metrics.confusion, dtype=float)

    @property
    def counts(self) -> np.ndarray:
        """Photos per (true grade, predicted grade)."""
        return np.asarray(self.metrics.confusion_counts, dtype=int)


EXTERNAL_RECORDS = "external"  # RUN/external/<set>.json: the run graded on another source (external.record)


def run_state(run_dir: str | Path) -> str:
    """A digest of the run's record (metrics.json): a result kept beside the run graded another state of it if
    the digest it holds differs."""
    return hashlib.sha256((Path(run_dir) / RECORD_FILE).read_bytes()).hexdigest()[:16]


class KeptExternal(NamedTuple):
    record: ExternalRecord
    current: bool  # False: it graded another state of the run, or its set has changed (or gone) since


def external_records(run_dir: str | Path) -> list[KeptExternal]:
    """The external results kept beside a run, each with whether it is still the run's: one that is not must
    not pass for it."""
    from retino_utils.data import dataset_fingerprint

    found = []
    for path in sorted((Path(run_dir) / EXTERNAL_RECORDS).glob("*.json")):
        kept = ExternalRecord.from_dict(read_json_record(path, "delete it; the external notebook grades the set "
                                                               "again"), str(path))
        folder = Path(kept.folder)
        try:
            same_set = folder.is_dir() and dataset_fingerprint(folder) == kept.fingerprint
        except RetinoError:  # the set no longer reads as a dataset
            same_set = False
        found.append(KeptExternal(kept, same_set and kept.run_state == run_state(run_dir)))
    return found


def load_run(path: str | Path, name: str | None = None) -> RunResult | None:
    """A finished run (history.csv and metrics.json present), or None when it is missing or unfinished."""
    path = Path(path)
    if not (path / RECORD_FILE).is_file() or not (path / "history.csv").is_file():
        return None
    return RunResult(name or path.name, path, pd.read_csv(path / "history.csv"), read_record(path))


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
            "best epoch": metrics.best_epoch,
            "best train acc": history.train_acc.max(),
            "accuracy": metrics.accuracy,
            "QWK": metrics.qwk,
            "macro-F1": metrics.macro_f1,
            "referable AUC": metrics.referable_auc,
        })
    return pd.DataFrame(rows).set_index("run")


def recall_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Recall per grade (rows: runs), the column a collapsed model leaves at zero."""
    data = {name: run.metrics.recall for name, run in runs.items()}
    columns = [f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)]
    return pd.DataFrame.from_dict(data, orient="index", columns=columns)


def majority_baseline(run: RunResult) -> float:
    """Accuracy of always answering the training split's most frequent grade on the evaluated split."""
    train_counts = np.asarray(run.metrics.train_counts)
    eval_counts = np.asarray(run.metrics.eval_counts)
    return float(eval_counts[train_counts.argmax()] / eval_counts.sum())


# -- tables the notebooks show (numbers always computed, never typed in) ------------------------------
def arch_label(arch: str) -> str:
    """``ResNet-18`` for ``resnet18``: the label its declaration gives (the name itself when undeclared)."""
    declared = ARCHITECTURES.get(arch)
    return declared.label if declared else arch


TABLE_FIGURES = {"accuracy": "accuracy", "QWK": "qwk", "macro-F1": "macro_f1", "referable AUC": "referable_auc"}


def with_interval(value, interval=None, spec: str = ".3f") -> str:
    """``0.62 [0.55, 0.69]``: a figure and its 95% interval, as every table of the report shows them."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if not interval or interval[0] is None:
        return format(value, spec)
    return f"{value:{spec}} [{interval[0]:{spec}}, {interval[1]:{spec}}]"


def signed_interval(difference: dict, spec: str = "+.3f") -> str:
    """``+0.21 [+0.12, +0.30]`` for a paired difference (``uncertainty.paired_difference``)."""
    if difference["difference"] is None:
        return "n/a"
    low, high = difference["interval"]
    bounds = "" if low is None else f" [{low:{spec}}, {high:{spec}}]"
    return f"{difference['difference']:{spec}}{bounds}"


CHOSEN_ON = {"validation": "chosen on validation", "last epoch": "last epoch", "test": "chosen on TEST (optimistic)"}


def difference_verdict(difference: dict) -> str:
    """What a paired interval says: a real gain or loss only where it excludes zero."""
    low, high = difference["interval"]
    if low is None:
        return "not measurable here"
    return "a real gain" if low > 0 else "a real loss" if high < 0 else "not distinguishable from zero"


def kept_epoch_label(best_epoch: int, select_on: str | None) -> str:
    """``3 (chosen on validation)``; a checkpoint chosen on the test split says so loudly."""
    chosen_on = select_on or "test"  # runs from before the validation split chose on the test split
    return f"{best_epoch} ({CHOSEN_ON.get(chosen_on, chosen_on)})"


def kept_epoch(run: RunResult) -> str:
    """Which epoch the run keeps, of how many, and what chose it."""
    label = kept_epoch_label(run.metrics.best_epoch, run.metrics.select_on)
    return label.replace(" (", f" of {len(run.history)} (", 1)


INTERVAL_COLUMNS = ["model", "loss", "sampler", "kept epoch", "test photos", *TABLE_FIGURES]


def interval_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """One row per run: its test figures with 95% intervals, and how its checkpoint was chosen."""
    rows = {}
    for name, run in runs.items():
        rows[name] = {"model": run.label, "loss": run.config.get("loss"), "sampler": run.config.get("sampler"),
                      "kept epoch": kept_epoch(run), "test photos": run.metrics.n, **figure_columns(run.metrics)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=INTERVAL_COLUMNS)


def figure_columns(scores: Scores) -> dict[str, str]:
    """The headline figures of a graded split with their intervals, by table column (``TABLE_FIGURES``)."""
    return {column: with_interval(scores.figure(key), scores.interval(key)) for column, key in TABLE_FIGURES.items()}


def interval_rows(scores: Scores, figures, **labels) -> list[dict]:
    """One row per figure of a graded split: ``labels`` (e.g. run=...), figure, value, low, high."""
    return [{**labels, "figure": figure, "value": scores.figure(figure),
             "low": (scores.interval(figure) or (None, None))[0], "high": (scores.interval(figure) or (None, None))[1]}
            for figure in figures]


def long_frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """``interval_rows`` as a frame for plotting, numbers as floats (NaN where undefined)."""
    return pd.DataFrame(rows, columns=[*columns, "figure", "value", "low", "high"]).astype(
        {"value": float, "low": float, "high": float})


def interval_frame(runs: dict[str, RunResult], figures=("accuracy", "qwk", "referable_auc")) -> pd.DataFrame:
    """Long form (run, figure, value, low, high) of the test figures and their intervals, for plotting."""
    return long_frame([row for name, run in runs.items() for row in interval_rows(run.metrics, figures, run=name)],
                      ["run"])


# How the ablation table names each augmentation setting that is on, short enough for a table cell.
AUGMENTATION_TEXT = {"hflip": "h-flips", "vflip": "v-flips", "rotation": "rotation ±{:g}°", "scale": "zoom ±{:.0%}",
                     "shift": "shift ±{:.0%}", "color": "brightness/contrast ±{:.0%}", "gamma": "gamma exp(±{:g})",
                     "saturation": "saturation ±{:.0%}", "blur": "blur/sharpen σ≤{:g}", "jpeg": "JPEG q≥{:d}"}


def ablation_settings(runs: dict[str, RunResult]) -> pd.DataFrame:
    """What each ablation run changes: its augmentation and its normalisation statistics."""
    rows = {}
    for name, run in runs.items():
        config = run.config
        augmentation = ", ".join(text.format(config[key]) for key, text in AUGMENTATION_TEXT.items() if config.get(key))
        rows[name] = {"augmentation": augmentation or "none", "normalisation": config.get("normalize")}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["augmentation", "normalisation"])


def recall_intervals(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Recall per grade with its interval (rows: runs); each column names how many test photos it rests on."""
    rows, photos = {}, None
    for name, run in runs.items():
        photos = run.counts.sum(1)
        rows[name] = recall_column(run.metrics)
    columns = [f"{g} {n} (n={photos[g] if photos is not None else 0})" for g, n in zip(GRADES, GRADE_NAMES)]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def point_figure(point: dict, figure: str, spec: str = ".1%") -> str:
    """An operating point's ``sensitivity`` or ``specificity`` with its interval: ``87.0% [80.1%, 92.3%]``."""
    return with_interval(point[figure], point.get(f"{figure}_interval"), spec)


def recall_column(scores: Scores) -> list[str]:
    """Recall per grade with its interval."""
    return [with_interval(recall, scores.interval(f"recall_{g}"), ".2f") for g, recall in enumerate(scores.recall)]


def operating_points_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Screening: each run's operating points (chosen on validation) on the test split, with intervals."""
    rows = []
    for name, run in runs.items():
        for point in run.metrics.screening.operating_points.values():
            rows.append({"run": name, "operating point": point["label"], "threshold": round(point["threshold"], 3),
                         "sensitivity": point_figure(point, "sensitivity", ".2f"),
                         "specificity": point_figure(point, "specificity", ".2f")})
    return pd.DataFrame(rows).set_index(["run", "operating point"]) if rows else pd.DataFrame()


def screening_curves(runs: dict[str, RunResult]) -> dict[str, Screening]:
    """Legend label (the run and its referable AUC with interval) -> the run's screening figures."""
    return {f"{run.label} (AUC {with_interval(run.metrics.referable_auc, run.metrics.interval('referable_auc'), '.2f')})":
            run.metrics.screening for run in runs.values() if run.metrics.screening.roc is not None}


def calibrations(runs: dict[str, RunResult]) -> dict[str, dict]:
    """Run label -> its referable score's calibration on the test split, for runs that fitted one."""
    return {run.label: run.metrics.screening.calibration for run in runs.values()
            if run.metrics.screening.calibration is not None}


def ece_text(entry: dict | None) -> str:
    """``0.054 [0.033, 0.088]``: an expected calibration error (``calibration.ece_with_interval``) as shown."""
    return with_interval(entry["ece"], entry.get("interval")) if entry else "not fitted"


def calibration_lines(runs: dict[str, RunResult]) -> str:
    """One Markdown line per run: the test split's ECE of the calibrated (and raw) referable score."""
    lines = []
    for label, calibration in calibrations(runs).items():
        line = f"- {label}: ECE {ece_text(calibration['calibrated'])} calibrated"
        if "raw" in calibration:
            line += f", {ece_text(calibration['raw'])} raw"
        lines.append(f"{line} ({calibration['raw_score']}).")
    return "\n".join(lines) or "No run has a calibrated referable score yet."


def predictions(run: RunResult) -> pd.DataFrame:
    return pd.read_csv(run.path / "predictions.csv")


def paired(run_a: RunResult, run_b: RunResult, n_resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """``a - b`` for every figure, with its paired bootstrap interval over the same test photos."""
    from retino_utils.evaluation.uncertainty import paired_difference

    a = predictions(run_a)
    b = predictions(run_b).set_index("name").loc[a["name"]].reset_index()
    if not (a["true_grade"].to_numpy() == b["true_grade"].to_numpy()).all():
        raise RetinoError(f"{run_a.name} and {run_b.name} were not scored on the same test photos: retrain both")
    return paired_difference(a["true_grade"], a["pred_grade"], b["pred_grade"], a["referable_score"],
                             b["referable_score"], names=a["name"].tolist(), n_resamples=n_resamples, seed=seed)


PAIRED_FIGURES = {"accuracy": ("accuracy", "+.1%"), "qwk": ("QWK", "+.3f"), "referable_auc": ("referable AUC", "+.3f"),
                  "recall_3": ("grade-3 recall", "+.2f")}


def paired_sentence(run: RunResult, baseline: RunResult, figures=("qwk", "accuracy", "referable_auc")) -> str:
    """``QWK +0.21 [+0.12, +0.30] (a real gain), accuracy ...``: ``run`` minus ``baseline`` on the same test
    photos, each figure with its paired interval and what the interval says (the notebooks' comparisons)."""
    diff = paired(run, baseline)
    return ", ".join(f"{PAIRED_FIGURES[key][0]} {signed_interval(diff[key], PAIRED_FIGURES[key][1])} "
                     f"({difference_verdict(diff[key])})" for key in figures)


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
    """Per grade: test photos, how often the model predicted it, recall with its interval, precision."""
    counts = run.counts
    return pd.DataFrame({
        "photos": counts.sum(1),
        "predicted": counts.sum(0),
        "recall [95% CI]": recall_column(run.metrics),
        "precision": np.round(run.metrics.precision, 2),
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
