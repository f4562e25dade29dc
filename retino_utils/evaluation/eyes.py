"""Fusing the two eyes of a patient: DR is a disease of the patient, so one eye's grade says much about
the other's (team o_O blended the two eyes' features in Kaggle 2015 for about +0.02 QWK).

Photos are paired by name, ``<patient>_left`` with ``<patient>_right`` (EyePACS' naming); each eye's
output becomes ``(1 - weight) * own + weight * other`` where its partner is among the same outputs,
and stays its own otherwise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from retino_utils.data.layouts import eye_of


def partner_indices(names: Sequence[str]) -> np.ndarray:
    """For each name, the index of the same patient's other eye among ``names``, or -1."""
    eyes = [eye_of(str(name)) for name in names]
    where: dict[tuple[str, str], int] = {}
    for i, eye in enumerate(eyes):
        if eye is not None:
            where.setdefault(eye, i)
    other = {"left": "right", "right": "left"}
    return np.array([-1 if eye is None else where.get((eye[0], other[eye[1]]), -1) for eye in eyes], dtype=np.int64)


def fuse_eyes(outputs: torch.Tensor, names: Sequence[str], weight: float) -> torch.Tensor:
    """Blend each eye's outputs (logits or regression scores, first axis = photos) with its partner's."""
    if len(names) != len(outputs):
        raise ValueError(f"{len(names)} names for {len(outputs)} outputs")
    if weight == 0:
        return outputs
    partner = torch.as_tensor(partner_indices(names))
    paired = partner >= 0
    fused = outputs.clone()
    fused[paired] = (1 - weight) * outputs[paired] + weight * outputs[partner[paired]]
    return fused
