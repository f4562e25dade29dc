"""The training run: its components, the epoch loop, and the scoring of the kept checkpoint.

Reached through ``retino_utils.train.cli.fit`` (which imports this module only when it trains, so the
command line answers bad settings before torch is imported). The parts are small and separate, as
in torchvision's reference scripts: ``build_components`` (model, data, loss; the real-data
benchmark reuses it), ``optim`` (optimizer and torch schedulers per phase), ``RunFolder`` (every
file the run writes), ``engine`` (one epoch, one evaluation pass).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from retino_utils import GRADES
from retino_utils.errors import RetinoError
from retino_utils.evaluation import screening
from retino_utils.evaluation.calibration import calibration_report, fit_calibrator
from retino_utils.evaluation.eyes import fuse_eyes
from retino_utils.evaluation.metrics import REFERABLE_GRADE, compute_metrics
from retino_utils.evaluation.uncertainty import intervals
from retino_utils.models.losses import build_loss
from retino_utils.models.losses.ordinal import frequency_thresholds, tune_thresholds
from retino_utils.models.networks import build_model, freeze_backbone, head_parameters, set_train_mode, unfreeze_all
from retino_utils.train.checkpoint import restore_rng_state, rng_state, scored_weights
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
from retino_utils.train.loaders import RunData, build_run_data
from retino_utils.train.optim import build_optimizer, build_scheduler
from retino_utils.train.run_folder import RunFolder, history_frame
from retino_utils.train.run_safety import RunLock, data_fingerprint

# The history column each best_metric compares, on the split select_on names ("last" keeps the final epoch).
BEST_METRIC_FIGURES = {"accuracy": "acc", "qwk": "qwk"}


@dataclass
class Components:
    """What one training run computes with: built once, then used by every epoch."""

    config: TrainConfig
    model: nn.Module
    data: RunData
    loss_fn: nn.Module
    device: torch.device
    ctx: DistContext
    precision: str  # bf16, fp16 or fp32: what --precision resolved to on this hardware
    channels_last: bool
    ema: AveragedModel | None = None  # the moving average of the weights, when config.ema asks for one
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling, kept and resumed with the run
    data_by_size: dict[int, RunData] = field(default_factory=dict)

    @property
    def scored_model(self) -> nn.Module:
        """What is evaluated and kept: the moving average where there is one."""
        return self.ema.module if self.ema is not None else self.model

    def use_size(self, size: int) -> RunData:
        """Switch the splits and loaders to ``size`` (progressive resizing), normalised as at image_size."""
        if size not in self.data_by_size:
            self.data_by_size[size] = build_run_data(self.config, self.device, self.ctx, self.channels_last,
                                                     image_size=size, like=self.data)
        self.data = self.data_by_size[size]
        return self.data

    def evaluate(self, loader, tta: bool = False) -> PassOutputs:
        """Outputs on ``loader`` from every process, in dataset order (eyes fused as the config says),
        with the summed loss."""
        result = evaluate(self.scored_model, self.loss_fn, loader, device=self.device, precision=self.precision,
                          tta=tta)
        loss_sum, _ = self.ctx.sum(result.loss_sum, result.n)
        outputs, labels = self.gather(result)
        outputs = fuse_eyes(outputs, loader.source.index.names, self.config.fuse_eyes)
        return PassOutputs(loss_sum, outputs, labels, torch.arange(len(labels)), result.seconds)

    def gather(self, outputs: PassOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of all processes, ordered by dataset index."""
        parts = self.ctx.gather((outputs.outputs, outputs.labels, outputs.indices))
        order = torch.argsort(torch.cat([p[2] for p in parts]), stable=True)
        return torch.cat([p[0] for p in parts])[order], torch.cat([p[1] for p in parts])[order]


def build_components(config: TrainConfig, device: torch.device, ctx: DistContext | None = None) -> Components:
    """Seeded model (the weights first: a missing ImageNet file fails before any slow data work), data, loss."""
    ctx = ctx or DistContext()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    torch.manual_seed(config.seed)
    precision, channels_last = resolve_precision(device, config.precision), use_channels_last(device)
    model = build_model(config.arch, config.weights, num_classes=1 if config.is_regression else len(GRADES),
                        impl=config.impl).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = build_run_data(config, device, ctx, channels_last)
    counts = np.bincount(data.train.labels, minlength=len(GRADES))
    loss_fn = build_loss(config.loss, class_counts=counts, focal_gamma=config.focal_gamma,
                         class_weighting=config.class_weighting).to(device)
    ema = moving_average(model, config.ema) if config.ema else None
    return Components(config, model, data, loss_fn, device, ctx, precision, channels_last, ema,
                      grad_scaler(device, precision), {config.image_size: data})


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


def _train_locked(config, device, ctx, folder: RunFolder, on_epoch_end) -> pd.DataFrame:
    log = print if ctx.is_main else (lambda *args, **kwargs: None)
    fingerprint = data_fingerprint(config)
    state = folder.resume_state(config, fingerprint)
    folder.start(state)
    if folder.is_finished(state, config.epochs):
        log(f"{config.out}: run already complete ({state['epoch']} epochs), reusing it", flush=True)
        return history_frame(state["history"])

    parts = build_components(config, device, ctx)
    folder.write_config(config, fingerprint)
    setup = _describe(parts)
    log(setup, flush=True)
    folder.event("start", epochs=config.epochs, description=setup)

    column = selection_column(config)
    history, best, thresholds, first_epoch = [], {"metric": config.best_metric, "value": -math.inf, "epoch": 0}, None, 1
    if state is not None:
        parts.model.load_state_dict(state["model"])
        if parts.ema is not None:
            parts.ema.load_state_dict(state["ema"])
        if parts.scaler is not None and state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        history, best, thresholds = list(state["history"]), state["best"], state.get("thresholds")
        first_epoch = state["epoch"] + 1
        restore_rng_state(state["rng"])
        log(f"resuming {config.out} after epoch {state['epoch']}", flush=True)

    phase = None
    for epoch in range(first_epoch, config.epochs + 1):
        parts.use_size(config.size_at(epoch))
        if _phase(config, epoch) != phase:
            phase = _phase(config, epoch)
            train_model, optimizer, scheduler = _start_phase(parts, phase)
            if state is not None and epoch == first_epoch and _phase(config, state["epoch"]) == phase:
                optimizer.load_state_dict(state["optimizer"])  # same phase: continue its optimizer
                if scheduler is not None and state["scheduler"] is not None:
                    scheduler.load_state_dict(state["scheduler"])
        try:
            row, thresholds = _run_epoch(parts, epoch, phase, train_model, optimizer, scheduler)
        except torch.cuda.OutOfMemoryError:
            if epoch != first_epoch:
                raise
            raise out_of_memory(parts, train_model, config.size_at(epoch)) from None
        log(_epoch_line(row, config.epochs), flush=True)
        history.append(row)
        # Only epochs at the final size compete: the kept checkpoint is scored (and used) at image_size.
        improved = row[column] > best["value"] and config.size_at(epoch) == config.image_size
        if improved:
            best = {**best, "value": row[column], "epoch": epoch, "column": column}
        folder.save_epoch({
            "model": parts.model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "epoch": epoch,
            "config": config.to_dict(), "history": history, "rng": rng_state(), "best": best,
            "thresholds": thresholds, "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "data_fingerprint": fingerprint,
        }, improved)
        ctx.barrier()
        folder.event("epoch", **row)
        if on_epoch_end is not None:
            on_epoch_end(row)

    parts.use_size(config.image_size)
    predictions, metrics = _score_kept_checkpoint(parts, folder.best_state(), best)
    metrics.update(data_fingerprint=fingerprint, arithmetic=parts.precision)  # "precision" is per grade
    folder.finish(predictions, metrics)
    summary = (f"kept epoch {best['epoch']} ({column} {best['value']:.4f}); test, scored once: "
               f"acc {metrics['accuracy']:.2%} qwk {metrics['qwk']:.3f} macro-F1 {metrics['macro_f1']:.3f}; "
               f"wrote {config.out}/predictions.csv and metrics.json")
    log(summary, flush=True)
    folder.event("done", best_epoch=best["epoch"], accuracy=metrics["accuracy"], qwk=metrics["qwk"],
                 macro_f1=metrics["macro_f1"])
    return history_frame(history)


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


def _describe(parts: Components) -> str:
    config, ctx = parts.config, parts.ctx
    precision = PRECISION_LABELS[parts.precision]
    layout = "channels_last" if parts.channels_last else "NCHW"
    procs = f" x {ctx.world_size} processes" if ctx.enabled else ""
    val = len(parts.data.val) if parts.data.val is not None else 0
    return (f"{config.arch} (weights {config.weights or 'none'}, loss {config.loss}) on {config.data}: "
            f"{len(parts.data.train)} train / {val} validation / {len(parts.data.test)} test images at "
            f"{_sizes(config)} px; {parts.device} {precision} {layout}{procs}; batch {config.batch_size}")


def _sizes(config: TrainConfig) -> str:
    return " -> ".join(f"{size} ({epochs} epochs)" for size, epochs in config.size_stages()) if config.sizes \
        else str(config.image_size)


def _phase(config: TrainConfig, epoch: int) -> str:
    return "fe" if epoch <= config.fe_epochs else "ft"


def _start_phase(parts: Components, phase: str):
    """Freeze or unfreeze, then a fresh optimizer over what trains (as the reports did per phase)."""
    config = parts.config
    if phase == "fe":
        freeze_backbone(parts.model)
        optimizer, scheduler = build_optimizer(head_parameters(parts.model), config), None
    else:
        unfreeze_all(parts.model)
        optimizer = build_optimizer([p for p in parts.model.parameters() if p.requires_grad], config)
        scheduler = build_scheduler(optimizer, config, len(parts.data.train_loader) * (config.epochs - config.fe_epochs))
    model = parts.model
    if parts.ctx.enabled:
        ids = [parts.device.index] if parts.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        model = torch.compile(model)
    return model, optimizer, scheduler


def _run_epoch(parts: Components, epoch, phase, train_model, optimizer, scheduler) -> tuple[dict, list | None]:
    """Train once over the training split, then score validation and test: one history row."""
    config, ctx, data = parts.config, parts.ctx, parts.data
    start = time.perf_counter()
    data.start_epoch(epoch)
    set_train_mode(parts.model)
    lr = optimizer.param_groups[0]["lr"]
    train = train_one_epoch(train_model, parts.loss_fn, optimizer, data.train_loader, device=parts.device,
                            precision=parts.precision, scaler=parts.scaler, scheduler=scheduler, ema=parts.ema,
                            show_progress=config.progress and ctx.is_main,
                            desc=f"epoch {epoch}/{config.epochs} {phase} {data.train_loader.source.image_size}px")
    train_outputs, train_labels = parts.gather(train)
    val = parts.evaluate(data.val_loader) if data.val_loader is not None else None
    thresholds = None
    if config.is_regression:
        # Cut points from eval-mode scores of the validation split (of the training split without
        # one): the scores gathered while training come from batch statistics and a moving model.
        thresholds = _cut_points(parts, val if val is not None else parts.evaluate(data.train_eval_loader))
    loss_sum, n = ctx.sum(train.loss_sum, train.n)
    row = {"epoch": epoch, "phase": phase, "image_size": data.train_loader.source.image_size, "lr": lr,
           "train_loss": loss_sum / max(n, 1),
           "train_acc": float(np.mean(predict_grades(train_outputs, thresholds) == train_labels.numpy()))}
    for split, result in (("val", val), ("test", parts.evaluate(data.test_loader))):
        metrics = _metrics(result, thresholds) if result is not None else {}
        row.update({f"{split}_loss": metrics.get("loss", math.nan), f"{split}_acc": metrics.get("accuracy", math.nan),
                    f"{split}_qwk": metrics.get("qwk", math.nan), f"{split}_macro_f1": metrics.get("macro_f1", math.nan)})
    row.update({"seconds": time.perf_counter() - start, "images_per_s": n / max(train.seconds, 1e-9)})
    return row, thresholds


def _cut_points(parts: Components, tuning: PassOutputs) -> list[float]:
    """Regression cut points from eval-mode scores of the validation split, as ``config.cut_points`` says."""
    if parts.config.cut_points == "frequencies":
        thresholds = frequency_thresholds(tuning.outputs.numpy(), parts.data.train.labels)
    else:
        thresholds = tune_thresholds(tuning.outputs.numpy(), tuning.labels.numpy())
    return [float(t) for t in thresholds]


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs} [{row['phase']}] lr {row['lr']:.2e} | train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2%} | val acc {row['val_acc']:.2%} qwk {row['val_qwk']:.3f} | test acc "
            f"{row['test_acc']:.2%} qwk {row['test_qwk']:.3f} | {row['seconds']:.0f}s, {row['images_per_s']:.0f} img/s")


def _metrics(result: PassOutputs, thresholds) -> dict:
    pred = predict_grades(result.outputs, thresholds)
    metrics = compute_metrics(result.labels.numpy(), pred, referable_score=referable_scores(result.outputs))
    metrics["loss"] = result.loss_sum / max(result.n, 1)
    return metrics


def _calibration(val: PassOutputs, y_true, score, names, config: TrainConfig) -> dict:
    """``{"calibration": ...}``: the referable score calibrated on validation, measured on the test split;
    empty when validation lacks either class (nothing to fit)."""
    referable = val.labels.numpy() >= REFERABLE_GRADE
    if referable.all() or not referable.any():
        return {}
    calibrator = fit_calibrator(referable_scores(val.outputs), referable)
    return {"calibration": calibration_report(calibrator, config.is_regression, y_true, score, names,
                                              n_resamples=config.bootstrap, seed=config.seed)}


def _score_kept_checkpoint(parts: Components, kept: dict, best: dict) -> tuple[pd.DataFrame, dict]:
    """The kept checkpoint scored once on the test split, with its intervals and screening figures.

    Everything chosen (the checkpoint, the regression cut points, the screening thresholds) comes
    from the validation split; the test split only measures.
    """
    config, data = parts.config, parts.data
    parts.scored_model.load_state_dict(scored_weights(kept))
    cut_points = kept["thresholds"]
    val = parts.evaluate(data.val_loader, tta=config.tta) if data.val_loader is not None else None
    if config.tta and config.is_regression and val is not None:
        cut_points = _cut_points(parts, val)  # the cut points of the flip-averaged scores that are scored
    test = parts.evaluate(data.test_loader, tta=config.tta)
    metrics = _metrics(test, cut_points)
    names, y_true = list(data.test.names), test.labels.numpy()
    table = output_table(test.outputs, cut_points)
    table.insert(0, "name", names)
    table.insert(1, "true_grade", y_true)
    pred, score = table["pred_grade"].to_numpy(), table["referable_score"].to_numpy()
    if config.bootstrap:
        metrics["intervals"] = intervals(y_true, pred, score, names, n_resamples=config.bootstrap, seed=config.seed)
    screening_thresholds = {}
    if val is not None:
        metrics["validation"] = _metrics(val, cut_points)
        screening_thresholds = screening.choose_thresholds(val.labels.numpy(), referable_scores(val.outputs))
    metrics["screening"] = {
        "roc": screening.roc(y_true, score),
        "operating_points": screening.operating_points(screening_thresholds, y_true, score, names,
                                                       n_resamples=config.bootstrap, seed=config.seed),
    }
    if val is not None:
        metrics["screening"].update(_calibration(val, y_true, score, names, config))
    metrics.update({
        "eval_split": "test", "select_on": config.select_on if config.best_metric != "last" else "last epoch",
        "best_epoch": best["epoch"], "best_metric": best["metric"], "thresholds": cut_points, "tta": config.tta,
        "train_counts": np.bincount(data.train.labels, minlength=len(GRADES)).tolist(),
        "val_counts": np.bincount(data.val.labels, minlength=len(GRADES)).tolist() if data.val is not None else None,
        "eval_counts": np.bincount(data.test.labels, minlength=len(GRADES)).tolist(),
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "config": config.to_dict(),
    })
    return table, metrics
