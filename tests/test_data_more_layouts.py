"""Reading the other layouts people have: a folder per grade, IDRiD, DDR, Messidor-2 (adjudicated), DeepDRiD.

Each is read from a tree generated here and checked against it; each bad input is one line naming the
file and line (or folder), and photos left out on purpose (ungradable) are counted and said.
"""

import warnings

import pytest
from builders import write_image, write_lines

from retino_utils.data import detect_layout, read_split, validate_dataset
from retino_utils.data.layouts import label_tables, patient_of, scan_split, shared_photos
from retino_utils.errors import RetinoError


def _read_both(root, **kwargs):
    return read_split(root, "train", **kwargs), read_split(root, "test", **kwargs)


def _pairs(*indexes):
    return sorted((name, label) for index in indexes for name, label in zip(index.names, index.labels.tolist()))


def _detected_and_read(root, layout, rows):
    """Both splits of ``root``, checked to be detected as ``layout`` and to hold exactly ``rows``."""
    assert detect_layout(root) == layout
    train, test = _read_both(root)
    assert _pairs(train, test) == sorted(rows)
    return train, test


def _set_line(path, number, text):
    """Rewrite line ``number`` (1-based) of a label file."""
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    write_lines(path, lines)


def _one_line_error(root, match, split="train", **kwargs):
    with pytest.raises(RetinoError, match=match) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an ungradable photo's warning is not the point here
        read_split(root, split, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- a folder per grade ---------------------------------------------------------------------------


def _make_grade_folders(base, n_patients=20, ext=".png"):
    """Two eyes a patient, each eye's photo in its grade's folder: ``<base>/<g>/<patient>_<eye><ext>``."""
    rows = []
    for patient in range(n_patients):
        for eye, grade in (("left", patient % 5), ("right", (patient + patient % 2) % 5)):
            name = f"{100 + patient}_{eye}{ext}"
            write_image(base / str(grade) / name, size=(12, 10))
            rows.append((name, grade))
    return rows


def test_folder_per_grade_is_detected_and_split_by_patient(tmp_path):
    train, test = _detected_and_read(tmp_path, "folders", _make_grade_folders(tmp_path))
    assert len({patient_of(n) for n in test.names}) == round(0.2 * 20)
    assert not {patient_of(n) for n in train.names} & {patient_of(n) for n in test.names}
    for index in (train, test):
        assert all(path.is_file() and path.parent.name == str(label) for path, label in zip(index.paths, index.labels))
        assert index.sources[0] == index.paths[0].relative_to(tmp_path).as_posix()


def test_folder_per_grade_with_split_folders_uses_them(tmp_path):
    train_rows = _make_grade_folders(tmp_path / "train", n_patients=6, ext=".jpeg")
    valid_rows = [("900_left.jpg", 4)]
    write_image(tmp_path / "valid" / "4" / "900_left.jpg")
    test_rows = [("500_left.png", 2), ("501_right.png", 0)]
    for name, grade in test_rows:
        write_image(tmp_path / "test" / str(grade) / name)
    assert detect_layout(tmp_path) == "folders"
    train, test = _read_both(tmp_path)
    assert _pairs(train) == sorted(train_rows + valid_rows)  # valid/ is part of the train split
    assert _pairs(test) == sorted(test_rows)
    assert all(path.relative_to(tmp_path).parts[0] == "test" for path in test.paths)
    write_image(tmp_path / "3" / "stray.png")
    _one_line_error(tmp_path, r"^3/: a grade folder beside train/ is not read: move it into train/ or test/")


def test_folder_names_mapped_by_grade_names_csv(tmp_path):
    names = {"1 - No DR": 0, "2 - Mild": 1, "3 - Moderate": 2, "4 - Severe": 3, "5 - Proliferative": 4}
    write_lines(tmp_path / "grade_names.csv", ["folder,grade", *(f"{k},{v}" for k, v in names.items())])
    rows = []
    for i, (folder, grade) in enumerate(names.items()):
        for j in range(4):
            write_image(tmp_path / folder / f"p{i}{j}.png")
            rows.append((f"p{i}{j}.png", grade))
    _detected_and_read(tmp_path, "folders", rows)


def test_a_folder_that_maps_to_no_grade_is_named(tmp_path):
    _make_grade_folders(tmp_path, n_patients=5)
    write_image(tmp_path / "7" / "x.png")
    message = _one_line_error(tmp_path, r"^7/: folder '7' maps to no grade")
    assert "grade_names.csv" in message


def test_a_bad_grade_names_line_is_named(tmp_path):
    _make_grade_folders(tmp_path, n_patients=5)
    write_lines(tmp_path / "grade_names.csv", ["1 - No DR,0", "", "2 - Mild,x"])
    _one_line_error(tmp_path, r"^grade_names.csv line 3: label 'x' is not an integer grade 0-4 "
                              r"\(for folder '2 - Mild'\)", layout="folders")


def test_one_photo_in_two_grade_folders_and_a_stray_photo_are_refused(tmp_path):
    _make_grade_folders(tmp_path, n_patients=5)
    write_image(tmp_path / "3" / "100_left.png")  # 100_left.png is also in 0/
    write_image(tmp_path / "loose.png")
    write_image(tmp_path / "2" / "scan.tif")
    problems = [p for split in ("train", "test") for p in scan_split(tmp_path, split).problems]
    assert ("loose.png", "photo outside a grade folder: move it into ./<grade>/") in problems
    assert ("2/scan.tif", "a .tif photo is not read (only .jpeg, .jpg, .png): convert it") in problems
    assert any(where == "3/100_left.png" and "repeats 0/100_left.png" in reason for where, reason in problems)


# --- IDRiD -----------------------------------------------------------------------------------------

IDRID_TRAIN = "a. IDRiD_Disease Grading_Training Labels.csv"
IDRID_TEST = "b. IDRiD_Disease Grading_Testing Labels.csv"


def _make_idrid(root, n_train=6, n_test=3):
    """IDRiD's tree: Training and Testing both number their photos from IDRiD_001."""
    rows = {"train": [(f"IDRiD_{i + 1:03d}", i % 5) for i in range(n_train)],
            "test": [(f"IDRiD_{i + 1:03d}", (i + 2) % 5) for i in range(n_test)]}
    for split, table, folder in (("train", IDRID_TRAIN, "a. Training Set"), ("test", IDRID_TEST, "b. Testing Set")):
        write_lines(root / "2. Groundtruths" / table, ["Image name,Retinopathy grade,Risk of macular edema "]
                    + [f"{name},{grade},0" for name, grade in rows[split]])
        for name, _ in rows[split]:
            write_image(root / "1. Original Images" / folder / f"{name}.jpg", name=f"{split}{name}")
    return rows


def test_idrid_reads_both_label_files_and_their_image_folders(tmp_path):
    rows = _make_idrid(tmp_path)
    assert detect_layout(tmp_path) == "idrid"
    train, test = _read_both(tmp_path)
    for split, index in (("train", train), ("test", test)):
        assert _pairs(index) == sorted((f"{split}/{name}", grade) for name, grade in rows[split])
        folder = "a. Training Set" if split == "train" else "b. Testing Set"
        assert all(path.is_file() and path.parent.name == folder for path in index.paths)
    assert not shared_photos(train, test)  # IDRiD_001 of Training is not IDRiD_001 of Testing
    assert train.sources[0] == f"{IDRID_TRAIN} line 2"


def test_idrid_bad_grade_and_missing_photo(tmp_path):
    _make_idrid(tmp_path)
    table = tmp_path / "2. Groundtruths" / IDRID_TRAIN
    _set_line(table, 4, "IDRiD_003,x,0")
    _one_line_error(tmp_path, rf"^{IDRID_TRAIN} line 4: label 'x' is not an integer grade 0-4")
    assert len(read_split(tmp_path, "test")) == 3  # the other split is fine
    _set_line(table, 4, "")
    (tmp_path / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg").unlink()
    report = validate_dataset(tmp_path, workers=1, progress=False)
    assert not report.ok
    assert any("IDRiD_002.jpg" in where for where, _ in report.problems)


# --- DDR -------------------------------------------------------------------------------------------


def _make_ddr(root):
    rows = {"train.txt": [("007-0001-100.jpg", 0), ("007-0002-100.jpg", 2), ("007-0003-100.jpg", 5)],
            "valid.txt": [("007-0004-100.jpg", 4)],
            "test.txt": [("007-0005-100.jpg", 1), ("007-0006-100.jpg", 5), ("007-0007-100.jpg", 3)]}
    for table, entries in rows.items():
        write_lines(root / table, [f"{name} {grade}" for name, grade in entries])
        for name, _ in entries:
            write_image(root / table[:-4] / name)
    return rows


def test_ddr_reads_name_grade_lines_and_leaves_out_ungradable_saying_so(tmp_path):
    _make_ddr(tmp_path)
    assert detect_layout(tmp_path) == "ddr"
    with pytest.warns(UserWarning, match=r"ddr layout: left out 1 ungradable photo \(train.txt line 3: "
                                         r"007-0003-100.jpg has grade 5 \(ungradable\)\)"):
        train = read_split(tmp_path, "train")
    assert _pairs(train) == [("007-0001-100.jpg", 0), ("007-0002-100.jpg", 2), ("007-0004-100.jpg", 4)]
    assert train.paths[2] == tmp_path / "valid" / "007-0004-100.jpg"
    scanned = scan_split(tmp_path, "test")
    assert _pairs(scanned.index) == [("007-0005-100.jpg", 1), ("007-0007-100.jpg", 3)]
    assert scanned.excluded == [("test.txt line 2", "007-0006-100.jpg has grade 5 (ungradable)")]
    report = validate_dataset(tmp_path, workers=1, progress=False)
    assert report.ok and report.counts.loc["test", "total"] == 2
    assert sum("left out 1 ungradable" in note for note in report.notes) == 2
    assert "note: ddr layout: left out" in report.format()


@pytest.mark.parametrize("line, message", [
    ("007-0002-100.jpg x", r"^train.txt line 2: label 'x' is not an integer grade 0-4"),
    ("007-0002-100.jpg 7", r"^train.txt line 2: label 7 is not a grade 0-4"),
    ("007-0002-100.jpg", r"^train.txt line 2: expected 'name grade', found '007-0002-100.jpg'"),
    ("007-0001-100.jpg 2", r"^train.txt line 2: name '007-0001-100.jpg' repeats train.txt line 1"),
])
def test_ddr_bad_lines_are_named(tmp_path, line, message):
    _make_ddr(tmp_path)
    _set_line(tmp_path / "train.txt", 2, f"{line}\n")  # a blank line after it is skipped
    _one_line_error(tmp_path, message)


def test_ddr_without_test_txt_gets_a_derived_test_split(tmp_path):
    _make_ddr(tmp_path)
    (tmp_path / "test.txt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, test = _read_both(tmp_path)
    assert _pairs(train, test) == [("007-0001-100.jpg", 0), ("007-0002-100.jpg", 2), ("007-0004-100.jpg", 4)]
    assert len(test) == 1


# --- Messidor-2 (adjudicated grades) -----------------------------------------------------------------


def _make_messidor(root, n=20):
    lines = ["image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"]
    rows = []
    for i in range(n):
        name = f"20051020_{i:05d}_0100_PP.png" if i % 2 else f"IM{i:06d}.JPG"
        write_image(root / "IMAGES" / name)
        if i % 7 == 3:
            lines.append(f"{name},,,0")
        else:
            lines.append(f"{name},{i % 5},0,1")
            rows.append((name, i % 5))
    write_lines(root / "messidor_data.csv", lines)
    return rows


def test_messidor2_reads_adjudicated_grades_and_counts_ungradable(tmp_path):
    rows = _make_messidor(tmp_path)
    assert detect_layout(tmp_path) == "messidor2"
    with pytest.warns(UserWarning, match=r"messidor2 layout: left out 3 ungradable photos \(messidor_data.csv line 5: "
                                         r"20051020_00003_0100_PP.png is adjudicated ungradable, and 2 more\)"):
        train, test = _read_both(tmp_path)
    assert _pairs(train, test) == sorted(rows)
    assert len(test) == round(0.2 * len(rows))
    assert all(path.is_file() and path.parent.name == "IMAGES" for path in train.paths + test.paths)


@pytest.mark.parametrize("row, message", [
    ("IM000000.JPG,,0,1", r"^messidor_data.csv line 2: label '' is not an integer grade 0-4"),
    ("IM000000.JPG,2,0,maybe", r"^messidor_data.csv line 2: adjudicated_gradable 'maybe' is neither 1 nor 0"),
    ("IM000000.JPG,2", r"^messidor_data.csv line 2: expected 4 fields, found 2"),
])
def test_messidor2_bad_rows_are_named(tmp_path, row, message):
    _make_messidor(tmp_path)
    _set_line(tmp_path / "messidor_data.csv", 2, row)
    # One table for both splits: its problem is each split's, said once by validate.
    assert scan_split(tmp_path, "train").problems == scan_split(tmp_path, "test").problems != []
    _one_line_error(tmp_path, message)


# --- DeepDRiD -------------------------------------------------------------------------------------

DEEPDRID_HEADER = "patient_id,image_id,image_path,left_eye_DR_Level,right_eye_DR_Level,patient_DR_Level"


def _make_deepdrid(root, n_patients=10):
    """DeepDRiD's regular fundus set: two photos an eye, the grade in the eye's column only, Windows paths."""
    folder = root / "regular-fundus-training"
    lines, rows = [DEEPDRID_HEADER], []
    for patient in range(1, n_patients + 1):
        left, right = patient % 5, (patient + 1) % 5
        for eye, grade in (("l", left), ("r", right)):
            for shot in (1, 2):
                image_id = f"{patient}_{eye}{shot}"
                path = f"\\regular_fundus_images\\regular-fundus-training\\Images\\{patient}\\{image_id}.jpg"
                cells = (str(grade), "") if eye == "l" else ("", str(grade))
                lines.append(f"{patient},{image_id},{path},{cells[0]},{cells[1]},{max(left, right)}")
                write_image(folder / "Images" / str(patient) / f"{image_id}.jpg")
                rows.append((image_id, grade))
    write_lines(folder / "regular-fundus-training.csv", lines)
    return rows


def test_deepdrid_grades_each_photo_by_its_eye_and_splits_by_patient(tmp_path):
    train, test = _detected_and_read(tmp_path, "deepdrid", _make_deepdrid(tmp_path))
    for index in (train, test):
        for name, path in zip(index.names, index.paths):
            assert path == tmp_path / "regular-fundus-training" / "Images" / name.split("_")[0] / f"{name}.jpg"
    patients = [{name.split("_")[0] for name in index.names} for index in (train, test)]
    assert not patients[0] & patients[1] and len(patients[1]) == 2
    assert train.sources[0].startswith("regular-fundus-training/regular-fundus-training.csv line ")


@pytest.mark.parametrize("edit, message", [
    (lambda cells: cells[:3] + ["", "1", "0"], r"line 2: no grade in left_eye_dr_level for image_id '1_l1'"),
    (lambda cells: cells[:1] + ["first", ""] + cells[3:], r"line 2: cannot tell the eye of image_id 'first'"),
    (lambda cells: cells[:3] + ["9"] + cells[4:], r"line 2: label 9 is not a grade 0-4"),
])
def test_deepdrid_bad_rows_are_named(tmp_path, edit, message):
    _make_deepdrid(tmp_path)
    table = tmp_path / "regular-fundus-training" / "regular-fundus-training.csv"
    _set_line(table, 2, ",".join(edit(table.read_text().splitlines()[1].split(","))))
    problems = scan_split(tmp_path, "train").problems
    assert len(problems) == 1 and problems[0][0] == "regular-fundus-training/regular-fundus-training.csv line 2"
    _one_line_error(tmp_path, message)


def test_deepdrid_missing_photo_keeps_its_row_for_validate(tmp_path):
    _make_deepdrid(tmp_path, n_patients=3)
    (tmp_path / "regular-fundus-training" / "Images" / "2" / "2_r1.jpg").unlink()
    index = scan_split(tmp_path, "train").index
    test = scan_split(tmp_path, "test").index
    where = dict(zip(index.names + test.names, index.paths + test.paths))
    assert where["2_r1"] == tmp_path / "regular-fundus-training" / "Images" / "2" / "2_r1.jpg"
    assert not where["2_r1"].exists()


# --- detection and the override -----------------------------------------------------------------------


def test_nothing_to_detect_names_the_new_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(RetinoError) as info:
        detect_layout(tmp_path)
    for expected in ("(folders)", "(idrid)", "(ddr)", "(messidor2)", "(deepdrid)", "Retinopathy grade"):
        assert expected in str(info.value)


def test_the_override_wins_over_detection(tmp_path):
    _make_grade_folders(tmp_path, n_patients=5)
    write_lines(tmp_path / "train.txt", ["a.jpg 1"])  # also looks like DDR, which is detected first
    assert detect_layout(tmp_path) == "ddr"
    train, test = _read_both(tmp_path, layout="folders")
    assert train.layout == "folders" and len(train) + len(test) == 10


def test_label_tables_lists_what_each_layout_reads(tmp_path):
    _make_idrid(tmp_path / "idrid")
    assert label_tables(tmp_path / "idrid") == [f"2. Groundtruths/{IDRID_TRAIN}", f"2. Groundtruths/{IDRID_TEST}"]
    _make_deepdrid(tmp_path / "deepdrid", n_patients=2)
    assert label_tables(tmp_path / "deepdrid") == ["regular-fundus-training/regular-fundus-training.csv"]
    _make_ddr(tmp_path / "ddr")
    assert label_tables(tmp_path / "ddr") == ["test.txt", "train.txt", "valid.txt"]
    _make_grade_folders(tmp_path / "folders", n_patients=2)
    assert label_tables(tmp_path / "folders") == []


def test_every_layout_is_a_choice_of_the_settings():
    from retino_utils.data.layouts import LAYOUTS
    from retino_utils.train.config import choices

    assert set(choices()["layout"]) == {"auto", *LAYOUTS}


@pytest.mark.parametrize("make", [_make_idrid, _make_deepdrid, _make_ddr])
def test_a_preprocessed_copy_carries_its_layouts_label_tables(tmp_path, make):
    """preprocess copies the tables a layout found by their columns too, so the copy reads as the original."""
    from retino_utils.data.preprocess import preprocess_dataset

    source, copy = tmp_path / "source", tmp_path / "copy"
    make(source)
    assert not preprocess_dataset(source, copy, 16, progress=False).failed
    assert detect_layout(copy) == detect_layout(source)
    assert _pairs(*_read_both(copy)) == _pairs(*_read_both(source))
