"""What the data-statistics notebook shows: counts per grade, sample photos, sizes, channel stats, and
what each preparation makes of photos from different sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from retino_utils import GRADE_NAMES, GRADES
from retino_utils.data.images import load_resized, load_rgb
from retino_utils.data.layouts import SplitIndex
from retino_utils.data.preprocess import prepared_with_retina
from retino_utils.data.stats import ChannelStats
from retino_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD, REPORT_MEAN, REPORT_STD

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


def synthetic_record(root) -> dict | None:
    """How a synthetic dataset was generated (its ``synthetic.json``), or None for real photos."""
    record = Path(root) / "synthetic.json"
    return json.loads(record.read_text()) if record.is_file() else None


def preparation_comparison(sources: Mapping[str, Sequence[Path]], preparations: Sequence[str], size: int = 256,
                           per_source: int = 40, shown: int = 5,
                           seed: int = 0) -> tuple[dict[str, list[np.ndarray]], pd.DataFrame]:
    """The same ``shown`` photos of each source under each preparation (rows ``"<source> · <preparation>"``, by
    preparation), and a table of the channel statistics inside the retina of ``per_source`` photos (drawn
    reproducibly): one look for every source means equal rows there.

    Statistics per photo (mean and standard deviation of each channel over its retina), then their mean over
    the source's photos; the spread is what a model sees as contrast.
    """
    rng = np.random.default_rng(seed)
    photos_of = {source: [load_rgb(paths[i], draft_size=2 * size)
                          for i in sorted(rng.choice(len(paths), min(per_source, len(paths)), replace=False))]
                 for source, paths in sources.items()}
    samples, rows = {}, []
    for prepare in preparations:
        for source, photos in photos_of.items():
            prepared = [prepared_with_retina(photo, size, prepare) for photo in photos]
            samples[f"{source} · {prepare}"] = [np.asarray(image) for image, _ in prepared[:shown]]
            inside = [np.asarray(image, dtype=np.float64)[retina] for image, retina in prepared]
            means = np.array([pixels.mean(axis=0) for pixels in inside])
            spreads = np.array([pixels.std(axis=0) for pixels in inside])
            rows.append({"source": source, "preparation": prepare, "photos": len(photos),
                         **{f"{c} mean": means[:, k].mean() for k, c in enumerate("RGB")},
                         **{f"{c} spread": spreads[:, k].mean() for k, c in enumerate("RGB")}})
    return samples, pd.DataFrame(rows).set_index(["preparation", "source"]).round(1)
