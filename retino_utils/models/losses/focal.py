"""Multi-class softmax focal loss (Lin et al. 2017) with optional per-class weights."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from retino_utils.errors import RetinoError

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """``loss_i = -alpha[y_i] * (1 - p_t,i)^gamma * log p_t,i``, one modulating factor per sample.

    Easy samples (p_t near 1) are down-weighted individually, so the hard minority grades dominate
    the gradient. The reference reports instead took the batch-mean cross-entropy ``CE`` first and
    returned ``(1 - exp(-CE))^gamma * CE``: one factor for the whole batch, which only rescales
    plain CE. That bug is fixed here on purpose.

    ``log p_t`` comes from ``log_softmax`` (stable for huge logits). ``mean`` divides by the sum of
    ``alpha[y_i]`` when ``alpha`` is given, as ``F.cross_entropy(weight=alpha)`` does, so gamma=0
    reproduces (weighted) cross-entropy exactly.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | Sequence[float] | None = None,
                 reduction: str = "mean"):
        super().__init__()
        if gamma < 0:
            raise RetinoError(f"focal gamma must be >= 0, got {gamma}")
        if reduction not in REDUCTIONS:
            raise RetinoError(f"unknown reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
        self.gamma = float(gamma)
        self.reduction = reduction
        alpha_tensor = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).flatten()
        self.register_buffer("alpha", alpha_tensor)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_pt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        # -expm1(log p) = 1 - p without cancellation; the tiny floor keeps the gradient of
        # x^gamma finite for gamma < 1 when p_t rounds to exactly 1 (the loss term is ~0 there).
        one_minus_pt = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)
        loss = -one_minus_pt.pow(self.gamma) * log_pt
        weight = None
        if self.alpha is not None:
            weight = self.alpha.to(loss.dtype)[target]
            loss = weight * loss
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.mean() if weight is None else loss.sum() / weight.sum()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"
