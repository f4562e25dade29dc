"""Optimizer and learning-rate schedule of a training phase, on torch's own schedulers.

Schedules step once per batch. ``warmup_epochs`` prepends a linear warm-up (``LinearLR``) to the
``none`` and ``cosine`` schedules; one-cycle has its own warm-up.
"""

from __future__ import annotations

import torch

from retino_utils.train.config import TrainConfig

WARMUP_START = 0.1  # the warm-up starts at this share of the learning rate


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int):
    """The per-batch schedule over ``steps`` batches of fine-tuning, or None for a constant rate."""
    steps = max(steps, 1)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    warmup = min(steps - 1, round(steps * config.warmup_epochs / max(config.epochs - config.fe_epochs, 1)))
    main = None
    if config.schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps - warmup, 1))
    if warmup <= 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warmup)
    if main is None:
        return ramp
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
