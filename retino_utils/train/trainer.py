"""The training run, top to bottom: its components, the epoch loop, and the scoring of the kept checkpoint.

Reached through ``retino_utils.train.cli.fit`` (which imports this module only when it trains, so the
command line answers bad settings before torch is imported). Each part has one job, as in torchvision's
reference scripts: ``build_components`` (model, loss, arithmetic) and ``loaders.DataBySize`` (the splits at
each size), ``Progress`` (history and kept checkpoint; ``_resume`` restores it), ``_start_phase`` (freezing
and the optimizer per phase), ``_run_epoch`` (one history row), ``score_kept_checkpoint`` (the record);
``RunFolder`` writes every file, ``engine`` runs one epoch or one evaluation pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from retino_utils import NUM_CLASSES
from retino_utils.errors import RetinoError, stop_if_interrupted
from retino_utils.evaluation import screening
from retino_utils.evaluation.calibration import calibration_report, fit_calibrator
from retino_utils.evaluation.eyes import fuse_eyes
from retino_utils.evaluation.metrics import REFERABLE_GRADE, compute_metrics
from retino_utils.evaluation.uncertainty import intervals
from retino_utils.models.losses import build_loss
from retino_utils.models.losses.ordinal import frequency_thresholds, tune_thresholds
from retino_utils.models.networks import build_model, freeze_backbone, head_parameters, set_train_mode, unfreeze_all
from retino_utils.evaluation.record import RunRecord, Scores, Screening
from retino_utils.train.checkpoint import Checkpoint, restore_rng_state, rng_state, scored_weights
from retino_utils.train.config import TrainConfig
from retino_utils.train.device import (
    PRECISION_LABELS,
    autocast,
    grad_scaler,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from retino_utils.train.distributed import DistContext, init_distributed, shutdown_distributed
from retino_utils.train.ema import moving_average
from retino_utils.train.engine import (
    PassOutputs,
    evaluate,
    output_table,
    predict_grades,
    referable_scores,
    train_one_epoch,
)
from retino_utils.train.loaders import DataBySize, RunData
from retino_utils.train.optim import build_optimizer, build_scheduler
from retino_utils.train.run_folder import HISTORY_FIGURES, RunFolder, history_frame
from retino_utils.train.run_safety import RunLock, data_fingerprint

# The history column each best_metric compares, on the split select_on names ("last" keeps the final epoch).
BEST_METRIC_FIGURES = {"accuracy": "acc", "qwk": "qwk"}


@dataclass
class Components:
    """What one training run computes with, built once: the model (and its moving average), the loss, where and
    in what arithmetic it runs."""

    config: TrainConfig
    model: nn.Module
    loss_fn: nn.Module
    device: torch.device
    ctx: DistContext
    precision: str  # bf16, fp16 or fp32: what --precision resolved to on this hardware
    channels_last: bool
    ema: AveragedModel | None = None  # the moving average of the weights, when config.ema asks for one
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling, kept and resumed with the run

    @property
    def scored_model(self) -> nn.Module:
        """What is evaluated and kept: the moving average where there is one."""
        return self.ema.module if self.ema is not None else self.model


def build_components(config: TrainConfig, device: torch.device, ctx: DistContext) -> tuple[Components, DataBySize]:
    """Seeded model (the weights first: a missing ImageNet file fails before any slow data work), data, loss."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    torch.manual_seed(config.seed)
    precision, channels_last = resolve_precision(device, config.precision), use_channels_last(device)
    model = build_model(config.arch, config.weights, num_classes=1 if config.is_regression else NUM_CLASSES,
                        impl=config.impl).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = DataBySize(config, device, ctx, channels_last)
    loss_fn = build_loss(config.loss, class_counts=np.asarray(grade_counts(data.first.train.labels)),
                         focal_gamma=config.focal_gamma, class_weighting=config.class_weighting).to(device)
    ema = moving_average(model, config.ema) if config.ema else None
    return Components(config, model, loss_fn, device, ctx, precision, channels_last, ema,
                      grad_scaler(device, precision)), data


def evaluate_everywhere(parts: Components, loader, tta: bool = False) -> PassOutputs:
    """The scored model's outputs on ``loader`` (``Components.scored_model``), evaluated by every process and
    gathered in dataset order, eyes fused as the config says, with the loss summed over processes."""
    result = evaluate(parts.scored_model, parts.loss_fn, loader, device=parts.device, precision=parts.precision,
                      tta=tta)
    loss_sum, _ = parts.ctx.sum(result.loss_sum, result.n)
    outputs, labels = gather_in_order(parts.ctx, result)
    outputs = fuse_eyes(outputs, loader.source.index.names, parts.config.fuse_eyes)
    return PassOutputs(loss_sum, outputs, labels, torch.arange(len(labels)), result.seconds)


def gather_in_order(ctx: DistContext, outputs: PassOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and labels of all processes, ordered by dataset index."""
    parts = ctx.gather((outputs.outputs, outputs.labels, outputs.indices))
    order = torch.argsort(torch.cat([p[2] for p in parts]), stable=True)
    return torch.cat([p[0] for p in parts])[order], torch.cat([p[1] for p in parts])[order]


def run_training(config: TrainConfig, on_epoch_end: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Train (or resume, or reuse a finished run) as ``config`` says; returns the per-epoch history."""
    device = resolve_device(config.device)
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        return _train(config, device, ctx, RunFolder(config.out, writes=ctx.is_main), on_epoch_end)
    finally:
        shutdown_distributed(ctx)


def _train(config, device, ctx, folder: RunFolder, on_epoch_end) -> pd.DataFrame:
    with RunLock(config.out) if folder.writes else contextlib.nullcontext():
        return _train_locked(config, device, ctx, folder, on_epoch_end)


@dataclass
class Progress:
    """Where the epoch loop stands: the history so far, the checkpoint kept so far, the latest cut points."""

    history: list[dict]
    best: dict  # {"metric", "value", "epoch", "column"}
    thresholds: list[float] | None = None
    next_epoch: int = 1

    @classmethod
    def start(cls, config: TrainConfig) -> Progress:
        return cls([], {"metric": config.best_metric, "value": -math.inf, "epoch": 0})

    @classmethod
    def resumed(cls, state: Checkpoint) -> Progress:
        return cls(list(state.history), state.best, state.thresholds, state.epoch + 1)

    def add(self, row: dict, column: str, competes: bool) -> bool:
        """Append an epoch's row; True where it competes (it trained at the final size) and beats the kept
        checkpoint on ``column``, and so becomes the kept one."""
        self.history.append(row)
        improved = competes and row[column] > self.best["value"]
        if improved:
            self.best = {**self.best, "value": row[column], "epoch": row["epoch"], "column": column}
        return improved


def _train_locked(config, device, ctx, folder: RunFolder, on_epoch_end) -> pd.DataFrame:
    log = print if ctx.is_main else (lambda *args, **kwargs: None)
    fingerprint = data_fingerprint(config)
    state = folder.resume_state(config, fingerprint)
    folder.start(state)
    if folder.is_finished(state, config.epochs):
        log(f"{config.out}: run already complete ({state.epoch} epochs), reusing it", flush=True)
        return history_frame(state.history)

    parts, sized = build_components(config, device, ctx)
    folder.write_config(config, fingerprint)
    setup = _describe(parts, sized.first)
    log(setup, flush=True)
    folder.event("start", epochs=config.epochs, description=setup)
    progress = Progress.start(config) if state is None else _resume(parts, state)
    if state is not None:
        log(f"resuming {config.out} after epoch {state.epoch}", flush=True)

    column, phase, first = selection_column(config), None, progress.next_epoch
    for epoch in range(first, config.epochs + 1):
        stop_if_interrupted()
        data = sized.at(config.size_at(epoch))
        if _phase(config, epoch) != phase:
            phase = _phase(config, epoch)
            continued = state if epoch == first else None  # a resumed run continues its optimizer in its phase
            train_model, optimizer, scheduler = _start_phase(parts, data, phase, continued)
        try:
            row, progress.thresholds = _run_epoch(parts, data, epoch, phase, train_model, optimizer, scheduler)
        except torch.cuda.OutOfMemoryError:
            if epoch != first:
                raise
            raise out_of_memory(parts, train_model, config.size_at(epoch)) from None
        log(_epoch_line(row, config.epochs), flush=True)
        # Only epochs at the final size compete: the kept checkpoint is scored (and used) at image_size.
        improved = progress.add(row, column, competes=config.size_at(epoch) == config.image_size)
        folder.save_epoch(_checkpoint(parts, epoch, progress, optimizer, scheduler, fingerprint), improved)
        ctx.barrier()
        folder.event("epoch", **row)
        if on_epoch_end is not None:
            on_epoch_end(row)

    best = progress.best
    predictions, record = score_kept_checkpoint(parts, sized.at(config.image_size), folder.best_state(), best)
    record.data_fingerprint, record.arithmetic = fingerprint, parts.precision
    folder.finish(predictions, record)
    summary = (f"kept epoch {best['epoch']} ({column} {best['value']:.4f}); test, scored once: "
               f"acc {record.accuracy:.2%} qwk {record.qwk:.3f} macro-F1 {record.macro_f1:.3f}; "
               f"wrote {config.out}/predictions.csv and metrics.json")
    log(summary, flush=True)
    folder.event("done", best_epoch=best["epoch"], accuracy=record.accuracy, qwk=record.qwk,
                 macro_f1=record.macro_f1)
    return history_frame(progress.history)


def _resume(parts: Components, state: Checkpoint) -> Progress:
    """The weights, moving average, loss scaling and random state of ``state``; the loop continues after it."""
    parts.model.load_state_dict(state.model)
    if parts.ema is not None:
        parts.ema.load_state_dict(state.ema)
    if parts.scaler is not None and state.scaler:
        parts.scaler.load_state_dict(state.scaler)
    restore_rng_state(state.rng)
    return Progress.resumed(state)


def _checkpoint(parts: Components, epoch: int, progress: Progress, optimizer, scheduler, fingerprint: str) -> Checkpoint:
    return Checkpoint(
        model=parts.model.state_dict(), optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict() if scheduler is not None else None, epoch=epoch,
        config=parts.config.to_dict(), history=progress.history, rng=rng_state(), best=progress.best,
        thresholds=progress.thresholds, ema=parts.ema.state_dict() if parts.ema is not None else None,
        scaler=parts.scaler.state_dict() if parts.scaler is not None else None, data_fingerprint=fingerprint)


def grade_counts(labels) -> list[int]:
    """Photos per grade 0-4 (zero for a grade absent)."""
    return np.bincount(labels, minlength=NUM_CLASSES).tolist()


def out_of_memory(parts: Components, model: nn.Module, size: int) -> RetinoError:
    """One line for a GPU that ran out of memory in a run's first epoch: the batch and size that failed, and
    the largest halved batch that trains a step there (tried on the spot)."""
    config = parts.config

    def trial(batch: int) -> None:
        x = torch.zeros(batch, 3, size, size, device=parts.device)
        if parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(parts.device, parts.precision):
            model(x).float().sum().backward()
        model.zero_grad(set_to_none=True)

    fits = fitting_batch_size(trial, config.batch_size, parts.device)
    advice = (f"batch {fits} fits: rerun with --batch-size {fits} (or a smaller --image-size)" if fits
              else "not even a batch of 1 fits: choose a smaller --image-size or --arch resnet18")
    return RetinoError(f"{parts.device} ran out of memory training {config.arch} with batch {config.batch_size} at "
                       f"{size} px ({PRECISION_LABELS[parts.precision]}): {advice}")


def fitting_batch_size(trial: Callable[[int], None], batch: int, device: torch.device) -> int | None:
    """The first of batch/2, batch/4, ... 1 for which ``trial(batch)`` runs out of no memory (None: none)."""
    while batch > 1:
        batch //= 2
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            trial(batch)
            return batch
        except torch.cuda.OutOfMemoryError:
            continue
    return None


def selection_column(config: TrainConfig) -> str:
    """The history column that picks the kept checkpoint (``epoch``: the last one)."""
    if config.best_metric == "last":
        return "epoch"
    return f"{'val' if config.select_on == 'validation' else 'test'}_{BEST_METRIC_FIGURES[config.best_metric]}"


def _describe(parts: Components, data: RunData) -> str:
    config, ctx = parts.config, parts.ctx
    precision = PRECISION_LABELS[parts.precision]
    layout = "channels_last" if parts.channels_last else "NCHW"
    procs = f" x {ctx.world_size} processes" if ctx.enabled else ""
    val = len(data.val) if data.val is not None else 0
    return (f"{config.arch} (weights {config.weights or 'none'}, loss {config.loss}) on {config.data}: "
            f"{len(data.train)} train / {val} validation / {len(data.test)} test images at "
            f"{_sizes(config)} px; {parts.device} {precision} {layout}{procs}; batch {config.batch_size}")


def _sizes(config: TrainConfig) -> str:
    return " -> ".join(f"{size} ({epochs} epochs)" for size, epochs in config.size_stages()) if config.sizes \
        else str(config.image_size)


def _phase(config: TrainConfig, epoch: int) -> str:
    return "fe" if epoch <= config.fe_epochs else "ft"


def _start_phase(parts: Components, data: RunData, phase: str, continued: Checkpoint | None):
    """Freeze or unfreeze, then a fresh optimizer over what trains (as the reports did per phase), or the
    optimizer and schedule of ``continued`` where its last epoch trained in this phase (a resumed run)."""
    config = parts.config
    if phase == "fe":
        freeze_backbone(parts.model)
        optimizer, scheduler = build_optimizer(head_parameters(parts.model), config), None
    else:
        unfreeze_all(parts.model)
        optimizer = build_optimizer([p for p in parts.model.parameters() if p.requires_grad], config)
        scheduler = build_scheduler(optimizer, config, len(data.train_loader) * (config.epochs - config.fe_epochs))
    if continued is not None and continued.history[-1]["phase"] == phase:
        optimizer.load_state_dict(continued.optimizer)
        if scheduler is not None and continued.scheduler is not None:
            scheduler.load_state_dict(continued.scheduler)
    model = parts.model
    if parts.ctx.enabled:
        ids = [parts.device.index] if parts.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        model = torch.compile(model)
    return model, optimizer, scheduler


def _run_epoch(parts: Components, data: RunData, epoch, phase, train_model, optimizer, scheduler
               ) -> tuple[dict, list | None]:
    """Train once over the training split, then score validation and test: one history row."""
    config, ctx = parts.config, parts.ctx
    start = time.perf_counter()
    data.start_epoch(epoch)
    set_train_mode(parts.model)
    lr = optimizer.param_groups[0]["lr"]
    train = train_one_epoch(train_model, parts.loss_fn, optimizer, data.train_loader, device=parts.device,
                            precision=parts.precision, scaler=parts.scaler, scheduler=scheduler, ema=parts.ema,
                            show_progress=config.progress and ctx.is_main,
                            desc=f"epoch {epoch}/{config.epochs} {phase} {data.train_loader.source.image_size}px")
    train_outputs, train_labels = gather_in_order(ctx, train)
    val = evaluate_everywhere(parts, data.val_loader) if data.val_loader is not None else None
    thresholds = None
    if config.is_regression:
        # Cut points from eval-mode scores of the validation split (of the training split without
        # one): the scores gathered while training come from batch statistics and a moving model.
        thresholds = _cut_points(config, data, val if val is not None else evaluate_everywhere(parts, data.train_eval_loader))
    loss_sum, n = ctx.sum(train.loss_sum, train.n)
    row = {"epoch": epoch, "phase": phase, "image_size": data.train_loader.source.image_size, "lr": lr,
           "train_loss": loss_sum / max(n, 1),
           "train_acc": float(np.mean(predict_grades(train_outputs, thresholds) == train_labels.numpy()))}
    for split, result in (("val", val), ("test", evaluate_everywhere(parts, data.test_loader))):
        scores = _metrics(result, thresholds) if result is not None else None
        row.update({f"{split}_{column}": getattr(scores, figure) if scores is not None else math.nan
                    for column, figure in HISTORY_FIGURES.items()})
    row.update({"seconds": time.perf_counter() - start, "images_per_s": n / max(train.seconds, 1e-9)})
    return row, thresholds


def _cut_points(config: TrainConfig, data: RunData, tuning: PassOutputs) -> list[float]:
    """Regression cut points from eval-mode scores of the validation split, as ``config.cut_points`` says."""
    if config.cut_points == "frequencies":
        thresholds = frequency_thresholds(tuning.outputs.numpy(), data.train.labels)
    else:
        thresholds = tune_thresholds(tuning.outputs.numpy(), tuning.labels.numpy())
    return [float(t) for t in thresholds]


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs} [{row['phase']}] lr {row['lr']:.2e} | train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2%} | val acc {row['val_acc']:.2%} qwk {row['val_qwk']:.3f} | test acc "
            f"{row['test_acc']:.2%} qwk {row['test_qwk']:.3f} | {row['seconds']:.0f}s, {row['images_per_s']:.0f} img/s")


def _metrics(result: PassOutputs, thresholds) -> Scores:
    pred = predict_grades(result.outputs, thresholds)
    scores = compute_metrics(result.labels.numpy(), pred, referable_score=referable_scores(result.outputs))
    return Scores(**scores, loss=result.loss_sum / max(result.n, 1))


def _calibration(val: PassOutputs, y_true, score, names, config: TrainConfig) -> dict | None:
    """The referable score calibrated on validation, measured on the test split; None when validation lacks
    either class (nothing to fit)."""
    referable = val.labels.numpy() >= REFERABLE_GRADE
    if referable.all() or not referable.any():
        return None
    calibrator = fit_calibrator(referable_scores(val.outputs), referable)
    return calibration_report(calibrator, config.is_regression, y_true, score, names, n_resamples=config.bootstrap,
                              seed=config.seed)


def score_kept_checkpoint(parts: Components, data: RunData, kept: Checkpoint, best: dict
                          ) -> tuple[pd.DataFrame, RunRecord]:
    """The kept checkpoint scored once on the test split: its predictions, and the run's record.

    Everything chosen (the checkpoint, the regression cut points, the screening thresholds) comes
    from the validation split; the test split only measures.
    """
    val, test, cut_points = _kept_outputs(parts, data, kept)
    table = output_table(test.outputs, cut_points)
    table.insert(0, "name", list(data.test.names))
    table.insert(1, "true_grade", test.labels.numpy())
    record = RunRecord(
        **vars(_test_scores(parts.config, val, test, cut_points, table)),
        validation=_metrics(val, cut_points) if val is not None else None,
        select_on=parts.config.select_on if parts.config.best_metric != "last" else "last epoch",
        best_epoch=best["epoch"], best_metric=best["metric"], thresholds=cut_points, tta=parts.config.tta,
        train_counts=grade_counts(data.train.labels),
        val_counts=grade_counts(data.val.labels) if data.val is not None else None,
        eval_counts=grade_counts(data.test.labels),
        normalization={"mean": list(data.mean), "std": list(data.std)}, config=parts.config.to_dict())
    return table, record


def _kept_outputs(parts: Components, data: RunData, kept: Checkpoint
                  ) -> tuple[PassOutputs | None, PassOutputs, list[float] | None]:
    """The kept weights' outputs on validation and test (flip-averaged with ``tta``), and the cut points that
    grade them: the checkpoint's, or, flip-averaged, chosen again on the flip-averaged validation scores."""
    config = parts.config
    parts.scored_model.load_state_dict(scored_weights(kept))
    val = evaluate_everywhere(parts, data.val_loader, tta=config.tta) if data.val_loader is not None else None
    cut_points = kept.thresholds
    if config.tta and config.is_regression and val is not None:
        cut_points = _cut_points(config, data, val)
    return val, evaluate_everywhere(parts, data.test_loader, tta=config.tta), cut_points


def _test_scores(config: TrainConfig, val: PassOutputs | None, test: PassOutputs, cut_points, table: pd.DataFrame
                 ) -> Scores:
    """The test figures of ``table`` (the graded test split) with their intervals, the screening thresholds
    chosen on validation applied to it, and the referable score's calibration (fitted on validation)."""
    names, y_true = table["name"].tolist(), table["true_grade"].to_numpy()
    pred, score = table["pred_grade"].to_numpy(), table["referable_score"].to_numpy()
    resampling = {"n_resamples": config.bootstrap, "seed": config.seed}
    chosen = screening.choose_thresholds(val.labels.numpy(), referable_scores(val.outputs)) if val is not None else {}
    scores = _metrics(test, cut_points)
    scores.intervals = intervals(y_true, pred, score, names, **resampling) if config.bootstrap else {}
    scores.screening = Screening(
        roc=screening.roc(y_true, score),
        operating_points=screening.operating_points(chosen, y_true, score, names, **resampling),
        calibration=_calibration(val, y_true, score, names, config) if val is not None else None)
    return scores

