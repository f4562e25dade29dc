"""The moving average of the weights (``--ema``), evaluated and kept instead of the raw weights.

Its decay warms up as TensorFlow's ``ExponentialMovingAverage`` does with ``num_updates``,
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run is not an average dominated by its
first, random weights. Batch-norm
statistics are averaged with the weights (``use_buffers``).
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def warmed_decay(decay: float, updates: int) -> float:
    return min(decay, (1 + updates) / (10 + updates))


def moving_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = 1 - warmed_decay(decay, int(updates))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (batch counts) follow the model
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
