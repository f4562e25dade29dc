"""The training run itself: set-up, the epoch loop, checkpoints and the run folder's files.

Reached through ``retino_utils.train.fit`` (which imports this module only when it trains, so the
command line answers bad settings before torch is imported).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import GRADES
from .atomic import remove_stale_temp_files, write_json, write_text
from .checkpoint import CheckpointDamaged, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import TrainConfig, save_config
from .device import resolve_device, use_bf16, use_channels_last
from .distributed import DistContext, init_distributed, shutdown_distributed
from .engine import PassOutputs, evaluate, predict_grades, referable_scores, train_one_epoch
from .errors import DiskFullError, RetinoError
from .loaders import RunData, build_run_data
from .losses import build_loss
from .losses.ordinal import tune_thresholds
from .metrics import compute_metrics
from .models import build_model, freeze_backbone, head_parameters, set_train_mode, unfreeze_all

HISTORY_COLUMNS = ["epoch", "phase", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_qwk",
                   "test_macro_f1", "seconds", "images_per_s"]
# "last" keeps the final epoch: no epoch is chosen by the evaluated split (honest test figures).
BEST_METRIC_COLUMNS = {"accuracy": "test_acc", "qwk": "test_qwk", "last": "epoch"}


def run_training(config: TrainConfig, on_epoch_end: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Train (or resume, or reuse a finished run) as ``config`` says; returns the per-epoch history."""
    device = resolve_device(config.device)
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        return _Run(config, device, ctx).run(on_epoch_end)
    finally:
        shutdown_distributed(ctx)


class _Run:
    """The state of one training run between epochs; ``run`` is the whole life cycle."""

    def __init__(self, config: TrainConfig, device: torch.device, ctx: DistContext):
        self.config, self.device, self.ctx = config, device, ctx
        self.out = Path(config.out)
        self.bf16 = use_bf16(device, config.precision)
        self.channels_last = use_channels_last(device)
        self.state = self._resume_state()

    # -- set-up ---------------------------------------------------------------------------------
    def _resume_state(self) -> dict | None:
        last = self.out / "last.pt"
        if not last.exists():
            return None
        if not self.config.resume:
            raise RetinoError(f"{self.out} already holds a training run: pass --resume to continue or reuse it, "
                              f"or choose another --out")
        state = self._read_last(last)
        saved = TrainConfig.from_dict(state["config"]).semantic_dict()
        wanted = self.config.semantic_dict()
        changed = [f"{k}: {saved[k]!r} -> {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
        if changed:
            raise RetinoError(f"{self.out} holds a run with another config ({'; '.join(changed)}): choose another "
                              f"--out for these settings, or continue that run with its own: "
                              f"python -m retino_utils.train --config {self.out / 'config.yaml'} --resume")
        return state

    def _read_last(self, last: Path) -> dict:
        """``last.pt``; when it is damaged, say what can be kept (an intact ``best.pt`` is a full checkpoint)."""
        try:
            return load_checkpoint(last)
        except CheckpointDamaged as damaged:
            best = self.out / "best.pt"
            try:
                epoch = load_checkpoint(best)["epoch"] if best.is_file() else None
            except CheckpointDamaged:
                epoch = None
            if epoch is None:
                raise RetinoError(f"{damaged}, and there is no intact best.pt beside it: no epoch of this run can "
                                  f"be recovered; move {self.out} aside and train again") from None
            raise RetinoError(f"{damaged}; best.pt (after epoch {epoch}) is intact and is kept: to continue from it, "
                              f"mv {last} {last}.damaged && cp {best} {last}, then rerun with --resume "
                              f"(the epochs after {epoch} are trained again)") from None

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def _setup(self) -> None:
        config = self.config
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
        torch.manual_seed(config.seed)
        # The model first: a missing ImageNet file must fail before any slow data work.
        self.model = build_model(config.arch, config.weights, num_classes=1 if config.is_regression else len(GRADES),
                                 impl=config.impl).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.data: RunData = build_run_data(config, self.device, self.ctx, self.channels_last)
        counts = np.bincount(self.data.train.labels, minlength=len(GRADES))
        self.loss_fn = build_loss(config.loss, class_counts=counts, focal_gamma=config.focal_gamma,
                                  class_weighting=config.class_weighting).to(self.device)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.yaml")
        precision = "bf16 autocast" if self.bf16 else "fp32"
        layout = "channels_last" if self.channels_last else "NCHW"
        procs = f" x {self.ctx.world_size} processes" if self.ctx.enabled else ""
        self._log(f"{config.arch} (weights {config.weights or 'none'}, loss {config.loss}) on {config.data}: "
                  f"{len(self.data.train)} train / {len(self.data.eval)} {self.data.eval_split} images at "
                  f"{config.image_size} px; {self.device} {precision} {layout}{procs}; batch {config.batch_size}")

    # -- optimisation ------------------------------------------------------------------------------
    def _phase(self, epoch: int) -> str:
        return "fe" if epoch <= self.config.fe_epochs else "ft"

    def _start_phase(self, phase: str):
        """Freeze or unfreeze, then a fresh optimizer over what trains (as the reports did per phase)."""
        config = self.config
        if phase == "fe":
            freeze_backbone(self.model)
            params = head_parameters(self.model)
        else:
            unfreeze_all(self.model)
            params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        steps = len(self.data.train_loader) * (config.epochs - config.fe_epochs)
        scheduler = None
        if phase == "ft" and config.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
        elif phase == "ft" and config.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(steps, 1))
        model = self.model
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if config.compile:
            model = torch.compile(model)
        return model, optimizer, scheduler

    # -- the life cycle ----------------------------------------------------------------------------
    def run(self, on_epoch_end) -> pd.DataFrame:
        state = self.state
        if self.ctx.is_main:
            remove_stale_temp_files(self.out)  # left by a run killed while writing
            if state is not None:  # the checkpoint is the truth: a crash may have cut history.csv short
                self._write_history(state["history"])
        if state is not None and state["epoch"] >= self.config.epochs and (self.out / "metrics.json").exists():
            self._log(f"{self.out}: run already complete ({state['epoch']} epochs), reusing it")
            return pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
        self._setup()
        history: list[dict] = []
        best = {"metric": self.config.best_metric, "value": -math.inf, "epoch": 0}
        thresholds = None
        start_epoch, phase, train_model, optimizer, scheduler = 1, None, None, None, None
        if state is not None:
            self.model.load_state_dict(state["model"])
            history, best, thresholds = list(state["history"]), state["best"], state.get("thresholds")
            start_epoch = state["epoch"] + 1
            if start_epoch <= self.config.epochs:
                phase = self._phase(start_epoch)
                train_model, optimizer, scheduler = self._start_phase(phase)
                if self._phase(state["epoch"]) == phase:  # same phase: continue its optimizer
                    optimizer.load_state_dict(state["optimizer"])
                    if scheduler is not None and state["scheduler"] is not None:
                        scheduler.load_state_dict(state["scheduler"])
            restore_rng_state(state["rng"])
            self._log(f"resuming {self.out} after epoch {state['epoch']}")

        for epoch in range(start_epoch, self.config.epochs + 1):
            if self._phase(epoch) != phase:
                phase = self._phase(epoch)
                train_model, optimizer, scheduler = self._start_phase(phase)
            row, thresholds = self._epoch(epoch, phase, train_model, optimizer, scheduler)
            history.append(row)
            value = row[BEST_METRIC_COLUMNS[best["metric"]]]
            improved = value > best["value"]
            if improved:
                best = {**best, "value": value, "epoch": epoch}
            self._save(epoch, history, best, thresholds, optimizer, scheduler, improved)
            if on_epoch_end is not None:
                on_epoch_end(row)
        self._finish(best)
        return pd.DataFrame(history, columns=HISTORY_COLUMNS)

    def _epoch(self, epoch, phase, train_model, optimizer, scheduler):
        config, ctx = self.config, self.ctx
        start = time.perf_counter()
        self.data.train_loader.set_epoch(epoch)
        set_train_mode(self.model)
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(train_model, self.loss_fn, optimizer, self.data.train_loader, device=self.device,
                                bf16=self.bf16, scheduler=scheduler, show_progress=config.progress and ctx.is_main,
                                desc=f"epoch {epoch}/{config.epochs} {phase}")
        train_outputs, train_labels = self._gather(train)
        thresholds = None
        if config.is_regression:
            # Cut points from eval-mode scores of the training split: the scores gathered while
            # training come from batch statistics and a moving model, and mislead early on.
            clean = self._evaluate(self.data.train_eval_loader)
            thresholds = tune_thresholds(clean.outputs.numpy(), clean.labels.numpy())
        train_pred = predict_grades(train_outputs, thresholds)
        loss_sum, n = ctx.sum(train.loss_sum, train.n)
        test = self._evaluate(self.data.eval_loader)
        metrics = self._metrics(test, thresholds)
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch, "phase": phase, "lr": lr,
            "train_loss": loss_sum / max(n, 1), "train_acc": float(np.mean(train_pred == train_labels.numpy())),
            "test_loss": metrics["loss"], "test_acc": metrics["accuracy"], "test_qwk": metrics["qwk"],
            "test_macro_f1": metrics["macro_f1"], "seconds": seconds, "images_per_s": n / max(train.seconds, 1e-9),
        }
        self._log(f"epoch {epoch}/{config.epochs} [{phase}] lr {lr:.2e} | train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:.2%} | {self.data.eval_split} loss {row['test_loss']:.4f} "
                  f"acc {row['test_acc']:.2%} qwk {row['test_qwk']:.3f} macro-F1 {row['test_macro_f1']:.3f} | "
                  f"{seconds:.0f}s, {row['images_per_s']:.0f} img/s")
        return row, (None if thresholds is None else [float(t) for t in thresholds])

    def _gather(self, outputs: PassOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of all processes, ordered by dataset index."""
        parts = self.ctx.gather((outputs.outputs, outputs.labels, outputs.indices))
        out = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        order = torch.argsort(torch.cat([p[2] for p in parts]), stable=True)
        return out[order], labels[order]

    def _evaluate(self, loader, tta: bool = False) -> PassOutputs:
        result = evaluate(self.model, self.loss_fn, loader, device=self.device, bf16=self.bf16, tta=tta)
        loss_sum, _ = self.ctx.sum(result.loss_sum, result.n)
        outputs, labels = self._gather(result)
        return PassOutputs(loss_sum, outputs, labels, torch.arange(len(labels)), result.seconds)

    def _metrics(self, result: PassOutputs, thresholds) -> dict:
        pred = predict_grades(result.outputs, thresholds)
        metrics = compute_metrics(result.labels.numpy(), pred, referable_score=referable_scores(result.outputs))
        metrics["loss"] = result.loss_sum / max(result.n, 1)
        return metrics

    def _save(self, epoch, history, best, thresholds, optimizer, scheduler, improved) -> None:
        if self.ctx.is_main:
            state = {
                "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch, "config": self.config.to_dict(), "history": history, "rng": rng_state(),
                "best": best, "thresholds": thresholds,
            }
            try:
                if improved:
                    save_checkpoint(state, self.out / "best.pt")
                save_checkpoint(state, self.out / "last.pt")
            except DiskFullError as full:
                kept = f"last.pt still holds epoch {epoch - 1}" if epoch > 1 else "no epoch was saved yet"
                raise DiskFullError(f"{full}; {kept}: free some space, then continue with --resume "
                                    f"(it restarts after the last complete epoch)") from None
            self._write_history(history)
        self.ctx.barrier()

    def _write_history(self, history: list[dict]) -> None:
        write_text(self.out / "history.csv", pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(index=False))

    def _finish(self, best: dict) -> None:
        """Predictions and metrics of the best checkpoint on the evaluated split."""
        config = self.config
        best_state = load_checkpoint(self.out / "best.pt")
        self.model.load_state_dict(best_state["model"])
        thresholds = best_state["thresholds"]  # tuned on the training split, never on the evaluated one
        result = self._evaluate(self.data.eval_loader, tta=config.tta)
        metrics = self._metrics(result, thresholds)
        if not self.ctx.is_main:
            return
        names = np.asarray(self.data.eval.names)
        pred = predict_grades(result.outputs, thresholds)
        table = pd.DataFrame({"name": names, "true_grade": result.labels.numpy(), "pred_grade": pred})
        if result.outputs.ndim == 1:
            table["score"] = result.outputs.numpy()
        else:
            probs = torch.softmax(result.outputs.double(), 1).numpy()
            for grade in GRADES:
                table[f"p{grade}"] = probs[:, grade]
        write_text(self.out / "predictions.csv", table.to_csv(index=False, float_format="%.6f"))
        metrics.update({
            "eval_split": self.data.eval_split, "best_epoch": best["epoch"], "best_metric": best["metric"],
            "thresholds": thresholds, "tta": config.tta,
            "train_counts": np.bincount(self.data.train.labels, minlength=len(GRADES)).tolist(),
            "eval_counts": np.bincount(self.data.eval.labels, minlength=len(GRADES)).tolist(),
            "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "config": config.to_dict(),
        })
        write_json(self.out / "metrics.json", metrics)
        self._log(f"best epoch {best['epoch']} ({best['metric']} {best['value']:.4f}); {self.data.eval_split}: "
                  f"acc {metrics['accuracy']:.2%} qwk {metrics['qwk']:.3f} macro-F1 {metrics['macro_f1']:.3f}; "
                  f"wrote {self.out}/predictions.csv and metrics.json")
