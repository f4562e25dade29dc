"""Writing a synthetic dataset in the lab layout, byte-identical for a given set of arguments.

``images/<name>.jpeg``, the lesion mask of each in ``masks/<name>.png`` (white where lesions were
drawn: the truth a saliency map can be scored against), plus headerless ``train_img.csv`` / ``train_label.csv`` / ``test_img.csv`` /
``test_label.csv``; every image is seeded from ``(seed, index)``, drawn in the shared process pool
(``data.parallel``), and the CSVs are written last, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from retino_utils import GRADES, NUM_CLASSES
from retino_utils.atomic import remove_stale_temp_files, write_bytes, write_json, write_text
from retino_utils.data.parallel import parallel_map
from retino_utils.errors import RetinoError
from retino_utils.synthetic.render import render_fundus

DEFAULT_SHARES = (0.735, 0.070, 0.150, 0.025, 0.021)
"""Grade shares of the real EyePACS data (normalised to sum 1 where used)."""

GENERATOR_VERSION = 1
"""Bump when the drawing changes, so a stored dataset is not mistaken for a current one."""

JPEG_QUALITY = 92
PARAMS_FILE = "synthetic.json"
SPLITS = ("train", "test")
FIRST_PATIENT = 10000


def normalise_shares(shares: Sequence[float]) -> tuple[float, ...]:
    """Grade shares scaled to sum 1 (so percentages work too); a RetinoError if they cannot be."""
    try:
        values = [float(s) for s in shares]
    except (TypeError, ValueError):
        values = []
    if len(values) != NUM_CLASSES or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise RetinoError(f"grade shares {shares!r} must be {NUM_CLASSES} non-negative numbers for grades 0-4, "
                          "not all zero, e.g. 73.5,7.0,15.0,2.5,2.1")
    return tuple(v / sum(values) for v in values)


def grade_counts(n: int, shares: Sequence[float]) -> np.ndarray:
    """Images per grade for a split of ``n``: largest-remainder rounding of ``n * shares``.

    Where ``n`` allows, every grade with a share gets at least one image (taken from the
    largest grade), so even small sets contain each grade.
    """
    shares = np.asarray(normalise_shares(shares))
    quota = n * shares
    counts = np.floor(quota).astype(int)
    counts[np.argsort(counts - quota, kind="stable")[: n - counts.sum()]] += 1
    if n >= np.count_nonzero(shares):
        for grade in np.flatnonzero((shares > 0) & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[grade] += 1
    return counts


def image_name(index: int, first_patient: int = FIRST_PATIENT) -> str:
    """Kaggle-style name: consecutive images are the left and right eye of one patient."""
    return f"{first_patient + index // 2}_{'left' if index % 2 == 0 else 'right'}"


def plan_dataset(n_train: int, n_test: int, seed: int, shares: Sequence[float]) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(name, grade), ...]}`` in CSV order; image ``i`` overall is named ``image_name(i)``."""
    plan, index = {}, 0
    for split_no, (split, n) in enumerate(zip(SPLITS, (n_train, n_test))):
        grades = np.repeat(GRADES, grade_counts(n, shares))
        np.random.default_rng([seed, 1, split_no]).shuffle(grades)
        plan[split] = [(image_name(index + i), int(g)) for i, g in enumerate(grades)]
        index += n
    return plan


def _is_complete_image(path: Path, size: int) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
            return img.size == (size, size) and img.mode == "RGB"
    except OSError:
        return False


def mask_path(image_path: str | Path) -> Path:
    """Where the lesion mask of a synthetic photo lies: ``masks/<name>.png`` beside ``images/``."""
    image_path = Path(image_path)
    return image_path.parent.parent / "masks" / f"{image_path.stem}.png"


def _make_image(path: str, grade: int, size: int, seed: int, index: int, lesion_scale: float) -> bool:
    """Render and write one image and its lesion mask unless both are there; True if it wrote the image."""
    path = Path(path)
    mask = mask_path(path)
    image_done = _is_complete_image(path, size)
    if image_done and mask.is_file():
        return False
    eye = "left" if path.stem.endswith("_left") else "right"
    # The middle 0 keeps image streams apart from the label shuffles, seeded [seed, 1, split].
    pixels, lesions = render_fundus(grade, size, np.random.default_rng([seed, 0, index]), eye=eye,
                                    lesion_scale=lesion_scale, with_mask=True)
    buffer = io.BytesIO()
    Image.fromarray(lesions.astype(np.uint8) * 255).save(buffer, "PNG")
    write_bytes(mask, buffer.getvalue())
    if image_done:
        return False
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    write_bytes(path, buffer.getvalue())
    return True


def dataset_params(counts: dict[str, int], size: int, seed: int, shares: Sequence[float], lesion_scale: float) -> dict:
    """The arguments a synthetic set is made with, checked (a RetinoError naming the option) and JSON-ready;
    ``counts`` maps ``n_train`` / ``n_test`` / ``photos`` to a number of photos."""
    checks = [*((f"--{key.removeprefix('n_')}", value, 1) for key, value in counts.items()),
              ("--size", size, 32), ("--seed", seed, 0)]
    for label, value, low in checks:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise RetinoError(f"{label} {value!r} must be a whole number >= {low}")
    if size > 4096:
        raise RetinoError(f"--size {size} is too large: use 4096 px or less")
    if not (isinstance(lesion_scale, (int, float)) and 0.25 <= lesion_scale <= 8):
        raise RetinoError(f"--lesion-scale {lesion_scale!r} must be a number from 0.25 to 8 (1 = real size)")
    return {
        "generator": "retino_utils.synthetic",
        "version": GENERATOR_VERSION,
        **{key: int(value) for key, value in counts.items()},
        "size": int(size),
        "seed": int(seed),
        "shares": [round(s, 9) for s in normalise_shares(shares)],
        "jpeg_quality": JPEG_QUALITY,
        "lesion_scale": float(lesion_scale),
    }


def _csv_paths(out: Path) -> list[Path]:
    return [out / f"{split}_{kind}.csv" for split in SPLITS for kind in ("img", "label")]


def check_folder(out: Path, params: dict) -> None:
    """Refuse a folder that holds anything but a (partial) dataset made with these same arguments."""
    if out.exists() and not out.is_dir():
        raise RetinoError(f"--out {out} is a file: pick a folder")
    record = out / PARAMS_FILE
    if record.is_file():
        try:
            stored = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if stored != params:
            differ = sorted(k for k in params if not isinstance(stored, dict) or stored.get(k) != params[k])
            raise RetinoError(f"{out} holds a synthetic dataset made with other arguments (different "
                              f"{', '.join(differ)}; see {record}): pick another --out or delete that folder")
    elif out.is_dir() and any(out.iterdir()):
        raise RetinoError(f"{out} is not empty and has no {PARAMS_FILE}: pick a new or empty folder for --out")


def _is_complete(out: Path, plan: dict[str, list[tuple[str, int]]]) -> bool:
    """CSVs are written last, so with them and every image file present the dataset is whole."""
    if not all(p.is_file() for p in _csv_paths(out)) or not (out / "images").is_dir():
        return False
    present = set(os.listdir(out / "images"))
    masks = set(os.listdir(out / "masks")) if (out / "masks").is_dir() else set()
    return all(f"{name}.jpeg" in present and f"{name}.png" in masks for rows in plan.values() for name, _ in rows)


def generate_dataset(out: str | os.PathLike, n_train: int, n_test: int, size: int = 256, seed: int = 0,
                     shares: Sequence[float] = DEFAULT_SHARES, workers: int | None = None,
                     progress: bool = True, lesion_scale: float = 1.0) -> Path:
    """Write a synthetic dataset in the lab layout to ``out`` and return its path.

    Byte-identical for the same arguments. Resumable: a rerun keeps the images already
    written (if they decode) and writes the CSVs last. A folder that already holds this
    dataset is returned at once; one made with other arguments is refused. ``progress``
    shows a bar (``TQDM_DISABLE=1`` also hides it) and prints a one-line summary.
    """
    out = Path(out)
    params = dataset_params({"n_train": n_train, "n_test": n_test}, size, seed, shares, lesion_scale)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise RetinoError(f"--workers {workers!r} must be a whole number >= 1")
    check_folder(out, params)
    plan = plan_dataset(n_train, n_test, seed, shares)
    if (out / PARAMS_FILE).is_file() and _is_complete(out, plan):
        if progress:
            print(f"synthetic: {out} already holds this dataset ({n_train} train + {n_test} test images)")
        return out
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    write_json(out / PARAMS_FILE, params)
    remove_stale_temp_files(images)  # left by an interrupted write
    remove_stale_temp_files(out / "masks")
    tasks = [(name, (str(images / f"{name}.jpeg"), grade, size, seed, index, float(lesion_scale)))
             for index, (name, grade) in enumerate(row for split in SPLITS for row in plan[split])]
    started = time.perf_counter()
    written = 0
    for name, wrote, error in parallel_map(_make_image, tasks, workers=workers, desc="synthetic fundus",
                                           progress=progress):
        if error:
            raise RetinoError(f"cannot write synthetic image {images / name}.jpeg: {error}")
        written += wrote
    elapsed = time.perf_counter() - started
    for split in SPLITS:
        write_text(out / f"{split}_img.csv", "".join(f"{name}\n" for name, _ in plan[split]))
        write_text(out / f"{split}_label.csv", "".join(f"{grade}\n" for _, grade in plan[split]))
    if progress:
        counts = " ".join(
            f"{split} " + "/".join(map(str, np.bincount([g for _, g in plan[split]], minlength=NUM_CLASSES)))
            for split in SPLITS)
        print(f"synthetic: {out}: {len(tasks)} images {size}px, grades 0-4 {counts}; wrote {written} "
              f"in {elapsed:.1f} s ({written / max(elapsed, 1e-9):.0f} images/s)")
    return out


def profile_dataset(spec: dict, folder: str | os.PathLike, progress: bool = False) -> Path:
    """A report profile's ``synthetic`` dataset in ``folder``, generated on first use (instant afterwards)."""
    return generate_dataset(folder, spec["train"], spec["test"], size=spec["size"], seed=spec["seed"],
                            lesion_scale=spec.get("lesion_scale", 1.0), progress=progress)


def cached_dataset(folder: str | os.PathLike, n_train: int, n_test: int, size: int, seed: int = 0) -> Path:
    """``generate_dataset`` into a folder that is only a cache (benchmarks): one made differently is remade."""
    try:
        return generate_dataset(folder, n_train, n_test, size=size, seed=seed, progress=False)
    except RetinoError:
        shutil.rmtree(folder)
        return generate_dataset(folder, n_train, n_test, size=size, seed=seed, progress=False)


def _parse_shares(text: str) -> tuple[float, ...]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise RetinoError(f"--shares {text!r} must be comma-separated numbers, e.g. 73.5,7.0,15.0,2.5,2.1") from None
    return normalise_shares(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retino_utils.synthetic",
                                     description="Write a synthetic graded fundus dataset in the lab layout.")
    parser.add_argument("--out", required=True, type=Path,
                        help="dataset folder: new, empty, or a partial run to resume")
    parser.add_argument("--train", required=True, type=int, help="number of training images")
    parser.add_argument("--test", required=True, type=int, help="number of test images")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="same seed and arguments give identical files")
    parser.add_argument("--shares", help="grade 0-4 shares, any scale (default: EyePACS, 73.5,7.0,15.0,2.5,2.1)")
    parser.add_argument("--workers", type=int, help="processes (default: all CPU cores)")
    parser.add_argument("--lesion-scale", type=float, default=1.0,
                        help="draw lesions this many times their real size (default 1; >1 for low-resolution demos)")
    args = parser.parse_args(argv)
    shares = DEFAULT_SHARES if args.shares is None else _parse_shares(args.shares)
    generate_dataset(args.out, args.train, args.test, args.size, args.seed, shares, args.workers,
                     lesion_scale=args.lesion_scale)
    return 0

