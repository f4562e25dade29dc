"""The real data in ../shared/data: eyepacs-dev in both its layouts, and the lab's split files."""

import pytest

from retino_utils.data import read_lab_pair, read_split, validate_dataset

GRADES_EYEPACS_DEV = [2275, 223, 463, 77, 60]  # from ../shared/data/README.md


@pytest.fixture(scope="module")
def reports(shared_data, tmp_path_factory):
    """Validate eyepacs-dev once per layout (decoding all 3,098 images), caching under a temp folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETINO_CACHE", str(tmp_path_factory.mktemp("retino-cache")))
        patch.setenv("TQDM_DISABLE", "1")
        yield {layout: validate_dataset(shared_data / "eyepacs-dev", layout=layout) for layout in ("kaggle", "lab")}


def line_count(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.mark.heavy
def test_eyepacs_dev_kaggle_layout(shared_data, reports):
    root = shared_data / "eyepacs-dev"
    train, test = read_split(root, "train", layout="kaggle"), read_split(root, "test", layout="kaggle")
    assert len(train) + len(test) == 3098 == line_count(root / "trainLabels.csv") - 1
    assert (train.grade_counts() + test.grade_counts()).tolist() == GRADES_EYEPACS_DEV
    assert abs(len(test) / 3098 - 0.2) < 0.01
    assert reports["kaggle"].ok, reports["kaggle"].format()
    assert reports["kaggle"].counts["total"].sum() == 3098


def test_eyepacs_dev_lab_layout(shared_data, reports):
    root = shared_data / "eyepacs-dev"
    train, test = read_split(root, "train"), read_split(root, "test")
    assert train.layout == "lab"
    assert (len(train), len(test)) == (2490, 608)
    assert train.names[0] == (root / "train_img.csv").read_text().splitlines()[0]  # the first row is kept
    assert (train.grade_counts() + test.grade_counts()).tolist() == GRADES_EYEPACS_DEV
    assert all(path.is_file() for path in train.paths + test.paths)
    assert reports["lab"].ok, reports["lab"].format()


@pytest.mark.parametrize("split, rows", [("train", 28100), ("test", 7026)])
def test_lab_split_csvs_keep_every_row(shared_data, split, rows):
    folder = shared_data / "lab-split"
    table = read_lab_pair(folder / f"{split}_img.csv", folder / f"{split}_label.csv")
    assert table.problems == []
    assert len(table.names) == len(table.labels) == rows == line_count(folder / f"{split}_img.csv")
    assert table.names[0] == (folder / f"{split}_img.csv").read_text().splitlines()[0]
