"""Honest evaluation: the kept checkpoint, cut points and screening thresholds come from a validation
split carved from the training patients; the test split is scored once, with intervals."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from retino_utils.data import read_split
from retino_utils.data.layouts import patient_of
from retino_utils.errors import RetinoError
from retino_utils.evaluation import screening
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig
from retino_utils.train.loaders import read_splits


def config_for(data, out, **overrides):
    values = dict(data=str(data), out=str(out), epochs=3, batch_size=8, image_size=32, device="cpu",
                  progress=False, bootstrap=200, lr=0.01)
    return TrainConfig(**{**values, **overrides})


def test_validation_split_is_carved_from_training_patients(tiny_dataset):
    train, val, test = read_splits(config_for(tiny_dataset, "unused", val_fraction=0.25))
    full = read_split(tiny_dataset, "train")
    assert len(train) + len(val) == len(full) and set(train.names) | set(val.names) == set(full.names)
    assert not {patient_of(n) for n in train.names} & {patient_of(n) for n in val.names}
    assert set(np.unique(val.labels)) == set(np.unique(full.labels))  # stratified: every grade on both sides
    assert test.names == read_split(tiny_dataset, "test").names


def test_k_folds_hold_out_every_training_patient_exactly_once(tiny_dataset):
    full = read_split(tiny_dataset, "train")
    held_by = {}
    for fold in range(3):
        train, val, test = read_splits(config_for(tiny_dataset, "unused", folds=3, fold=fold))
        assert set(train.names) | set(val.names) == set(full.names) and not set(train.names) & set(val.names)
        assert not {patient_of(n) for n in train.names} & {patient_of(n) for n in val.names}
        assert test.names == read_split(tiny_dataset, "test").names
        held_by.update({name: fold for name in val.names})
    assert sorted(held_by) == sorted(full.names)  # each photo validated by one fold only
    # Stratified: in every grade (a patient's worst), the folds' patient counts differ by at most one.
    worst = {}
    for name, label in zip(full.names, full.labels.tolist()):
        worst[patient_of(name)] = max(worst.get(patient_of(name), label), label)
    per_fold = np.zeros((3, 5), dtype=int)
    for patient, grade in worst.items():
        folds = {held_by[n] for n in full.names if patient_of(n) == patient}
        assert len(folds) == 1  # both eyes in one fold
        per_fold[folds.pop(), grade] += 1
    assert (per_fold.max(0) - per_fold.min(0) <= 1).all() and np.ptp(per_fold.sum(1)) <= 1


def test_a_fold_outside_the_folds_is_refused_in_one_line(tiny_dataset, tmp_path):
    for bad, message in (({"folds": 3, "fold": 3}, "fold 3 of 3 folds"), ({"folds": 1}, "fold 0 of 1 folds"),
                         ({"fold": 2}, "fold 2 needs --folds")):
        with pytest.raises(RetinoError, match=message):
            config_for(tiny_dataset, tmp_path, **bad)
    config_for(tiny_dataset, tmp_path, folds=5, fold=4, val_fraction=0.0)  # a fold validates: no share needed


@pytest.mark.heavy
@pytest.mark.parametrize("select_on, column", [("validation", "val_acc"), ("test", "test_acc")])
def test_the_kept_epoch_is_chosen_on_the_named_split(tiny_dataset, tmp_path, select_on, column):
    out = tmp_path / select_on
    history = fit(config_for(tiny_dataset, out, val_fraction=0.25, select_on=select_on))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == int(history.loc[history[column].idxmax(), "epoch"])
    assert metrics["select_on"] == select_on and metrics["eval_split"] == "test"
    assert {"val_acc", "val_qwk", "test_acc", "test_qwk"} <= set(pd.read_csv(out / "history.csv").columns)
    predictions = pd.read_csv(out / "predictions.csv")
    assert metrics["accuracy"] == pytest.approx(np.mean(predictions.true_grade == predictions.pred_grade))
    for figure in ("accuracy", "qwk", "macro_f1", "recall_0", "referable_auc"):
        low, high = metrics["intervals"][figure]
        value = metrics[figure] if not figure.startswith("recall") else metrics["recall"][0]
        assert low <= value + 1e-9 and value - 1e-9 <= high, figure
    points = metrics["screening"]["operating_points"]
    assert set(points) == {"target", "youden"}
    for point in points.values():
        refer = predictions.referable_score >= point["threshold"]
        positive = predictions.true_grade >= 2
        assert point["sensitivity"] == pytest.approx(refer[positive].mean())
        assert point["specificity"] == pytest.approx((~refer[~positive]).mean())


def test_validation_choice_needs_a_validation_split(tiny_dataset, tmp_path):
    with pytest.raises(RetinoError, match="needs a validation split"):
        config_for(tiny_dataset, tmp_path, val_fraction=0.0)
    config_for(tiny_dataset, tmp_path, val_fraction=0.0, best_metric="last")  # the last epoch needs no choice


def test_operating_points_against_a_brute_force_search():
    rng = np.random.default_rng(0)
    grades = rng.choice(5, 400, p=[0.6, 0.1, 0.15, 0.08, 0.07])
    score = (grades >= 2) + rng.normal(0, 0.8, 400)
    chosen = screening.choose_thresholds(grades, score)
    positive = grades >= 2
    candidates = np.unique(score)
    sens = np.array([(score[positive] >= t).mean() for t in candidates])
    spec = np.array([(score[~positive] < t).mean() for t in candidates])
    assert chosen["target"] == candidates[sens >= 0.87].max()
    assert (score[positive] >= chosen["target"]).mean() >= 0.87
    best_youden = (sens + spec).max()
    refer = score >= chosen["youden"]
    assert refer[positive].mean() + (~refer[~positive]).mean() == pytest.approx(best_youden)
    fpr, tpr, _ = roc_curve(positive, score)
    assert screening.roc(grades, score)["tpr"] == pytest.approx(tpr.tolist())
