"""The ordinal option: one regression output trained on the grade, cut into grades by thresholds.

The best Kaggle DR solutions (2015, 2019) regressed the grade and tuned the four cut points for
quadratic weighted kappa on training predictions instead of using 0.5, 1.5, 2.5, 3.5.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retino_utils import NUM_CLASSES
from retino_utils.errors import RetinoError
from retino_utils.models.losses import REGRESSION_LOSSES

DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
CANDIDATE_QUANTILES = 256  # cut-point candidates per threshold, taken from score quantiles
MAX_SWEEPS = 50


class RegressionLoss(nn.Module):
    """MSE or SmoothL1 between a (B, 1) or (B,) output and the integer grade as a float."""

    def __init__(self, kind: str = "mse"):
        super().__init__()
        if kind not in REGRESSION_LOSSES:
            raise RetinoError(f"unknown regression loss {kind!r}: choose one of {', '.join(REGRESSION_LOSSES)}")
        self.kind = kind

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == 2 and output.shape[1] == 1:
            output = output.squeeze(1)
        if output.shape != target.shape:
            raise RetinoError(f"regression loss needs outputs of shape (B,) or (B, 1) for targets "
                              f"{tuple(target.shape)}, got {tuple(output.shape)}: use num_classes=1")
        target = target.to(output.dtype)
        if self.kind == "mse":
            return F.mse_loss(output, target)
        return F.smooth_l1_loss(output, target)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def scores_to_grades(scores: Sequence[float] | np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Grade = number of thresholds at or below the score (``np.digitize`` semantics)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (NUM_CLASSES - 1,) or np.any(np.diff(thresholds) <= 0):
        raise RetinoError(f"need {NUM_CLASSES - 1} increasing thresholds, got {thresholds.tolist()}")
    return np.searchsorted(thresholds, np.asarray(scores, dtype=np.float64), side="right").astype(np.int64)


def tune_thresholds(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                    init: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Four increasing cut points that maximise quadratic weighted kappa on (training) scores.

    Coordinate descent over candidate cut points (score quantiles plus ``init``): each threshold in
    turn moves to the candidate between its neighbours with the best kappa, until a full sweep
    changes nothing. It starts at ``init`` and only accepts strict improvements, so it is
    deterministic and never worse than ``init``. Kappa is computed from cumulative per-bin label
    counts (not sklearn) so every candidate costs O(25) and 30k scores take milliseconds.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if scores.size == 0 or scores.shape != labels.shape or not np.isfinite(scores).all():
        raise RetinoError(f"need as many finite scores as labels, got {scores.size} scores, {labels.size} labels")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise RetinoError(f"labels must be grades 0..{NUM_CLASSES - 1}, got {sorted(set(labels.tolist()))}")
    init = np.asarray(init, dtype=np.float64)
    scores_to_grades(scores[:1], init)  # validates init
    candidates = np.unique(np.concatenate(
        [np.quantile(scores, np.linspace(0, 1, CANDIDATE_QUANTILES)), init]))
    # cumulative[y, e] = samples of grade y with fewer than e candidates at or below their score, so
    # thresholds at candidates j_0 < ... < j_3 give grade g to the bins between edges j_{g-1}+1 and j_g+1.
    bins = np.searchsorted(candidates, scores, side="right")
    per_bin = np.zeros((NUM_CLASSES, candidates.size + 1))
    np.add.at(per_bin, (labels, bins), 1)
    cumulative = np.concatenate([np.zeros((NUM_CLASSES, 1)), per_bin.cumsum(axis=1)], axis=1)

    edges = np.searchsorted(candidates, init) + 1  # init values are candidates: exact positions
    best = _kappa_for_edges(cumulative, edges[None, :])[0]
    for _ in range(MAX_SWEEPS):
        improved = False
        for k in range(NUM_CLASSES - 1):
            low = edges[k - 1] + 1 if k > 0 else 1
            high = edges[k + 1] - 1 if k < NUM_CLASSES - 2 else candidates.size
            trials = np.repeat(edges[None, :], high - low + 1, axis=0)
            trials[:, k] = np.arange(low, high + 1)
            kappas = _kappa_for_edges(cumulative, trials)
            choice = int(np.argmax(kappas))
            if kappas[choice] > best + 1e-12:
                best, edges[k], improved = kappas[choice], trials[choice, k], True
        if not improved:
            break
    return candidates[edges - 1]


def _kappa_for_edges(cumulative: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa for each row of bin edges (T, K-1); 0 where it is undefined."""
    n_trials = edges.shape[0]
    full = np.concatenate([np.zeros((n_trials, 1), dtype=np.int64), edges,
                           np.full((n_trials, 1), cumulative.shape[1] - 1)], axis=1)
    at_edges = cumulative[:, full]  # (K, T, K+1)
    observed = np.diff(at_edges, axis=2).transpose(1, 0, 2)  # (T, true K, predicted K)
    grades = np.arange(NUM_CLASSES)
    disagreement = (grades[:, None] - grades[None, :]) ** 2
    total = observed.sum(axis=(1, 2))
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / total[:, None, None]
    observed_cost = (disagreement * observed).sum(axis=(1, 2))
    expected_cost = (disagreement * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = 1 - observed_cost / expected_cost
    return np.where(expected_cost > 0, kappa, 0.0)


def frequency_thresholds(scores: Sequence[float] | np.ndarray, train_labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Four cut points that give each grade its share of the training split among ``scores``.

    No label of the scored photos is used, so nothing is fitted to them: on a few hundred validation
    photos the QWK-tuned cut points over-fit (and push photos out of grade 0, costing accuracy),
    while these only rank. Ties are broken by nudging a cut point just above the one below it.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(train_labels, dtype=np.int64).reshape(-1)
    if scores.size == 0 or labels.size == 0 or not np.isfinite(scores).all():
        raise RetinoError(f"need finite scores and training labels, got {scores.size} scores, {labels.size} labels")
    shares = np.bincount(labels, minlength=NUM_CLASSES)[: NUM_CLASSES - 1].cumsum() / labels.size
    thresholds = np.quantile(scores, shares)
    for k in range(1, thresholds.size):
        thresholds[k] = max(thresholds[k], np.nextafter(thresholds[k - 1], np.inf))
    return thresholds
