"""Class weights for the imbalanced DR grades (about 73% of EyePACS is grade 0)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from retino_utils.errors import RetinoError


def _as_counts(counts: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64).reshape(-1)
    if array.size == 0 or (array < 0).any() or array.sum() == 0:
        raise RetinoError(f"class counts must be non-negative with at least one sample, got {array.tolist()}")
    return array


def inverse_frequency_weights(counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """``w_c = N / (K * n_c)`` over the K classes present (sklearn's ``"balanced"`` weights).

    A class with no training samples gets weight 0: it never occurs as a training target, so its
    weight is never used, and a small subset missing grade 4 still trains.
    """
    array = _as_counts(counts)
    present = array > 0
    weights = np.zeros_like(array)
    weights[present] = array.sum() / (present.sum() * array[present])
    return torch.tensor(weights, dtype=torch.float32)


def report002_weights(counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Report 002's scheme ``w_c = (1 - n_c/N) / (1 - n_0/N)``: grade 0 gets 1.0.

    For EyePACS' 20656/1955/4210/698/581 (N = 28100) this gives [1.0, 3.5122, 3.2093, 3.6811, 3.6968].
    """
    array = _as_counts(counts)
    total = array.sum()
    if array[0] == total:
        raise RetinoError(f"report002 class weights need samples outside grade 0, got counts {array.tolist()}")
    return torch.tensor((1 - array / total) / (1 - array[0] / total), dtype=torch.float32)


def sample_weights(labels: Sequence[int] | np.ndarray | torch.Tensor,
                   class_weights: Sequence[float] | np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights for ``WeightedRandomSampler``: ``class_weights[label]``.

    The default ``1 / n_label`` draws every grade equally often.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0 or labels.min() < 0:
        raise RetinoError(f"labels must be non-negative class indices, got {labels[:10].tolist()}...")
    if class_weights is None:
        per_class = 1.0 / np.maximum(np.bincount(labels), 1)
    else:
        per_class = np.asarray(class_weights, dtype=np.float64).reshape(-1)
        if labels.max() >= per_class.size:
            raise RetinoError(f"label {labels.max()} has no class weight (only {per_class.size} given)")
    return torch.tensor(per_class[labels], dtype=torch.float64)


def scheduled_sample_weights(labels: Sequence[int] | np.ndarray | torch.Tensor, progress: float) -> torch.Tensor:
    """Per-sample weights that move from class-balanced (``progress`` 0) to the natural frequencies (1).

    The draw is the mixture ``(1 - progress) * balanced + progress * natural`` of the two distributions
    (team o_O's schedule in the 2015 Kaggle DR competition moved the same way, by a decay factor).
    """
    if not 0 <= progress <= 1:
        raise RetinoError(f"sampling progress must be in [0, 1], got {progress}")
    balanced = sample_weights(labels)
    balanced = balanced / balanced.sum()
    natural = torch.full_like(balanced, 1 / len(balanced))
    return (1 - progress) * balanced + progress * natural
