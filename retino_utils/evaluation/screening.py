"""The screening view: referable DR (grade 2 or worse) as a yes/no decision on a score.

Operating points are thresholds on the referable score chosen on the validation split, then applied
once to the test split: the highest threshold that still reaches the target sensitivity on
validation (the IDx-DR pivotal trial reached 87.2%), and the Youden point (largest sensitivity +
specificity). Published operating points are kept here as reference marks for the ROC figure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from retino_utils.evaluation.metrics import REFERABLE_GRADE, json_float
from retino_utils.evaluation.uncertainty import N_RESAMPLES, bootstrap, patient_groups, sensitivity_specificity

SENSITIVITY_TARGET = 0.87
# (sensitivity, specificity) of published systems, for comparison marks on the ROC figure.
REFERENCE_POINTS = {
    "IDx-DR pivotal trial (Abramoff 2018)": (0.872, 0.907),
    "Gulshan 2016, EyePACS-1, high-sensitivity point": (0.975, 0.934),
    "Gulshan 2016, EyePACS-1, high-specificity point": (0.903, 0.981),
}
POINT_NAMES = {"target": f"sensitivity >= {SENSITIVITY_TARGET:.0%} on validation", "youden": "Youden point"}


def roc(y_true, score) -> dict:
    """The ROC curve of the referable score (false and true positive rates, thresholds), JSON-ready."""
    from sklearn.metrics import roc_curve

    positive = np.asarray(y_true) >= REFERABLE_GRADE
    if positive.all() or not positive.any():
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(positive, np.asarray(score, dtype=np.float64))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.nan_to_num(thresholds, posinf=1e300).tolist()}


def choose_thresholds(y_true, score) -> dict[str, float]:
    """Thresholds on ``score`` (refer when score >= threshold) chosen on this split: target and Youden."""
    curve = roc(y_true, score)
    if not curve["tpr"]:
        return {}
    fpr, tpr, thresholds = (np.asarray(curve[key]) for key in ("fpr", "tpr", "thresholds"))
    return {"target": float(thresholds[np.argmax(tpr >= SENSITIVITY_TARGET)]),
            "youden": float(thresholds[np.argmax(tpr - fpr)])}


def operating_points(thresholds: dict[str, float], y_true, score, names: Sequence[str] | None = None,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Each threshold applied to this split: sensitivity and specificity with bootstrap intervals."""
    y_true, score = np.asarray(y_true, dtype=np.int64), np.asarray(score, dtype=np.float64)
    groups = patient_groups(names) if names is not None else np.arange(len(y_true))
    points = {}
    for name, threshold in thresholds.items():
        refer = score >= threshold
        sens, spec = sensitivity_specificity(y_true, refer)
        entry = {"label": POINT_NAMES[name], "threshold": threshold, "sensitivity": json_float(sens),
                 "specificity": json_float(spec)}
        if n_resamples:
            low, high = bootstrap(lambda idx: sensitivity_specificity(y_true[idx], refer[idx]), groups,
                                  n_resamples, seed)
            entry["sensitivity_interval"] = [json_float(low[0]), json_float(high[0])]
            entry["specificity_interval"] = [json_float(low[1]), json_float(high[1])]
        points[name] = entry
    return points
