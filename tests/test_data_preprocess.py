"""Preprocess: the crop finds the disc, the copy keeps the layout, reruns resume, SRC is never touched."""

import hashlib
import os

import numpy as np
import pytest
from builders import make_aptos, make_kaggle, make_lab, write_lines
from PIL import Image

from retino_utils.data import preprocess_dataset, read_split, validate_dataset
from retino_utils.data.__main__ import main
from retino_utils.data.images import square_resize
from retino_utils.data.preprocess import disc_box
from retino_utils.errors import RetinoError

DISC_COLOUR = (200, 120, 60)


def disc_photo(width=300, height=220, centre=(110, 95), radius=70, noise=0.0, seed=0) -> Image.Image:
    yy, xx = np.mgrid[:height, :width]
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    pixels = np.zeros((height, width, 3), dtype=np.float64)
    pixels[inside] = DISC_COLOUR
    if noise:
        pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def bright_box(pixels: np.ndarray, level: int = 60) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((pixels.max(axis=2) > level).any(axis=1))
    cols = np.flatnonzero((pixels.max(axis=2) > level).any(axis=0))
    return cols[0], rows[0], cols[-1], rows[-1]


def snapshot(root):
    return {
        path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("noise", [0.0, 6.0])
def test_disc_box_finds_an_off_centre_disc(noise):
    photo = disc_photo(noise=noise)
    left, top, right, bottom = disc_box(photo)
    assert abs(left - 40) <= 3 and abs(right - 181) <= 3  # the disc spans x 40..180, y 25..165
    assert abs(top - 25) <= 3 and abs(bottom - 166) <= 3


def test_disc_box_ignores_specks_and_keeps_dark_images_whole():
    photo = np.asarray(disc_photo()).copy()
    photo[5, 280] = photo[210, 10] = 255  # isolated bright specks in the border
    assert abs(disc_box(Image.fromarray(photo))[2] - 181) <= 3
    dark = Image.fromarray(np.random.default_rng(0).integers(0, 6, (50, 80, 3), dtype=np.uint8))
    assert disc_box(dark) == (0, 0, 80, 50)


def test_preprocess_crops_the_disc_to_fill_the_square(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src, n_train=2, n_test=1)
    disc_photo().save(src / "100_left.jpeg", quality=95)
    summary = preprocess_dataset(src, dst, size=64, progress=False)
    assert summary.written == 3 and summary.skipped == 0 and summary.failed == []
    out = np.asarray(Image.open(dst / "100_left.jpeg"))
    assert out.shape == (64, 64, 3)
    left, top, right, bottom = bright_box(out)
    assert left <= 1 and top <= 1 and right >= 62 and bottom >= 62  # the disc touches all four sides
    assert np.abs(out[32, 32].astype(int) - DISC_COLOUR).max() <= 8
    assert out[1, 1].max() < 30 and out[62, 62].max() < 30  # corners outside the disc stay black


def test_dark_image_is_kept_whole(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_aptos(src, n=5)
    dark = Image.fromarray(np.random.default_rng(0).integers(0, 6, (30, 50, 3), dtype=np.uint8))
    name = read_split(src, "train").paths[0]
    dark.save(name)
    preprocess_dataset(src, dst, size=32, progress=False)
    out = np.asarray(Image.open(dst / name.relative_to(src)))
    assert np.array_equal(out, np.asarray(square_resize(dark, 32)))  # PNG: lossless, so exact


def test_graham_subtracts_the_local_average_inside_the_disc(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_aptos(src, n=5)
    path = read_split(src, "train").paths[0]
    photo = np.asarray(disc_photo()).copy()
    photo[90:101, 140:151] = 40  # a dark lesion 35 px right of the disc centre (110, 95)
    Image.fromarray(photo).save(path)
    preprocess_dataset(src, dst, size=96, prepare="graham", progress=False)
    out = np.asarray(Image.open(dst / path.relative_to(src))).astype(int)
    assert np.abs(out[48, 48] - 128).max() <= 2  # flat colour equals its local average
    assert (out[2, 2] == 128).all() and (out[48, 1] == 128).all()  # outside 90% of the radius: grey
    lesion_x = 48 + round(35 * 96 / 141)
    assert (out[48, lesion_x] < 126).all() and out[48, lesion_x, 0] < 100  # darker than around it: below grey


@pytest.mark.parametrize("make", [make_lab, make_kaggle, make_aptos])
def test_output_keeps_the_layout_and_validates(tmp_path, make):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src)
    preprocess_dataset(src, dst, size=32, progress=False)
    report = validate_dataset(dst)
    assert report.ok, report.format()
    for split in ("train", "test"):
        before, after = read_split(src, split), read_split(dst, split)
        assert after.layout == before.layout
        assert after.names == before.names and after.labels.tolist() == before.labels.tolist()
        for path, old in zip(after.paths, before.paths):
            assert Image.open(path).size == (32, 32) and path.suffix == old.suffix


def test_rerun_redoes_only_missing_outputs_and_never_touches_src(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src, image_dir="images")
    before = snapshot(src)
    assert main(["preprocess", str(src), str(dst), "--size", "16", "--workers", "1"]) == 0
    assert "wrote 10 images" in capsys.readouterr().out
    old = 1_000_000_000_000_000_000
    outputs = sorted((dst / "images").glob("*.jpeg"))
    for path in outputs:
        os.utime(path, ns=(old, old))
    outputs[3].unlink()
    assert main(["preprocess", str(src), str(dst), "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 images to" in out and "(9 already there)" in out
    assert [path.stat().st_mtime_ns != old for path in outputs] == [i == 3 for i in range(len(outputs))]
    assert snapshot(src) == before
    assert not list(dst.rglob("*.tmp"))


def test_unreadable_source_images_are_listed_and_exit_one(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src)
    (src / "101_left.jpeg").write_bytes(b"garbage")
    assert main(["preprocess", str(src), str(dst), "--size", "16"]) == 1
    out = capsys.readouterr().out
    assert "1 source images could not be read" in out and "101_left.jpeg" in out
    assert (dst / "train_img.csv").is_file() and not (dst / "101_left.jpeg").exists()


def test_resuming_with_other_settings_is_refused(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src)
    preprocess_dataset(src, dst, size=16, progress=False)
    with pytest.raises(RetinoError, match="preprocessed with"):
        preprocess_dataset(src, dst, size=32, progress=False)


@pytest.mark.parametrize("where", ["same", "inside", "contains", "not-empty"])
def test_destination_must_be_outside_the_source(tmp_path, where):
    src = tmp_path / "data"
    make_lab(src)
    dst = {"same": src, "inside": src / "pre", "contains": tmp_path, "not-empty": tmp_path / "other"}[where]
    if where == "not-empty":
        write_lines(dst / "notes.txt", ["mine"])
    before = snapshot(src)
    with pytest.raises(RetinoError, match="destination"):
        preprocess_dataset(src, dst, size=16, progress=False)
    assert snapshot(src) == before
