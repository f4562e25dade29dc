"""The synthetic fundus generator: deterministic lab-layout datasets whose pictures mean their grades."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retino_utils import GRADES
from retino_utils.errors import RetinoError
from retino_utils.synthetic import (
    DEFAULT_SHARES,
    generate_dataset,
    grade_counts,
    main,
    normalise_shares,
    render_fundus,
)

NAME = re.compile(r"^\d+_(left|right)$")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """40 images at 64 px, written by a pool of two processes."""
    return generate_dataset(tmp_path_factory.mktemp("a") / "ds", 30, 10, size=64, seed=3, workers=2, progress=False)


def test_same_arguments_give_identical_bytes_in_one_process_or_many(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "ds", 30, 10, size=64, seed=3, workers=1, progress=False)
    first, second = _files(small_dataset), _files(again)
    assert len([k for k in first if k.endswith(".jpeg")]) == 40
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)


def test_another_seed_gives_other_images(small_dataset, tmp_path):
    other = _files(generate_dataset(tmp_path / "ds", 30, 10, size=64, seed=4, workers=1, progress=False))
    first = _files(small_dataset)
    images = [k for k in first if k.endswith(".jpeg")]
    assert images and all(first[k] != other[k] for k in images)


def test_lab_layout_has_headerless_csvs_and_rgb_jpegs_of_the_requested_size(small_dataset):
    names = {}
    for split, n in (("train", 30), ("test", 10)):
        images, labels = _lines(small_dataset / f"{split}_img.csv"), _lines(small_dataset / f"{split}_label.csv")
        assert len(images) == len(labels) == n
        assert all(NAME.match(name) for name in images)  # so the first line is no header either
        assert {int(label) for label in labels} == set(GRADES)  # even 10 images hold every grade
        names[split] = images
    assert not set(names["train"]) & set(names["test"])
    for name in names["train"] + names["test"]:
        with Image.open(small_dataset / "images" / f"{name}.jpeg") as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))


@pytest.mark.heavy
def test_label_csvs_follow_the_given_shares(tmp_path):
    shares = (50, 20, 15, 10, 5)
    out = generate_dataset(tmp_path / "ds", 300, 100, size=32, seed=1, shares=shares, workers=1, progress=False)
    for split, n in (("train", 300), ("test", 100)):
        labels = np.array([int(v) for v in _lines(out / f"{split}_label.csv")])
        counts = np.bincount(labels, minlength=len(GRADES))
        expected = n * np.array(shares) / sum(shares)
        assert np.all(np.abs(counts - expected) < 1), (split, counts, expected)


@pytest.mark.parametrize("n", [1, 7, 10, 40, 400, 28100])
def test_grade_counts_are_largest_remainder_rounding(n):
    shares = np.array(normalise_shares(DEFAULT_SHARES), dtype=np.float64)
    counts = grade_counts(n, DEFAULT_SHARES)
    assert counts.sum() == n
    if n >= len(GRADES):
        assert np.all(counts >= 1)  # every grade present even in a small split
    if np.all(n * shares >= 1):
        quota = n * shares
        assert np.all(np.abs(counts - quota) < 1)
        rounded_up = counts > np.floor(quota)
        remainders = quota - np.floor(quota)
        if rounded_up.any() and (~rounded_up).any():
            assert remainders[rounded_up].min() >= remainders[~rounded_up].max()


def test_rerun_restores_missing_and_damaged_images_byte_for_byte(tmp_path):
    out = generate_dataset(tmp_path / "ds", 12, 4, size=48, seed=7, workers=1, progress=False)
    before = _files(out)
    images = sorted((out / "images").iterdir())
    images[0].unlink()
    images[5].unlink()
    images[9].write_bytes(images[9].read_bytes()[:200])  # as if cut off mid-write
    (out / "test_label.csv").unlink()  # an interrupted run writes the CSVs last
    generate_dataset(out, 12, 4, size=48, seed=7, workers=1, progress=False)
    assert _files(out) == before


def test_complete_dataset_is_returned_without_rewriting(tmp_path):
    out = generate_dataset(tmp_path / "ds", 6, 2, size=32, seed=0, workers=1, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate_dataset(out, 6, 2, size=32, seed=0, workers=1, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_folder_with_other_arguments_or_foreign_files_is_refused(tmp_path):
    out = generate_dataset(tmp_path / "ds", 6, 2, size=32, seed=0, workers=1, progress=False)
    with pytest.raises(RetinoError, match="seed"):
        generate_dataset(out, 6, 2, size=32, seed=1, workers=1, progress=False)
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "trainLabels.csv").write_text("image,level\n")
    with pytest.raises(RetinoError, match="synthetic.json"):
        generate_dataset(foreign, 6, 2, size=32, workers=1, progress=False)


@pytest.mark.parametrize("kwargs", [dict(n_train=0), dict(size=8), dict(seed=-1), dict(shares=(1, 2)),
                                    dict(shares=(0, 0, 0, 0, 0)), dict(workers=0)])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    args = dict(n_train=4, n_test=2, size=32, seed=0, workers=1, progress=False) | kwargs
    with pytest.raises(RetinoError):
        generate_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()


def test_cli_writes_the_dataset_and_a_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    argv = ["--out", str(tmp_path / "ds"), "--train", "5", "--test", "5", "--size", "32", "--seed", "2",
            "--shares", "60,10,10,10,10", "--workers", "1"]
    assert main(argv) == 0
    assert "grades 0-4 train 1/1/1/1/1 test 1/1/1/1/1" in capsys.readouterr().out
    assert sorted(_lines(tmp_path / "ds" / "train_label.csv")) == ["0", "1", "2", "3", "4"]
    with pytest.raises(RetinoError, match="--shares"):
        main(argv[:-4] + ["--shares", "a,b"])


# ---- what the pictures show: one rng state is one eye and photo; the grade only adds lesions


def _render(grade: int, seed: int, size: int = 256, eye: str | None = None) -> np.ndarray:
    return render_fundus(grade, size, np.random.default_rng(seed), eye=eye).astype(np.int16)


SEEDS = range(6)


def test_lesions_are_the_only_difference_and_grow_with_grade():
    """Grade 1 adds a few tiny dark dots; grade 2 more; grade 3 much more, red and dark as well as pale."""
    changed = {g: [] for g in (1, 2, 3)}
    darker_red, paler = [], []
    for seed in SEEDS:
        healthy = _render(0, seed)
        assert np.array_equal(healthy, _render(0, seed))
        for grade in changed:
            lesion = _render(grade, seed)
            diff = lesion - healthy
            changed[grade].append(np.mean(np.abs(diff).max(axis=2) > 10))
            if grade == 1:
                assert np.all(diff <= 0), "microaneurysms only darken"
            if grade == 3:
                dark = diff[..., 1] < -20
                darker_red.append(lesion[dark].mean(axis=0))
                paler.append(np.sum(diff.sum(axis=2) > 45))
    mean = {g: np.mean(v) for g, v in changed.items()}
    assert 0 < mean[1] < 0.001  # at 256 px a handful of pixels, nothing more
    assert mean[1] * 5 < mean[2] and mean[2] * 3 < mean[3]
    r, g, b = np.mean(darker_red, axis=0)
    assert r > 2 * g and g > b  # haemorrhages are dark red, not grey or black
    assert sum(paler) > 0  # exudates or cotton-wool spots show in some severe eyes


def test_lesion_scale_enlarges_lesions_only():
    """The demo's exaggeration: the same eye, the same lesions, drawn larger; a healthy eye barely changes."""
    for seed in SEEDS[:3]:
        healthy = render_fundus(0, 128, np.random.default_rng(seed))
        assert np.abs(render_fundus(0, 128, np.random.default_rng(seed), lesion_scale=2.5).astype(int)
                      - healthy).mean() < 0.5  # only lesion-like specks of normal eyes grow
        areas = []
        for scale in (1.0, 2.5):
            lesion = render_fundus(3, 128, np.random.default_rng(seed), lesion_scale=scale)
            areas.append(np.mean(np.abs(lesion.astype(int) - healthy).max(axis=2) > 10))
        assert areas[1] > 3 * areas[0]


def test_left_eye_has_the_disc_on_the_left():
    """The optic disc is the brightest yellow spot: on the left for a left eye, mirrored for a right one."""
    for seed in SEEDS:
        for eye, side in (("left", -1), ("right", 1)):
            green = _render(0, seed, size=128, eye=eye)[..., 1]
            ys, xs = np.nonzero(green >= np.quantile(green, 0.997))
            assert side * (xs.mean() - 64) > 20, (seed, eye)


@pytest.mark.parametrize("size", [32, 96, 200])
def test_render_returns_rgb_uint8_of_any_size_with_a_dark_surround(size):
    img = render_fundus(4, size, np.random.default_rng(0))
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert img[0, 0].max() < 20 and img[-1, -1].max() < 20  # corners are outside the camera field
    centre = img[size // 2 - size // 8 : size // 2 + size // 8, size // 2 - size // 8 : size // 2 + size // 8]
    assert centre[..., 0].mean() > centre[..., 2].mean() + 40  # an orange-red retina


def test_bad_render_arguments_are_refused():
    with pytest.raises(RetinoError, match="grade"):
        render_fundus(5, 64, np.random.default_rng(0))
    with pytest.raises(RetinoError, match="eye"):
        render_fundus(0, 64, np.random.default_rng(0), eye="both")
