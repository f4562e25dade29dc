"""External validation: how a finished run grades photos of another source (camera, population) than its own.

Every photo of an external set (every split: none of them was trained on) is graded as ``predict
--preprocess`` grades new photos: the run's own preparation and training-copy side, cut points and
eye fusion. It is scored with the run's screening thresholds and calibration, all chosen on its
internal validation split, so nothing is tuned on the external set; and it is set beside the run's
internal test figures with the drop between them and its unpaired patient-bootstrap interval (the
two sets share no photo).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from retino_utils import NUM_CLASSES
from retino_utils.atomic import write_json
from retino_utils.data import dataset_fingerprint, detect_layout
from retino_utils.data.images import decode_problem
from retino_utils.data.layouts import refuse
from retino_utils.errors import RetinoError
from retino_utils.evaluation.model_card import write_model_card
from retino_utils.evaluation.results import (
    EXTERNAL_RECORDS,
    PAIRED_FIGURES,
    RunResult,
    difference_verdict,
    ece_text,
    fmt,
    interval_rows,
    long_frame,
    point_figure,
    predictions,
    run_state,
    signed_interval,
    with_interval,
)
from retino_utils.evaluation.record import ExternalRecord, Scores
from retino_utils.evaluation.screening import SENSITIVITY_TARGET
from retino_utils.evaluation.uncertainty import N_RESAMPLES, unpaired_difference
from retino_utils.predict.predictor import EVERY_SPLIT, Predictor, read_inputs, score_against_labels

COMPARED = ("accuracy", "qwk", "referable_auc")  # the figures set side by side, internal and external


@dataclass
class ExternalResult:
    """One run graded on one external set."""

    run: RunResult
    set_name: str
    folder: Path
    table: pd.DataFrame  # per photo: name, true_grade, pred_grade, referable_score[, referable_probability], refer
    metrics: Scores  # as predict writes them: figures, intervals, screening (operating points, calibration)
    drop: dict  # figure -> {"difference": external - internal, "interval": [low, high]}


def external_sets(folders: Sequence[str | Path]) -> dict[str, Path]:
    """Name -> folder of each external set given (``report --external DIR``), checked before any work: each must
    be a labelled dataset in a layout the package reads; a name is the folder's, with its parent's where two clash."""
    found: dict[str, Path] = {}
    for given in folders:
        folder = Path(given).resolve()
        if not folder.is_dir():
            raise RetinoError(f"--external {given}: no such folder; give a labelled dataset (e.g. trainLabels.csv "
                              f"and its photos) of another camera or population")
        try:
            detect_layout(folder)
        except RetinoError as error:
            raise RetinoError(f"--external {given}: {error}") from None
        if folder in found.values():
            raise RetinoError(f"--external {given} is given twice: give each external set once")
        found[folder.name if folder.name not in found else f"{folder.parent.name}/{folder.name}"] = folder
    return found


def every_photo(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Names, paths and grades of every photo of a labelled set, all splits together; unreadable photos refused."""
    inputs = read_inputs(folder, EVERY_SPLIT)
    if inputs.labels is None:
        raise RetinoError(f"{folder} holds photos but no labels in a layout the package reads: an external set needs "
                          f"its grades (e.g. trainLabels.csv with image,level)")
    refuse([(str(path), reason) for path in inputs.paths if (reason := decode_problem(path))],
           f"an external set is graded whole: fix or remove the photo (python -m retino_utils.data validate {folder} "
           f"lists every problem)")
    return inputs.names, inputs.paths, inputs.labels


def grade_set(predictor: Predictor, folder: Path) -> pd.DataFrame:
    """Every photo of ``folder`` graded as ``predict --preprocess`` grades new photos, beside its true grade."""
    names, paths, labels = every_photo(folder)
    table = predictor(paths, prepare=predictor.preparation)
    table.insert(0, "name", names)
    table.insert(1, "true_grade", labels)
    return table


def validate(run: RunResult, set_name: str, folder: Path, device: str = "auto",
             n_resamples: int = N_RESAMPLES) -> ExternalResult:
    """``run`` graded on the external set in ``folder``, scored, and compared with its internal test split."""
    predictor = Predictor.from_run(run.path, device)
    table = grade_set(predictor, folder)
    metrics = score_against_labels(table, predictor)
    internal = predictions(run)
    seed = run.config.get("seed", 0)
    drop = unpaired_difference(
        (internal["true_grade"], internal["pred_grade"], internal["referable_score"], internal["name"].tolist()),
        (table["true_grade"], table["pred_grade"], table["referable_score"], table["name"].tolist()),
        n_resamples=n_resamples, seed=seed)
    return ExternalResult(run, set_name, folder, table, metrics, drop)


def validate_all(runs: Mapping[str, RunResult], sets: Mapping[str, str | Path], device: str = "auto",
                 n_resamples: int = N_RESAMPLES) -> list[ExternalResult]:
    """Every run on every external set, in that order."""
    return [validate(run, set_name, Path(folder), device, n_resamples)
            for set_name, folder in sets.items() for run in runs.values()]


# -- kept beside the run ---------------------------------------------------------------------------------
def record(result: ExternalResult) -> Path:
    """Keep ``result`` beside its run (``RUN/external/<set>.json``, replacing the set's earlier one) and write the
    run's model card again, which quotes it (``results.external_records`` reads it back)."""
    path = result.run.path / EXTERNAL_RECORDS / f"{result.set_name.replace('/', '__')}.json"
    write_json(path, ExternalRecord(set=result.set_name, folder=str(result.folder),
                                    fingerprint=dataset_fingerprint(result.folder), run_state=run_state(result.run.path),
                                    photos=len(result.table), metrics=result.metrics, change=result.drop).to_dict())
    write_model_card(result.run.path)
    return path


# -- what the notebook shows --------------------------------------------------------------------------------
def side_by_side(results: Sequence[ExternalResult], figures: Sequence[str] = COMPARED) -> pd.DataFrame:
    """Long form (run, source, figure, value, low, high): each run's internal test figures and each external set's."""
    rows, shown = [], set()
    for result in results:
        if result.run.name not in shown:  # a run's internal figures once, however many external sets
            shown.add(result.run.name)
            rows += interval_rows(result.run.metrics, figures, run=result.run.name,
                                  source=f"internal test ({result.run.metrics.n})")
        rows += interval_rows(result.metrics, figures, run=result.run.name,
                              source=f"{result.set_name} ({len(result.table)})")
    return long_frame(rows, ["run", "source"])


def comparison_table(results: Sequence[ExternalResult], figures: Sequence[str] = COMPARED) -> pd.DataFrame:
    """One row per run and external set: each figure internal, external, and the drop, with 95% intervals."""
    rows = []
    for result in results:
        internal, external = result.run.metrics, result.metrics
        row = {"run": result.run.name, "external set": result.set_name}
        for figure in figures:
            label, signed = PAIRED_FIGURES[figure]
            for where, metrics in (("internal", internal), ("external", external)):
                row[f"{label} {where}"] = with_interval(metrics.figure(figure), metrics.interval(figure),
                                                        signed.lstrip("+"))
            row[f"{label} change"] = signed_interval(result.drop[figure], signed)
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def screening_table(results: Sequence[ExternalResult], point: str = "target") -> pd.DataFrame:
    """The referral threshold chosen on internal validation (``point``) applied internally and externally:
    sensitivity and specificity with intervals (the target point aims at ``screening.SENSITIVITY_TARGET``)."""
    rows = []
    for result in results:
        row = {"run": result.run.name, "external set": result.set_name}
        for where, metrics in (("internal", result.run.metrics), ("external", result.metrics)):
            chosen = metrics.screening.point(point)
            for figure in ("sensitivity", "specificity"):
                row[f"{figure} {where}"] = point_figure(chosen, figure) if chosen else "no threshold"
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def calibration_table(results: Sequence[ExternalResult]) -> pd.DataFrame:
    """Expected calibration error of the probability calibrated on internal validation, internal and external."""
    rows = []
    for result in results:
        row = {"run": result.run.name, "external set": result.set_name}
        for where, metrics in (("internal", result.run.metrics), ("external", result.metrics)):
            row[f"ECE {where}"] = ece_text((metrics.screening.calibration or {}).get("calibrated"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def reliability_panels(results: Sequence[ExternalResult]) -> dict[str, dict[str, dict]]:
    """Run -> {internal test / external set -> calibration}, for runs that calibrated their referable score."""
    panels: dict[str, dict[str, dict]] = {}
    for result in results:
        internal, external = result.run.metrics.screening.calibration, result.metrics.screening.calibration
        if internal and external:
            panels.setdefault(result.run.name, {"internal test": internal})[result.set_name] = external
    return panels


def confusion_panels(results: Sequence[ExternalResult]) -> dict[str, np.ndarray]:
    """Panel title -> counts of (true grade, predicted grade) on the external set."""
    return {f"{result.run.name} on {result.set_name}": np.asarray(result.metrics.confusion_counts)
            for result in results}


def sets_note(sets: Mapping[str, Path], results: Sequence[ExternalResult]) -> str:
    """What was graded: each external set with its photos per grade; or why nothing was."""
    if not sets:
        return ("**No external set given.** Every figure of this report is internal; `python -m retino_utils.report "
                "--external DIR` grades a labelled set of another camera or population here.")
    if not results:
        return "**No main run has finished yet**: nothing to grade the external sets with."
    lines = []
    for name in sets:
        table = next(result.table for result in results if result.set_name == name)
        counts = np.bincount(table["true_grade"], minlength=NUM_CLASSES)
        lines.append(f"- **{name}** (`{sets[name]}`): {len(table)} photos, grades 0-4: "
                     f"{' / '.join(map(str, counts))}.")
    return "\n".join(lines)


def drop_lines(results: Sequence[ExternalResult], figures: Sequence[str] = ("referable_auc", "qwk")) -> str:
    """One Markdown line per run and set: each figure internal -> external, and what the change's interval says."""
    lines = []
    for result in results:
        parts = []
        for figure in figures:
            label, signed = PAIRED_FIGURES[figure]
            plain = signed.lstrip("+")
            parts.append(f"{label} {fmt(result.run.metrics.figure(figure), plain)} -> "
                         f"{fmt(result.metrics.figure(figure), plain)}"
                         f", {signed_interval(result.drop[figure], signed)} ({difference_verdict(result.drop[figure])})")
        lines.append(f"- **{result.run.name}** on {result.set_name}: {'; '.join(parts)}.")
    return "\n".join(lines)


def summary(results: Sequence[ExternalResult], figures: Sequence[str] = ("referable_auc", "qwk")) -> str:
    """How many runs each figure dropped for with an interval clear of zero, per external set: the notebook's headline."""
    lines = []
    for set_name in dict.fromkeys(result.set_name for result in results):
        on_set = [result for result in results if result.set_name == set_name]
        counts = []
        for figure in figures:
            lost = sum(difference_verdict(result.drop[figure]) == "a real loss" for result in on_set)
            counts.append(f"{lost} of {len(on_set)} runs lose {PAIRED_FIGURES[figure][0]}")
        lines.append(f"On **{set_name}**, with intervals clear of zero, {' and '.join(counts)}.")
    return " ".join(lines)


def screening_lines(results: Sequence[ExternalResult], point: str = "target") -> str:
    """One Markdown line per run and set: the sensitivity the internal threshold keeps externally."""
    lines = []
    for result in results:
        chosen = result.metrics.screening.point(point)
        if not chosen:
            lines.append(f"- **{result.run.name}**: no threshold was chosen on validation (one class only there).")
            continue
        low, high = chosen.get("sensitivity_interval") or (None, None)
        verdict = ("its interval not measurable" if low is None else
                   f"short of the {SENSITIVITY_TARGET:.0%} aimed at" if high < SENSITIVITY_TARGET else
                   f"at least the {SENSITIVITY_TARGET:.0%} aimed at" if low >= SENSITIVITY_TARGET else
                   f"its interval spans the {SENSITIVITY_TARGET:.0%} aimed at")
        lines.append(f"- **{result.run.name}** on {result.set_name}: sensitivity "
                     f"{point_figure(chosen, 'sensitivity')} ({verdict}), specificity {point_figure(chosen, 'specificity')}.")
    return "\n".join(lines)
