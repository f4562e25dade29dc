"""What the data-statistics notebook shows: counts per grade, sample photos, sizes, channel stats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from PIL import Image

from .. import GRADE_NAMES, GRADES
from .images import load_resized
from .layouts import SplitIndex
from .stats import ChannelStats
from .transforms import IMAGENET_MEAN, IMAGENET_STD, REPORT_MEAN, REPORT_STD

GRADE_INDEX = [f"{g} {n}" for g, n in zip(GRADES, GRADE_NAMES)]


def grade_table(splits: Mapping[str, SplitIndex]) -> pd.DataFrame:
    """Photos per grade and split, with each grade's share of its split."""
    columns = {}
    for name, index in splits.items():
        counts = index.grade_counts()
        columns[(name, "photos")] = counts
        columns[(name, "share")] = [f"{100 * c / max(counts.sum(), 1):.1f}%" for c in counts]
    table = pd.DataFrame(columns, index=GRADE_INDEX)
    table.loc["total"] = [v.sum() if kind == "photos" else "100.0%" for (_, kind), v in columns.items()]
    return table


def imbalance_note(train: SplitIndex) -> str:
    """The imbalance in one sentence, with the accuracy of always answering the majority grade."""
    counts = train.grade_counts()
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    rarest = int(counts.argmin())
    return (f"Grade {top} ({GRADE_NAMES[top]}) holds **{share:.1%}** of the {counts.sum()} training photos, so a "
            f"model that always answers grade {top} is right {share:.1%} of the time on data like this; the "
            f"rarest grade, {rarest} ({GRADE_NAMES[rarest]}), has {counts[rarest]} photos "
            f"({counts[top] / max(counts[rarest], 1):.0f} times fewer).")


def samples_per_grade(index: SplitIndex, per_grade: int = 6, image_size: int = 256,
                      seed: int = 0) -> dict[int, list[np.ndarray]]:
    """A few photos of each grade (drawn reproducibly), decoded as the training pipeline sees them."""
    rng = np.random.default_rng(seed)
    samples = {}
    for grade in GRADES:
        positions = np.flatnonzero(index.labels == grade)
        chosen = rng.choice(positions, size=min(per_grade, len(positions)), replace=False)
        samples[grade] = [load_resized(index.paths[i], image_size) for i in sorted(chosen)]
    return samples


def image_size_table(index: SplitIndex, limit: int = 10) -> pd.DataFrame:
    """Image sizes on disk (read from the file headers, nothing decoded), most frequent first."""
    sizes = Counter()
    for path in index.paths:
        with Image.open(path) as image:
            sizes[image.size] += 1
    rows = {f"{w} x {h}": n for (w, h), n in sizes.most_common(limit)}
    return pd.DataFrame({"photos": rows}).rename_axis("width x height")


def stats_table(stats: ChannelStats) -> pd.DataFrame:
    """Our channel statistics beside the reports' published ones and ImageNet's."""
    rows = {
        "mean (per-image average)": stats.mean,
        "std (per-image average)": stats.std,
        "std (pooled over all pixels)": stats.pooled_std,
        "reports' 512 px train mean": REPORT_MEAN,
        "reports' 512 px train std": REPORT_STD,
        "ImageNet mean": IMAGENET_MEAN,
        "ImageNet std": IMAGENET_STD,
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["red", "green", "blue"]).round(4)


def provenance_note(root) -> str:
    """Where the photos come from; for synthetic data, how it was made and what it exaggerates."""
    record = Path(root) / "synthetic.json"
    if not record.is_file():
        return f"Photos from `{root}`."
    params = json.loads(record.read_text())
    note = (f"These are **synthetic** fundus photos drawn by `retino_utils.synthetic` ({params['n_train']} training "
            f"and {params['n_test']} test images, {params['size']} px, seed {params['seed']}), not real patients.")
    scale = params.get("lesion_scale", 1.0)
    if scale != 1.0:
        note += (f" Lesions are drawn **{scale:g} times their real size**: at the resolution a CPU demo trains at, "
                 f"real microaneurysms and haemorrhages would be smaller than a pixel.")
    return note
