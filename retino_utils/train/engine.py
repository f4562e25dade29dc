"""One training epoch and one evaluation pass, free of file I/O and bookkeeping."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from retino_utils.models.losses.ordinal import scores_to_grades
from retino_utils.progress import progress
from retino_utils.train.device import autocast


@dataclass
class PassOutputs:
    """What a pass over a split produced on this process: summed loss, raw outputs in batch order."""

    loss_sum: float
    outputs: torch.Tensor  # (N, C) logits, or (N,) regression scores; float32 on the CPU
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) dataset indices, to align outputs with names
    seconds: float

    @property
    def n(self) -> int:
        return int(self.labels.numel())


def _flatten_outputs(out: torch.Tensor) -> torch.Tensor:
    """Regression heads give (B, 1); everything downstream wants (B,)."""
    return out.squeeze(1) if out.ndim == 2 and out.shape[1] == 1 else out


def train_one_epoch(model, loss_fn, optimizer, loader, *, device, precision="fp32", scaler=None, scheduler=None,
                    ema=None, show_progress=True, desc="train") -> PassOutputs:
    """Train over ``loader`` once in ``precision`` (with ``scaler``, a GradScaler, for fp16); ``scheduler``
    (if any) steps and ``ema`` (an AveragedModel) averages after every batch."""
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    outputs, labels, indices = [], [], []
    bar = progress(loader, enabled=show_progress, desc=desc, total=len(loader), unit="batch", leave=False)
    for step, (x, y, idx) in enumerate(bar):
        with autocast(device, precision):
            out = _flatten_outputs(model(x))
        loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # a step whose scaled gradients overflowed is skipped, and the scale lowered
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None:
            with warnings.catch_warnings():  # after a step the scaler skipped (overflow), torch warns each time
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                scheduler.step()
        loss_sum += loss.detach().double() * y.numel()
        outputs.append(out.detach().float())
        labels.append(y)
        indices.append(idx)
        if show_progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return _collect(loss_sum, outputs, labels, indices, start)


@torch.no_grad()
def evaluate(model, loss_fn, loader, *, device, precision="fp32", tta=False, show_progress=False,
             desc="eval") -> PassOutputs:
    """Outputs on ``loader`` in eval mode; ``tta`` averages them over the four flips (no loss without ``loss_fn``)."""
    start = time.perf_counter()
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    outputs, labels, indices = [], [], []
    for x, y, idx in progress(loader, enabled=show_progress, desc=desc, total=len(loader), unit="batch", leave=False):
        views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)] if tta else [x]
        with autocast(device, precision):
            out = torch.stack([_flatten_outputs(model(v)).float() for v in views]).mean(0)
        if loss_fn is not None:  # prediction has no labels to score against
            loss_sum += loss_fn(out, y).double() * y.numel()
        outputs.append(out)
        labels.append(y)
        indices.append(idx)
    return _collect(loss_sum, outputs, labels, indices, start)


def _collect(loss_sum, outputs, labels, indices, start) -> PassOutputs:
    def cat(parts, dtype):
        return torch.cat(parts).to("cpu", dtype) if parts else torch.zeros(0, dtype=dtype)

    return PassOutputs(
        loss_sum=float(loss_sum.item()),
        outputs=cat(outputs, torch.float32),
        labels=cat(labels, torch.int64),
        indices=cat(indices, torch.int64),
        seconds=time.perf_counter() - start,
    )


def predict_grades(outputs: torch.Tensor, thresholds=None) -> np.ndarray:
    """Grades from logits (argmax) or from regression scores cut at ``thresholds``."""
    if outputs.ndim == 1:
        return scores_to_grades(outputs.numpy(), thresholds)
    return outputs.argmax(1).numpy()


def referable_scores(outputs: torch.Tensor) -> np.ndarray:
    """A score that ranks referable DR (grade >= 2): P(grade >= 2), or the regression score."""
    if outputs.ndim == 1:
        return outputs.numpy().astype(np.float64)
    return F.softmax(outputs.double(), dim=1)[:, 2:].sum(1).numpy()


def output_table(outputs: torch.Tensor, thresholds=None) -> pd.DataFrame:
    """One row per photo, as a run's predictions.csv and predict's CSV hold them: the grade, the five class
    probabilities (or the regression score) and the referable score."""
    table = pd.DataFrame({"pred_grade": predict_grades(outputs, thresholds)})
    if outputs.ndim == 1:
        table["score"] = outputs.numpy()
    else:
        probs = torch.softmax(outputs.double(), 1).numpy()
        for grade in range(probs.shape[1]):
            table[f"p{grade}"] = probs[:, grade]
    table["referable_score"] = referable_scores(outputs)
    return table
