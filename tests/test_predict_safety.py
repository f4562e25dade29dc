"""predict never hands back a wrong result without a word: the run's own split, the checkpoint's own
settings, outputs checked before grading, every kind of input list, unreadable and non-fundus photos."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from builders import make_kaggle
from PIL import Image

from retino_utils.data import read_split
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig


def predict_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "retino_utils.predict", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("run") / "run"
    fit(TrainConfig(data=str(tiny_dataset), out=str(out), epochs=1, batch_size=8, image_size=32, device="cpu",
                    progress=False, bootstrap=50, val_fraction=0.25))
    return out


@pytest.fixture
def photos(tiny_dataset):
    return read_split(tiny_dataset, "test").paths


# -- 4: a dataset is split as the run split it ---------------------------------------------------------------
@pytest.mark.heavy
def test_predict_scores_the_runs_own_test_split(tmp_path):
    data = tmp_path / "kaggle"
    make_kaggle(data, n_patients=20, size=(32, 32))
    run = tmp_path / "run"
    fit(TrainConfig(data=str(data), out=str(run), epochs=1, batch_size=8, image_size=32, device="cpu",
                    progress=False, bootstrap=50, test_fraction=0.5, split_seed=3))
    result = predict_cli(run, data, "--out", tmp_path / "grades.csv")
    assert result.returncode == 0, result.stderr
    graded = pd.read_csv(tmp_path / "grades.csv")["name"].tolist()
    assert graded == pd.read_csv(run / "predictions.csv")["name"].tolist()
    # The run's data edited since: its test split is no longer the run's, and predict says so.
    labels = data / "trainLabels.csv"
    lines = labels.read_text().splitlines()
    name, grade = lines[1].split(",")
    lines[1] = f"{name},{(int(grade) + 1) % 5}"
    labels.write_text("\n".join(lines) + "\n")
    refused = one_line_error(predict_cli(run, data, "--out", tmp_path / "again.csv"))
    assert "has changed since it trained" in refused and not (tmp_path / "again.csv").exists()


# -- 5: the checkpoint's settings, not an edited config.yaml ------------------------------------------------
@pytest.mark.parametrize("edit, named", [({"image_size": 64}, "image_size: 32 -> 64"),
                                         ({"arch": "resnet50"}, "arch: 'resnet18' -> 'resnet50'")])
def test_an_edited_config_yaml_is_refused_naming_both_values(trained, photos, tmp_path, edit, named):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, **edit}))
    message = one_line_error(predict_cli(run, photos[0], "--out", tmp_path / "g.csv"))
    assert named in message and "disagrees with the checkpoint" in message


# -- 7: outputs checked before grading; every kind of input ------------------------------------------------
def test_outputs_that_cannot_be_written_are_refused_before_grading(trained, photos, tmp_path):
    (tmp_path / "afile").write_text("")
    for args, said in (
        (["--out", tmp_path], "is a folder"),
        (["--out", tmp_path / "missing" / "g.csv"], "does not exist"),
        (["--out", tmp_path / "g.csv", "--cam", tmp_path / "afile"], "is a file"),
    ):
        result = predict_cli(trained, photos[0], *args)
        assert said in one_line_error(result) and "graded" not in result.stdout, args
    assert not (tmp_path / "g.csv").exists()


def test_a_single_photo_a_utf16_list_and_a_comma_in_a_path_are_graded(trained, photos, tmp_path):
    single = predict_cli(trained, photos[0], "--out", tmp_path / "one.csv")
    assert single.returncode == 0, single.stderr
    assert pd.read_csv(tmp_path / "one.csv")["path"].tolist() == [str(photos[0])]
    odd = tmp_path / "a, b" / "photo,1.jpeg"
    odd.parent.mkdir()
    shutil.copy(photos[1], odd)
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(map(str, [photos[0], odd])) + "\n", encoding="utf-16")
    result = predict_cli(trained, listed, "--out", tmp_path / "list.csv")
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "list.csv")["path"].tolist() == [str(photos[0]), str(odd)]


def test_a_file_name_that_is_not_utf8_is_written(trained, photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.jpeg")  # Latin-1, as an old camera card may name it
    shutil.copy(photos[0], raw)
    result = predict_cli(trained, folder, "--out", tmp_path / "g.csv")
    assert result.returncode == 0, result.stderr
    assert b"caf\xe9.jpeg" in (tmp_path / "g.csv").read_bytes()  # the name's own bytes, usable to find the file


def test_when_no_photo_can_be_read_the_reasons_are_listed(trained, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpeg").write_bytes(b"not a jpeg")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    message = one_line_error(predict_cli(trained, folder, "--out", tmp_path / "g.csv"))
    assert "none of the 2 photos could be read" in message and "a.jpeg" in message and "b.png" in message


def test_overlays_of_photos_with_one_name_in_two_folders_are_both_kept(trained, photos, tmp_path):
    listed = []
    for folder in ("clinic_a", "clinic_b"):
        (tmp_path / folder).mkdir()
        listed.append(Path(shutil.copy(photos[0], tmp_path / folder / "eye.jpeg")))
    (tmp_path / "list.txt").write_text("\n".join(map(str, listed)))
    result = predict_cli(trained, tmp_path / "list.txt", "--out", tmp_path / "g.csv", "--cam", tmp_path / "cam")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cam").glob("*.png"))) == 2


def test_a_stale_metrics_file_beside_new_grades_is_removed(trained, tiny_dataset, photos, tmp_path):
    out = tmp_path / "grades.csv"
    assert predict_cli(trained, tiny_dataset, "--out", out).returncode == 0
    scored = tmp_path / "grades.metrics.json"
    assert json.loads(scored.read_text())["accuracy"] is not None
    result = predict_cli(trained, photos[0], "--out", out)  # photos without labels, same --out
    assert result.returncode == 0 and not scored.exists() and "removed" in result.stdout


# -- 8: what cannot be a fundus photo is graded, flagged and said ------------------------------------------
def test_photos_that_cannot_be_fundus_photos_are_flagged(trained, photos, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (1, 1), (120, 40, 20)).save(folder / "tiny.png")
    Image.new("RGB", (64, 64)).save(folder / "black.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "white.png")
    Image.new("RGBA", (64, 64), (200, 10, 10, 0)).save(folder / "clear.png")
    shutil.copy(photos[0], folder / "fundus.jpeg")
    result = predict_cli(trained, folder, "--out", tmp_path / "g.csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "g.csv", keep_default_na=False).set_index("name")
    assert len(table) == 5
    expected = {"tiny": "1x1 px is too small", "black": "all black", "white": "all white", "clear": "fully transparent"}
    for name, doubt in expected.items():
        assert doubt in table.loc[name, "not_fundus"], name
        assert f"{name}.png cannot be a fundus photo ({doubt}" in result.stderr
    assert table.loc["fundus", "not_fundus"] == ""
    assert np.isfinite(table["referable_score"]).all()
