"""Input the data commands cannot act on is refused up front, never guessed at.

A preprocess size no photo can be resized to is one line before DST is touched, not a failure per
photo; a name that matches two photos (two extensions, or two folders) is reported by validate and
refused by training, never settled silently by folder or extension order.
"""

import os
import subprocess
import sys

import pytest
from builders import make_kaggle, make_lab, write_image

from retino_utils.data import open_dataset, preprocess_dataset, read_split, validate_dataset
from retino_utils.data.preprocess import MIN_SIZE
from retino_utils.errors import RetinoError
from retino_utils.paths import REPO_ROOT


def data_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "retino_utils.data", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"TQDM_DISABLE": "1", "PATH": ""},
    )


@pytest.mark.heavy
@pytest.mark.parametrize("size", ["0", "-512"])
def test_preprocess_cli_refuses_a_bad_size_before_touching_dst(tmp_path, size):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src)
    result = data_cli("preprocess", str(src), str(dst), "--size", size, "--workers", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith(f"error: --size {size} ")
    assert f"at least {MIN_SIZE}" in err
    assert result.stdout == "" and not dst.exists()


@pytest.mark.parametrize("size", [0, -1, MIN_SIZE - 1, 64.0, True])
def test_preprocess_function_refuses_a_bad_size_before_writing(tmp_path, size):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src)
    dst.mkdir()  # an empty folder given as DST stays empty
    message = rf"^size {size!r} is not a usable output side: .* at least {MIN_SIZE}"
    with pytest.raises(RetinoError, match=message) as info:
        preprocess_dataset(src, dst, size=size, progress=False)
    assert "\n" not in str(info.value)
    assert list(dst.iterdir()) == []


def test_preprocess_accepts_the_minimum_size(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src)
    summary = preprocess_dataset(src, dst, size=MIN_SIZE, workers=1, progress=False)
    assert summary.written == 10 and not summary.failed


def second_extension_lab(root, extension, listed=""):
    """A lab folder whose second train photo also exists with ``extension``; ``listed`` is appended to its
    name in the table (``.jpeg`` names the file with its extension)."""
    rows = make_lab(root, image_dir="images")
    name = rows["train"][1][0]
    write_image(root / "images" / f"{name}{extension}", name=name)
    if listed:
        lines = (root / "train_img.csv").read_text().splitlines()
        lines[1] += listed
        (root / "train_img.csv").write_text("".join(f"{line}\n" for line in lines))
    return name


@pytest.mark.heavy
@pytest.mark.parametrize("extension", [".JPG", ".png", ".JPEG"])
def test_one_name_with_two_extensions_is_reported_by_validate(tmp_path, extension):
    name = second_extension_lab(tmp_path, extension)
    result = data_cli("validate", str(tmp_path), "--workers", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"train_img.csv line 2: name '{name}' matches 2 photos (images/{name}.jpeg, images/{name}{extension}): "
            "remove or rename all but one") in result.stdout


@pytest.mark.parametrize("extension, listed", [(".JPG", ""), (".png", ""), (".JPEG", ".jpeg")])
def test_one_name_with_two_extensions_is_refused_by_training(tmp_path, extension, listed):
    name = second_extension_lab(tmp_path, extension, listed)
    for read in (lambda: read_split(tmp_path, "train"), lambda: open_dataset(tmp_path, "train", skip_bad=True)):
        message = rf"^train_img.csv line 2: name '{name}{listed}' matches 2 photos"
        with pytest.raises(RetinoError, match=message) as info:
            read()
        message = str(info.value)
        assert "\n" not in message and f"images/{name}{extension}" in message and "remove or rename" in message
    assert read_split(tmp_path, "test")  # the other split is not blamed


def test_one_kaggle_name_in_train_and_images_is_ambiguous(tmp_path):
    make_kaggle(tmp_path, n_patients=10, image_dir="train")
    train = read_split(tmp_path, "train")
    name = train.names[0]
    write_image(tmp_path / "images" / f"{name}.jpeg", name=name)
    with pytest.raises(RetinoError, match=rf"name '{name}' matches 2 photos \(train/{name}.jpeg, images/{name}.jpeg\)"):
        read_split(tmp_path, "train")
    report = validate_dataset(tmp_path, workers=1, progress=False)
    assert not report.ok
    assert [reason for _, reason in report.problems if "matches 2 photos" in reason] == [
        f"name '{name}' matches 2 photos (train/{name}.jpeg, images/{name}.jpeg): remove or rename all but one, "
        "so the name means a single photo"]


@pytest.mark.heavy
def test_one_lab_name_in_the_root_and_images_is_ambiguous(tmp_path):
    rows = make_lab(tmp_path, image_dir="images")
    name = rows["test"][0][0]
    write_image(tmp_path / f"{name}.jpeg", name=name)
    with pytest.raises(RetinoError, match=rf"^test_img.csv line 1: name '{name}' matches 2 photos"):
        read_split(tmp_path, "test")
    result = data_cli("validate", str(tmp_path), "--workers", "1")
    assert result.returncode == 1 and f"(images/{name}.jpeg, {name}.jpeg)" in result.stdout


def test_one_photo_reached_twice_through_a_link_is_not_ambiguous(tmp_path):
    make_lab(tmp_path)
    os.symlink(".", tmp_path / "images")  # images/ is the root itself: every photo is seen in both folders
    assert validate_dataset(tmp_path, workers=1, progress=False).ok
    assert all(path.parent == tmp_path / "images" for path in read_split(tmp_path, "train").paths)


def test_the_spelling_as_written_still_wins_over_the_stripped_one(tmp_path):
    """``x `` in the table names the file ``x .jpeg`` first; ``x.jpeg`` is only its fallback, not a rival."""
    rows = make_lab(tmp_path)
    name = rows["train"][0][0]
    write_image(tmp_path / f"{name} .jpeg", name=name)
    lines = (tmp_path / "train_img.csv").read_text().splitlines()
    lines[0] += " "
    (tmp_path / "train_img.csv").write_text("".join(f"{line}\n" for line in lines))
    assert read_split(tmp_path, "train").paths[0] == tmp_path / f"{name} .jpeg"
