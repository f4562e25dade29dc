"""The report's figures, drawn with seaborn from tidy frames. Each function returns a matplotlib Figure;
``save_figure`` writes a PNG atomically.

The house style is set here and nowhere else (``HOUSE_STYLE``). No backend is chosen: notebooks draw
inline, scripts get matplotlib's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from retino_utils import GRADE_NAMES, GRADES, NUM_CLASSES
from retino_utils.atomic import atomic_path

HOUSE_STYLE = {"style": "ticks", "context": "notebook", "palette": "tab10", "font_scale": 0.9}
sns.set_theme(**HOUSE_STYLE)

GRADE_LABELS = [f"{g}\n{n}" for g, n in zip(GRADES, GRADE_NAMES)]
SPLIT_LABELS = {"train": "train", "test": "test"}
CMAP = "Blues"
FIGURE_LABELS = {"accuracy": "accuracy", "qwk": "QWK", "macro_f1": "macro-F1", "referable_auc": "referable AUC"}


def nothing_to_draw(message: str = "no finished run to show yet") -> Figure:
    """A small figure that says why it is empty (missing runs), instead of failing the notebook."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", color="0.4", transform=ax.transAxes)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def grade_distribution(counts: Mapping[str, Sequence[int]]) -> Figure:
    """Share of each grade per split, bars annotated with counts: the imbalance at a glance."""
    rows = []
    for split, values in counts.items():
        values = np.asarray(values, dtype=float)
        for grade, count in zip(GRADES, values):
            rows.append({"grade": GRADE_LABELS[grade], "split": f"{split} ({int(values.sum())} images)",
                         "share of images (%)": 100 * count / values.sum(), "count": int(count)})
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(frame, x="grade", y="share of images (%)", hue="split", ax=ax)
    for container, (_, split) in zip(ax.containers, frame.groupby("split", sort=False)):
        ax.bar_label(container, labels=split["count"].tolist(), fontsize=8, padding=2)
    ax.set(xlabel="", title="Images per grade")
    ax.legend(frameon=False, title=None)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def preparation_spreads(stats: pd.DataFrame) -> Figure:
    """Each channel's spread inside the retina per source, one panel per preparation (``preparation_comparison``'s
    table): one look for every source means bars of equal height within a panel."""
    frame = stats.reset_index().melt(id_vars=["preparation", "source"], value_vars=[f"{c} spread" for c in "RGB"],
                                     var_name="channel", value_name="spread inside the retina (grey levels)")
    frame["channel"] = frame["channel"].str[0]
    grid = sns.catplot(frame, kind="bar", x="channel", y="spread inside the retina (grey levels)", hue="source",
                       col="preparation", height=3.2, aspect=1.1)
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Contrast the model sees, per source and preparation", y=1.03)
    return grid.figure


def sample_grid(samples: Mapping[int | str, Sequence[np.ndarray]], title: str | None = None) -> Figure:
    """Rows of sample images, one row per grade (int keys) or per named row (str keys)."""
    columns = max((len(v) for v in samples.values()), default=1)
    fig, axes = plt.subplots(len(samples), columns, figsize=(1.6 * columns, 1.7 * len(samples)), squeeze=False)
    for row, (grade, images) in zip(axes, samples.items()):
        for col, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if col < len(images):
                ax.imshow(images[col])
        label = GRADE_LABELS[grade].replace("\n", " ") if isinstance(grade, int) else grade
        row[0].set_ylabel(label.replace(" · ", "\n"), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def history_long(history: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """A run's history as one row per (epoch, split): the tidy form seaborn draws from."""
    parts = []
    for split in SPLIT_LABELS:
        part = history[["epoch", "phase", f"{split}_acc", f"{split}_loss"]].rename(
            columns={f"{split}_acc": "accuracy", f"{split}_loss": "loss"})
        parts.append(part.assign(split=split, run=label, **{"accuracy (%)": 100 * part["accuracy"]}))
    return pd.concat(parts, ignore_index=True)


def _shade_feature_extraction(ax, history: pd.DataFrame) -> None:
    fe = history[history.phase == "fe"]
    if len(fe):
        ax.axvspan(0.5, fe.epoch.max() + 0.5, color="0.92", zorder=0)
        ax.text(0.6, 0.02, "backbone frozen", transform=ax.get_xaxis_transform(), fontsize=8, color="0.4")


def _baseline(ax, baseline: float | None) -> None:
    if baseline is not None:
        ax.axhline(100 * baseline, ls=":", color="0.3", label="always grade 0")


def training_curves(history: pd.DataFrame, title: str = "", baseline: float | None = None) -> Figure:
    """Accuracy and loss per epoch on the training and evaluated splits."""
    frame = history_long(history)
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column in ((acc_ax, "accuracy (%)"), (loss_ax, "loss")):
        _shade_feature_extraction(ax, history)
        sns.lineplot(frame, x="epoch", y=column, hue="split", style="split", markers=True, dashes=False, ax=ax)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _baseline(acc_ax, baseline)
    acc_ax.legend(frameon=False)
    loss_ax.legend(frameon=False)
    if title:
        fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def comparison_curves(histories: Mapping[str, pd.DataFrame], title: str, baseline: float | None = None) -> Figure:
    """Train and test accuracy per epoch for several runs in one axis (as the reports compared them)."""
    frame = pd.concat([history_long(history, label) for label, history in histories.items()], ignore_index=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    sns.lineplot(frame, x="epoch", y="accuracy (%)", hue="run", style="split", markers=True, ax=ax)
    _baseline(ax, baseline)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    sns.despine(fig)
    fig.tight_layout()
    return fig


def draw_confusion(ax, counts: np.ndarray, title: str = "", colorbar: bool = True):
    """A confusion matrix normalised over true grades; each cell shows its share and its count of photos."""
    counts = np.asarray(counts, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labels = np.vectorize(lambda share, n: f"{share:.2f}\n{int(n)}")(shares, counts)
    rows = [f"{g} {name} (n={int(n)})" for g, name, n in zip(GRADES, GRADE_NAMES, counts.sum(axis=1))]
    sns.heatmap(pd.DataFrame(shares, index=rows, columns=[str(g) for g in GRADES]), annot=labels, fmt="",
                annot_kws={"fontsize": 7}, cmap=CMAP, vmin=0, vmax=1, square=True, ax=ax, cbar=colorbar,
                cbar_kws={"label": "share of the true grade", "shrink": 0.8})
    ax.set(xlabel="predicted grade", ylabel="true grade")
    ax.tick_params(axis="y", labelsize=8, rotation=0)
    ax.set_title(title, fontsize=10)


def confusion_figure(counts: np.ndarray, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    draw_confusion(ax, counts, title)
    fig.tight_layout()
    return fig


def confusion_grid(panels: Mapping[str, np.ndarray | None], ncols: int = 2, missing_note: str = "not run") -> Figure:
    """Several confusion matrices (counts) on one colour scale; a ``None`` entry leaves a labelled empty panel."""
    if not panels:
        return nothing_to_draw()
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.4 * nrows), squeeze=False)
    for ax, (title, counts) in zip(axes.flat, panels.items()):
        if counts is None:
            ax.set_axis_off()
            ax.set_title(title, fontsize=10)
            ax.text(0.5, 0.5, missing_note, ha="center", va="center", fontsize=10, color="0.4", wrap=True,
                    transform=ax.transAxes)
        else:
            draw_confusion(ax, counts, title, colorbar=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    mappable = plt.cm.ScalarMappable(cmap=CMAP, norm=plt.Normalize(0, 1))
    fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02, label="share of the true grade")
    return fig


def recall_bars(recall: pd.DataFrame) -> Figure:
    """Recall per grade for several runs (rows): where each remedy buys sensitivity on the rare grades."""
    if recall.empty:
        return nothing_to_draw()
    frame = (100 * recall).rename_axis("run").reset_index().melt(id_vars="run", var_name="grade",
                                                                  value_name="recall (%)")
    fig, ax = plt.subplots(figsize=(10, 4))
    sns.barplot(frame, x="grade", y="recall (%)", hue="run", ax=ax)
    ax.set(ylim=(0, 105), xlabel="", title="Recall per grade")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    sns.despine(fig)
    fig.tight_layout()
    return fig


def roc_curves(curves: Mapping[str, dict], reference_points: Mapping[str, tuple[float, float]]) -> Figure:
    """ROC curves of the referable score for several runs, their operating points, and published ones.

    ``curves``: legend label -> a run's ``Screening`` (its ``roc`` and ``operating_points``);
    ``reference_points``: label -> (sensitivity, specificity) drawn as black marks for comparison.
    """
    if not curves:
        return nothing_to_draw()
    fig, ax = plt.subplots(figsize=(10.5, 6))
    palette = sns.color_palette(n_colors=max(len(curves), 1))
    for color, (label, screening) in zip(palette, curves.items()):
        roc = screening.roc
        if not roc["fpr"]:
            continue
        sns.lineplot(x=roc["fpr"], y=roc["tpr"], drawstyle="steps-post", color=color, label=label, ax=ax,
                     errorbar=None)
        for name, point in screening.operating_points.items():
            if point["sensitivity"] is not None:
                ax.plot(1 - point["specificity"], point["sensitivity"], "o" if name == "target" else "s",
                        color=color, markeredgecolor="black", markersize=7)
    for (label, (sensitivity, specificity)), marker in zip(reference_points.items(), "*PX"):
        ax.plot(1 - specificity, sensitivity, marker, color="black", markersize=10, label=label)
    ax.plot([0, 1], [0, 1], ls=":", color="0.6")
    ax.plot([], [], "o", color="0.5", markeredgecolor="black", label="operating point: sensitivity target")
    ax.plot([], [], "s", color="0.5", markeredgecolor="black", label="operating point: Youden")
    ax.set(xlabel="1 - specificity (false referrals among non-referable)", ylabel="sensitivity (referable DR found)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="Referable DR (grade 2 or worse): ROC on the test split")
    ax.set_aspect("equal")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    sns.despine(fig)
    fig.tight_layout()
    return fig


def filled_bins(table: dict) -> tuple[list[float], list[float], np.ndarray]:
    """Of a reliability table: mean prediction, observed rate and photo count of the bins that hold photos."""
    shown = [i for i, n in enumerate(table["count"]) if n > 0]
    return ([table["predicted"][i] for i in shown], [table["observed"][i] for i in shown],
            np.asarray(table["count"])[shown])


def reliability_diagram(calibrations: Mapping[str, dict]) -> Figure:
    """Observed referable rate against calibrated probability per bin, with the bins' photo counts below.

    ``calibrations``: legend label -> a run's ``Screening.calibration``. Points on the
    diagonal are calibrated; the counts show which bins hold enough photos to judge.
    """
    if not calibrations:
        return nothing_to_draw("no run with a calibrated referable score to show yet")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    palette = sns.color_palette(n_colors=len(calibrations))
    width = 0.1 / (len(calibrations) + 1)
    for i, (color, (label, calibration)) in enumerate(zip(palette, calibrations.items())):
        table = calibration["reliability"]
        predicted, observed, _ = filled_bins(table)
        top.plot(predicted, observed, "o-", color=color, label=label)
        centres = np.asarray(table["edges"][:-1]) + (i + 1) * width
        bottom.bar(centres, table["count"], width=width, color=color)
    top.plot([0, 1], [0, 1], ls=":", color="0.6", label="perfectly calibrated")
    top.set(ylabel="observed share referable (grade 2 or worse)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
            title="Referable DR: calibrated probability on the test split")
    top.legend(frameon=False, fontsize=8, loc="upper left")
    bottom.set(xlabel="calibrated referable probability (bin)", ylabel="photos per bin")
    sns.despine(fig)
    fig.tight_layout()
    return fig


def reliability_grid(panels: Mapping[str, Mapping[str, dict]], ncols: int = 4) -> Figure:
    """One small reliability diagram per run, a line per source (e.g. internal test, an external set).

    ``panels``: panel title -> {source label -> a calibration as ``calibration.calibration_report`` makes it};
    each point is a bin holding photos, its size the bin's share of them."""
    if not panels:
        return nothing_to_draw("no run with a calibrated referable score to show yet")
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    sources = list(dict.fromkeys(source for panel in panels.values() for source in panel))
    colors = dict(zip(sources, sns.color_palette(n_colors=len(sources))))
    for ax, (title, panel) in zip(axes.flat, panels.items()):
        ax.plot([0, 1], [0, 1], ls=":", color="0.6")
        for source, calibration in panel.items():
            predicted, observed, counts = filled_bins(calibration["reliability"])
            ax.plot(predicted, observed, "-", color=colors[source])
            ax.scatter(predicted, observed, s=10 + 200 * counts / max(counts.sum(), 1), color=colors[source],
                       label=source, zorder=3)
        ax.set_title(title, fontsize=9)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("observed share referable")
    for ax in axes[-1]:
        ax.set_xlabel("calibrated probability")
    handles = [plt.Line2D([], [], marker="o", color=colors[source], label=source) for source in sources]
    fig.legend(handles=handles, loc="lower center", ncol=len(sources), frameon=False)
    sns.despine(fig)
    fig.tight_layout(rect=(0, 0.6 / (3.2 * nrows + 0.6) + 0.02, 1, 1))
    return fig


def overlay_grid(cells: Mapping[tuple[int, str], tuple[object, str]], title: str,
                 kinds: Sequence[str] = ("correct", "wrong")) -> Figure:
    """Overlays in a grid: one row per grade, one column per kind; an absent cell says so."""
    fig, axes = plt.subplots(NUM_CLASSES, len(kinds), figsize=(2.6 * len(kinds), 2.5 * NUM_CLASSES), squeeze=False)
    for grade, row in zip(GRADES, axes):
        for kind, ax in zip(kinds, row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if (grade, kind) in cells:
                picture, caption = cells[(grade, kind)]
                ax.imshow(picture)
                ax.set_xlabel(caption, fontsize=7)
            else:
                ax.text(0.5, 0.5, f"no {kind} grade-{grade} photo", ha="center", va="center", fontsize=8,
                        color="0.4", transform=ax.transAxes)
            if grade == GRADES[0]:
                ax.set_title(kind, fontsize=10)
        label = GRADE_LABELS[grade].replace("\n", " ") if isinstance(grade, int) else grade
        row[0].set_ylabel(label.replace(" · ", "\n"), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def interval_dots(frame: pd.DataFrame, title: str = "") -> Figure:
    """One panel per figure: each run's value as a dot with its 95% interval as a bar (``results.interval_frame``);
    with a ``source`` column (e.g. internal test, an external set) one dot per source, side by side."""
    if frame.empty:
        return nothing_to_draw()
    figures = list(dict.fromkeys(frame["figure"]))
    runs = list(dict.fromkeys(frame["run"]))
    sources = list(dict.fromkeys(frame["source"])) if "source" in frame else [None]
    fig, axes = plt.subplots(1, len(figures), figsize=(3.6 * len(figures), (0.3 + 0.25 * len(sources)) * len(runs) + 1.6),
                             sharey=True, squeeze=False)
    offsets = np.linspace(-0.2, 0.2, len(sources)) if len(sources) > 1 else [0.0]
    for ax, figure in zip(axes[0], figures):
        for source, offset, color in zip(sources, offsets, sns.color_palette(n_colors=len(sources))):
            part = frame[(frame["figure"] == figure) & ((frame["source"] == source) if source else True)]
            y = np.array([runs.index(run) for run in part["run"]]) + offset
            ax.errorbar(part["value"], y, xerr=[part["value"] - part["low"], part["high"] - part["value"]], fmt="o",
                        color=color, ecolor=color if source else "0.4", capsize=3, label=source)
        ax.set(title=FIGURE_LABELS.get(figure, figure), yticks=np.arange(len(runs)), yticklabels=runs)
        ax.invert_yaxis()
        ax.grid(axis="x", color="0.9")
    if sources[0] is not None:
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(sources), frameon=False)
    if title:
        fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout(rect=(0, 0.08 if sources[0] is not None else 0, 1, 1))
    return fig
