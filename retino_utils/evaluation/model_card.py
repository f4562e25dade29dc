"""A model card per run (the sections of Mitchell et al. 2019 that apply), generated from the run record.

Written as ``RUN/model_card.md`` when a run finishes, and again by ``python -m retino_utils.evaluation.model_card
RUN [RUN ...]``; never typed by hand, so it cannot drift from the run it describes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retino_utils import GRADE_NAMES, GRADES
from retino_utils.atomic import write_text
from retino_utils.errors import RetinoError, run_cli
from retino_utils.evaluation.record import RunRecord
from retino_utils.evaluation.results import (
    RunResult,
    ece_text,
    external_records,
    grade0_share,
    kept_epoch,
    load_run,
    point_figure,
    recall_column,
    signed_interval,
    with_interval,
)

RARELY_FOUND = 0.3  # a grade's test recall under this is named among the limitations
FIGURES = (("accuracy", "accuracy", ".1%"), ("QWK", "qwk", ".3f"), ("macro-F1", "macro_f1", ".3f"),
           ("referable AUC (grade 2 or worse)", "referable_auc", ".3f"))


def model_card(run: RunResult) -> str:
    """The card's Markdown: what the model is, what it is for and not for, what it learned from, how it did."""
    config, metrics = run.config, run.metrics
    return "\n\n".join([
        f"# Model card: {run.name} ({run.label})",
        _details(config, metrics, run),
        "## Intended use\n\nResearch and teaching: how ResNets grade diabetic retinopathy (0 No DR to 4 "
        "proliferative) from fundus photos, and what class imbalance does to them.\n\n**Out of scope:** any "
        "decision about a patient. This is not a medical device and has not been validated as one; photos of "
        "cameras, populations or preparations it was not evaluated on (see the figures below: they hold for "
        "the source it was tested on); ungradable photos.",
        _training_data(config, metrics),
        _evaluation(metrics),
        _operating_points(metrics),
        _calibration(metrics),
        _external(run),
        _limitations(run),
    ]) + "\n"


def _details(config: dict, metrics: RunRecord, run: RunResult) -> str:
    head = "a regression head cut into grades" if config.get("loss") in ("mse", "smooth_l1") else "5-way softmax"
    init = "ImageNet weights" if config.get("weights") == "imagenet" else config.get("weights") or "random init"
    sizes = f", progressive sizes {config['sizes']}" if config.get("sizes") else ""
    recipe = f"recipe `{config['recipe']}`" if config.get("recipe") else "the reports' recipe"
    return "\n".join([
        "## Model details\n",
        f"- {run.label}: `{config.get('arch')}` ({config.get('impl', 'torchvision')} implementation), {head}, "
        f"from {init}",
        f"- trained {len(run.history)} epochs at {config.get('image_size')} px{sizes}, batch "
        f"{config.get('batch_size')}, {config.get('optimizer')} lr {config.get('lr')}, loss {config.get('loss')}, "
        f"sampler {config.get('sampler')} ({recipe}), arithmetic {metrics.arithmetic or 'fp32'}",
        f"- kept epoch {kept_epoch(run)}",
        f"- every setting: `{run.path / 'config.yaml'}`",
    ])


def _training_data(config: dict, metrics: RunRecord) -> str:
    from retino_utils.data.preprocess import preparation_of

    prepared = preparation_of(config.get("data", ""))
    rows = ["| grade | train | validation | test |", "|---|---:|---:|---:|"]
    for grade in GRADES:
        rows.append(f"| {grade} {GRADE_NAMES[grade]} | "
                    + " | ".join(str(counts[grade]) if counts else "0" for counts in (
                        metrics.train_counts, metrics.val_counts, metrics.eval_counts)) + " |")
    return "\n".join([
        "## Training data\n",
        f"`{config.get('data')}` ({'prepared as ' + repr(prepared) + ' by `data preprocess`' if prepared else 'photos as they are'}; "
        f"layout {config.get('layout')}, data fingerprint {metrics.data_fingerprint or 'not recorded'}). "
        f"The validation split ({_validation_share(config)}) chose the checkpoint, the "
        f"cut points and the screening threshold; the test split was scored once.\n",
        *rows,
    ])


def _validation_share(config: dict) -> str:
    if config.get("folds"):
        return f"fold {config.get('fold')} of {config['folds']} over the training patients"
    return f"{config.get('val_fraction')} of the training patients"


def _evaluation(metrics: RunRecord) -> str:
    lines = ["## Evaluation: the test split (internal: the source the model was tuned on)\n",
             f"{metrics.n} photos; 95% bootstrap intervals over patients.\n",
             "| figure | value |", "|---|---:|"]
    lines += [f"| {label} | {with_interval(metrics.figure(key), metrics.interval(key), spec)} |"
              for label, key, spec in FIGURES]
    lines += ["", "| grade | recall |", "|---|---:|"]
    lines += [f"| {grade} {GRADE_NAMES[grade]} | {recall} |" for grade, recall in zip(GRADES, recall_column(metrics))]
    return "\n".join(lines)


def _operating_points(metrics: RunRecord) -> str:
    points = metrics.screening.operating_points
    if not points:
        return "## Operating points\n\nNone recorded (the run has no validation split or no referable score)."
    lines = ["## Operating points (referable DR: grade 2 or worse)\n",
             "Thresholds chosen on the validation split, applied once to the test split.\n",
             "| point | threshold | sensitivity | specificity |", "|---|---:|---:|---:|"]
    lines += [f"| {point['label']} | {point['threshold']:.3f} | "
              f"{point_figure(point, 'sensitivity')} | {point_figure(point, 'specificity')} |"
              for point in points.values()]
    return "\n".join(lines)


def _calibration(metrics: RunRecord) -> str:
    calibration = metrics.screening.calibration
    if not calibration:
        return "## Calibration\n\nNone fitted (a run trained before calibration, or without a validation split)."
    raw = calibration.get("raw")
    return ("## Calibration\n\n"
            f"The referable score ({calibration['raw_score']}) mapped to a probability by isotonic regression fitted "
            f"on the validation split; on the test split its expected calibration error is "
            f"{ece_text(calibration['calibrated'])}" + (f" (the raw score's {ece_text(raw)})." if raw else "."))


def _external(run: RunResult) -> str:
    kept = external_records(run.path)
    current = [entry.record for entry in kept if entry.current]
    lines = ["## External validation (other cameras and populations, never trained on)\n"]
    if not current:
        lines.append("None recorded for this run: the figures above are internal only. The report's external "
                     "notebook (`report --external DIR`) grades every run on other sources and records the result "
                     "here.")
    else:
        lines += ["Every photo of each set, prepared as `predict --preprocess` prepares camera photos; thresholds "
                  "and calibration are the ones chosen on internal validation. Change: external minus internal "
                  "test, with an unpaired interval.\n",
                  "| set | photos | accuracy | QWK | referable AUC | change in referable AUC | sensitivity / "
                  "specificity at the validation threshold | ECE |",
                  "|---|---:|---:|---:|---:|---:|---|---:|"]
        for entry in current:
            m = entry.metrics
            point, calibration = m.screening.point("target"), m.screening.calibration
            lines.append(
                f"| {entry.set} | {entry.photos} | {with_interval(m.accuracy, m.interval('accuracy'), '.1%')} | "
                f"{with_interval(m.qwk, m.interval('qwk'))} | "
                f"{with_interval(m.referable_auc, m.interval('referable_auc'))} | "
                f"{signed_interval(entry.change['referable_auc'])} | "
                + (f"{point['sensitivity']:.1%} / {point['specificity']:.1%}" if point else "none") + " | "
                + (ece_text(calibration["calibrated"]) if calibration else "none") + " |")
    stale = [entry.record.set for entry in kept if not entry.current]
    if stale:
        lines.append(f"\nNot shown: the results on {', '.join(stale)}, which graded an earlier state of this run or a "
                     f"set that has changed since; the external notebook grades them again.")
    return "\n".join(lines)


def _limitations(run: RunResult) -> str:
    metrics = run.metrics
    lines = ["## Known limitations\n"]
    rare = [f"{grade} {GRADE_NAMES[grade]} ({metrics.recall[grade]:.2f})" for grade in GRADES
            if metrics.recall[grade] < RARELY_FOUND]
    if rare:
        lines.append(f"- Grades it finds in fewer than {RARELY_FOUND:.0%} of the test photos that have them: "
                     f"{', '.join(rare)}.")
    true_zero = run.counts[0].sum() / run.counts.sum()
    lines.append(f"- It calls {grade0_share(run):.0%} of the test photos grade 0, which make up {true_zero:.0%} of them.")
    if metrics.select_on == "test":
        lines.append("- Its checkpoint was chosen on the TEST split: the test figures are optimistic.")
    lines.append("- The test figures come from the source it was tuned on; photos of other cameras can grade far worse "
                 "(see the external validation above, and the README's 'Quality on real photos').")
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> Path:
    """``RUN/model_card.md`` from the finished run's record."""
    run = load_run(Path(run_dir).resolve())
    if run is None:
        raise RetinoError(f"{run_dir} holds no finished run (no metrics.json and history.csv): train it first")
    path = Path(run_dir) / "model_card.md"
    write_text(path, model_card(run))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retino_utils.evaluation.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    for run_dir in parser.parse_args(argv).runs:
        print(write_model_card(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
