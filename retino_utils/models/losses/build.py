"""The loss module for a name: cross entropy, class-weighted cross entropy, focal, or a regression loss."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from retino_utils.errors import RetinoError
from retino_utils.models.losses import CLASS_WEIGHTINGS, LOSSES
from retino_utils.models.losses.class_weights import inverse_frequency_weights, report002_weights
from retino_utils.models.losses.focal import FocalLoss
from retino_utils.models.losses.ordinal import RegressionLoss

WEIGHTS_BY_NAME = {"inverse": inverse_frequency_weights, "report002": report002_weights}


def build_loss(name: str, class_counts: Sequence[int] | None = None, focal_gamma: float = 2.0,
               focal_alpha: str | Sequence[float] | torch.Tensor | None = None,
               class_weighting: str = "inverse") -> nn.Module:
    """The loss module for ``name``; ``class_counts`` (training split) feed ``wce`` and focal alpha.

    ``focal_alpha``: None, ``"inverse"``, ``"report002"`` or explicit per-class weights.
    """
    _check_name(name)
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "wce":
        return nn.CrossEntropyLoss(weight=_class_weights(class_weighting, class_counts, "wce"))
    if name == "focal":
        alpha = focal_alpha
        if isinstance(focal_alpha, str):
            alpha = _class_weights(focal_alpha, class_counts, "focal alpha")
        return FocalLoss(gamma=focal_gamma, alpha=alpha)
    return RegressionLoss(kind=name)


def _check_name(name: str) -> None:
    if name not in LOSSES:
        raise RetinoError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")


def _class_weights(weighting: str, class_counts: Sequence[int] | None, needed_by: str) -> torch.Tensor:
    if weighting not in CLASS_WEIGHTINGS:
        raise RetinoError(f"unknown class weighting {weighting!r}: choose one of {', '.join(CLASS_WEIGHTINGS)}")
    if class_counts is None:
        raise RetinoError(f"{needed_by} needs the training split's class counts (class_counts=...)")
    return WEIGHTS_BY_NAME[weighting](class_counts)
