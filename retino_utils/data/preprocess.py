"""Write a cropped, square, resized copy of a dataset in the same layout (optionally Ben Graham's colour
normalisation), so later epochs decode small images instead of 3,888 x 2,592 photos.

Each image keeps its relative path and format: JPEG at quality 95, PNG (APTOS) stays lossless PNG.
The label CSVs of the layout used are copied unchanged, last (a folder holding two layouts, like
eyepacs-dev, keeps only the one detected or asked for). SRC is only ever read. A rerun skips finished images
(each is written to a temporary file and renamed), so an interrupted run resumes.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from ..atomic import atomic_path, remove_stale_temp_files, write_json
from ..errors import DiskFullError, RetinoError
from .images import load_rgb, square_resize
from .layouts import LAYOUTS, SPLITS, read_split, resolve_layout
from .parallel import parallel_map

JPEG_QUALITY = 95
SETTINGS_FILE = ".retino-preprocess.json"
MASK_SIDE = 256  # the disc is located on a copy about this big
DARK_LEVEL = 10.0  # 0-255 intensity below which the blurred border counts as black
MIN_DISC_FRACTION = 0.1  # a "disc" narrower than this share of the image is noise: keep the whole image
GRAHAM_MASK_RADIUS = 0.9  # share of the disc radius kept by --graham; the rim outside becomes grey
# The smallest output side: a JPEG's colour comes in 16 x 16 blocks (4:2:0), so below that a photo is one
# block and no lesion survives. It still lets tiny smoke-test copies through (training resizes from 24 px);
# it is there to catch 0, a negative side or a cut-off 512 before every photo is blamed for it.
MIN_SIZE = 16


@dataclass(frozen=True)
class PreprocessSettings:
    size: int
    graham: bool
    layout: str
    # 2: --graham averages over the retina only. A folder begun by another version is not resumed into.
    version: int = 2


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


def photo_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Pixels (left, top, right, bottom) of ``square_resize`` of a width x height photo that come from the photo alone.

    ``pad_to_square`` centres the photo at ((side - w) // 2, (side - h) // 2) on black; the bilinear
    resize to ``size`` then blends black into the pixels whose filter reaches past the photo's edge
    (``max(scale, 1)`` source pixels either side of a pixel's centre), so those are left out too.
    """
    side = max(width, height)
    scale = side / size
    reach = max(scale, 1.0) - 0.5

    def span(length: int) -> tuple[int, int]:
        start = (side - length) // 2
        end = start + length
        first = 0 if start == 0 else int(np.ceil((start + reach) / scale - 0.5 - 1e-9))
        last = size if end == side else int(np.floor((end - reach) / scale - 0.5 + 1e-9)) + 1
        return first, max(first, last)

    left, right = span(width)
    top, bottom = span(height)
    return left, top, right, bottom


def disc_circle(box: tuple[int, int, int, int], width: int, height: int, size: int) -> tuple[float, float, float]:
    """Centre (x, y) and radius, in pixels of the ``size`` square, of the disc cropped to ``box`` of a photo.

    ``width`` and ``height`` are the photo's. The radius is half the box's longer side (a disc is cut off
    along its shorter one, if at all). Along an axis where the disc touches one edge of the photo only, it
    is cut off there: its centre lies a radius from the other edge. Otherwise it is centred in the box,
    which ``pad_to_square`` centres in the square.
    """
    left, top, right, bottom = box
    crop_width, crop_height = right - left, bottom - top
    radius = max(crop_width, crop_height) / 2

    def centre(start: int, end: int, full: int) -> float:
        if start == 0 and end < full:
            return end - start - radius
        if start > 0 and end == full:
            return radius
        return (end - start) / 2

    side = max(crop_width, crop_height)
    scale = size / side
    x = ((side - crop_width) // 2 + centre(left, right, width)) * scale - 0.5
    y = ((side - crop_height) // 2 + centre(top, bottom, height)) * scale - 0.5
    return x, y, radius * scale


def graham(
    image: Image.Image,
    photo: tuple[int, int, int, int] | None = None,
    disc: tuple[float, float, float] | None = None,
) -> Image.Image:
    """Ben Graham's local-average subtraction: ``4*img - 4*blur + 128``, grey outside 90% of the disc.

    As in his Kaggle 2015 code, sigma is the disc radius / 30 (the disc fills the square, so size/60).
    The average is taken over valid pixels only, by normalised convolution, blur(img * valid) / blur(valid):
    those inside ``photo`` (the box of the square that came from the photo, see ``photo_box``; default
    the whole square) and inside 90% of ``disc`` (centre x, y and radius, see ``disc_circle``; default
    centred, filling the square). So the black padding of a disc cut off at the top and bottom does not
    leak into the retina along the cut. Everything outside the valid region is grey (128).
    """
    size = image.size[0]
    left, top, right, bottom = photo or (0, 0, size, size)
    centre_x, centre_y, radius = disc or ((size - 1) / 2, (size - 1) / 2, size / 2)
    yy, xx = np.mgrid[:size, :size]
    valid = (yy - centre_y) ** 2 + (xx - centre_x) ** 2 <= (GRAHAM_MASK_RADIUS * radius) ** 2
    valid &= (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)
    pixels = np.asarray(image, dtype=np.float32)
    channels = pixels.reshape(size, size, -1)
    out = np.full(channels.shape, 128, dtype=np.uint8)
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if len(rows):
        # Pixels outside the valid box weigh nothing: blur only the box, as if zero beyond it.
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        mask = valid[box][..., None].astype(np.float32)
        stacked = np.concatenate([channels[box] * mask, mask], axis=2)
        sums = ndimage.gaussian_filter(stacked, sigma=(size / 60, size / 60, 0), mode="constant")
        average = sums[..., :-1] / np.maximum(sums[..., -1:], 1e-6)
        graded = np.clip(np.rint(4 * channels[box] - 4 * average + 128), 0, 255).astype(np.uint8)
        out[box] = np.where(mask > 0, graded, 128)
    return Image.fromarray(out.reshape(pixels.shape))


def prepared_photo(photo: Image.Image, size: int, use_graham: bool) -> Image.Image:
    """Crop to the disc, pad to square, resize to ``size`` (and Graham's colour normalisation)."""
    box = disc_box(photo)
    crop = photo.crop(box)
    image = square_resize(crop, size)
    if use_graham:
        image = graham(image, photo_box(*crop.size, size), disc_circle(box, *photo.size, size))
    return image


def preprocess_image(src: Path, dst: Path, size: int, use_graham: bool) -> None:
    """``prepared_photo`` of ``src``, written to ``dst`` atomically in the format its suffix names."""
    image = prepared_photo(load_rgb(src, draft_size=2 * size), size, use_graham)
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
    check_size(size)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_folders(src, dst)
    layout = resolve_layout(src, layout)
    settings = PreprocessSettings(size, use_graham, layout)
    _claim(dst, settings)
    remove_stale_temp_files(dst, recursive=True)  # left by a run killed while writing
    sources = sorted({path for split in SPLITS for path in read_split(src, split, layout).paths})
    pending = [path for path in sources if not (dst / path.relative_to(src)).exists()]
    tasks = [(path, (path, dst / path.relative_to(src), size, use_graham)) for path in pending]
    failed = []
    outcomes = parallel_map(preprocess_image, tasks, workers=workers, desc="preprocessing", progress=progress)
    try:
        for path, _, error in outcomes:
            if error:
                failed.append((path.relative_to(src).as_posix(), error))
    except DiskFullError as full:  # the label CSVs are not written: DST must not look complete
        raise DiskFullError(f"{full}; free some space and rerun the same command: the finished images are kept "
                            f"and only the rest is done") from None
    # Last: a run stopped by a full disk or a kill leaves no label CSVs, so DST never looks complete.
    for table in LAYOUTS[layout].tables:
        if (src / table).is_file():
            with atomic_path(dst / table) as tmp:
                shutil.copyfile(src / table, tmp)
    return PreprocessSummary(len(pending) - len(failed), len(sources) - len(pending), sorted(failed))


def check_size(size: int, label: str = "size") -> None:
    """Refuse a size no photo can be resized to before DST is touched (else each photo fails in turn);
    ``label`` is what the caller calls it (``--size`` on the command line)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < MIN_SIZE:
        raise RetinoError(f"{label} {size!r} is not a usable output side: give a whole number of pixels, at least "
                          f"{MIN_SIZE} (512, the default, keeps the lesions a model needs)")


def _check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise RetinoError(f"source folder {src} does not exist")
    if dst == src or src in dst.parents:
        raise RetinoError(f"destination {dst} is inside the source {src}: pick a folder outside it")
    if dst in src.parents:
        raise RetinoError(f"destination {dst} contains the source {src}: pick a folder outside it")


def copy_settings(folder: str | os.PathLike) -> PreprocessSettings | None:
    """How ``preprocess`` wrote ``folder`` (its settings file), or None for a folder it did not write."""
    marker = Path(folder) / SETTINGS_FILE
    return PreprocessSettings(**json.loads(marker.read_text())) if marker.is_file() else None


def is_graham_copy(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by ``preprocess --graham``."""
    settings = copy_settings(folder)
    return settings is not None and settings.graham


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
