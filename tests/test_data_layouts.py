"""Reading the lab, Kaggle and APTOS layouts; the patient split; decoding of unusual image modes."""

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from builders import make_aptos, make_kaggle, make_lab, write_image, write_lines
from PIL import Image

from retino_utils.data import SplitIndex, detect_layout, load_resized, load_rgb, read_split
from retino_utils.data.layouts import holdout_split, patient_of, read_lab_pair, scan_split, stratified_group_split
from retino_utils.errors import RetinoError
from retino_utils.paths import REPO_ROOT


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("image_dir", ["", "images"])
def test_lab_layout_reads_every_row(tmp_path, header, image_dir):
    rows = make_lab(tmp_path, header=header, image_dir=image_dir)
    assert detect_layout(tmp_path) == "lab"
    for split, entries in rows.items():
        index = read_split(tmp_path, split)
        assert index.layout == "lab" and index.split == split
        assert list(zip(index.names, index.labels.tolist())) == entries  # the first row too
        assert index.labels.dtype == np.int64
        assert all(path.is_file() and path.parent == tmp_path / image_dir for path in index.paths)


def test_lab_label_header_only_keeps_the_first_name(tmp_path):
    make_lab(tmp_path)
    lines = (tmp_path / "train_label.csv").read_text().splitlines()
    write_lines(tmp_path / "train_label.csv", ["diagnosis", *lines])
    index = read_split(tmp_path, "train")
    assert index.names[0] == (tmp_path / "train_img.csv").read_text().splitlines()[0]
    assert len(index) == len(lines)


def test_lab_header_in_image_file_only_is_reported_not_guessed(tmp_path):
    make_lab(tmp_path)
    names = (tmp_path / "train_img.csv").read_text().splitlines()
    write_lines(tmp_path / "train_img.csv", ["image", *names])
    with pytest.raises(RetinoError, match=r"train_img.csv, train_label.csv: 7 names but 6 labels"):
        read_split(tmp_path, "train")


def test_lab_names_may_carry_their_extension(tmp_path):
    make_lab(tmp_path)
    names = (tmp_path / "train_img.csv").read_text().splitlines()
    write_lines(tmp_path / "train_img.csv", [f"{name}.jpeg" for name in names])
    index = read_split(tmp_path, "train")
    assert all(path.is_file() for path in index.paths)
    assert index.names[0] == f"{names[0]}.jpeg"


def test_read_lab_pair_handles_blank_lines_crlf_and_bom(tmp_path):
    (tmp_path / "img.csv").write_bytes(b"\xef\xbb\xbfa_left\r\nb_left\r\n\r\n")
    (tmp_path / "lab.csv").write_bytes(b"3\r\n4\r\n")
    rows = read_lab_pair(tmp_path / "img.csv", tmp_path / "lab.csv")
    assert (rows.names, rows.labels, rows.problems) == (["a_left", "b_left"], [3, 4], [])


@pytest.mark.parametrize(
    "label, message",
    [("7", "train_label.csv line 3: label 7 is not a grade 0-4"), ("x", "train_label.csv line 3: label 'x' is not")],
)
def test_read_split_raises_one_line_naming_file_and_line(tmp_path, label, message):
    make_lab(tmp_path)
    lines = (tmp_path / "train_label.csv").read_text().splitlines()
    lines[2] = label
    write_lines(tmp_path / "train_label.csv", lines)
    with pytest.raises(RetinoError, match=message) as info:
        read_split(tmp_path, "train")
    assert "\n" not in str(info.value)
    assert read_split(tmp_path, "test")  # the other split is fine


def test_missing_images_are_not_an_error_when_reading(tmp_path):
    make_lab(tmp_path, image_dir="images")
    (tmp_path / "images" / "100_left.jpeg").unlink()
    index = read_split(tmp_path, "train")
    assert index.paths[0] == tmp_path / "images" / "100_left.jpeg"
    assert not index.paths[0].exists()


@pytest.mark.parametrize("image_dir, ext", [
    ("train", ".jpeg"), ("images", ".jpeg"), ("train", ".jpg"), ("images", ".png")
])
def test_kaggle_layout(tmp_path, image_dir, ext):
    rows = make_kaggle(tmp_path, image_dir=image_dir, ext=ext)
    assert detect_layout(tmp_path) == "kaggle"
    train, test = read_split(tmp_path, "train"), read_split(tmp_path, "test")
    assert sorted(zip(train.names + test.names, [*train.labels, *test.labels])) == sorted(rows)
    for path in train.paths + test.paths:
        assert path.is_file() and path.suffix == ext and path.parent.name == image_dir


def test_aptos_layout(tmp_path):
    rows = make_aptos(tmp_path)
    assert detect_layout(tmp_path) == "aptos"
    train, test = read_split(tmp_path, "train"), read_split(tmp_path, "test")
    assert sorted(zip(train.names + test.names, [*train.labels, *test.labels])) == sorted(rows)
    assert len(test) == round(0.2 * len(rows))
    assert all(path.is_file() and path.parent.name == "train_images" for path in train.paths)


def test_detection_prefers_lab_and_the_override_wins(tmp_path):
    make_kaggle(tmp_path, image_dir="images")
    make_lab(tmp_path, image_dir="images")
    assert detect_layout(tmp_path) == "lab"
    assert read_split(tmp_path, "train").layout == "lab"
    assert read_split(tmp_path, "train", layout="kaggle").layout == "kaggle"
    with pytest.raises(RetinoError, match="unknown layout 'eyepacs'"):
        read_split(tmp_path, layout="eyepacs")


def test_nothing_to_detect_lists_what_was_looked_for(tmp_path):
    (tmp_path / "labels.csv").write_text("image,level\n")
    with pytest.raises(RetinoError) as info:
        detect_layout(tmp_path)
    for expected in ("train_img.csv", "train_label.csv", "trainLabels.csv", "train.csv", str(tmp_path)):
        assert expected in str(info.value)


def test_kaggle_table_without_its_columns_is_refused(tmp_path):
    write_lines(tmp_path / "trainLabels.csv", ["name,grade", "1_left,0"])
    with pytest.raises(RetinoError, match="expected a header with columns image,level"):
        read_split(tmp_path)


def test_patient_of():
    assert patient_of("10009_left") == "10009"
    assert patient_of("10009_right.jpeg") == "10009"
    assert patient_of("abc") == "abc"


def _patients(index: SplitIndex) -> set[str]:
    return {patient_of(name) for name in index.names}


def test_kaggle_split_keeps_patients_whole_stratified_and_sized(tmp_path):
    make_kaggle(tmp_path, n_patients=203)
    train, test = read_split(tmp_path, "train"), read_split(tmp_path, "test")
    assert not _patients(train) & _patients(test)
    all_patients = _patients(train) | _patients(test)
    assert len(_patients(test)) == round(0.2 * len(all_patients))
    # Stratified: each worst-grade stratum sends its share (up to rounding) of patients to test.
    worst = Counter()
    for index in (train, test):
        for name, label in zip(index.names, index.labels.tolist()):
            worst[patient_of(name)] = max(worst[patient_of(name)], label)
    for grade in range(5):
        stratum = {p for p, g in worst.items() if g == grade}
        assert abs(len(stratum & _patients(test)) - 0.2 * len(stratum)) < 1


@pytest.mark.heavy
def test_split_is_deterministic_seeded_and_independent_of_hash_seed(tmp_path):
    make_kaggle(tmp_path, n_patients=50)
    first = read_split(tmp_path, "test").names
    assert read_split(tmp_path, "test").names == first
    assert read_split(tmp_path, "test", split_seed=1).names != first
    code = f"from retino_utils.data import read_split; print(read_split({str(tmp_path)!r}, 'test').names)"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        command = [sys.executable, "-c", code]
        out = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(first)


def test_split_fraction_and_apportioning():
    groups = [f"p{i}" for i in range(101)]
    labels = [i % 3 for i in range(101)]
    for fraction in (0.1, 0.25, 0.5):
        test = stratified_group_split(groups, labels, fraction, seed=0)
        assert test.sum() == round(fraction * 101)
    with pytest.raises(RetinoError, match="test_fraction 1.5"):
        stratified_group_split(groups, labels, 1.5, seed=0)


def test_holdout_split_keeps_patients_whole(tmp_path):
    make_kaggle(tmp_path, n_patients=100)
    train = read_split(tmp_path, "train")
    kept, held = holdout_split(train, 0.25, seed=3)
    assert sorted([*kept, *held]) == list(range(len(train)))
    kept_index, held_index = train.subset(kept), train.subset(held)
    assert not _patients(kept_index) & _patients(held_index)
    assert len(_patients(held_index)) == round(0.25 * len(_patients(train)))
    assert np.array_equal(holdout_split(train, 0.25, seed=3)[1], held)


def test_split_index_subset_counts_and_fingerprint(tmp_path):
    make_lab(tmp_path, n_train=10)
    index = read_split(tmp_path, "train")
    assert index.grade_counts().tolist() == np.bincount(index.labels, minlength=5).tolist()
    part = index.subset([3, 1])
    assert part.names == (index.names[3], index.names[1]) and part.labels.tolist() == [index.labels[3], index.labels[1]]
    assert len(index.subset(index.labels == 2)) == (index.labels == 2).sum()
    fingerprint = index.fingerprint()
    assert read_split(tmp_path, "train").fingerprint() == fingerprint
    assert part.fingerprint() != fingerprint
    stat = index.paths[0].stat()
    os.utime(index.paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert index.fingerprint() != fingerprint


def test_scan_collects_every_label_problem(tmp_path):
    make_lab(tmp_path)
    write_lines(tmp_path / "train_label.csv", ["0", "9", "1", "two", "3", "4"])
    scanned = scan_split(tmp_path, "train")
    assert [where for where, _ in scanned.problems] == ["train_label.csv line 2", "train_label.csv line 4"]
    assert len(scanned.index) == 4


# --- decoding -------------------------------------------------------------------------------


def _rgb(image) -> np.ndarray:
    return np.asarray(load_rgb(image), dtype=np.int64)


def test_grayscale_and_palette_become_rgb(tmp_path):
    gray = np.arange(240, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(_rgb(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    palette = Image.fromarray(gray % 4, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tmp_path / "palette.png")
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    assert np.array_equal(_rgb(tmp_path / "palette.png"), colours[gray % 4])


def test_rgba_is_composited_on_black(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    expected = rgba[..., :3] * (rgba[..., 3:] / 255.0)
    assert np.abs(_rgb(tmp_path / "rgba.png") - expected).max() <= 1


def test_cmyk_is_converted(tmp_path):
    rng = np.random.default_rng(1)
    cmyk = rng.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tiff")
    c, k = cmyk[..., :3].astype(np.int64), cmyk[..., 3:].astype(np.int64)
    expected = (255 - c) * (255 - k) / 255  # the usual naive CMYK -> RGB
    assert np.abs(_rgb(tmp_path / "cmyk.tiff") - expected).max() <= 1


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
    expected = np.repeat(np.round(values / 65535 * 255)[..., None], 3, axis=2)
    assert np.array_equal(_rgb(tmp_path / "deep.png"), expected)
    as_int32 = Image.fromarray(values.astype(np.int32), mode="I")
    assert np.array_equal(_rgb(as_int32), expected)


@pytest.mark.parametrize("size, image_size", [((40, 30), 32), ((30, 40), 24), ((20, 20), 20), ((10, 14), 16)])
def test_load_resized_matches_torchvision_pad_and_resize(tmp_path, size, image_size):
    path = write_image(tmp_path / "x.png", size=size)
    image = Image.open(path).convert("RGB")
    width, height = size
    side = max(size)
    left, top = (side - width) // 2, (side - height) // 2
    padded = TF.pad(image, [left, top, side - width - left, side - height - top], fill=0)
    expected = TF.resize(padded, [image_size, image_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    assert np.array_equal(load_resized(path, image_size), np.asarray(expected))


def test_load_resized_decodes_big_jpegs_at_reduced_scale(tmp_path):
    """The JPEG draft is a faster decode of the same picture: close to the full decode, not equal."""
    yy, xx = np.mgrid[:400, :600]
    smooth = np.stack([xx * 255 // 600, yy * 255 // 400, (xx + yy) * 255 // 1000], axis=2).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpeg", quality=95)
    full = Image.open(tmp_path / "big.jpeg").convert("RGB")
    side = 600
    padded = Image.new("RGB", (side, side))
    padded.paste(full, (0, 100))
    reference = np.asarray(padded.resize((64, 64), Image.BILINEAR), dtype=np.float64)
    assert np.abs(load_resized(tmp_path / "big.jpeg", 64) - reference).mean() < 2.0
