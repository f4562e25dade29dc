"""Decoding: every image, whatever its mode, becomes 8-bit RGB through one path.

``load_resized`` is the single decode used by the per-image dataset and by the image cache, so the
two agree bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageSource = str | os.PathLike | Image.Image
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
MIN_FUNDUS_SIDE = 16  # pixels: below this no photo shows a retina (the tests' tiny photos are 16 px)
BLANK_LEVELS = 8  # a photo whose every pixel is within this of black (or white) shows nothing


def load_rgb(source: ImageSource, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB.

    ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (much faster for big photos) while
    both sides stay at least that many pixels. A PIL image is converted as it is.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    with Image.open(source) as image:
        if draft_size:
            image.draft(image.mode, (draft_size, draft_size))
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: alpha composited on black, 16-bit scaled by 255/65535 (not clipped), others converted."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGB", image.size)
        black.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return black
    return image.convert("RGB")


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre the image on a black square whose side is its longer side."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def square_resize(image: Image.Image, image_size: int) -> Image.Image:
    """Pad to square, then PIL bilinear (antialiased) resize: the one resampling used everywhere."""
    square = pad_to_square(image)
    if square.size == (image_size, image_size):
        return square
    return square.resize((image_size, image_size), Image.BILINEAR, reducing_gap=None)


def load_resized(source: ImageSource, image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8: decode (JPEG draft at >= image_size), pad to square, resize."""
    return np.array(square_resize(load_rgb(source, draft_size=image_size), image_size))


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Make PIL raise on truncated files while checking them, whatever the caller set globally."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode_problem(path: str | os.PathLike) -> str | None:
    """Why this file cannot be used (missing, not an image, truncated...), or None when it decodes.

    JPEGs decode at 1/8 scale: every byte is still read and entropy-decoded, so truncation and
    corruption still surface, but big photos check about twice as fast.
    """
    try:
        image = Image.open(path)
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image file PIL can read"
    except OSError as exc:
        return f"cannot open ({exc})"
    with image, strict_decoding():
        try:
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            to_rgb(image)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad data
            return f"truncated or corrupt {image.format or 'image'} ({exc})"
    return None


def fundus_doubt(path: str | os.PathLike) -> str | None:
    """Why a photo that decodes cannot be a fundus photo (too small, blank, fully transparent), or None.

    Such a photo is still graded (a model answers anything), but the grade means nothing: callers
    flag it. Reads the photo at 1/8 scale, as ``decode_problem`` does.
    """
    with Image.open(path) as image:
        width, height = image.size
        if min(width, height) < MIN_FUNDUS_SIDE:
            return f"{width}x{height} px is too small to be a fundus photo"
        if image.mode in _ALPHA_MODES and image.convert("RGBA").getchannel("A").getextrema()[1] == 0:
            return "fully transparent"
        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        pixels = np.asarray(to_rgb(image), dtype=np.float64)
    if pixels.max() <= BLANK_LEVELS:
        return "all black"
    if pixels.min() >= 255 - BLANK_LEVELS:
        return "all white"
    if pixels.std() < 1:
        return "a single colour"
    return None
