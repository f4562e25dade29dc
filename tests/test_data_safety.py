"""Wrong data never passes silently: blank lines, repeats, leakage, spellings, nested folders, full disks.

Each test reproduces what a new user did to a small dataset and asserts what that user needs: the
right labels or a one-line error that names the file and line, never a shift or a silent pass.
"""

import errno
import subprocess
import sys

import pytest
from builders import make_kaggle, make_lab, write_lines

from retino_utils.atomic import atomic_path, format_bytes
from retino_utils.data import ImageCache, open_dataset, preprocess_dataset, read_split, validate_dataset
from retino_utils.data.__main__ import main as data_main
from retino_utils.data.layouts import check_disjoint, patient_of
from retino_utils.errors import DiskFullError, RetinoError
from retino_utils.paths import REPO_ROOT


def blank_line(path, number):
    lines = path.read_text().splitlines()
    lines[number - 1] = ""
    write_lines(path, lines)


def test_blank_lines_in_different_places_are_errors_not_a_label_shift(tmp_path):
    """The repro of the issue: line 3 blanked in the names, line 5 in the labels."""
    rows = make_lab(tmp_path, n_train=8)
    blank_line(tmp_path / "train_img.csv", 3)
    blank_line(tmp_path / "train_label.csv", 5)
    with pytest.raises(RetinoError, match=r"train_img.csv line 3: blank name") as info:
        read_split(tmp_path, "train")
    assert "\n" not in str(info.value)
    report = validate_dataset(tmp_path, progress=False)
    assert not report.ok
    problems = dict(report.problems)
    assert problems["train_img.csv line 3"] == "blank name for label '2' (train_label.csv line 3)"
    name_5 = rows["train"][4][0]
    assert problems["train_label.csv line 5"] == f"blank label for {name_5!r} (train_img.csv line 5)"


def test_a_line_blank_in_both_files_is_skipped_and_the_rest_stay_paired(tmp_path):
    rows = make_lab(tmp_path, n_train=8)
    blank_line(tmp_path / "train_img.csv", 4)
    blank_line(tmp_path / "train_label.csv", 4)
    index = read_split(tmp_path, "train")
    expected = rows["train"][:3] + rows["train"][4:]
    assert list(zip(index.names, index.labels.tolist())) == expected


@pytest.mark.parametrize("line", [6, 8])  # in the middle, and the last line (no longer a trailing blank)
def test_a_label_replaced_by_a_blank_is_reported_with_its_line(tmp_path, line):
    rows = make_lab(tmp_path, n_train=8)
    blank_line(tmp_path / "train_label.csv", line)
    name = rows["train"][line - 1][0]
    with pytest.raises(RetinoError, match=rf"blank label for '{name}'") as info:
        read_split(tmp_path, "train")
    problems = dict(validate_dataset(tmp_path, progress=False).problems)
    assert problems[f"train_label.csv line {line}"] == f"blank label for {name!r} (train_img.csv line {line})"
    assert "\n" not in str(info.value)


def test_duplicate_name_in_one_split_is_refused_even_with_skip_bad(tmp_path):
    make_lab(tmp_path, n_train=6)
    lines = (tmp_path / "train_img.csv").read_text().splitlines()
    lines[4] = lines[1]
    write_lines(tmp_path / "train_img.csv", lines)
    message = rf"train_img.csv line 5: name '{lines[1]}' repeats train_img.csv line 2"
    for skip_bad in (False, True):
        with pytest.raises(RetinoError, match=message):
            open_dataset(tmp_path, "train", skip_bad=skip_bad)


def test_two_spellings_of_one_file_are_a_repeat(tmp_path):
    make_lab(tmp_path, n_train=6)
    lines = (tmp_path / "train_img.csv").read_text().splitlines()
    lines[3] = f"{lines[0]}.jpeg"
    write_lines(tmp_path / "train_img.csv", lines)
    with pytest.raises(RetinoError, match=r"train_img.csv line 4: .* repeats train_img.csv line 1"):
        read_split(tmp_path, "train")


def test_a_photo_in_both_splits_is_refused(tmp_path):
    rows = make_lab(tmp_path)
    names = [name for name, _ in rows["test"]]
    names[1] = rows["train"][2][0]
    write_lines(tmp_path / "test_img.csv", names)
    train, test = (open_dataset(tmp_path, split, skip_bad=True).index for split in ("train", "test"))
    with pytest.raises(RetinoError) as info:
        check_disjoint(train, test)
    message = str(info.value)
    assert f"test_img.csv line 2: name '{names[1]}' is also in the train split (train_img.csv line 3)" in message
    assert "\n" not in message


def test_kaggle_split_never_puts_the_two_eyes_of_a_patient_on_both_sides(tmp_path):
    make_kaggle(tmp_path, n_patients=40)
    train, test = read_split(tmp_path, "train"), read_split(tmp_path, "test")
    train_patients = {patient_of(name) for name in train.names}
    test_patients = {patient_of(name) for name in test.names}
    assert train_patients and test_patients and not train_patients & test_patients
    assert len(train) + len(test) == 80
    check_disjoint(train, test)  # no photo shared


def test_names_resolve_as_spelled_on_disk(tmp_path):
    """Spaces kept when the file has them; the extension's case never matters; messages name real files."""
    rows = make_lab(tmp_path, n_train=6)
    names = [name for name, _ in rows["train"]]
    (tmp_path / f"{names[0]}.jpeg").rename(tmp_path / f"{names[0]}.Jpeg")
    (tmp_path / f"{names[1]}.jpeg").rename(tmp_path / f"{names[1]}.JPG")
    (tmp_path / f"{names[2]}.jpeg").rename(tmp_path / f"{names[2]} .jpeg")  # a trailing space in the file name
    listed = list(names)
    listed[2] = f"{names[2]} "
    listed[3] = f"  {names[3]}.JPEG"  # spaces around, extension in another case than the file's
    write_lines(tmp_path / "train_img.csv", listed)
    index = read_split(tmp_path, "train")
    assert [path.name for path in index.paths[:4]] == [
        f"{names[0]}.Jpeg", f"{names[1]}.JPG", f"{names[2]} .jpeg", f"{names[3]}.jpeg"]
    assert all(path.is_file() for path in index.paths)
    assert validate_dataset(tmp_path, progress=False).ok
    (tmp_path / f"{names[1]}.JPG").unlink()
    with pytest.raises(RetinoError, match=rf"image {tmp_path / names[1]}\.jpeg for entry '{names[1]}' is missing"):
        open_dataset(tmp_path, "train")


def test_images_one_folder_too_deep_are_one_line(tmp_path, capsys):
    make_kaggle(tmp_path, n_patients=10)
    nested = tmp_path / "train" / "train"
    nested.mkdir()
    for path in (tmp_path / "train").glob("*.jpeg"):
        path.rename(nested / path.name)
    with pytest.raises(RetinoError, match=r"20 of the 20 images are|one folder too deep") as info:
        open_dataset(tmp_path, "train")
    message = str(info.value)
    assert f"in {nested}/ instead of {tmp_path / 'train'}/" in message and "mv " in message
    assert data_main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "one folder too deep" in out and "file not found" not in out


def test_a_file_given_as_the_data_folder_says_so(tmp_path):
    make_lab(tmp_path)
    with pytest.raises(RetinoError, match=r"train_img.csv is a file, not a dataset folder") as info:
        read_split(tmp_path / "train_img.csv")
    assert "does not exist" not in str(info.value)


def test_hints_give_the_command_line_flag(tmp_path):
    make_lab(tmp_path)
    (tmp_path / "101_left.jpeg").unlink()
    with pytest.raises(RetinoError, match="--skip-bad"):
        open_dataset(tmp_path)


@pytest.mark.heavy
@pytest.mark.parametrize("header", ["Image,Level", "IMAGE,level"])
def test_kaggle_header_in_any_case_validates_and_prints_only_the_result(tmp_path, header):
    rows = make_kaggle(tmp_path, n_patients=10)
    write_lines(tmp_path / "trainLabels.csv", [header] + [f"{name},{grade}" for name, grade in rows])
    result = subprocess.run([sys.executable, "-m", "retino_utils.data", "validate", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, env={"TQDM_DISABLE": "1", "PATH": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: no problems found" in result.stdout and "Empty DataFrame" not in result.stdout
    assert result.stderr == ""


def test_a_wrong_header_is_one_line_without_a_stray_table(tmp_path, capsys):
    make_kaggle(tmp_path, n_patients=5)
    write_lines(tmp_path / "trainLabels.csv", ["file,grade", "10_left,0"])
    assert data_main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "expected a header with columns image,level" in out and "Empty DataFrame" not in out


# -- full disks and kills -------------------------------------------------------------------------------

def raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    with pytest.raises(DiskFullError, match=rf"the disk under {tmp_path} is full: writing notes.txt"):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half written")
            raise_enospc()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_preprocess_on_a_full_disk_stops_in_one_line_and_writes_no_csv(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src, n_train=8)
    monkeypatch.setattr("PIL.Image.Image.save", raise_enospc)
    from retino_utils.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(data_main, ["preprocess", str(src), str(dst), "--size", "16", "--workers", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: the disk under") and "rerun the same command" in err
    assert not list(dst.glob("*.csv"))
    monkeypatch.undo()
    assert data_main(["preprocess", str(src), str(dst), "--size", "16", "--workers", "1"]) == 0
    assert (dst / "train_img.csv").is_file() and validate_dataset(dst, progress=False).ok


def test_stale_temp_files_of_a_killed_preprocess_are_removed(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_lab(src, image_dir="images")
    preprocess_dataset(src, dst, size=16, progress=False)
    stale = dst / "images" / ".100_left.jpeg.a1b2c3d4.tmp"
    stale.write_bytes(b"\0" * 1000)
    mine = dst / "images" / ".notes.tmp"  # not of our naming: left alone
    mine.write_text("keep")
    preprocess_dataset(src, dst, size=16, progress=False)
    assert not stale.exists() and mine.exists()


def test_cache_space_check_prints_readable_sizes(tmp_path, monkeypatch):
    make_lab(tmp_path)
    index = read_split(tmp_path)
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 12_345})())
    with pytest.raises(DiskFullError) as info:
        ImageCache.build(index, 64, cache_dir=tmp_path / "cache", progress=False)
    needed = len(index) * 64 * 64 * 3
    assert f"needs {format_bytes(needed)}" in str(info.value) and "only 12.3 KB free" in str(info.value)
    # A cache in the data folder is moved by a link; RETINO_CACHE moves only the fallback under it.
    assert f"make {tmp_path / 'cache'} a link to a folder on a bigger disk" in str(info.value)
    monkeypatch.setenv("RETINO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DiskFullError) as info:
        ImageCache.build(index, 64, cache_dir=tmp_path / "cache" / "dataset", progress=False)
    assert f"point RETINO_CACHE at a bigger disk (now {tmp_path / 'cache'})" in str(info.value)


@pytest.mark.parametrize("size, text", [(0, "0 bytes"), (999, "999 bytes"), (1536, "1.5 KB"),
                                        (89_534_349, "89.5 MB"), (3 * 10**9, "3.0 GB"), (2.5e12, "2.5 TB")])
def test_format_bytes(size, text):
    assert format_bytes(size) == text
