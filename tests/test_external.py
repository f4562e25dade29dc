"""External validation: a run grades every photo of another source's labelled set as ``predict --preprocess``
does, is scored with the thresholds and calibration it chose on its own validation split, and is set beside
its internal test split with unpaired intervals; and the synthetic second camera the demo validates on."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from retino_utils.data import detect_layout, read_split
from retino_utils.errors import RetinoError
from retino_utils.evaluation.record import RECORD_VERSION, RecordError
from retino_utils.evaluation.results import external_records, load_run
from retino_utils.evaluation.uncertainty import FIGURES, intervals, unpaired_difference
from retino_utils.predict.external import every_photo, external_sets, record, validate
from retino_utils.synthetic import generate_dataset
from retino_utils.synthetic.second_camera import generate_second_camera


@pytest.fixture(scope="module")
def second_camera(tmp_path_factory):
    return generate_second_camera(tmp_path_factory.mktemp("camera") / "second", 24, size=64, seed=3,
                                  lesion_scale=2.5, workers=1, progress=False)


def figures_by_sklearn(table: pd.DataFrame) -> dict[str, float]:
    y, p = table["true_grade"], table["pred_grade"]
    return {"accuracy": accuracy_score(y, p), "qwk": cohen_kappa_score(y, p, weights="quadratic"),
            "referable_auc": roc_auc_score(y >= 2, table["referable_score"])}


def predict_cli(*args):
    return subprocess.run([sys.executable, "-m", "retino_utils.predict", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)


def test_every_photo_is_graded_as_predict_preprocess_grades_it_and_scored_with_the_runs_own_choices(
        trained, second_camera, tmp_path):
    result = validate(load_run(trained), "second", second_camera, n_resamples=200)
    table = result.table
    assert sorted(table["name"]) == sorted(pd.read_csv(second_camera / "trainLabels.csv")["image"])
    graded = []
    for split in ("train", "test"):  # the command line, one split at a time, is the reference
        out = tmp_path / f"{split}.csv"
        done = predict_cli(trained, second_camera, "--preprocess", "--split", split, "--out", out)
        assert done.returncode == 0, done.stderr
        graded.append(pd.read_csv(out))
    done = predict_cli(trained, second_camera, "--preprocess", "--split", "all", "--out", tmp_path / "all.csv")
    assert done.returncode == 0 and "no test" not in done.stderr, done.stderr  # not the run's own data
    assert pd.read_csv(tmp_path / "all.csv")["name"].tolist() == pd.concat(graded)["name"].tolist()
    reference = pd.concat(graded).set_index("name").loc[table["name"]]
    assert (reference["pred_grade"].to_numpy() == table["pred_grade"].to_numpy()).all()
    np.testing.assert_allclose(reference["referable_score"], table["referable_score"], atol=2e-6)
    assert (reference["true_grade"].to_numpy() == table["true_grade"].to_numpy()).all()

    external = figures_by_sklearn(table)
    internal = figures_by_sklearn(pd.read_csv(trained / "predictions.csv"))
    for figure in ("accuracy", "qwk", "referable_auc"):
        assert result.metrics.figure(figure) == pytest.approx(external[figure], abs=1e-9), figure
        assert result.drop[figure]["difference"] == pytest.approx(external[figure] - internal[figure], abs=1e-9)
    # the referral threshold is the one chosen on the run's validation split, not on these photos
    point = result.run.metrics.screening.point("target")
    refer, referable = table["referable_score"] >= point["threshold"], table["true_grade"] >= 2
    assert result.metrics.screening.point("target")["sensitivity"] == pytest.approx(
        refer[referable].mean())
    calibrator = result.run.metrics.screening.calibration["calibrator"]
    assert result.metrics.screening.calibration["calibrator"] == calibrator


def test_an_unpaired_interval_is_as_wide_as_both_samples_spread_together():
    rng = np.random.default_rng(0)

    def sample(n, noise, start):
        y = rng.integers(0, 5, n)
        pred = np.clip(y + rng.integers(-noise, noise + 1, n), 0, 4)
        return y, pred, y + rng.normal(0, 1.5 * noise, n), [f"{start + i}_left" for i in range(n)]

    first, second = sample(300, 1, 0), sample(200, 2, 1000)
    diff = unpaired_difference(first, second, n_resamples=500, seed=4)
    alone = [intervals(*s[:3], names=s[3], n_resamples=500, seed=seed) for s, seed in ((first, 4), (second, 5))]
    for figure in ("accuracy", "qwk", "referable_auc"):
        widths = [span[figure][1] - span[figure][0] for span in alone]
        low, high = diff[figure]["interval"]
        assert (high - low) == pytest.approx(np.hypot(*widths), rel=0.2), figure  # variances add
        assert high < 0, figure  # the noisier second set is worse, and its interval says so
    same = unpaired_difference(first, first[:3] + ([f"{2000 + i}_left" for i in range(300)],), n_resamples=500)
    assert all(same[f]["difference"] == 0 and same[f]["interval"][0] < 0 < same[f]["interval"][1]
               for f in ("accuracy", "qwk", "referable_auc"))
    assert set(diff) == set(FIGURES)


def test_the_second_camera_is_another_look_at_the_same_kind_of_eyes(second_camera, tmp_path):
    again = generate_second_camera(tmp_path / "again", 24, size=64, seed=3, lesion_scale=2.5, workers=1,
                                   progress=False)
    for path in sorted((second_camera / "images").iterdir()):  # byte-identical for the same arguments
        assert (again / "images" / path.name).read_bytes() == path.read_bytes()
    assert detect_layout(second_camera) == "kaggle"
    names, _, labels = every_photo(second_camera)
    assert len(names) == 24 and sorted(set(labels)) == [0, 1, 2, 3, 4]
    photo = np.asarray(Image.open(second_camera / "images" / f"{names[0]}.jpeg"))
    height, width, _ = photo.shape
    assert width / height == pytest.approx(1.5, abs=0.01) and height > 64  # another sensor, another resolution
    assert photo[:, : width // 8].max() < 30  # a black border around the round field, to crop
    first = generate_dataset(tmp_path / "first", 24, 1, size=64, seed=3, lesion_scale=2.5, workers=1, progress=False)

    def red_per_blue(folder):
        pixels = np.concatenate([np.asarray(Image.open(p), dtype=float).reshape(-1, 3)
                                 for p in sorted((folder / "images").glob("*.jpeg"))])
        inside = pixels[pixels.max(1) > 30]  # the field, not the border
        return inside[:, 0].mean() / inside[:, 2].mean()

    assert red_per_blue(second_camera) > 1.3 * red_per_blue(first)  # a warmer cast than the first camera


def test_an_interrupted_second_camera_resumes_and_other_arguments_are_refused(tmp_path):
    out = generate_second_camera(tmp_path / "cam", 6, size=48, seed=0, workers=1, progress=False)
    photos = sorted((out / "images").iterdir())
    whole = {p.name: p.read_bytes() for p in photos}
    photos[0].unlink()
    photos[1].write_bytes(whole[photos[1].name][:100])  # a write killed half-way
    (out / "trainLabels.csv").unlink()  # written last: its absence marks the set unfinished
    generate_second_camera(out, 6, size=48, seed=0, workers=1, progress=False)
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == whole
    with pytest.raises(RetinoError, match="other arguments.*seed"):
        generate_second_camera(out, 6, size=48, seed=1, workers=1, progress=False)


def test_external_sets_are_checked_before_any_work(tiny_dataset, second_camera, tmp_path):
    assert external_sets([second_camera]) == {"second": second_camera.resolve()}
    with pytest.raises(RetinoError, match=r"^--external .*nowhere: no such folder"):
        external_sets([tmp_path / "nowhere"])
    (tmp_path / "photos").mkdir()
    with pytest.raises(RetinoError, match=r"^--external .*photos: .*"):
        external_sets([tmp_path / "photos"])
    with pytest.raises(RetinoError, match="given twice"):
        external_sets([second_camera, second_camera])
    link = tmp_path / "link"
    os.symlink(second_camera, link, target_is_directory=True)
    with pytest.raises(RetinoError, match="given twice"):
        external_sets([second_camera, link])
    namesake = generate_second_camera(tmp_path / "elsewhere" / "second", 4, size=48, workers=1, progress=False)
    assert external_sets([second_camera, namesake]) == {"second": second_camera.resolve(),
                                                        "elsewhere/second": namesake.resolve()}


def test_an_unreadable_photo_stops_the_external_set_with_one_line(second_camera, tmp_path):
    import shutil

    copy = shutil.copytree(second_camera, tmp_path / "copy")
    name = read_split(copy, "test").paths[0]
    open(name, "wb").write(b"not a jpeg")
    with pytest.raises(RetinoError, match=rf"^{name}: .*graded whole.*validate"):
        every_photo(copy)


def test_a_kept_result_is_versioned_and_a_damaged_or_newer_one_is_refused_in_one_line(trained, second_camera,
                                                                                    tmp_path):
    import json
    import shutil

    run_dir = shutil.copytree(trained, tmp_path / "run")
    result = validate(load_run(run_dir), "second", second_camera, n_resamples=50)
    path = record(result)
    kept = json.loads(path.read_text())
    assert kept["schema_version"] == RECORD_VERSION and kept["photos"] == len(result.table)
    [entry] = external_records(run_dir)
    assert entry.current and entry.record.metrics.qwk == pytest.approx(result.metrics.qwk)
    assert entry.record.change["referable_auc"] == result.drop["referable_auc"]
    path.write_text(json.dumps({**kept, "schema_version": RECORD_VERSION + 1}))
    with pytest.raises(RetinoError, match=rf"^{path} was written by a newer retino"):
        external_records(run_dir)
    path.write_text(json.dumps({key: value for key, value in kept.items() if key != "fingerprint"}))
    with pytest.raises(RecordError, match=rf"^{path} is not a kept external result .*missing fingerprint"):
        external_records(run_dir)
    path.write_text(json.dumps(kept)[:80])
    with pytest.raises(RecordError, match=rf"^{path} is damaged .*the external notebook grades the set again"):
        external_records(run_dir)


def test_a_kept_result_is_quoted_by_the_model_card_until_the_run_or_the_set_changes(trained, second_camera,
                                                                                      tmp_path):
    import shutil

    from retino_utils.evaluation.model_card import write_model_card

    run_dir = shutil.copytree(trained, tmp_path / "run")
    photos = shutil.copytree(second_camera, tmp_path / "second")
    result = validate(load_run(run_dir), "second", photos, n_resamples=100)
    path = record(result)
    assert path == run_dir / "external" / "second.json"
    card = (run_dir / "model_card.md").read_text()
    accuracy = figures_by_sklearn(result.table)["accuracy"]
    assert f"| second | 24 | {accuracy:.1%} [" in card and "Not shown" not in card
    calibration = result.run.metrics.screening.calibration["calibrated"]
    assert f"expected calibration error is {calibration['ece']:.3f} [" in card
    labels = photos / "trainLabels.csv"  # a grade edited since: the kept result no longer describes this set
    rows = labels.read_text().splitlines()
    name, grade = rows[1].split(",")
    labels.write_text("\n".join([rows[0], f"{name},{(int(grade) + 1) % 5}", *rows[2:]]) + "\n")
    card = write_model_card(run_dir).read_text()
    assert "| second | 24 |" not in card and "Not shown: the results on second" in card
