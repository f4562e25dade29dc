"""Calibration of the referable score against independent references: sklearn's isotonic predict,
ECE and the reliability table written out by hand, and synthetic scores calibrated or not by design."""

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from retino_utils.evaluation.calibration import (
    calibrated,
    calibration_report,
    ece_with_interval,
    expected_calibration_error,
    fit_calibrator,
    reliability,
)


def synthetic(n=4000, seed=0):
    """Probabilities and labels drawn as Bernoulli(p): calibrated by construction."""
    rng = np.random.default_rng(seed)
    prob = rng.random(n)
    return prob, rng.random(n) < prob


def reference_ece(prob, referable, bins=10):
    """ECE in float64, one bin at a time, the last bin closed at 1."""
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (prob >= low) & ((prob < high) if b < bins - 1 else (prob <= high))
        if inside.any():
            total += inside.sum() / len(prob) * abs(referable[inside].mean() - prob[inside].mean())
    return total


def test_the_calibrator_is_sklearns_isotonic_regression():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=300)
    referable = rng.random(300) < 1 / (1 + np.exp(-2 * scores))
    calibrator = fit_calibrator(scores, referable)
    model = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(scores, referable)
    new = np.concatenate([rng.normal(scale=2, size=500), [-10.0, 10.0]])  # and beyond the fitted range
    np.testing.assert_allclose(calibrated(calibrator, new), model.predict(new), atol=1e-12)
    assert all(isinstance(v, float) for v in calibrator["x"] + calibrator["y"])


def test_reliability_table_agrees_with_numpy():
    prob = np.array([0.05, 0.07, 0.15, 0.55, 0.58, 0.95, 1.0])
    referable = np.array([0, 1, 0, 1, 1, 1, 0], dtype=bool)
    table = reliability(prob, referable, bins=10)
    assert table["count"] == np.histogram(prob, bins=10, range=(0, 1))[0].tolist()
    assert table["predicted"][0] == pytest.approx(0.06) and table["observed"][0] == pytest.approx(0.5)
    assert table["predicted"][9] == pytest.approx(0.975) and table["observed"][9] == pytest.approx(0.5)
    assert table["predicted"][3] is None and table["observed"][3] is None


def test_ece_agrees_with_a_reference_formula():
    prob, referable = synthetic(n=500, seed=2)
    prob = prob ** 1.5
    assert expected_calibration_error(prob, referable) == pytest.approx(reference_ece(prob, referable), abs=1e-12)
    assert expected_calibration_error(prob, referable, bins=7) == pytest.approx(reference_ece(prob, referable, 7))


def test_calibrated_scores_have_small_ece_and_miscalibrated_large():
    prob, referable = synthetic()
    good = ece_with_interval(prob, referable * 2, n_resamples=200)
    bad = ece_with_interval(prob ** 2, referable * 2, n_resamples=200)
    assert good["ece"] < 0.03 and bad["ece"] > 0.1
    assert good["interval"][0] <= good["ece"] <= good["interval"][1] < bad["interval"][0]


def test_the_raw_score_is_measured_only_when_it_is_a_probability():
    prob, referable = synthetic(n=400, seed=3)
    names = [f"{i // 2}_{'left' if i % 2 else 'right'}" for i in range(400)]
    y_true = np.where(referable, 3, 0)
    calibrator = fit_calibrator(prob, referable)
    report = calibration_report(calibrator, False, y_true, prob, names, n_resamples=100)
    assert set(report) == {"calibrator", "raw_score", "calibrated", "reliability", "raw"}
    assert report["raw"] == ece_with_interval(prob, y_true, names, n_resamples=100)
    regression = calibration_report(calibrator, True, y_true, prob * 4, names, n_resamples=0)
    assert "raw" not in regression and "interval" not in regression["calibrated"]
    assert "not a probability" in regression["raw_score"]
