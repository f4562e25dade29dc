"""Which levers help ResNet-18 learn from real photos on a CPU: each one measured on the validation split.

Trains ResNet-18 from scratch on the training photos of ``../shared/data/eyepacs-dev`` (lab split) once
per variant: a base (the first ``best-cpu``: regression head, SGD one-cycle 0.003, any-angle rotations
and flips, every grade drawn equally often, 30 epochs at 128 px, last epoch kept) and the base with
one lever changed (``graham``: the same training on a copy of the photos with Ben Graham's colour
normalisation, written once under ``--out``). Each run is scored on its validation split only (10% of
the training patients; the test split is not read here): QWK with cut points cross-fitted over two
halves of the validation patients (tuned on one half, applied to the other, so no photo grades
itself), referable AUC, 95% patient-bootstrap intervals and the paired difference to the base. The
levers that need no training (flip TTA, fusing the two eyes) are measured on every trained variant's
checkpoint, against that variant.

    python benchmarks/cpu_levers.py                  # about 80 minutes on a 2-core CPU; runs are kept
    python benchmarks/cpu_levers.py --only base ema  # some variants

Runs are kept under ``--out``: an interrupted study resumes, a finished one reprints its table.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from retino_utils.errors import RetinoError, run_cli
from retino_utils.evaluation.results import load_run, signed_interval, with_interval
from retino_utils.evaluation.uncertainty import FIGURES, fold_figures, intervals, paired_difference, patient_groups
from retino_utils.models.losses.ordinal import frequency_thresholds, scores_to_grades, tune_thresholds
from retino_utils.predict.predictor import Predictor
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig
from retino_utils.train.loaders import read_splits

from _common import parse_study, prepared_copy, real_data_parser, run_on_real_data

BASE = dict(arch="resnet18", epochs=30, image_size=128, batch_size=32, loss="mse", optimizer="sgd", lr=0.003,
            schedule="onecycle", rotation=180.0, sampler="weighted", best_metric="last")
# One lever changed per variant (name: (label, settings over BASE)).
VARIANTS = {
    "base": ("base: the first best-cpu (MSE, SGD one-cycle, rotations, every grade drawn equally)", {}),
    "natural": ("sampling: natural frequencies", {"sampler": "none"}),
    "weighted_to_natural": ("sampling: balanced -> natural over the epochs", {"sampler": "weighted_to_natural"}),
    "adamw": ("optimizer: AdamW one-cycle 1e-3", {"optimizer": "adamw", "lr": 0.001}),
    "ema": ("moving average of the weights (0.99)", {"ema": 0.99}),
    "augment": ("zoom +-10%, shift +-5%, brightness/contrast +-20%", {"scale": 0.1, "shift": 0.05, "color": 0.2}),
    "progressive": ("progressive resizing 128 -> 192 -> 256 px", {"image_size": 256, "sizes": "128:18,192:6"}),
    "graham": ("photos: Ben Graham's colour normalisation (preprocess --graham)", {}),
}
GRAHAM_VARIANTS = {"graham"}  # trained on a normalised copy of the photos (same names, labels and splits)
FUSION_WEIGHT = 0.25
# Levers applied when grading (suffix, label, options of ValidationGrader.scores).
EVALUATION_LEVERS = (
    ("tta", "+ flip TTA", {"tta": True}),
    ("fuse", f"+ the two eyes fused ({FUSION_WEIGHT:g})", {"fuse": FUSION_WEIGHT}),
    ("frequencies", "cut at the training grade frequencies", {"frequencies": True}),
    ("all", "+ TTA + eyes fused, cut at the frequencies", {"tta": True, "fuse": FUSION_WEIGHT, "frequencies": True}),
)


def variant_config(name: str, args) -> TrainConfig:
    settings = {**BASE, **VARIANTS[name][1]}
    if args.smoke:
        settings.update(epochs=2, image_size=32, batch_size=8, sizes="24:1" if settings.get("sizes") else "")
    photos = prepared_copy(args, "graham") if name in GRAHAM_VARIANTS else args.data
    return TrainConfig(data=str(photos), out=str(args.out / name), seed=args.seed, progress=args.progress,
                       resume=True, device=args.device, **settings)


def cross_fitted_grades(scores: np.ndarray, labels: np.ndarray, names) -> np.ndarray:
    """Grades from cut points tuned on the other half of the patients (two folds, by patient)."""
    groups = patient_groups(names)
    fold = np.random.default_rng(0).permutation(groups.max() + 1)[groups] % 2
    grades = np.empty_like(labels)
    for k in (0, 1):
        cut_points = tune_thresholds(scores[fold != k], labels[fold != k])
        grades[fold == k] = scores_to_grades(scores[fold == k], cut_points)
    return grades


def frequency_grades(scores: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """Grades cut at the training split's grade frequencies (no labels of the graded photos used)."""
    return scores_to_grades(scores, frequency_thresholds(scores, train_labels))


class ValidationGrader:
    """A finished variant's kept checkpoint and its run's splits, read once, to grade the validation split
    with or without the grading levers."""

    def __init__(self, config: TrainConfig):
        self.train, self.val, _ = read_splits(config)
        self.predictor = Predictor.from_run(Path(config.out), config.device)

    def scores(self, tta: bool = False, fuse: float | None = None, frequencies: bool = False) -> dict:
        """Regression scores with cross-fitted grades (or grades cut at the training grade frequencies)."""
        predictor = self.predictor if fuse is None else dataclasses.replace(self.predictor, fuse_eyes=fuse)
        scores = predictor(list(self.val.paths), tta=tta)["score"].to_numpy()
        labels, names = self.val.labels, list(self.val.names)
        grades = (frequency_grades(scores, self.train.labels) if frequencies
                  else cross_fitted_grades(scores, labels, names))
        return {"scores": scores, "labels": labels, "names": names, "grades": grades}


def summarise(label: str, measured: dict, base: dict | None, n_resamples: int) -> dict:
    """Figures, intervals and the paired difference to ``base``; rows with a ``folds`` entry (cross-validation)
    are scored per fold and averaged (``fold_figures``)."""
    y, grades, scores, names = measured["labels"], measured["grades"], measured["scores"], measured["names"]
    folds = measured.get("folds")
    point = dict(zip(FIGURES, fold_figures(y, grades, scores, folds)))
    spans = intervals(y, grades, scores, names, n_resamples=n_resamples, folds=folds)
    row = {"label": label, **{k: float(point[k]) for k in ("accuracy", "qwk", "macro_f1", "referable_auc")},
           "qwk_interval": spans["qwk"], "auc_interval": spans["referable_auc"]}
    if base is not None:
        if list(base["names"]) != list(names) or not np.array_equal(base.get("folds", []), measured.get("folds", [])):
            raise RetinoError(f"{label}: its validation photos differ from the base's; no paired difference")
        diff = paired_difference(y, grades, base["grades"], scores, base["scores"], names, n_resamples=n_resamples,
                                 folds=folds)
        row["qwk_difference"] = diff["qwk"]
        row["auc_difference"] = diff["referable_auc"]
    return row


def run(args) -> dict:
    start = time.perf_counter()
    names = args.only or list(VARIANTS)
    if "base" not in names:
        names = ["base", *names]
    measured, rows, graders = {}, {}, {}
    for name in names:
        config = variant_config(name, args)
        print(f"\n== {name}: {VARIANTS[name][0]} -> {config.out}", flush=True)
        fit(config)
        graders[name] = ValidationGrader(config)
        measured[name] = graders[name].scores()
        history = load_run(config.out).history
        rows[name] = {**summarise(VARIANTS[name][0], measured[name], None if name == "base" else measured["base"],
                                  args.resamples),
                      "training_minutes": float(history["seconds"].sum() / 60), "compared_with": "base"}
    # The levers that need no training, on every trained variant, each against that variant as it is.
    for trained in names:
        for suffix, label, options in EVALUATION_LEVERS:
            name = f"{trained}+{suffix}"
            measured[name] = graders[trained].scores(**options)
            rows[name] = {**summarise(f"{trained} {label}", measured[name], measured[trained], args.resamples),
                          "training_minutes": 0.0, "compared_with": trained}
    return {"data": str(args.data), "validation_photos": len(graders["base"].val), "base": BASE, "variants": rows,
            "minutes": (time.perf_counter() - start) / 60}


def print_table(results: dict) -> None:
    print(f"\nvalidation split of {results['data']} ({results['validation_photos']} photos; the test split is "
          f"not read), {results['minutes']:.1f} minutes in all")
    print("(vs: the paired difference to the base for a trained variant, to the variant itself for a grading lever)")
    print(f"{'':<64}{'train min':>10}  {'QWK [95% CI]':>22}  {'vs':>24}  {'refAUC [95% CI]':>22}  {'vs':>24}")
    for row in results["variants"].values():
        versus = [signed_interval(row[key]) if key in row else "" for key in ("qwk_difference", "auc_difference")]
        print(f"{row['label']:<64}{row['training_minutes']:>10.1f}  {with_interval(row['qwk'], row['qwk_interval']):>22}"
              f"  {versus[0]:>24}  {with_interval(row['referable_auc'], row['auc_interval']):>22}  {versus[1]:>24}")


def main(argv=None) -> int:
    parser = real_data_parser(__doc__.split("\n\n")[0], "cpu_levers",
                              "tiny synthetic data, 32 px, 2 epochs per variant (for CI)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants (the base always runs)")
    return run_on_real_data(parse_study(parser, argv), run, print_table)


if __name__ == "__main__":
    run_cli(main)
