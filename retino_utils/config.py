"""The training configuration: one dataclass, written as YAML next to a run's outputs."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .errors import RetinoError

# Named recipes fill in settings the user did not give explicitly.
RECIPES: dict[str, dict] = {
    # The reference reports' recipe: plain cross entropy, SGD 1e-3, flips.
    "reports": {},
    # Chosen on a validation split of the 2,490 eyepacs-dev training photos (benchmarks/real_data.py;
    # the README's performance section lists what else was tried): a regression head with QWK-tuned
    # cut points, a class-balanced sampler, any-angle rotations and a one-cycle schedule. The report's
    # imbalance runs use it for its optimisation settings and set their own loss and sampler.
    "best-cpu": {"lr": 0.003, "schedule": "onecycle", "rotation": 180.0, "loss": "mse", "sampler": "weighted"},
}

CHOICES = {
    "arch": ("resnet18", "resnet50"),
    "impl": ("torchvision", "native"),
    "loss": ("ce", "wce", "focal", "mse", "smooth_l1"),
    "sampler": ("none", "weighted"),
    "schedule": ("none", "cosine", "onecycle"),
    "normalize": ("auto", "dataset", "imagenet", "report"),
    "class_weighting": ("inverse", "report002"),
    "loader": ("cache", "pil"),
    "precision": ("auto", "bf16", "fp32"),
    "best_metric": ("accuracy", "qwk", "last"),
    "layout": ("auto", "lab", "kaggle", "aptos"),
}

# Settings that change how a run is executed but not what it computes: a resumed run may differ in them.
RUNTIME_FIELDS = ("out", "resume", "device", "progress", "workers", "compile")


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    arch: str = "resnet18"
    weights: str | None = None  # None, "imagenet", or a path to a state dict
    impl: str = "torchvision"
    epochs: int = 10
    fe_epochs: int = 0  # leading feature-extraction epochs: backbone frozen, head trained
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "none"
    image_size: int = 256
    loss: str = "ce"
    focal_gamma: float = 2.0
    class_weighting: str = "inverse"
    sampler: str = "none"
    hflip: bool = True
    vflip: bool = True
    rotation: float = 0.0
    normalize: str = "auto"
    layout: str = "auto"
    test_fraction: float = 0.2  # Kaggle/APTOS layouts: share of patients held out as the test split
    split_seed: int = 0
    holdout: float = 0.0  # >0: evaluate on this stratified share of the training split, not the test split
    skip_bad: bool = False
    loader: str = "cache"
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    best_metric: str = "accuracy"
    tta: bool = False
    progress: bool = True
    resume: bool = False
    recipe: str | None = None

    def __post_init__(self) -> None:
        self.weights = normalize_weights(self.weights)
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise RetinoError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise RetinoError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise RetinoError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.fe_epochs <= self.epochs:
            raise RetinoError(f"fe_epochs must be between 0 and epochs ({self.epochs}), got {self.fe_epochs}")
        if not 0 <= self.holdout < 1:
            raise RetinoError(f"holdout must be in [0, 1), got {self.holdout}")

    @property
    def is_regression(self) -> bool:
        return self.loss in ("mse", "smooth_l1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def semantic_dict(self) -> dict:
        """The settings that define what a run computes (compared when resuming).

        Paths are compared resolved: ``DIR``, ``./DIR`` and ``DIR/`` name the same data.
        """
        values = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        values["data"] = os.path.realpath(self.data) if self.data else self.data
        if self.weights not in (None, "imagenet"):
            values["weights"] = os.path.realpath(self.weights)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RetinoError(f"unknown training setting(s) {', '.join(unknown)}: known are {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def with_recipe(cls, recipe: str | None = None, **explicit) -> "TrainConfig":
        """Build a config: dataclass defaults < the recipe's settings < explicit values (None = not given)."""
        if recipe is not None and recipe not in RECIPES:
            raise RetinoError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        given = {k: v for k, v in explicit.items() if v is not None}
        return cls.from_dict({**RECIPES.get(recipe, {}), **given, "recipe": recipe})


def normalize_weights(weights) -> str | None:
    if weights is None:
        return None
    text = str(weights)
    return None if text.lower() in ("", "none", "null", "scratch") else text


def save_config(config: TrainConfig, path: Path) -> None:
    from .atomic import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: Path) -> TrainConfig:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RetinoError(f"cannot read config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise RetinoError(f"config {path} is not a mapping of settings")
    return TrainConfig.from_dict(values)
