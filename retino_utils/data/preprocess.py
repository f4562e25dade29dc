"""Write a cropped, square, resized copy of a dataset in the same layout (optionally Ben Graham's colour
normalisation), so later epochs decode small images instead of 3,888 x 2,592 photos.

Each image keeps its relative path and format: JPEG at quality 95, PNG (APTOS) stays lossless PNG.
The label CSVs of the layout used are copied unchanged, last (a folder holding two layouts, like
eyepacs-dev, keeps only the one detected or asked for). SRC is only ever read. A rerun skips finished images
(each is written to a temporary file and renamed), so an interrupted run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..atomic import atomic_path, write_json
from ..errors import RetinoError
from .images import load_rgb, square_resize
from .layouts import LAYOUTS, SPLITS, read_split, resolve_layout
from .parallel import parallel_map

JPEG_QUALITY = 95
SETTINGS_FILE = ".retino-preprocess.json"
MASK_SIDE = 256  # the disc is located on a copy about this big
DARK_LEVEL = 10.0  # 0-255 intensity below which the blurred border counts as black
MIN_DISC_FRACTION = 0.1  # a "disc" narrower than this share of the image is noise: keep the whole image
GRAHAM_MASK_RADIUS = 0.9  # share of the disc radius kept by --graham; the rim outside becomes grey


@dataclass(frozen=True)
class PreprocessSettings:
    size: int
    graham: bool
    layout: str


@dataclass
class PreprocessSummary:
    written: int
    skipped: int  # already present from an earlier run
    failed: list[tuple[str, str]]  # (relative path, reason): unreadable source images


def disc_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of the fundus disc: rows and columns with a real run of non-dark (blurred) pixels.

    Requiring 2% of a row or column to be bright ignores specks of noise; an image without a
    plausible disc (all dark, or a tiny bright patch) gives the whole image.
    """
    width, height = image.size
    factor = max(1, max(width, height) // MASK_SIDE)
    small = image.reduce(factor) if factor > 1 else image
    gray = np.asarray(small.convert("L").filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    bright = gray > max(DARK_LEVEL, 0.15 * float(np.percentile(gray, 99)))
    rows = np.flatnonzero(bright.sum(axis=1) > 0.02 * bright.shape[1])
    cols = np.flatnonzero(bright.sum(axis=0) > 0.02 * bright.shape[0])
    if len(rows) < MIN_DISC_FRACTION * bright.shape[0] or len(cols) < MIN_DISC_FRACTION * bright.shape[1]:
        return 0, 0, width, height
    return (
        cols[0] * factor,
        rows[0] * factor,
        min(width, (cols[-1] + 1) * factor),
        min(height, (rows[-1] + 1) * factor),
    )


def graham(image: Image.Image) -> Image.Image:
    """Ben Graham's local-average subtraction: ``4*img - 4*blur + 128``, grey outside 90% of the disc.

    As in his Kaggle 2015 code, sigma is the disc radius / 30 (the disc fills the square, so size/60).
    """
    size = image.size[0]
    pixels = np.asarray(image, dtype=np.float32)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(size / 60)), dtype=np.float32)
    out = np.clip(np.rint(4 * pixels - 4 * blurred + 128), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    centre = (size - 1) / 2
    outside = (yy - centre) ** 2 + (xx - centre) ** 2 > (GRAHAM_MASK_RADIUS * size / 2) ** 2
    out[outside] = 128
    return Image.fromarray(out.astype(np.uint8))


def preprocess_image(src: Path, dst: Path, size: int, use_graham: bool) -> None:
    """Crop to the disc, pad to square, resize; write ``dst`` atomically in the format its suffix names."""
    image = load_rgb(src, draft_size=2 * size)
    image = square_resize(image.crop(disc_box(image)), size)
    if use_graham:
        image = graham(image)
    is_png = dst.suffix.lower() == ".png"
    with atomic_path(dst) as tmp:
        if is_png:
            image.save(tmp, format="PNG")
        else:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)


def preprocess(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: int = 512,
    use_graham: bool = False,
    workers: int | None = None,
    layout: str = "auto",
    progress: bool = True,
) -> PreprocessSummary:
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_folders(src, dst)
    layout = resolve_layout(src, layout)
    settings = PreprocessSettings(size, use_graham, layout)
    _claim(dst, settings)
    sources = sorted({path for split in SPLITS for path in read_split(src, split, layout).paths})
    pending = [path for path in sources if not (dst / path.relative_to(src)).exists()]
    tasks = [(path, (path, dst / path.relative_to(src), size, use_graham)) for path in pending]
    failed = []
    outcomes = parallel_map(preprocess_image, tasks, workers=workers, desc="preprocessing", progress=progress)
    for path, _, error in outcomes:
        if error:
            failed.append((path.relative_to(src).as_posix(), error))
    for table in LAYOUTS[layout].tables:
        if (src / table).is_file():
            with atomic_path(dst / table) as tmp:
                shutil.copyfile(src / table, tmp)
    return PreprocessSummary(len(pending) - len(failed), len(sources) - len(pending), sorted(failed))


def _check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise RetinoError(f"source folder {src} does not exist")
    if dst == src or src in dst.parents:
        raise RetinoError(f"destination {dst} is inside the source {src}: pick a folder outside it")
    if dst in src.parents:
        raise RetinoError(f"destination {dst} contains the source {src}: pick a folder outside it")


def _claim(dst: Path, settings: PreprocessSettings) -> None:
    """Record the settings in DST; resuming with other settings would mix two kinds of images."""
    marker = dst / SETTINGS_FILE
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != asdict(settings):
            raise RetinoError(
                f"{dst} holds images preprocessed with {previous}, not {asdict(settings)}: "
                "use another destination, or delete it to start over"
            )
        return
    if dst.is_dir() and any(dst.iterdir()):
        raise RetinoError(f"destination {dst} is not empty and was not made by preprocess: pick an empty or new folder")
    write_json(marker, asdict(settings))
