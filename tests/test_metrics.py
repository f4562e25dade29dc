import json

import numpy as np
import pytest
from sklearn import metrics as skm

from retino_utils.errors import RetinoError
from retino_utils.evaluation.metrics import compute_metrics

GRADES = [0, 1, 2, 3, 4]


def _random_split(seed, n=300):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(5, size=n, p=[0.6, 0.1, 0.15, 0.08, 0.07])
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 5, n))
    logits = rng.normal(size=(n, 5)) + 2.0 * np.eye(5)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, y_pred, probs


def test_metrics_agree_with_sklearn():
    y_true, y_pred, probs = _random_split(0)
    score = probs[:, 2:].sum(axis=1)
    m = compute_metrics(y_true, y_pred, referable_score=score)
    assert m["n"] == len(y_true)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    np.testing.assert_allclose(m["recall"], skm.recall_score(y_true, y_pred, average=None))
    np.testing.assert_allclose(m["precision"], skm.precision_score(y_true, y_pred, average=None))
    counts = skm.confusion_matrix(y_true, y_pred)
    assert m["confusion_counts"] == counts.tolist()
    np.testing.assert_allclose(m["confusion"], counts / counts.sum(axis=1, keepdims=True))
    true_ref, pred_ref = y_true >= 2, y_pred >= 2
    assert m["referable_sensitivity"] == pytest.approx(np.mean(pred_ref[true_ref]))
    assert m["referable_specificity"] == pytest.approx(np.mean(~pred_ref[~true_ref]))
    assert m["referable_auc"] == pytest.approx(skm.roc_auc_score(true_ref, score))
    json.dumps(m, allow_nan=False)


def test_missing_grades_count_as_zero_in_per_grade_figures():
    y_true = np.array([0, 0, 0, 2, 2, 1])
    y_pred = np.array([0, 0, 2, 2, 0, 0])  # grades 3 and 4 absent everywhere, 1 never predicted
    m = compute_metrics(y_true, y_pred)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=GRADES, average="macro", zero_division=0))
    assert m["macro_f1"] < skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert len(m["recall"]) == len(m["precision"]) == 5
    assert m["recall"][3:] == [0.0, 0.0] and m["precision"][1] == 0.0
    assert m["confusion"][3] == [0.0] * 5 and m["confusion_counts"][4] == [0] * 5
    assert m["referable_auc"] is None
    json.dumps(m, allow_nan=False)


def test_single_class_split():
    m = compute_metrics([0, 0, 0], [0, 0, 0], referable_score=[0.1, 0.2, 0.3])
    assert m["accuracy"] == 1.0
    assert m["qwk"] == 0.0  # undefined in sklearn (nan): a constant predictor earns no agreement beyond chance
    assert m["referable_sensitivity"] is None and m["referable_specificity"] == 1.0
    assert m["referable_auc"] is None
    json.dumps(m, allow_nan=False)


def test_only_referable_cases():
    m = compute_metrics([2, 3, 4], [2, 0, 4])
    assert m["referable_sensitivity"] == pytest.approx(2 / 3)
    assert m["referable_specificity"] is None
    # sklearn weighs by position in ``labels``: without all five grades, 0 and 2 would sit 1 apart
    assert m["qwk"] == pytest.approx(
        skm.cohen_kappa_score([2, 3, 4], [2, 0, 4], labels=GRADES, weights="quadratic"))
    assert m["qwk"] != pytest.approx(skm.cohen_kappa_score([2, 3, 4], [2, 0, 4], weights="quadratic"))


@pytest.mark.parametrize("y_true, y_pred, score, match", [
    ([0, 1], [0], None, "as many predictions"),
    ([0, 5], [0, 1], None, "true grades"),
    ([0, 1], [0.5, 1.0], None, "predicted grades"),
    ([0, 2], [0, 2], [0.5], "one referable score"),
])
def test_bad_input_is_refused(y_true, y_pred, score, match):
    with pytest.raises(RetinoError, match=match):
        compute_metrics(y_true, y_pred, referable_score=score)
