"""A second, synthetic camera: the demo's external set, so external validation runs offline.

The eyes and lesions are drawn by the same generator as the training photos, then seen through
another camera: a warmer colour cast and a darker tone curve, strong vignetting, focus blur, sensor
noise, a 3:2 sensor with a black border around a narrower round field (cropped by ``predict
--preprocess`` as a real camera's), another resolution and a lower JPEG quality. Written in the
Kaggle layout (``trainLabels.csv`` and ``images/<name>.jpeg``) as clinical-ext-dev is, byte-identical
for the same arguments and resumable (the label table is written last).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from retino_utils import GRADES, NUM_CLASSES
from retino_utils.atomic import remove_stale_temp_files, write_bytes, write_json, write_text
from retino_utils.data.parallel import parallel_map
from retino_utils.errors import RetinoError
from retino_utils.synthetic.generate import (
    DEFAULT_SHARES,
    PARAMS_FILE,
    check_folder,
    dataset_params,
    grade_counts,
    image_name,
)
from retino_utils.synthetic.render import render_fundus

SECOND_CAMERA = "synthetic second camera"  # the set's name in the report
VERSION = 1  # bump when the camera's look changes
FIRST_PATIENT = 50000  # the second camera's patients are not the training set's (10000 onwards)
JPEG_QUALITY = 60
CAST = np.array([1.08, 0.9, 0.68], np.float32)  # warmer, less blue than the first camera
GAMMA = 1.3  # darker mid-tones
VIGNETTING = 0.5  # brightness lost at the field's rim
BLUR = 0.9  # Gaussian radius in pixels per 128 px of field
NOISE = 0.025  # sensor noise (standard deviation, 0-1 scale)
RESOLUTION = 1.5  # the field's diameter against the first camera's photo side
BORDER = 1.15  # the sensor's height against the field's diameter; its width is 3:2 of that


def through_second_camera(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A first-camera photo (S, S, 3 uint8) as the second camera would have taken it: a 3:2 JPEG-ready image."""
    size = pixels.shape[0]
    img = (pixels.astype(np.float32) / 255) ** GAMMA * (CAST * rng.uniform(0.95, 1.05, 3).astype(np.float32))
    ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5 - size / 2) / (size / 2)
    img *= (1 - VIGNETTING * np.clip(xs * xs + ys * ys, 0, 1))[..., None]
    img += rng.normal(0, NOISE, img.shape).astype(np.float32)
    photo = Image.fromarray(np.round(255 * np.clip(img, 0, 1)).astype(np.uint8))
    photo = photo.filter(ImageFilter.GaussianBlur(BLUR * size / 128))
    field = round(size * RESOLUTION)
    photo = photo.resize((field, field), Image.BICUBIC)
    height = round(field * BORDER)
    sensor = Image.new("RGB", (round(height * 1.5), height))
    sensor.paste(photo, ((sensor.width - field) // 2, (height - field) // 2))
    return sensor


def _make_photo(path: str, grade: int, size: int, seed: int, index: int, lesion_scale: float) -> bool:
    """Render and write one photo unless it is there and decodes; True if it wrote it."""
    path = Path(path)
    try:
        with Image.open(path) as existing:
            existing.load()
        return False
    except OSError:
        pass
    # The middle 2 keeps these streams apart from the training generator's ([seed, 0, i] and [seed, 1, split]).
    rng = np.random.default_rng([seed, 2, index])
    eye = "left" if path.stem.endswith("_left") else "right"
    pixels = render_fundus(grade, size, rng, eye=eye, lesion_scale=lesion_scale)
    buffer = io.BytesIO()
    through_second_camera(pixels, rng).save(buffer, "JPEG", quality=JPEG_QUALITY)
    write_bytes(path, buffer.getvalue())
    return True


def generate_second_camera(out: str | os.PathLike, n: int, size: int = 256, seed: int = 0,
                           shares: Sequence[float] = DEFAULT_SHARES, lesion_scale: float = 1.0,
                           workers: int | None = None, progress: bool = True) -> Path:
    """Write ``n`` graded photos of the second camera to ``out`` (Kaggle layout) and return its path.

    ``size`` is the side the first camera's photos have (the field here is 1.5 times that). A folder
    made with other arguments is refused; an interrupted one resumes.
    """
    out = Path(out)
    params = {**dataset_params({"photos": n}, size, seed, shares, lesion_scale), "camera": "second",
              "camera_version": VERSION, "jpeg_quality": JPEG_QUALITY}
    check_folder(out, params)
    grades = np.repeat(GRADES, grade_counts(n, shares))
    np.random.default_rng([seed, 3]).shuffle(grades)
    rows = [(image_name(i, FIRST_PATIENT), int(grade)) for i, grade in enumerate(grades)]
    labels = out / "trainLabels.csv"
    images = out / "images"
    if labels.is_file() and all((images / f"{name}.jpeg").is_file() for name, _ in rows):
        return out
    images.mkdir(parents=True, exist_ok=True)
    write_json(out / PARAMS_FILE, params)
    remove_stale_temp_files(images)
    tasks = [(name, (str(images / f"{name}.jpeg"), grade, size, seed, i, float(lesion_scale)))
             for i, (name, grade) in enumerate(rows)]
    for name, _, error in parallel_map(_make_photo, tasks, workers=workers, desc="second camera", progress=progress):
        if error:
            raise RetinoError(f"cannot write synthetic photo {images / name}.jpeg: {error}")
    write_text(labels, "image,level\n" + "".join(f"{name},{grade}\n" for name, grade in rows))
    if progress:
        print(f"second camera: {out}: {n} photos, grades 0-4 "
              f"{'/'.join(map(str, np.bincount(grades, minlength=NUM_CLASSES)))}")
    return out


def profile_second_camera(spec: dict, folder: str | os.PathLike, progress: bool = False) -> Path:
    """A report profile's ``second_camera`` set in ``folder``, generated on first use (instant afterwards)."""
    return generate_second_camera(folder, spec["photos"], size=spec["size"], seed=spec["seed"],
                                  lesion_scale=spec.get("lesion_scale", 1.0), progress=progress)
