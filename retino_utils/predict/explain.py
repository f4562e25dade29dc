"""What the explanations notebook shows: example photos per grade with their Grad-CAM, and a pointing
score where the truth is known (the synthetic generator's lesion masks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from retino_utils import GRADES
from retino_utils.data import SplitIndex
from retino_utils.evaluation.cam import lesion_share, overlay
from retino_utils.evaluation.uncertainty import bootstrap, patient_groups
from retino_utils.predict.predictor import Predictor
from retino_utils.synthetic import mask_path

DARK_LEVEL = 20  # 0-255: darker pixels are outside the camera field
MASK_LEVEL = 0.25  # a model pixel counts as lesion when a quarter of it was lesion at the dataset's size


def graded(predictor: Predictor, index: SplitIndex) -> pd.DataFrame:
    """The run's grades for a split, beside the true ones."""
    table = predictor(list(index.paths))
    table.insert(0, "true_grade", index.labels)
    table.insert(0, "name", list(index.names))
    return table


def examples(table: pd.DataFrame) -> dict[tuple[int, str], int]:
    """Per true grade, the first correctly and the first wrongly graded photo: ``(grade, kind) -> row``."""
    picks = {}
    for grade in GRADES:
        rows = table[table.true_grade == grade]
        for kind, chosen in (("correct", rows[rows.pred_grade == grade]), ("wrong", rows[rows.pred_grade != grade])):
            if len(chosen):
                picks[(grade, kind)] = int(chosen.index[0])
    return picks


def example_overlays(predictor: Predictor, index: SplitIndex, table: pd.DataFrame,
                     target: str = "grade") -> dict[tuple[int, str], tuple[Image.Image, str]]:
    """``(grade, kind) -> (overlay, caption)`` for the photos ``examples`` picks."""
    picks = examples(table)
    rows = list(picks.values())
    seen, heat = predictor.cams([index.paths[i] for i in rows], target)
    return {key: (overlay(photo, cam), f"{index.names[row]}: graded {table.pred_grade[row]}")
            for (key, row), photo, cam in zip(picks.items(), seen, heat)}


def lesions_at(path, size: int) -> np.ndarray:
    """The generator's lesion mask of a photo at the model's input size (True where lesion)."""
    with Image.open(mask_path(path)) as mask:
        small = mask.convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255 > MASK_LEVEL


def pointing_game(predictor: Predictor, index: SplitIndex, target: str = "grade") -> pd.DataFrame:
    """Per test photo with lesions: the share of the map's mass on lesions and the lesions' share of the field.

    Needs the lesion masks a synthetic dataset carries (``masks/``); photos without lesions are left out.
    """
    rows = [i for i, path in enumerate(index.paths) if index.labels[i] > 0 and mask_path(path).is_file()]
    seen, heat = predictor.cams([index.paths[i] for i in rows], target)
    records = []
    for i, photo, cam in zip(rows, seen, heat):
        lesions = lesions_at(index.paths[i], predictor.image_size)
        field = photo.max(axis=2) > DARK_LEVEL
        if not (lesions & field).any():
            continue
        on_lesions, area = lesion_share(cam, lesions, field)
        records.append({"name": index.names[i], "grade": int(index.labels[i]), "mass on lesions": on_lesions,
                        "lesion area": area})
    return pd.DataFrame(records, columns=["name", "grade", "mass on lesions", "lesion area"])


def pointing_summary(scores: dict[str, pd.DataFrame], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per run: photos scored, mean share of the map on lesions (95% interval over patients), mean lesion
    area share, and their ratio (1 = no better than spreading the map evenly over the field)."""
    rows = {}
    for name, frame in scores.items():
        row = {"photos with lesions": len(frame), "mass on lesions": np.nan, "interval": [None, None],
               "lesion area": np.nan, "ratio": np.nan}
        mass = frame["mass on lesions"].to_numpy(dtype=float)
        if len(frame) and np.isfinite(mass).any():
            low, high = bootstrap(lambda idx: np.array([np.nanmean(mass[idx])]), patient_groups(frame["name"]),
                                  n_resamples, seed)
            row.update({"mass on lesions": float(np.nanmean(mass)), "interval": [float(low[0]), float(high[0])],
                        "lesion area": float(frame["lesion area"].mean())})
            row["ratio"] = row["mass on lesions"] / row["lesion area"]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
