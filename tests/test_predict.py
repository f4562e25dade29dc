"""Grading new photos with a trained run: the run's own figures reproduced exactly, any photo format,
unreadable files reported, overlays written; and the synthetic lesion masks the pointing score uses."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from retino_utils.data import read_split
from retino_utils.data.images import load_rgb, square_resize
from retino_utils.data.preprocess import preprocess_dataset
from retino_utils.evaluation.record import Scores
from retino_utils.predict.predictor import Predictor, preparation_note
from retino_utils.synthetic import generate_dataset, mask_path, render_fundus
from retino_utils.train.checkpoint import load_checkpoint, save_checkpoint
from retino_utils.train.config import load_config

CSV_ROUNDING = 5e-7  # half the last of the 6 decimals predict writes


def run_trained_on(trained, data, folder):
    """A copy of the run ``trained`` whose config and checkpoint say it trained on ``data``."""
    shutil.copytree(trained, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "data": str(data)}))
    state = load_checkpoint(folder / "best.pt")
    state.config["data"] = str(data)
    save_checkpoint(state, folder / "best.pt")
    return folder


def note(run, photos, prepare):
    return preparation_note(run, load_config(run / "config.yaml"), photos, prepare)


def predict_cli(*args):
    return subprocess.run([sys.executable, "-m", "retino_utils.predict", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)


def test_predicting_the_test_split_reproduces_the_run(trained, tiny_dataset, tmp_path):
    result = predict_cli(trained, tiny_dataset, "--out", tmp_path / "grades.csv", "--cam", tmp_path / "cam")
    assert result.returncode == 0, result.stderr
    ours = pd.read_csv(tmp_path / "grades.csv")
    own = pd.read_csv(trained / "predictions.csv")
    assert ours["name"].tolist() == own["name"].tolist()
    assert ours["pred_grade"].tolist() == own["pred_grade"].tolist()
    assert ours["true_grade"].tolist() == own["true_grade"].tolist()
    for column in ["p0", "p1", "p2", "p3", "p4", "referable_score"]:
        np.testing.assert_allclose(ours[column], own[column], atol=2e-6)
    scored = json.loads((tmp_path / "grades.metrics.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert scored["schema_version"] == metrics["schema_version"]  # versioned like the run's record, read back by it
    assert Scores.from_dict(scored, "grades.metrics.json").qwk == pytest.approx(metrics["qwk"])
    for key in ("accuracy", "qwk", "macro_f1", "referable_auc"):
        assert scored[key] == pytest.approx(metrics[key]), key
    assert scored["intervals"]["accuracy"] == pytest.approx(metrics["intervals"]["accuracy"])
    # The CSV keeps 6 decimals, so each score read back is within half a unit of the one graded (CSV_ROUNDING):
    # refer is checked where that cannot cross the threshold, and the calibrated probability, the isotonic map
    # being non-decreasing, must lie between the map's values at the two ends of that range.
    threshold = metrics["screening"]["operating_points"]["target"]["threshold"]
    clear = (ours["referable_score"] - threshold).abs() > CSV_ROUNDING
    assert (ours["refer"] == (ours["referable_score"] >= threshold))[clear].all()
    calibration = metrics["screening"]["calibration"]
    lowest, highest = (np.interp(ours["referable_score"] + side * CSV_ROUNDING, calibration["calibrator"]["x"],
                                 calibration["calibrator"]["y"]) for side in (-1, 1))
    assert (ours["referable_probability"] >= lowest - CSV_ROUNDING - 1e-12).all()
    assert (ours["referable_probability"] <= highest + CSV_ROUNDING + 1e-12).all()
    assert scored["screening"]["calibration"]["calibrated"]["ece"] == pytest.approx(calibration["calibrated"]["ece"])
    overlays = sorted((tmp_path / "cam").glob("*.png"))
    assert [p.stem for p in overlays] == sorted(own["name"])
    assert Image.open(overlays[0]).size == (32, 32)


def test_a_run_without_a_calibrator_writes_no_calibrated_probability(trained, tiny_dataset, tmp_path):
    older = shutil.copytree(trained, tmp_path / "older")
    metrics = json.loads((older / "metrics.json").read_text())
    del metrics["screening"]["calibration"]
    (older / "metrics.json").write_text(json.dumps(metrics))
    photos = read_split(tiny_dataset, "test").paths[:3]
    assert "referable_probability" in Predictor.from_run(trained)(photos)
    table = Predictor.from_run(older)(photos)
    assert "referable_probability" not in table and table["refer"].notna().all()


def test_other_sizes_and_modes_grade_as_their_converted_copies(trained, tiny_dataset, tmp_path):
    predictor = Predictor.from_run(trained)
    photo = read_split(tiny_dataset, "test").paths[0]
    rgb = load_rgb(photo)
    variants = {
        "rgba": rgb.resize((48, 40)).convert("RGBA"),
        "grey": rgb.convert("L").resize((50, 50)),
        "large": rgb.resize((90, 90)),
    }
    for name, image in variants.items():
        original = tmp_path / f"{name}.png"
        image.save(original)
        converted = tmp_path / f"{name}-converted.png"
        square_resize(load_rgb(original), predictor.image_size).save(converted)
        table = predictor([original, converted, image])  # a path, its converted copy, the PIL image itself
        assert table["pred_grade"].nunique() == 1, name
        np.testing.assert_allclose(table["referable_score"], table["referable_score"].iloc[0], rtol=1e-6)


def test_a_folder_or_a_list_with_unreadable_photos(trained, tiny_dataset, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in read_split(tiny_dataset, "test").paths[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpeg").write_bytes(b"not a photo")
    result = predict_cli(trained, folder, "--out", tmp_path / "grades.csv")
    assert result.returncode == 1
    assert f"could not grade {folder / 'broken.jpeg'}: not an image file" in result.stderr
    table = pd.read_csv(tmp_path / "grades.csv")
    assert len(table) == 3 and "true_grade" not in table and set(table["pred_grade"]) <= set(range(5))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"photos/{p.name}\n" for p in sorted(folder.glob("1*.jpeg")) + sorted(folder.glob("t*.jpeg"))))
    listed = predict_cli(trained, listing, "--out", tmp_path / "listed.csv")
    assert listed.returncode == 0, listed.stderr
    assert pd.read_csv(tmp_path / "listed.csv")["pred_grade"].tolist() == table["pred_grade"].tolist()


@pytest.mark.heavy
def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    result = predict_cli(tmp_path, tmp_path, "--out", tmp_path / "g.csv")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no finished run" in result.stderr


def test_lesion_masks_are_written_and_leave_the_photos_unchanged(tmp_path):
    root = generate_dataset(tmp_path / "syn", 30, 10, size=64, seed=1, progress=False, lesion_scale=2.5)
    index = read_split(root, "train")
    grades_with_lesions = []
    for path, grade in zip(index.paths, index.labels):
        mask = np.asarray(Image.open(mask_path(path)))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        if grade == 0:
            assert not mask.any()
        grades_with_lesions.append(grade >= 2 and mask.any())
    assert any(grades_with_lesions)
    for grade in range(5):
        rng = [1, grade, 7]
        plain = render_fundus(grade, 64, np.random.default_rng(rng), lesion_scale=2.5)
        pixels, lesions = render_fundus(grade, 64, np.random.default_rng(rng), lesion_scale=2.5, with_mask=True)
        assert np.array_equal(plain, pixels) and lesions.dtype == bool


def test_photos_prepared_unlike_the_runs_training_photos_are_noted(trained, tiny_dataset, tmp_path):
    """Photos prepared unlike the run's training photos get a note on stderr (the grades still come)."""
    normalised = tmp_path / "graham"
    preprocess_dataset(tiny_dataset, normalised, 32, prepare="graham", progress=False)
    camera, copies = read_split(tiny_dataset, "test").paths, read_split(normalised, "test").paths
    assert note(trained, camera, None) is None and note(trained, camera, "crop") is None
    assert "--prepare graham shows it photos unlike" in note(trained, camera, "graham")
    assert "prepared as 'graham'" in note(trained, copies, None)
    listed = tmp_path / "photos.txt"
    listed.write_text("\n".join(map(str, copies)))
    result = predict_cli(trained, listed, "--out", tmp_path / "grades.csv")
    assert result.returncode == 0 and "prepared as 'graham'" in result.stderr, result.stderr
    assert len(pd.read_csv(tmp_path / "grades.csv")) == len(copies)
    # A run trained on the normalised copy: camera photos need --preprocess, the copy needs nothing.
    graham_run = run_trained_on(trained, normalised, tmp_path / "graham_run")
    assert "add --preprocess" in note(graham_run, camera, None)
    assert note(graham_run, camera, "graham") is None
    assert note(graham_run, copies, None) is None
    assert "--prepare retina" in note(graham_run, camera, "retina")
    assert Predictor.from_run(graham_run).preparation == "graham" and Predictor.from_run(trained).preparation == "crop"


def test_preprocess_prepares_photos_at_the_side_of_the_runs_training_copy(trained, tmp_path):
    """Raw photos graded with --preprocess are the copy the run trained on (its preparation and side), not a
    512 px copy resized."""
    photos = generate_dataset(tmp_path / "fundus", 6, 6, size=160, progress=False)
    for jpeg in (photos / "images").glob("*.jpeg"):  # PNG: the copy is lossless, so it can be matched exactly
        Image.open(jpeg).save(jpeg.with_suffix(".png"))
        jpeg.unlink()
    copy = tmp_path / "copy48"
    preprocess_dataset(photos, copy, 48, prepare="retina", progress=False)
    predictor = Predictor.from_run(run_trained_on(trained, copy, tmp_path / "copy_run"))
    assert predictor.preprocess_size == 48 and Predictor.from_run(trained).preprocess_size == 512
    predictor = dataclasses.replace(predictor, image_size=48)  # as a run at the copy's side: every pixel compared
    raw, copied = read_split(photos, "test").paths, read_split(copy, "test").paths
    assert all(path.suffix == ".png" for path in copied)
    seen_in_training, _ = predictor.cams(copied)
    at_copy_side, _ = predictor.cams(raw, prepare=predictor.preparation)
    at_512, _ = dataclasses.replace(predictor, preprocess_size=512).cams(raw, prepare=predictor.preparation)
    np.testing.assert_array_equal(at_copy_side, seen_in_training)
    assert not np.array_equal(at_512, seen_in_training)  # the side matters


def test_every_split_of_the_runs_own_data_is_graded_with_a_note_that_it_is_no_test(trained, tiny_dataset, tmp_path):
    result = predict_cli(trained, tiny_dataset, "--split", "all", "--out", tmp_path / "all.csv")
    assert result.returncode == 0, result.stderr
    graded = pd.read_csv(tmp_path / "all.csv")
    expected = [*read_split(tiny_dataset, "train").names, *read_split(tiny_dataset, "test").names]
    assert graded["name"].tolist() == list(expected)
    assert "holds the photos" in result.stderr and "no test" in result.stderr
