"""One preparation for every source: ``retina`` gives a contrast-enhanced photo and a raw one the same
statistics inside the retina (checked against a float64 computation written here), ``green`` is grey,
copies record their preparation (older ones are still read), and predict prepares as the run's copy."""

import json
import subprocess
import sys

import numpy as np
import pytest
from builders import make_aptos
from PIL import Image
from scipy import ndimage

from retino_utils.data import read_split
from retino_utils.data.preprocess import (
    RETINA_SPREAD,
    SETTINGS_FILE,
    copy_settings,
    preparation_of,
    preprocess_dataset,
    retina_region,
    standardised,
)
from retino_utils.errors import RetinoError


def fundus(size=96, contrast=1.0, seed=0) -> Image.Image:
    """A disc filling the square: an orange background with dark vessels and noise, its contrast scaled
    about its mean (contrast > 1: what a publisher's enhancement does)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pixels = np.zeros((size, size, 3)) + (170, 80, 30)
    pixels[(np.abs(yy - xx) < 2) | (np.abs(yy - size // 3) < 2)] -= (60, 40, 20)  # two "vessels"
    pixels += rng.normal(0, 6, pixels.shape)
    pixels = pixels.mean(axis=(0, 1)) + contrast * (pixels - pixels.mean(axis=(0, 1)))
    inside = (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 <= (size / 2) ** 2
    return Image.fromarray(np.where(inside[..., None], np.clip(pixels, 0, 255), 0).astype(np.uint8))


def reference_standardised(image: Image.Image, green_only=False) -> np.ndarray:
    """float64: the local detail over the retina (normalised convolution), scaled to RETINA_SPREAD per channel."""
    size = image.size[0]
    valid = retina_region(size)
    pixels = np.asarray(image, dtype=np.float64)
    weights = ndimage.gaussian_filter(valid.astype(np.float64), size / 60, mode="constant")
    out = np.full(pixels.shape, 128.0)
    channels = [1, 1, 1] if green_only else [0, 1, 2]
    for k, source in enumerate(channels):
        blurred = ndimage.gaussian_filter(pixels[..., source] * valid, size / 60, mode="constant")
        detail = pixels[..., source] - blurred / np.maximum(weights, 1e-6)
        out[..., k] = np.where(valid, 128 + RETINA_SPREAD * detail / detail[valid].std(), 128)
    return np.clip(np.rint(out), 0, 255)


@pytest.mark.parametrize("green_only", [False, True])
def test_retina_standardisation_matches_a_float64_reference(green_only):
    image = fundus()
    ours = np.asarray(standardised(image, green_only=green_only)).astype(int)
    reference = reference_standardised(image, green_only)
    assert np.abs(ours - reference).max() <= 1  # float32 against float64, then rounding
    if green_only:
        assert np.array_equal(ours[..., 0], ours[..., 1]) and np.array_equal(ours[..., 1], ours[..., 2])


def test_an_enhanced_and_a_raw_photo_reach_the_same_statistics():
    """Graham's fixed factor keeps the enhanced photo's extra contrast; retina removes it."""
    from retino_utils.data.preprocess import graham

    raw, enhanced = fundus(contrast=1.0), fundus(contrast=3.0)
    valid = retina_region(96)

    def spreads(image):
        return np.asarray(image, dtype=np.float64)[valid].std(axis=0)

    assert (spreads(graham(enhanced)) > 1.5 * spreads(graham(raw))).all()  # clipped at 0 and 255, still apart
    assert np.allclose(spreads(standardised(raw)), RETINA_SPREAD, rtol=0.05)
    assert np.allclose(spreads(standardised(enhanced)), spreads(standardised(raw)), rtol=0.05)


def test_copies_record_their_preparation_and_older_copies_are_read(tmp_path):
    src = tmp_path / "src"
    make_aptos(src, n=5, size=(48, 48))
    preprocess_dataset(src, tmp_path / "retina", 32, prepare="retina", progress=False)
    assert copy_settings(tmp_path / "retina").prepare == "retina"
    assert preparation_of(tmp_path / "retina" / "train_images") == "retina" and preparation_of(src) is None
    # A copy written by the version before preparations had names resumes as the same graham copy.
    preprocess_dataset(src, tmp_path / "old", 32, prepare="graham", progress=False)
    (tmp_path / "old" / SETTINGS_FILE).write_text(json.dumps({"size": 32, "graham": True, "layout": "aptos",
                                                              "version": 2}))
    assert copy_settings(tmp_path / "old").prepare == "graham"
    summary = preprocess_dataset(src, tmp_path / "old", 32, prepare="graham", progress=False)
    assert summary.written == 0 and summary.skipped == 5
    with pytest.raises(RetinoError, match="preprocessed with"):
        preprocess_dataset(src, tmp_path / "old", 32, prepare="retina", progress=False)
    with pytest.raises(RetinoError, match="unknown preparation 'retinal'"):
        preprocess_dataset(src, tmp_path / "new", 32, prepare="retinal", progress=False)


@pytest.mark.heavy
def test_the_command_line_names_preparations_and_keeps_graham(tmp_path):
    src = tmp_path / "src"
    make_aptos(src, n=5, size=(48, 48))
    for flags, prepare in ((["--prepare", "green"], "green"), (["--graham"], "graham"), ([], "crop")):
        dst = tmp_path / prepare
        result = subprocess.run([sys.executable, "-m", "retino_utils.data", "preprocess", str(src), str(dst),
                                  "--size", "32", *flags], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert copy_settings(dst).prepare == prepare
    pixels = np.asarray(Image.open(read_split(tmp_path / "green", "train").paths[0]))
    assert np.array_equal(pixels[..., 0], pixels[..., 2]) or pixels.ndim == 2
