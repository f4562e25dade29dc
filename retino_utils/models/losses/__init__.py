"""Loss functions by name, one small module each (like timm): CE, weighted CE, focal, regression.

The names are declared here and nothing else is imported up front, so the settings (``config.py``,
torch-free) take their choices from the losses themselves; ``build_loss`` and the loss classes load
from their modules when first used.
"""

from __future__ import annotations

import importlib

LOSSES = ("ce", "wce", "focal", "mse", "smooth_l1")  # TrainConfig.loss's choices
REGRESSION_LOSSES = ("mse", "smooth_l1")  # the losses that train the one-output (ordinal regression) head
CLASS_WEIGHTINGS = ("inverse", "report002")  # TrainConfig.class_weighting's choices (wce, focal alpha)

_MODULE_OF = {"build_loss": "build", "FocalLoss": "focal", "RegressionLoss": "ordinal",
              "scores_to_grades": "ordinal", "tune_thresholds": "ordinal", "inverse_frequency_weights": "class_weights",
              "report002_weights": "class_weights", "sample_weights": "class_weights"}

__all__ = ["CLASS_WEIGHTINGS", "LOSSES", "REGRESSION_LOSSES", *_MODULE_OF]


def __getattr__(name: str):
    """``from retino_utils.models.losses import build_loss`` and the like, loaded on first use (PEP 562)."""
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
