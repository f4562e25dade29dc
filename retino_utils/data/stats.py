"""Per-channel mean and std of a split, in the reports' definition and pooled over all pixels.

Sums are taken exactly (integer sums of pixel values and of their squares per image), so both
definitions are exact whatever the number of images. Results are cached under the split's
fingerprint and the image size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from retino_utils.atomic import write_json
from retino_utils.data.cachedir import dataset_cache_dir, derived_prefix, remove_stale
from retino_utils.data.images import load_resized, load_rgb
from retino_utils.data.layouts import SplitIndex
from retino_utils.data.parallel import parallel_map
from retino_utils.errors import RetinoError

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ChannelStats:
    """On the [0, 1] scale. ``mean``/``std``: the reports' definition (average over images of each
    image's channel mean and unbiased std, like ``imgs.std(2)``); ``pooled_*``: over all pixels
    of all images at once (population std)."""

    mean: Triple
    std: Triple
    pooled_mean: Triple
    pooled_std: Triple
    n_images: int
    image_size: int | None = None

    def format(self) -> str:
        def show(values: Triple) -> str:
            return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"

        size = f"{self.image_size} px" if self.image_size else "native size"
        return "\n".join(
            [
                f"channel stats (RGB) of {self.n_images} images at {size}:",
                f"  per-image average (the reports' definition): mean {show(self.mean)}",
                f"                                               std  {show(self.std)}",
                f"  pooled over all pixels:                      mean {show(self.pooled_mean)}",
                f"                                               std  {show(self.pooled_std)}",
            ]
        )


def image_sums(path: str | os.PathLike, image_size: int | None) -> tuple[list[int], list[int], int]:
    """Per-channel sum and sum of squares of the 0-255 pixel values (exact integers), and the pixel count."""
    pixels = load_resized(path, image_size) if image_size else np.asarray(load_rgb(path))
    squares = pixels.astype(np.uint16)
    squares *= squares  # 255**2 fits in uint16
    sums = pixels.sum(axis=(0, 1), dtype=np.uint64)
    square_sums = squares.sum(axis=(0, 1), dtype=np.uint64)
    return [int(v) for v in sums], [int(v) for v in square_sums], pixels.shape[0] * pixels.shape[1]


def channel_stats(
    index: SplitIndex,
    image_size: int | None = None,
    cache: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> ChannelStats:
    if not len(index):
        raise RetinoError(f"cannot compute channel stats of the empty {index.split} split of {index.root}")
    fingerprint = index.fingerprint()
    folder = dataset_cache_dir(index.root)
    prefix = derived_prefix(index, "stats", f"{image_size}px" if image_size else "native")
    cached = folder / f"{prefix}{fingerprint}.json"
    if cache and cached.is_file():
        try:
            fields = json.loads(cached.read_text())
            return ChannelStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        except (ValueError, TypeError):
            pass  # a damaged cache file is recomputed
    tasks = [(i, (path, image_size)) for i, path in enumerate(index.paths)]
    per_image = [None] * len(index)
    outcomes = parallel_map(image_sums, tasks, workers=workers, desc=f"stats {index.split}", progress=progress)
    for i, sums, error in outcomes:
        if error:
            raise RetinoError(
                f"cannot read {index.paths[i]} ({error}); run `python -m retino_utils.data validate {index.root}`"
            )
        per_image[i] = sums
    stats = combine(per_image, image_size)
    if cache:
        remove_stale(folder, prefix, fingerprint)
        write_json(cached, asdict(stats))
    return stats


def combine(per_image: list[tuple[list[int], list[int], int]], image_size: int | None = None) -> ChannelStats:
    """Both definitions from exact integer sums; each variance is one exact integer ratio."""
    image_means = np.zeros(3)
    image_stds = np.zeros(3)
    total_sum, total_squares, total_pixels = [0, 0, 0], [0, 0, 0], 0
    for sums, squares, n in per_image:
        for c in range(3):
            image_means[c] += sums[c] / (255 * n)
            image_stds[c] += math.sqrt((n * squares[c] - sums[c] ** 2) / (n * (n - 1) * 255**2))
            total_sum[c] += sums[c]
            total_squares[c] += squares[c]
        total_pixels += n
    n_images, n = len(per_image), total_pixels
    pooled_mean = tuple(s / (255 * n) for s in total_sum)
    pooled_std = tuple(math.sqrt((n * q - s**2) / (n * n * 255**2)) for s, q in zip(total_sum, total_squares))
    return ChannelStats(
        tuple((image_means / n_images).tolist()),
        tuple((image_stds / n_images).tolist()),
        pooled_mean,
        pooled_std,
        n_images,
        image_size,
    )
