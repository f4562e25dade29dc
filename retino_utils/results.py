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
        return np.asarray(self.metrics["confusion"], dtype=float)


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


# -- tables and sentences the notebooks show (numbers always computed, never typed in) -----------------
ARCH_LABELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}


def _fmt(value, spec=".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def metrics_table(run: RunResult) -> pd.DataFrame:
    """Per grade: photos in the evaluated split, how often the model predicted it, recall, precision."""
    counts = np.asarray(run.metrics["confusion_counts"])
    return pd.DataFrame({
        "photos": counts.sum(1),
        "predicted": counts.sum(0),
        "recall": np.round(run.metrics["recall"], 3),
        "precision": np.round(run.metrics["precision"], 3),
    }, index=[f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)])


def run_summary(run: RunResult) -> str:
    m = run.metrics
    return (f"Best epoch {m['best_epoch']} of {len(run.history)}: test accuracy **{m['accuracy']:.1%}** "
            f"(always answering grade 0 scores {majority_baseline(run):.1%}), QWK **{m['qwk']:.3f}**, "
            f"macro-F1 **{m['macro_f1']:.3f}**. Referable DR (grade 2 or worse): sensitivity "
            f"{_fmt(m['referable_sensitivity'], '.1%')}, specificity {_fmt(m['referable_specificity'], '.1%')}, "
            f"ROC AUC {_fmt(m['referable_auc'])}.")


def missing_note(missing: list[str]) -> str:
    if not missing:
        return "All runs this notebook reads are present."
    names = ", ".join(f"`{name}`" for name in missing)
    return (f"**Missing runs: {names}.** They are left out below. Pretrained runs are missing when the "
            f"ImageNet weights file could not be found or downloaded; the report's index page says which file "
            f"goes where.")


def confusion_panels(runs: dict[str, RunResult], names: list[str]) -> dict[str, np.ndarray | None]:
    """Panel title -> normalized confusion matrix, ``None`` for a missing run (an empty labelled panel)."""
    return {(f"{name}: {runs[name].label}" if name in runs else name): (runs[name].confusion if name in runs else None)
            for name in names}


def prediction_shares(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Share of test photos each run assigns to each grade, beside the true shares."""
    rows = {}
    for name, run in runs.items():
        counts = np.asarray(run.metrics["confusion_counts"])
        rows.setdefault("true grades", counts.sum(1) / counts.sum())
        rows[name] = counts.sum(0) / counts.sum()
    columns = [f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)]
    return (100 * pd.DataFrame.from_dict(rows, orient="index", columns=columns)).round(1).astype(str) + "%"


def _grade0_share(run: RunResult) -> float:
    counts = np.asarray(run.metrics["confusion_counts"])
    return float(counts[:, 0].sum() / counts.sum())


def collapse_note(runs: dict[str, RunResult]) -> str:
    """What the scratch runs answer, measured: how close they are to always answering grade 0."""
    if not runs:
        return "No run trained from scratch is available."
    lines = []
    for run in runs.values():
        share, baseline, m = _grade0_share(run), majority_baseline(run), run.metrics
        verdict = ("it has collapsed onto grade 0" if share >= 0.95 else
                   "it leans heavily on grade 0" if share >= 0.8 else "it does not collapse onto grade 0")
        lines.append(f"- **{run.label}** answers grade 0 for {share:.1%} of the test photos (their true share is "
                     f"{np.asarray(m['confusion_counts'])[0].sum() / m['n']:.1%}): {verdict}. Its accuracy "
                     f"{m['accuracy']:.1%} is {100 * (m['accuracy'] - baseline):+.1f} points from always answering "
                     f"grade 0 ({baseline:.1%}), and its QWK is {m['qwk']:.3f} (0 = chance agreement).")
    return ("Cross entropy is averaged over photos, so with three photos in four at grade 0 the cheapest way "
            "to lower it early in training is to predict grade 0 with high confidence. From scratch, on a "
            "small set and with few epochs, the network may never learn the small lesions that "
            "separate the grades:\n\n" + "\n".join(lines))


def pretraining_note(runs: dict[str, RunResult]) -> str:
    lines = []
    for arch, label in ARCH_LABELS.items():
        scratch, imagenet = runs.get(f"{arch}_scratch"), runs.get(f"{arch}_imagenet")
        if scratch and imagenet:
            s, p = scratch.metrics, imagenet.metrics
            lines.append(f"- {label}: ImageNet initialisation reaches {p['accuracy']:.1%} accuracy and QWK "
                         f"{p['qwk']:.3f}, against {s['accuracy']:.1%} and {s['qwk']:.3f} from scratch "
                         f"({100 * (p['accuracy'] - s['accuracy']):+.1f} points of accuracy).")
        elif scratch:
            lines.append(f"- {label}: only the scratch run is available ({scratch.metrics['accuracy']:.1%} accuracy, "
                         f"QWK {scratch.metrics['qwk']:.3f}); the pretrained run is missing.")
    return "\n".join(lines) if lines else "No main run is available yet."


def confusion_note(runs: dict[str, RunResult]) -> str:
    """Where each main run's mistakes go: grade-0 recall, recall on grades 1-4, severe read as moderate."""
    lines = []
    for run in runs.values():
        recall, confusion = run.metrics["recall"], run.confusion
        lines.append(f"- **{run.label}**: recall {recall[0]:.0%} on grade 0 but {np.mean(recall[1:]):.0%} on average "
                     f"over grades 1-4; {confusion[1, 0]:.0%} of mild cases are called no DR and {confusion[3, 2]:.0%} "
                     f"of severe cases moderate.")
    return "\n".join(lines) if lines else "No run is available yet."


def imbalance_note(runs: dict[str, RunResult], baseline: str) -> str:
    """Accuracy against QWK for the imbalance study, in numbers relative to the baseline run."""
    if baseline not in runs:
        return f"The baseline run `{baseline}` is missing, so the remedies cannot be compared with it."
    base = runs[baseline].metrics
    lines = []
    for name, run in runs.items():
        if name == baseline:
            continue
        m = run.metrics
        lines.append(f"- `{name}`: accuracy {m['accuracy']:.1%} ({100 * (m['accuracy'] - base['accuracy']):+.1f} points), "
                     f"QWK {m['qwk']:.3f} ({m['qwk'] - base['qwk']:+.3f}), mean recall on grades 1-4 "
                     f"{np.mean(m['recall'][1:]):.0%} (baseline {np.mean(base['recall'][1:]):.0%}).")
    best_acc = max(runs, key=lambda n: runs[n].metrics["accuracy"])
    best_qwk = max(runs, key=lambda n: runs[n].metrics["qwk"])
    verdict = ("The same run leads on both." if best_acc == best_qwk else
               "They are different runs: accuracy rewards answering the majority grade, while QWK rewards "
               "getting the order of the grades right and punishes a severe case called healthy more than a "
               "near miss.")
    return (f"Against `{baseline}` (plain cross entropy: accuracy {base['accuracy']:.1%}, QWK {base['qwk']:.3f}):\n\n"
            + "\n".join(lines)
            + f"\n\nThe highest accuracy belongs to `{best_acc}` and the highest QWK to `{best_qwk}`. {verdict}")
