"""Grading metrics as JSON-ready dicts: thin wrappers over sklearn, never re-implemented here."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from retino_utils import NUM_CLASSES
from retino_utils.errors import RetinoError

REFERABLE_GRADE = 2  # moderate DR or worse is referred to an ophthalmologist


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], referable_score: Sequence[float] | None = None,
                    num_classes: int = NUM_CLASSES) -> dict:
    """Accuracy, QWK, macro F1, per-grade recall/precision, confusion matrices and referable-DR figures.

    All per-grade figures use every grade ``0..num_classes-1``, present or not, so a model that
    never predicts the rare grades is penalised the same way on every split. QWK is 0.0 where
    sklearn leaves it undefined (a single grade in truth and predictions): a constant predictor
    carries no information beyond chance. Referable sensitivity/specificity are None when the split
    has no referable / non-referable cases; the AUC is None without scores or with one class only.
    """
    from sklearn import metrics as skm  # imported here: a second of start-up the training CLI's early errors skip
    from sklearn.exceptions import UndefinedMetricWarning

    y_true = _as_grades(y_true, num_classes, "true grades")
    y_pred = _as_grades(y_pred, num_classes, "predicted grades")
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise RetinoError(f"need as many predictions as true grades (non-empty), got {y_pred.size} and {y_true.size}")
    labels = list(range(num_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        qwk = skm.cohen_kappa_score(y_true, y_pred, labels=labels, weights="quadratic", replace_undefined_by=0.0)
    per_class = dict(labels=labels, average=None, zero_division=0)
    true_referable, pred_referable = y_true >= REFERABLE_GRADE, y_pred >= REFERABLE_GRADE
    specificity, sensitivity = skm.recall_score(true_referable, pred_referable, labels=[False, True],
                                                average=None, zero_division=np.nan)
    return {
        "n": int(y_true.size),
        "accuracy": json_float(skm.accuracy_score(y_true, y_pred)),
        "qwk": json_float(qwk),
        "macro_f1": json_float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "recall": _json_list(skm.recall_score(y_true, y_pred, **per_class)),
        "precision": _json_list(skm.precision_score(y_true, y_pred, **per_class)),
        "confusion": _json_list(skm.confusion_matrix(y_true, y_pred, labels=labels, normalize="true")),
        "confusion_counts": skm.confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
        "referable_sensitivity": json_float(sensitivity),
        "referable_specificity": json_float(specificity),
        "referable_auc": _referable_auc(true_referable, referable_score),
    }


def _as_grades(values, num_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= num_classes):
        raise RetinoError(f"{what} must be integers 0..{num_classes - 1}, got values {np.unique(array)[:10].tolist()}")
    return array.astype(np.int64)


def _referable_auc(true_referable: np.ndarray, referable_score) -> float | None:
    if referable_score is None:
        return None
    scores = np.asarray(referable_score, dtype=np.float64).reshape(-1)
    if scores.shape != true_referable.shape:
        raise RetinoError(f"need one referable score per sample, got {scores.size} for {true_referable.size}")
    if np.unique(true_referable).size < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return json_float(roc_auc_score(true_referable, scores))


def json_float(value) -> float | None:
    """A float for JSON: None where the figure is undefined (NaN, or infinite)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _json_list(array: np.ndarray) -> list:
    """Nested Python floats, NaN as None."""
    return [_json_list(item) if np.ndim(item) else json_float(item) for item in np.asarray(array)]
