"""Validation: every failure named with its reason and a non-zero exit; skip_bad; the cached result."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from builders import make_kaggle, make_lab, write_lines
from PIL import Image

import retino_utils.data.validate as validate_module
from retino_utils.data import FundusDataset, open_dataset, validate_dataset
from retino_utils.data.__main__ import main
from retino_utils.errors import RetinoError, run_cli
from retino_utils.paths import REPO_ROOT



def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def run_validate(capsys, root, *args):
    status = main(["validate", str(root), *args])
    return status, capsys.readouterr().out


def test_clean_folder_exits_zero_with_counts(tmp_path, capsys):
    rows = make_lab(tmp_path, n_train=7, n_test=3)
    status, out = run_validate(capsys, tmp_path)
    assert status == 0
    assert "OK: no problems found" in out
    report = validate_dataset(tmp_path)
    assert report.ok and report.problems == []
    for split, entries in rows.items():
        expected = np.bincount([g for _, g in entries], minlength=5).tolist()
        assert report.counts.loc[split, [0, 1, 2, 3, 4]].tolist() == expected
        assert report.counts.loc[split, "total"] == len(entries)


def set_lines(name, lines):
    return lambda root: write_lines(root / name, lines)


TRAIN_NAMES = [f"10{i}_left" for i in range(6)]
FAILURES = {
    "truncated": (
        lambda root: truncate(root / "101_left.jpeg"),
        "101_left.jpeg: truncated or corrupt JPEG (image file is truncated",
    ),
    "missing": (lambda root: (root / "101_left.jpeg").unlink(), "101_left.jpeg: file not found"),
    "not-image": (lambda root: (root / "101_left.jpeg").write_text("text"), "101_left.jpeg: not an image file"),
    "label-7": (
        set_lines("train_label.csv", ["0", "1", "7", "3", "4", "0"]),
        "train_label.csv line 3: label 7 is not a grade 0-4",
    ),
    "non-integer": (
        set_lines("train_label.csv", ["0", "1", "2.5", "3", "4", "0"]),
        "train_label.csv line 3: label '2.5' is not an integer",
    ),
    "unequal": (
        set_lines("train_label.csv", ["0", "1", "2", "3", "4"]),
        "train_img.csv, train_label.csv: 6 names but 5 labels",
    ),
    "duplicate": (
        set_lines("train_img.csv", [*TRAIN_NAMES[:2], "100_left", *TRAIN_NAMES[3:]]),
        "train_img.csv line 3: name '100_left' repeats train_img.csv line 1",
    ),
    "across-splits": (
        set_lines("test_img.csv", ["900_right", "101_left", "902_right", "903_right"]),
        "test_img.csv line 2: name '101_left' is also in the train split (train_img.csv line 2)",
    ),
    "empty": (
        lambda root: [write_lines(root / f"test_{kind}.csv", []) for kind in ("img", "label")],
        "test split: no entries",
    ),
    "no-file": (lambda root: (root / "test_label.csv").unlink(), "test split: "),
}


@pytest.mark.parametrize("damage, expected", FAILURES.values(), ids=FAILURES.keys())
def test_each_failure_is_named_and_exits_one(tmp_path, capsys, damage, expected):
    make_lab(tmp_path)
    damage(tmp_path)
    status, out = run_validate(capsys, tmp_path)
    assert status == 1
    assert expected in out
    assert "problem" in out


@pytest.mark.heavy
def test_truncated_jpeg_and_label_seven_are_both_reported_by_the_cli(tmp_path):
    make_lab(tmp_path, n_train=8)
    truncate(tmp_path / "103_left.jpeg")
    write_lines(tmp_path / "train_label.csv", ["0", "1", "2", "3", "7", "0", "1", "2"])
    result = subprocess.run(
        [sys.executable, "-m", "retino_utils.data", "validate", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"TQDM_DISABLE": "1", "PATH": ""},
    )
    assert result.returncode == 1, result.stderr
    assert "103_left.jpeg: truncated or corrupt JPEG" in result.stdout
    assert "train_label.csv line 5: label 7 is not a grade 0-4" in result.stdout
    assert "2 problems" in result.stdout


def test_no_layout_is_an_error_exit_two(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(main, ["validate", str(tmp_path)])
    assert info.value.code == 2
    assert "error: no dataset layout found" in capsys.readouterr().err


def test_many_problems_list_the_first_twenty_and_the_total(tmp_path, capsys):
    make_lab(tmp_path, n_train=30)
    for i in range(25):
        (tmp_path / f"{100 + i}_left.jpeg").unlink()
    status, out = run_validate(capsys, tmp_path)
    assert status == 1
    assert "25 problems" in out and "... and 5 more" in out
    assert out.count("file not found") == 20


def test_unusual_modes_validate_clean(tmp_path):
    make_lab(tmp_path, n_train=5)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "100_left.jpeg", format="JPEG")
    four_channels = rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)
    Image.fromarray(four_channels, mode="CMYK").save(tmp_path / "101_left.jpeg", format="JPEG")
    Image.fromarray(four_channels, mode="RGBA").save(tmp_path / "102_left.jpeg", format="PNG")
    Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16)).save(tmp_path / "103_left.jpeg", format="PNG")
    assert validate_dataset(tmp_path).ok


def test_pool_and_in_process_checks_agree(tmp_path):
    make_kaggle(tmp_path, n_patients=30, size=(8, 8))
    for name in ("11_left", "12_right", "25_left", "30_right"):
        truncate(tmp_path / "train" / f"{name}.jpeg", keep=0.3)
    pooled = validate_dataset(tmp_path, workers=2)
    alone = validate_dataset(tmp_path, workers=1)
    assert set().union(*pooled.bad_names.values()) == {"11_left", "12_right", "25_left", "30_right"}
    assert pooled.bad_names == alone.bad_names
    assert sorted(pooled.problems) == sorted(alone.problems)


def test_image_checks_are_cached_by_fingerprint(tmp_path, monkeypatch):
    make_lab(tmp_path)
    first = validate_dataset(tmp_path)

    def must_not_decode(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(validate_module, "decode_problem", must_not_decode)
    assert validate_dataset(tmp_path).problems == first.problems
    assert (tmp_path / ".retino-cache").is_dir()
    truncate(tmp_path / "100_left.jpeg")  # a new size: a new fingerprint, so a fresh check
    monkeypatch.undo()
    assert validate_dataset(tmp_path).bad_names["train"] == {"100_left"}
    assert len(list((tmp_path / ".retino-cache").glob("validate-lab-train-*.json"))) == 1


def test_open_dataset_missing_file_raises_with_the_validate_hint(tmp_path):
    make_lab(tmp_path)
    (tmp_path / "102_left.jpeg").unlink()
    with pytest.raises(RetinoError, match=r"102_left.jpeg for entry '102_left' is missing .*validate") as info:
        open_dataset(tmp_path)
    assert "skip_bad=True" in str(info.value)


def test_open_dataset_skip_bad_leaves_bad_entries_out_with_one_warning(tmp_path):
    make_lab(tmp_path, n_train=8)
    (tmp_path / "102_left.jpeg").unlink()
    truncate(tmp_path / "105_left.jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = open_dataset(tmp_path, skip_bad=True)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "left out 2 of 8" in message and "102_left" in message and "105_left" in message
    assert isinstance(dataset, FundusDataset)
    assert "102_left" not in dataset.names and "105_left" not in dataset.names and len(dataset) == 6
    image, label = dataset[0]
    assert image.dtype.is_floating_point is False and image.shape == (3, 20, 24)
    assert label == dataset.labels[0]


def test_open_dataset_empty_split_raises(tmp_path):
    make_lab(tmp_path)
    write_lines(tmp_path / "test_img.csv", [])
    write_lines(tmp_path / "test_label.csv", [])
    with pytest.raises(RetinoError, match="test split .* has no usable entries"):
        open_dataset(tmp_path, "test")


def test_dataset_items_are_the_decoded_images(tmp_path):
    make_lab(tmp_path)
    dataset = open_dataset(tmp_path)
    image, label = dataset[2]
    expected = np.asarray(Image.open(dataset.index.paths[2]).convert("RGB"))
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)
    assert label == int(dataset.labels[2])
