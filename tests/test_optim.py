"""The per-phase schedules, against their closed-form float64 formulas."""

import math

import pytest
import torch

from retino_utils.train.config import TrainConfig
from retino_utils.train.optim import WARMUP_START, build_optimizer, build_scheduler


def rates(config, steps):
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config, steps)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return seen


def test_cosine_follows_half_a_cosine_to_zero():
    config = TrainConfig(lr=0.1, schedule="cosine", epochs=4)
    expected = [0.05 * (1 + math.cos(math.pi * s / 40)) for s in range(40)]
    assert rates(config, 40) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_warm_up_ramps_linearly_then_hands_over_to_the_cosine():
    config = TrainConfig(lr=0.1, schedule="cosine", epochs=5, warmup_epochs=1)  # 10 of 50 steps warm up
    seen = rates(config, 50)
    ramp = [0.1 * (WARMUP_START + (1 - WARMUP_START) * s / 10) for s in range(10)]
    cosine = [0.05 * (1 + math.cos(math.pi * s / 40)) for s in range(40)]
    assert seen == pytest.approx(ramp + cosine, rel=1e-9, abs=1e-12)


def test_constant_rate_and_warm_up_alone():
    assert rates(TrainConfig(lr=0.01), 5) == [0.01] * 5
    seen = rates(TrainConfig(lr=0.01, epochs=2, warmup_epochs=1), 10)
    assert seen[:5] == pytest.approx([0.01 * (WARMUP_START + (1 - WARMUP_START) * s / 5) for s in range(5)])
    assert seen[5:] == pytest.approx([0.01] * 5)


def test_one_cycle_peaks_at_the_rate_and_ends_near_zero():
    seen = rates(TrainConfig(lr=0.1, schedule="onecycle"), 100)
    assert max(seen) == pytest.approx(0.1) and seen[0] < 0.01 and seen[-1] < 1e-4
    assert seen.index(max(seen)) == pytest.approx(30, abs=1)  # torch's default pct_start of 0.3
