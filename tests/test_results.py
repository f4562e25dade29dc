"""Tables the notebooks show, checked against sklearn and numpy on made-up runs."""

import json
from dataclasses import asdict, fields

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score

from retino_utils import data
from retino_utils.evaluation import results
from retino_utils.evaluation.metrics import compute_metrics
from retino_utils.evaluation.record import RunRecord
from retino_utils.report.pipeline import load_pipeline, run_settings
from retino_utils.synthetic import generate_dataset
from retino_utils.train.config import AUGMENTATION_FIELDS, TrainConfig


def make_run(folder, y_true, y_pred, train_counts, train_acc=(0.5, 0.6), **config):
    """A finished run's folder whose record grades ``y_pred`` against ``y_true`` (sklearn's figures)."""
    folder.mkdir(parents=True)
    record = RunRecord(**compute_metrics(np.asarray(y_true), np.asarray(y_pred)), best_epoch=2,
                       train_counts=list(train_counts), eval_counts=np.bincount(y_true, minlength=5).tolist(),
                       normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
                       config={"arch": "resnet18", "weights": None, "loss": "ce", "sampler": "none", **config})
    (folder / "metrics.json").write_text(json.dumps(record.to_dict()))
    pd.DataFrame({"epoch": range(1, len(train_acc) + 1), "phase": "ft", "train_acc": train_acc,
                  "test_acc": 0.5}).to_csv(folder / "history.csv", index=False)
    return folder


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.choice(5, 200, p=[0.7, 0.1, 0.1, 0.05, 0.05])
    noisy = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    folders = {
        "collapsed": make_run(tmp_path / "collapsed", y_true, np.zeros(200, int), [70, 10, 10, 5, 5],
                              train_acc=rng.random(4).tolist()),
        "learned": make_run(tmp_path / "learned", y_true, noisy, [70, 10, 10, 5, 5], loss="wce"),
    }
    found, missing = results.load_runs({**folders, "absent": tmp_path / "absent"})
    assert missing == ["absent"]
    return found, y_true, noisy


def test_tables_agree_with_sklearn(runs):
    found, y_true, noisy = runs
    recall = results.recall_table(found)
    expected = recall_score(y_true, noisy, labels=range(5), average=None, zero_division=0)
    assert np.allclose(recall.loc["learned"].to_numpy(dtype=float), expected)
    summary = results.summary_table(found)
    assert summary.loc["learned", "accuracy"] == pytest.approx(np.mean(y_true == noisy))
    history = found["collapsed"].history.train_acc.tolist()
    assert summary.loc["collapsed", "best train acc"] == max(history) and len(set(history)) == 4
    shares = results.prediction_shares(found)
    assert shares.loc["collapsed"].tolist() == ["100.0%", "0.0%", "0.0%", "0.0%", "0.0%"]
    true_shares = np.bincount(y_true, minlength=5) / len(y_true)
    assert shares.loc["true grades"].tolist() == [f"{100 * s:.1f}%" for s in true_shares]


def test_majority_baseline_grade0_share_and_pairs(runs, tmp_path):
    found, y_true, noisy = runs
    assert results.majority_baseline(found["collapsed"]) == pytest.approx(np.mean(y_true == 0))
    mild_majority = results.load_run(make_run(tmp_path / "mild", y_true, noisy, [10, 70, 10, 5, 5]))
    assert results.majority_baseline(mild_majority) == pytest.approx(np.mean(y_true == 1))  # the training majority
    assert results.grade0_share(found["collapsed"]) == 1.0
    assert results.grade0_share(found["learned"]) == pytest.approx(np.mean(noisy == 0))
    panels = results.confusion_panels(found, ["collapsed", "absent"])
    assert list(panels.values())[1] is None
    assert np.array_equal(list(panels.values())[0][:, 0], np.bincount(y_true, minlength=5))
    pretrained = make_run(tmp_path / "pretrained", y_true, y_true, [70, 10, 10, 5, 5], weights="imagenet")
    pairs = results.pretraining_pairs({"learned": found["learned"], "pretrained": results.load_run(pretrained)})
    assert set(pairs) == {"resnet18"} and pairs["resnet18"]["imagenet"].name == "pretrained"
    assert pairs["resnet18"]["scratch"].name == "learned"


def test_data_summaries(tmp_path):
    root = generate_dataset(tmp_path / "syn", 40, 10, size=64, seed=0, progress=False, lesion_scale=2.0)
    splits = {split: data.read_split(root, split) for split in ("train", "test")}
    table = data.grade_table(splits)
    assert table[("train", "photos")].iloc[:5].tolist() == np.bincount(splits["train"].labels, minlength=5).tolist()
    assert table.loc["total", ("test", "photos")] == 10
    assert data.synthetic_record(root)["lesion_scale"] == 2.0
    assert data.synthetic_record(tmp_path) is None
    sizes = data.image_size_table(splits["train"])
    assert sizes.loc["64 x 64", "photos"] == 40
    samples = data.samples_per_grade(splits["train"], per_grade=3, image_size=32)
    for images in samples.values():
        assert 1 <= len(images) <= 3 and all(image.shape == (32, 32, 3) for image in images)


def test_paired_sentence_states_each_difference_and_what_its_interval_says(runs):
    """The notebooks' comparison sentence: run minus baseline on the same photos, from sklearn's figures."""
    from sklearn.metrics import cohen_kappa_score

    found, y_true, noisy = runs
    names = [f"p{i // 2}_{'left' if i % 2 else 'right'}" for i in range(len(y_true))]
    for run, pred in ((found["learned"], noisy), (found["collapsed"], np.zeros(len(y_true), int))):
        pd.DataFrame({"name": names, "true_grade": y_true, "pred_grade": pred,
                      "referable_score": (pred >= 2) + 0.1 * pred}).to_csv(run.path / "predictions.csv", index=False)
    sentence = results.paired_sentence(found["learned"], found["collapsed"], ("qwk", "accuracy"))
    qwk_gain = cohen_kappa_score(y_true, noisy, weights="quadratic") - cohen_kappa_score(
        y_true, np.zeros(len(y_true), int), weights="quadratic")
    accuracy_gain = np.mean(noisy == y_true) - np.mean(y_true == 0)
    assert sentence.startswith(f"QWK {qwk_gain:+.3f} [") and "(a real gain)" in sentence
    assert f", accuracy {accuracy_gain:+.1%} [" in sentence and sentence.count("(") == 2


def test_the_ablation_without_augmentation_turns_every_augmentation_off(tmp_path):
    """In every profile the no-augmentation run has each augmentation setting off (a recipe's saturation
    included), differs from the baseline in augmentation alone, and the table names what the baseline has on."""
    pipeline = load_pipeline()
    assert set(results.AUGMENTATION_TEXT) == set(AUGMENTATION_FIELDS)
    for profile in pipeline["profiles"]:
        off, on = (TrainConfig.from_settings(run_settings(pipeline, profile, run))
                   for run in ("ablation_no_augmentation", "ablation_augmented"))
        assert not any(off.augmentation().values()), profile
        changed = {field.name for field in fields(TrainConfig) if getattr(off, field.name) != getattr(on, field.name)}
        assert changed and changed <= set(AUGMENTATION_FIELDS), (profile, changed)
        y = np.arange(40) % 5
        found, _ = results.load_runs({name: make_run(tmp_path / profile / name, y, y, [8] * 5, **asdict(config))
                                      for name, config in (("off", off), ("on", on))})
        table = results.ablation_settings(found)
        assert table.loc["off", "augmentation"] == "none"
        assert table.loc["on", "augmentation"].count(",") == sum(map(bool, on.augmentation().values())) - 1
        if on.saturation:
            assert f"saturation ±{on.saturation:.0%}" in table.loc["on", "augmentation"]
    assert TrainConfig.from_settings(run_settings(pipeline, "demo", "ablation_augmented")).saturation > 0
