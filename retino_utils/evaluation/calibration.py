"""Calibration of the referable score: is a predicted 30% referable right about 30% of the time?

The softmax probability of grade 2 or worse is a probability in name only (networks trained to
high accuracy are overconfident), and the regression head's score is no probability at all. An
isotonic regression fitted on the validation split maps either to a calibrated probability; the
test split then measures it: a reliability table (equal-width bins of predicted probability, each
with its count, mean prediction and observed referable rate) and the expected calibration error
(the count-weighted mean gap between the two), with a 95% interval over resampled patients.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from retino_utils.evaluation.metrics import REFERABLE_GRADE, json_float
from retino_utils.evaluation.uncertainty import N_RESAMPLES, bootstrap, patient_groups

BINS = 10
RAW_SCORES = {"classification": "softmax probability of grade 2 or worse",
              "regression": "regression output, not a probability"}


def fit_calibrator(scores, referable) -> dict:
    """Isotonic map from score to P(referable), fitted on validation; kept as plain lists for metrics.json."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
    model.fit(np.asarray(scores, dtype=np.float64), np.asarray(referable, dtype=np.float64))
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}


def calibrated(calibrator: dict, scores) -> np.ndarray:
    """The calibrated probability of each score: the isotonic step function, clipped beyond its ends."""
    return np.interp(np.asarray(scores, dtype=np.float64), calibrator["x"], calibrator["y"])


def _bins(prob, referable, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: count, mean prediction, observed rate (NaN where empty); numpy only (per resample)."""
    prob, referable = np.asarray(prob, dtype=np.float64), np.asarray(referable, dtype=np.float64)
    which = np.clip((prob * bins).astype(int), 0, bins - 1)  # a prediction of exactly 1 falls in the last bin
    count = np.bincount(which, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (count, np.bincount(which, prob, minlength=bins) / count,
                np.bincount(which, referable, minlength=bins) / count)


def reliability(prob, referable, bins: int = BINS) -> dict[str, list]:
    """The reliability table, JSON-ready: bin edges, and per bin count, mean prediction, observed rate."""
    count, predicted, observed = _bins(prob, referable, bins)
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": count.tolist(),
            "predicted": [json_float(v) for v in predicted], "observed": [json_float(v) for v in observed]}


def expected_calibration_error(prob, referable, bins: int = BINS) -> float:
    """Sum over bins of (share of photos in the bin) * |observed rate - mean prediction|."""
    count, predicted, observed = _bins(prob, referable, bins)
    filled = count > 0
    return float(np.dot(count[filled], np.abs(observed - predicted)[filled]) / count.sum())


def ece_with_interval(prob, y_true, names: Sequence[str] | None = None, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> dict:
    """The ECE of ``prob`` against referable DR on this split, with its patient-bootstrap interval."""
    prob, referable = np.asarray(prob, dtype=np.float64), np.asarray(y_true) >= REFERABLE_GRADE
    entry = {"ece": json_float(expected_calibration_error(prob, referable))}
    if n_resamples:
        groups = patient_groups(names) if names is not None else np.arange(len(prob))
        low, high = bootstrap(lambda idx: np.array([expected_calibration_error(prob[idx], referable[idx])]),
                              groups, n_resamples, seed)
        entry["interval"] = [json_float(low[0]), json_float(high[0])]
    return entry


def calibration_report(calibrator: dict, regression: bool, y_true, score, names: Sequence[str] | None = None,
                       n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """A split measured against a calibrator fitted elsewhere: ECE of the raw score (when a probability)
    and of the calibrated probability, and the calibrated probability's reliability table."""
    prob = calibrated(calibrator, score)
    report = {"calibrator": calibrator, "raw_score": RAW_SCORES["regression" if regression else "classification"],
              "calibrated": ece_with_interval(prob, y_true, names, n_resamples, seed),
              "reliability": reliability(prob, np.asarray(y_true) >= REFERABLE_GRADE)}
    if not regression:
        report["raw"] = ece_with_interval(score, y_true, names, n_resamples, seed)
    return report
