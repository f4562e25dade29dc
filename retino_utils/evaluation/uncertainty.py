"""Bootstrap intervals: how far each figure could move on another sample of patients.

scipy's ``stats.bootstrap`` draws the resamples (seeded). What it resamples is patients where the
photo names carry one (``<patient>_left/right``: both eyes stay together, as their grades are
correlated) and photos otherwise; each resample's figures are computed from its confusion matrix.
Percentile intervals are taken over the resamples where a figure is defined (a resample without
grade-3 photos has no grade-3 recall). ``paired_difference`` resamples the same patients for two
runs scored on the same photos, so the interval is that of the difference itself;
``unpaired_difference`` resamples two different sets of photos each on its own.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

from retino_utils import NUM_CLASSES
from retino_utils.data.layouts import patient_of
from retino_utils.evaluation.metrics import REFERABLE_GRADE, json_float

N_RESAMPLES = 2000
CONFIDENCE = 0.95
# The figures every interval table carries, in this order.
FIGURES = ("accuracy", "qwk", "macro_f1", *(f"recall_{g}" for g in range(NUM_CLASSES)), "referable_auc",
           "referable_sensitivity", "referable_specificity")


def patient_groups(names: Sequence[str]) -> np.ndarray:
    """One integer per photo naming its patient (``10009_left`` and ``10009_right`` share one)."""
    _, groups = np.unique([patient_of(str(name)) for name in names], return_inverse=True)
    return groups


def figures(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """The ``FIGURES`` of one sample as float64, NaN where undefined; numpy only (it runs per resample)."""
    k = NUM_CLASSES
    counts = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(np.float64)
    n = counts.sum()
    true_totals, pred_totals = counts.sum(1), counts.sum(0)
    diagonal = np.diag(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = diagonal / true_totals
        f1 = np.where(true_totals + pred_totals > 0, 2 * diagonal / (true_totals + pred_totals), 0.0)
        weights = (np.subtract.outer(np.arange(k), np.arange(k)) / (k - 1)) ** 2
        expected = np.outer(true_totals, pred_totals) / n
        disagreement = (weights * expected).sum()
        qwk = 1 - (weights * counts).sum() / disagreement if disagreement > 0 else 0.0
    return np.array([diagonal.sum() / n, qwk, f1.mean(), *recall, auc(y_true >= REFERABLE_GRADE, score),
                     *sensitivity_specificity(y_true, y_pred >= REFERABLE_GRADE)])


def fold_figures(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray | None, folds: np.ndarray | None
                 ) -> np.ndarray:
    """``figures`` of each fold's rows, averaged over the folds (cross-validation: each fold's model has
    its own scale and cut points, so its rows are scored among themselves, never pooled with another's)."""
    if folds is None:
        return figures(y_true, y_pred, score)
    masks = [folds == f for f in np.unique(folds)]  # once per fold: this runs in every bootstrap resample
    per_fold = [figures(y_true[m], y_pred[m], None if score is None else score[m]) for m in masks]
    with warnings.catch_warnings():  # a figure undefined in every fold stays NaN
        warnings.simplefilter("ignore")
        return np.nanmean(per_fold, axis=0)


def sensitivity_specificity(y_true: np.ndarray, refer: np.ndarray) -> np.ndarray:
    """Of a referral decision per photo, against referable DR (grade 2 or worse); NaN without such photos."""
    positive = y_true >= REFERABLE_GRADE
    return np.array([refer[positive].mean() if positive.any() else np.nan,
                     (~refer[~positive]).mean() if (~positive).any() else np.nan])


def auc(positive: np.ndarray, score: np.ndarray | None) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half); NaN with one class or no scores."""
    if score is None or positive.all() or not positive.any():
        return np.nan
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def resampled(statistic: Callable[[np.ndarray], np.ndarray], groups: np.ndarray, n_resamples: int = N_RESAMPLES,
              seed: int = 0) -> np.ndarray:
    """``statistic(photo indices)`` over resamples of whole groups: an array (figures, resamples).

    Each resample draws the groups (patients) with replacement, each bringing all its photos.
    """
    from scipy.stats import bootstrap as scipy_bootstrap

    members = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]

    def over_groups(chosen: np.ndarray) -> np.ndarray:
        return statistic(np.concatenate([members[g] for g in chosen.astype(int)]))

    with warnings.catch_warnings():  # undefined figures (NaN) are handled by percentiles(), not warned about
        warnings.simplefilter("ignore")
        result = scipy_bootstrap((np.arange(len(members)),), over_groups, n_resamples=n_resamples,
                                 vectorized=False, method="percentile", rng=np.random.default_rng(seed))
    return np.atleast_2d(result.bootstrap_distribution)


def percentiles(distribution: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per row of (figures, resamples), over the resamples where a figure is defined;
    NaN where it was undefined in most of them."""
    tail = 100 * (1 - confidence) / 2
    defined = np.isfinite(distribution).mean(axis=-1) >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low, high = (np.nanpercentile(distribution, q, axis=-1) for q in (tail, 100 - tail))
    return np.where(defined, low, np.nan), np.where(defined, high, np.nan)


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], groups: np.ndarray, n_resamples: int = N_RESAMPLES,
              seed: int = 0, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``statistic(photo indices)`` (a vector) over resamples of whole groups."""
    return percentiles(resampled(statistic, groups, n_resamples, seed), confidence)


def intervals(y_true, y_pred, score=None, names: Sequence[str] | None = None, n_resamples: int = N_RESAMPLES,
              seed: int = 0, folds: Sequence[int] | None = None) -> dict[str, list[float | None]]:
    """``{figure: [low, high]}`` for every figure in ``FIGURES`` (None where undefined), JSON-ready.

    ``folds``: each row's cross-validation fold; the figures are then the folds' mean (``fold_figures``),
    and a photo graded by every fold's model (an external set) is resampled with all of its rows."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    score = None if score is None else np.asarray(score, dtype=np.float64)
    folds = None if folds is None else np.asarray(folds)
    groups = patient_groups(names) if names is not None else np.arange(len(y_true))
    low, high = bootstrap(lambda idx: fold_figures(y_true[idx], y_pred[idx], None if score is None else score[idx],
                                                   None if folds is None else folds[idx]),
                          groups, n_resamples, seed)
    return {name: [json_float(lo), json_float(hi)] for name, lo, hi in zip(FIGURES, low, high)}


def paired_difference(y_true, pred_a, pred_b, score_a=None, score_b=None, names: Sequence[str] | None = None,
                      n_resamples: int = N_RESAMPLES, seed: int = 0,
                      folds: Sequence[int] | None = None) -> dict[str, dict]:
    """``{figure: {"difference": a - b, "interval": [low, high]}}`` for two runs on the same photos
    (``folds`` as in ``intervals``: the same folds on both sides)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    pred_a, pred_b = np.asarray(pred_a, dtype=np.int64), np.asarray(pred_b, dtype=np.int64)
    score_a = None if score_a is None else np.asarray(score_a, dtype=np.float64)
    score_b = None if score_b is None else np.asarray(score_b, dtype=np.float64)
    folds = None if folds is None else np.asarray(folds)

    def difference(idx: np.ndarray) -> np.ndarray:
        fold = None if folds is None else folds[idx]
        return (fold_figures(y_true[idx], pred_a[idx], None if score_a is None else score_a[idx], fold)
                - fold_figures(y_true[idx], pred_b[idx], None if score_b is None else score_b[idx], fold))

    groups = patient_groups(names) if names is not None else np.arange(len(y_true))
    point = difference(np.arange(len(y_true)))
    low, high = bootstrap(difference, groups, n_resamples, seed)
    return {name: {"difference": json_float(d), "interval": [json_float(lo), json_float(hi)]}
            for name, d, lo, hi in zip(FIGURES, point, low, high)}




def unpaired_difference(first: tuple, second: tuple, n_resamples: int = N_RESAMPLES,
                        seed: int = 0) -> dict[str, dict]:
    """``{figure: {"difference": second - first, "interval": [low, high]}}`` for one model scored on two
    different sets of photos (e.g. internal test vs an external set): each ``(y_true, y_pred, score, names)``
    is resampled on its own, by patient, and the interval is that of the difference of the resampled figures."""
    samples = []
    for (y_true, y_pred, score, names), stream in zip((first, second), (0, 1)):
        y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
        score = None if score is None else np.asarray(score, dtype=np.float64)
        groups = patient_groups(names) if names is not None else np.arange(len(y_true))

        def statistic(idx, y_true=y_true, y_pred=y_pred, score=score):
            return figures(y_true[idx], y_pred[idx], None if score is None else score[idx])

        samples.append((statistic(np.arange(len(y_true))),
                        resampled(statistic, groups, n_resamples, seed + stream) if n_resamples else None))
    (point_a, spread_a), (point_b, spread_b) = samples
    low, high = percentiles(spread_b - spread_a) if n_resamples else (np.full(len(FIGURES), np.nan),) * 2
    return {name: {"difference": json_float(d), "interval": [json_float(lo), json_float(hi)]}
            for name, d, lo, hi in zip(FIGURES, point_b - point_a, low, high)}
