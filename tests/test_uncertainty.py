"""Bootstrap intervals against independent references: sklearn for the figures, the normal
approximation for an accuracy interval, and the patient structure of the resamples."""

import numpy as np
import pytest
from sklearn import metrics as skm

from retino_utils.evaluation import uncertainty
from retino_utils.evaluation.uncertainty import (
    FIGURES,
    bootstrap,
    figures,
    fold_figures,
    intervals,
    paired_difference,
    patient_groups,
)


def sample(n, seed=0, skill=0.6):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(5, n, p=[0.6, 0.1, 0.15, 0.08, 0.07])
    y_pred = np.where(rng.random(n) < skill, y_true, rng.integers(0, 5, n))
    score = y_true + rng.normal(0, 1.5, n)
    return y_true, y_pred, score


def test_figures_agree_with_sklearn():
    y_true, y_pred, score = sample(400)
    got = dict(zip(FIGURES, figures(y_true, y_pred, score)))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["qwk"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred, labels=range(5), weights="quadratic"))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=range(5), average="macro"))
    recall = skm.recall_score(y_true, y_pred, labels=range(5), average=None)
    assert [got[f"recall_{g}"] for g in range(5)] == pytest.approx(recall)
    referable = y_true >= 2
    assert got["referable_auc"] == pytest.approx(skm.roc_auc_score(referable, score))
    assert got["referable_sensitivity"] == pytest.approx(skm.recall_score(referable, y_pred >= 2))
    assert got["referable_specificity"] == pytest.approx(skm.recall_score(~referable, y_pred < 2))


@pytest.mark.heavy
def test_accuracy_interval_matches_the_normal_approximation_on_a_large_sample():
    y_true, y_pred, _ = sample(4000, seed=1)
    low, high = intervals(y_true, y_pred, n_resamples=2000, seed=0)["accuracy"]
    p = np.mean(y_true == y_pred)
    half = 1.96 * np.sqrt(p * (1 - p) / len(y_true))
    assert low == pytest.approx(p - half, abs=0.004) and high == pytest.approx(p + half, abs=0.004)


def test_a_fixed_seed_gives_identical_intervals():
    y_true, y_pred, score = sample(300, seed=2)
    first = intervals(y_true, y_pred, score, n_resamples=300, seed=7)
    assert intervals(y_true, y_pred, score, n_resamples=300, seed=7) == first
    assert intervals(y_true, y_pred, score, n_resamples=300, seed=8) != first


def test_patient_resampling_keeps_both_eyes_together():
    names = [f"{100 + i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in range(60)]
    groups = patient_groups(names)
    assert (groups[0::2] == groups[1::2]).all() and len(set(groups)) == 30
    eyes = np.array([i % 2 for i in range(60)])
    patient = groups

    def both_eyes_drawn_as_often(idx):
        left = np.bincount(patient[idx][eyes[idx] == 0], minlength=30)
        right = np.bincount(patient[idx][eyes[idx] == 1], minlength=30)
        return np.array([float((left == right).all()), float(len(idx) % 2 == 0)])

    low, high = bootstrap(both_eyes_drawn_as_often, groups, n_resamples=200, seed=0)
    assert low.tolist() == [1.0, 1.0] and high.tolist() == [1.0, 1.0]


def test_correlated_eyes_widen_the_interval():
    """Both eyes right or both wrong: resampling patients sees half as many independent units."""
    rng = np.random.default_rng(3)
    correct = np.repeat(rng.random(400) < 0.7, 2)
    y_true = np.zeros(800, dtype=int)
    y_pred = np.where(correct, 0, 1)
    names = [f"{i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in range(800)]
    by_patient = intervals(y_true, y_pred, names=names, n_resamples=1000)["accuracy"]
    by_photo = intervals(y_true, y_pred, n_resamples=1000)["accuracy"]
    ratio = (by_patient[1] - by_patient[0]) / (by_photo[1] - by_photo[0])
    assert ratio == pytest.approx(np.sqrt(2), rel=0.15)


def test_undefined_figures_are_none():
    y_true = np.zeros(50, dtype=int)
    got = intervals(y_true, y_true, n_resamples=100)
    assert got["accuracy"] == [1.0, 1.0]
    assert got["referable_auc"] == [None, None] and got["recall_3"] == [None, None]


def test_paired_difference():
    y_true, better, score = sample(500, seed=4, skill=0.9)
    worse = np.where(np.random.default_rng(5).random(500) < 0.5, y_true, 0)
    same = paired_difference(y_true, better, better, score, score, n_resamples=300)
    assert same["accuracy"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    gain = paired_difference(y_true, better, worse, n_resamples=500)["accuracy"]
    assert gain["difference"] == pytest.approx(np.mean(better == y_true) - np.mean(worse == y_true))
    assert 0 < gain["interval"][0] < gain["difference"] < gain["interval"][1]


def test_auc_is_undefined_with_one_class():
    assert np.isnan(uncertainty.auc(np.ones(5, dtype=bool), np.arange(5.0)))
    assert np.isnan(uncertainty.auc(np.zeros(5, dtype=bool), None))


def test_cross_validated_figures_are_the_folds_mean_never_a_pooled_score():
    y_true, y_pred, score = sample(600, seed=6)
    folds = np.arange(600) % 3
    shifted = score + 10.0 * folds  # each fold's model on its own scale: pooling their scores would mix them
    got = dict(zip(FIGURES, fold_figures(y_true, y_pred, shifted, folds)))
    per_fold = [(skm.cohen_kappa_score(y_true[folds == f], y_pred[folds == f], labels=range(5), weights="quadratic"),
                 skm.roc_auc_score(y_true[folds == f] >= 2, score[folds == f])) for f in range(3)]
    assert got["qwk"] == pytest.approx(np.mean([qwk for qwk, _ in per_fold]))
    assert got["referable_auc"] == pytest.approx(np.mean([auc for _, auc in per_fold]))
    assert got["referable_auc"] != pytest.approx(skm.roc_auc_score(y_true >= 2, shifted), abs=0.02)
    difference = paired_difference(y_true, y_pred, y_true, shifted, shifted, folds=folds, n_resamples=100)["qwk"]
    assert difference["difference"] == pytest.approx(got["qwk"] - 1.0)


def test_a_photo_graded_by_every_fold_is_resampled_with_all_its_rows():
    """Three folds' models that agree on 200 external photos: the same intervals as one model's."""
    y_true, y_pred, score = sample(200, seed=7)
    names = [f"{i}_left" for i in range(200)]
    once = intervals(y_true, y_pred, score, names, n_resamples=200)
    stacked = intervals(np.tile(y_true, 3), np.tile(y_pred, 3), np.tile(score, 3), names * 3, n_resamples=200,
                        folds=np.repeat(np.arange(3), 200))
    for figure in ("accuracy", "qwk", "referable_auc"):
        assert stacked[figure] == pytest.approx(once[figure])
