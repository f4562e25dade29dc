"""Where the model looks: Grad-CAM on the last ResNet stage, for a grade or for the referable score.

Written with two torch hooks rather than the ``grad-cam`` package: that package would bring OpenCV
(tens of MB) for a resize and a colour map that torch and matplotlib already do, and its targets
would need a custom class for the referable score and the regression head anyway. The result is
checked against a float64 computation by hand (``tests/test_cam.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn

from retino_utils.evaluation.metrics import REFERABLE_GRADE
from retino_utils.models.networks import unwrap

TARGETS = ("grade", "referable")
OVERLAY_ALPHA = 0.45  # weight of the heat map over the photo


def target_scores(outputs: torch.Tensor, target: str) -> torch.Tensor:
    """One differentiable score per photo: the predicted grade's logit, or log P(grade >= 2).

    A regression head's single output is both (a higher score is a worse grade).
    """
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        return outputs.reshape(-1)
    if target == "grade":
        return outputs.gather(1, outputs.argmax(1, keepdim=True)).squeeze(1)
    return torch.logsumexp(outputs[:, REFERABLE_GRADE:], 1) - torch.logsumexp(outputs, 1)


def target_label(target: str, regression: bool) -> str:
    """What a map of ``target`` explains, for titles: a regression head has one score, whichever the target."""
    if regression:
        return "the severity score (the regression output)"
    return "the predicted grade" if target == "grade" else "the referable-DR score"


def grad_cam(model: nn.Module, x: torch.Tensor, target: str = "grade") -> torch.Tensor:
    """(B, h, w) maps in [0, 1] (each scaled by its maximum) from ``layer4`` of a ResNet, in the model's
    precision (no autocast: gradients in bf16 would be too coarse for a map).

    The channel weights are the spatial means of the target's gradients (Selvaraju et al. 2017);
    negative evidence is cut at zero.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    network = unwrap(model)
    captured: list[torch.Tensor] = []
    handle = network.layer4.register_forward_hook(lambda module, inputs, output: captured.append(output))
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            outputs = network(x.to(next(network.parameters()).dtype))
            activations = captured[0]
            grads = torch.autograd.grad(target_scores(outputs, target).sum(), activations)[0]
    finally:
        handle.remove()
        network.train(was_training)
    maps = F.relu((grads.mean((2, 3), keepdim=True) * activations).sum(1)).detach()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)
    return maps / peak[:, None, None]


def upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """Maps resized to the photo's side (bilinear), as (B, size, size) float32."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def overlay(photo: np.ndarray, heat: np.ndarray) -> Image.Image:
    """The photo (S, S, 3 uint8) with the map (S, S in [0, 1]) in the 'jet' colours blended over it."""
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    blended = (1 - OVERLAY_ALPHA) * photo.astype(np.float32) + OVERLAY_ALPHA * colours
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def lesion_share(heat: np.ndarray, lesions: np.ndarray, field: np.ndarray) -> tuple[float, float]:
    """(share of the map's mass on lesion pixels, share of the field's area that lesions cover).

    A model that looks at the lesions puts far more of its mass on them than their area share; one
    that learned a shortcut (the border, the brightness, the optic disc) does not.
    """
    mass, on_lesions = heat * field, lesions & field
    total, area = mass.sum(), field.sum()
    area_share = on_lesions.sum() / area if area else float("nan")
    return float(mass[on_lesions].sum() / total) if total > 0 else float("nan"), float(area_share)
