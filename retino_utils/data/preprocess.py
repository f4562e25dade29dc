"""Write a cropped, square, resized copy of a dataset in the same layout, prepared to one look, so later
epochs decode small images instead of 3,888 x 2,592 photos.

The preparations (``PREPARATIONS``): ``crop`` only; ``graham``, Ben Graham's local-average subtraction;
``retina``, the same subtraction with each colour channel then scaled to one spread inside the retina,
so a photo its publisher already contrast-enhanced (eyepacs-dev) and a raw camera photo reach the model
with the same statistics; ``green``, that for the green channel alone, as grey.

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

from retino_utils.atomic import atomic_path, remove_stale_temp_files, write_json
from retino_utils.data.images import load_rgb, square_resize
from retino_utils.data.layouts import SPLITS, label_tables, read_split, resolve_layout
from retino_utils.data.parallel import parallel_map
from retino_utils.errors import DiskFullError, RetinoError

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


PREPARATIONS = {
    "crop": "cropped to the disc and resized only",
    "graham": "Ben Graham's local-average subtraction (4 x (photo - blur) + 128)",
    "retina": "local average subtracted, each channel scaled to one spread inside the retina",
    "green": "the green channel's local detail, scaled to one spread inside the retina, as grey",
}
RETINA_SPREAD = 32.0  # grey levels of one standard deviation of the detail inside the retina (retina, green)


@dataclass(frozen=True)
class PreprocessSettings:
    size: int
    prepare: str
    layout: str
    # 2: --graham averages over the retina only; 3: the preparation is named (crop, graham, retina, green).
    # A folder begun by another version is not resumed into.
    version: int = 3

    @classmethod
    def read(cls, values: dict) -> "PreprocessSettings":
        """From a settings file, also one written before preparations had names (``graham: true|false``)."""
        if "prepare" not in values:  # version 2 wrote the same pixels as version 3 does: it resumes
            version = 3 if values.get("version") == 2 else values.get("version", 1)
            values = {"size": values["size"], "prepare": "graham" if values.get("graham") else "crop",
                      "layout": values["layout"], "version": version}
        return cls(**values)


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


def retina_region(size: int, photo: tuple[int, int, int, int] | None = None,
                  disc: tuple[float, float, float] | None = None) -> np.ndarray:
    """[size, size] bool: the pixels inside ``photo`` (the box of the square that came from the photo, see
    ``photo_box``; default the whole square) and inside 90% of ``disc`` (centre x, y and radius, see
    ``disc_circle``; default centred, filling the square)."""
    left, top, right, bottom = photo or (0, 0, size, size)
    centre_x, centre_y, radius = disc or ((size - 1) / 2, (size - 1) / 2, size / 2)
    yy, xx = np.mgrid[:size, :size]
    valid = (yy - centre_y) ** 2 + (xx - centre_x) ** 2 <= (GRAHAM_MASK_RADIUS * radius) ** 2
    return valid & (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)


def local_average(channels: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """Gaussian average over valid pixels only (normalised convolution, blur(img * valid) / blur(valid)), so the
    black padding of a disc cut off at the top and bottom does not leak into the retina along the cut. As in
    Ben Graham's Kaggle 2015 code, sigma is the disc radius / 30 (the disc fills the ``size`` square, so
    size/60)."""
    mask = valid[..., None].astype(np.float32)
    stacked = np.concatenate([channels * mask, mask], axis=2)
    sums = ndimage.gaussian_filter(stacked, sigma=(size / 60, size / 60, 0), mode="constant")
    return sums[..., :-1] / np.maximum(sums[..., -1:], 1e-6)


def _inside_retina(image: Image.Image, photo, disc, prepare) -> Image.Image:
    """Apply ``prepare(channels, mask, size) -> float values`` within the retina's bounding box; grey elsewhere.
    Pixels outside the valid box weigh nothing: only the box is blurred, as if zero beyond it."""
    size = image.size[0]
    valid = retina_region(size, photo, disc)
    pixels = np.asarray(image, dtype=np.float32)
    channels = pixels.reshape(size, size, -1)
    out = np.full(channels.shape, 128, dtype=np.uint8)
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if len(rows):
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        inside = valid[box]
        values = prepare(channels[box], inside, size)
        graded = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        out[box] = np.where(inside[..., None], graded, 128)
    return Image.fromarray(out.reshape(pixels.shape))


def graham(
    image: Image.Image,
    photo: tuple[int, int, int, int] | None = None,
    disc: tuple[float, float, float] | None = None,
) -> Image.Image:
    """Ben Graham's local-average subtraction: ``4*img - 4*blur + 128``, grey outside 90% of the disc
    (``retina_region``; the average is ``local_average``)."""
    return _inside_retina(image, photo, disc, lambda channels, valid, size: 4 * channels - 4 * local_average(
        channels, valid, size) + 128)


def standardised(
    image: Image.Image,
    photo: tuple[int, int, int, int] | None = None,
    disc: tuple[float, float, float] | None = None,
    green_only: bool = False,
) -> Image.Image:
    """The local detail (photo minus ``local_average``) of each channel, scaled so that its standard deviation
    inside the retina is ``RETINA_SPREAD`` grey levels around 128; grey outside the retina.

    Graham's fixed factor 4 saturates a photo whose contrast its publisher already raised and leaves a raw
    camera photo grey: scaling by each photo's own spread gives both the same statistics. ``green_only``:
    the green channel (where haemorrhages and exudates contrast most) for all three.
    """

    def scaled(channels: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
        detail = channels - local_average(channels, valid, size)
        if green_only:
            detail = np.repeat(detail[..., 1:2], 3, axis=2)
        spread = detail[valid].std(axis=0)
        return 128 + RETINA_SPREAD * detail / np.maximum(spread, 1e-3)

    return _inside_retina(image, photo, disc, scaled)


def prepared_photo(photo: Image.Image, size: int, prepare: str) -> Image.Image:
    """Crop to the disc, pad to square, resize to ``size``, then ``prepare`` (see ``PREPARATIONS``)."""
    return _prepared(photo, size, prepare)[0]


def prepared_with_retina(photo: Image.Image, size: int, prepare: str) -> tuple[Image.Image, np.ndarray]:
    """``prepared_photo`` and its retina (``retina_region``: where a preparation's statistics are taken)."""
    image, region = _prepared(photo, size, prepare)
    return image, retina_region(size, *region)


def _prepared(photo: Image.Image, size: int, prepare: str) -> tuple[Image.Image, tuple]:
    """The prepared square and its region (``photo_box``, ``disc_circle``)."""
    check_preparation(prepare)
    box = disc_box(photo)
    crop = photo.crop(box)
    image = square_resize(crop, size)
    region = photo_box(*crop.size, size), disc_circle(box, *photo.size, size)
    if prepare == "graham":
        image = graham(image, *region)
    elif prepare in ("retina", "green"):
        image = standardised(image, *region, green_only=prepare == "green")
    return image, region


def check_preparation(prepare: str) -> None:
    if prepare not in PREPARATIONS:
        raise RetinoError(f"unknown preparation {prepare!r}: choose one of {', '.join(PREPARATIONS)}")


def preprocess_image(src: Path, dst: Path, size: int, prepare: str) -> None:
    """``prepared_photo`` of ``src``, written to ``dst`` atomically in the format its suffix names."""
    image = prepared_photo(load_rgb(src, draft_size=2 * size), size, prepare)
    is_png = dst.suffix.lower() == ".png"
    with atomic_path(dst) as tmp:
        if is_png:
            image.save(tmp, format="PNG")
        else:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)


def preprocess_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: int = 512,
    prepare: str = "crop",
    workers: int | None = None,
    layout: str = "auto",
    progress: bool = True,
) -> PreprocessSummary:
    check_size(size)
    check_preparation(prepare)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_folders(src, dst)
    layout = resolve_layout(src, layout)
    settings = PreprocessSettings(size, prepare, layout)
    _claim(dst, settings)
    remove_stale_temp_files(dst, recursive=True)  # left by a run killed while writing
    sources = sorted({path for split in SPLITS for path in read_split(src, split, layout).paths})
    pending = [path for path in sources if not (dst / path.relative_to(src)).exists()]
    tasks = [(path, (path, dst / path.relative_to(src), size, prepare)) for path in pending]
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
    for table in label_tables(src, layout):  # also IDRiD/Messidor-2/DeepDRiD tables found by their columns
        (dst / table).parent.mkdir(parents=True, exist_ok=True)
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
    return PreprocessSettings.read(json.loads(marker.read_text())) if marker.is_file() else None


def preparation_of(folder: str | os.PathLike) -> str | None:
    """The preparation of a copy written by ``preprocess`` (its root or its ``images/``), or None for photos as
    a camera took them."""
    for candidate in (Path(folder), Path(folder).parent):
        settings = copy_settings(candidate)
        if settings is not None:
            return settings.prepare
    return None


def _claim(dst: Path, settings: PreprocessSettings) -> None:
    """Record the settings in DST; resuming with other settings would mix two kinds of images."""
    marker = dst / SETTINGS_FILE
    if marker.is_file():
        previous = copy_settings(dst)
        if previous != settings:
            raise RetinoError(
                f"{dst} holds images preprocessed with {asdict(previous)}, not {asdict(settings)}: "
                "use another destination, or delete it to start over"
            )
        return
    if dst.is_dir() and any(dst.iterdir()):
        raise RetinoError(f"destination {dst} is not empty and was not made by preprocess: pick an empty or new folder")
    write_json(marker, asdict(settings))
