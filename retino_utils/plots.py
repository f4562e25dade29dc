"""The report's figures. Each function returns a matplotlib Figure; ``save_figure`` writes a PNG atomically.

No backend is chosen here: notebooks draw inline, scripts get matplotlib's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import GRADE_NAMES, GRADES
from .atomic import atomic_path

GRADE_LABELS = [f"{g}\n{n}" for g, n in zip(GRADES, GRADE_NAMES)]
SPLIT_COLORS = {"train": "#1f77b4", "test": "#ff7f0e", "holdout": "#2ca02c"}
CMAP = "Blues"


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def grade_distribution(counts: Mapping[str, Sequence[int]]) -> Figure:
    """Share of each grade per split, bars annotated with counts: the imbalance at a glance."""
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        values = np.asarray(values, dtype=float)
        shares = values / values.sum()
        x = np.arange(len(GRADES)) + (i - (len(counts) - 1) / 2) * width
        bars = ax.bar(x, 100 * shares, width, label=f"{split} ({int(values.sum())} images)",
                      color=SPLIT_COLORS.get(split))
        for bar, count in zip(bars, values):
            ax.annotate(f"{int(count)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(GRADES)), GRADE_LABELS)
    ax.set_ylabel("share of images (%)")
    ax.set_title("Images per grade")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def sample_grid(samples: Mapping[int, Sequence[np.ndarray]], title: str | None = None) -> Figure:
    """Rows of sample images, one row per grade."""
    columns = max((len(v) for v in samples.values()), default=1)
    fig, axes = plt.subplots(len(samples), columns, figsize=(1.6 * columns, 1.7 * len(samples)), squeeze=False)
    for row, (grade, images) in zip(axes, samples.items()):
        for col, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if col < len(images):
                ax.imshow(images[col])
        row[0].set_ylabel(GRADE_LABELS[grade].replace("\n", " "), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _shade_feature_extraction(ax, history: pd.DataFrame) -> None:
    fe = history[history.phase == "fe"]
    if len(fe):
        ax.axvspan(0.5, fe.epoch.max() + 0.5, color="0.92", zorder=0)
        ax.text(0.6, 0.02, "backbone frozen", transform=ax.get_xaxis_transform(), fontsize=8, color="0.4")


def training_curves(history: pd.DataFrame, title: str = "", baseline: float | None = None) -> Figure:
    """Accuracy and loss per epoch on the training and evaluated splits."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column, name in ((acc_ax, "acc", "accuracy (%)"), (loss_ax, "loss", "loss")):
        scale = 100 if column == "acc" else 1
        _shade_feature_extraction(ax, history)
        ax.plot(history.epoch, scale * history[f"train_{column}"], "o-", label="train")
        ax.plot(history.epoch, scale * history[f"test_{column}"], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.spines[["top", "right"]].set_visible(False)
    if baseline is not None:
        acc_ax.axhline(100 * baseline, ls=":", color="0.3", label="always grade 0")
    acc_ax.legend(frameon=False)
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def comparison_curves(histories: Mapping[str, pd.DataFrame], title: str, baseline: float | None = None) -> Figure:
    """Train and test accuracy per epoch for several runs in one axis (as the reports compared them)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, history) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        ax.plot(history.epoch, 100 * history.train_acc, "o--", color=color, alpha=0.7, label=f"train: {label}")
        ax.plot(history.epoch, 100 * history.test_acc, "s-", color=color, label=f"test: {label}")
    if baseline is not None:
        ax.axhline(100 * baseline, ls=":", color="0.3", label="always grade 0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def draw_confusion(ax, confusion: np.ndarray, title: str = "", vmax: float = 1.0):
    """A confusion matrix normalised over true grades, each cell annotated; returns the image for a colorbar."""
    confusion = np.asarray(confusion, dtype=float)
    image = ax.imshow(confusion, cmap=CMAP, vmin=0, vmax=vmax)
    for (i, j), value in np.ndenumerate(confusion):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if value > 0.6 * vmax else "black")
    ticks = range(len(GRADES))
    ax.set_xticks(ticks, [str(g) for g in GRADES])
    ax.set_yticks(ticks, [f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)], fontsize=8)
    ax.set_xlabel("predicted grade")
    ax.set_ylabel("true grade")
    ax.set_title(title, fontsize=10)
    return image


def confusion_figure(confusion: np.ndarray, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 4.3))
    image = draw_confusion(ax, confusion, title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true grade")
    fig.tight_layout()
    return fig


def confusion_grid(confusions: Mapping[str, np.ndarray | None], ncols: int = 2, missing_note: str = "not run") -> Figure:
    """Several confusion matrices on one colour scale; a ``None`` entry leaves a labelled empty panel."""
    nrows = int(np.ceil(len(confusions) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.1 * nrows), squeeze=False)
    image = None
    for ax, (title, confusion) in zip(axes.flat, confusions.items()):
        if confusion is None:
            ax.set_axis_off()
            ax.set_title(title, fontsize=10)
            ax.text(0.5, 0.5, missing_note, ha="center", va="center", fontsize=10, color="0.4", wrap=True,
                    transform=ax.transAxes)
        else:
            image = draw_confusion(ax, confusion, title)
    for ax in list(axes.flat)[len(confusions):]:
        ax.set_axis_off()
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02, label="share of the true grade")
    return fig


def recall_bars(recall: pd.DataFrame) -> Figure:
    """Recall per grade for several runs: where each loss buys sensitivity on the rare grades."""
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(recall)
    for i, (run, values) in enumerate(recall.iterrows()):
        x = np.arange(recall.shape[1]) + (i - (len(recall) - 1) / 2) * width
        ax.bar(x, 100 * values.to_numpy(dtype=float), width, label=run)
    ax.set_xticks(range(recall.shape[1]), GRADE_LABELS)
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Recall per grade")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
