"""The training configuration: one dataclass, written as YAML next to a run's outputs."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

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

def setting(default, help: str):
    """A field with its ``--help`` text, so a setting and its documentation are one line."""
    return dataclasses.field(default=default, metadata={"help": help})


# Settings that change how a run is executed but not what it computes: a resumed run may differ in them.
RUNTIME_FIELDS = ("out", "resume", "device", "progress", "workers", "compile")
REGRESSION_LOSSES = ("mse", "smooth_l1")  # losses that train the one-output (ordinal regression) head


@dataclass
class TrainConfig:
    """Every training setting, declared once: the CLI flags, the notebooks' ``settings`` and the run's
    ``config.yaml`` all come from these fields (a ``Literal`` type lists a setting's choices)."""

    data: str = setting("", "dataset folder (lab, kaggle or aptos layout)")
    out: str = setting("", "run folder for checkpoints, history.csv, predictions.csv, metrics.json")
    arch: Literal["resnet18", "resnet50"] = "resnet18"
    weights: str | None = setting(None, "none | imagenet | PATH to a state dict or checkpoint")
    impl: Literal["torchvision", "native"] = setting("torchvision", "native = the ResNets built from their "
                                                     "blocks, as reports 003/004 did (same weights and outputs)")
    epochs: int = 10
    fe_epochs: int = setting(0, "leading feature-extraction epochs (backbone frozen, only the head trains)")
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["none", "cosine", "onecycle"] = "none"
    warmup_epochs: int = setting(0, "linear warm-up epochs at the start of fine-tuning (none/cosine schedules)")
    image_size: int = 256
    loss: Literal["ce", "wce", "focal", "mse", "smooth_l1"] = "ce"
    focal_gamma: float = 2.0
    class_weighting: Literal["inverse", "report002"] = setting("inverse", "class weights of wce (and focal alpha)")
    sampler: Literal["none", "weighted"] = setting("none", "weighted = every grade drawn equally often")
    hflip: bool = True
    vflip: bool = True
    rotation: float = setting(0.0, "degrees of random rotation (180 = any angle)")
    normalize: Literal["auto", "dataset", "imagenet", "report", "none"] = setting(
        "auto", "auto = ImageNet stats for ImageNet weights, the training split's own otherwise; "
                "none = pixels scaled to [0, 1] only")
    layout: Literal["auto", "lab", "kaggle", "aptos"] = "auto"
    test_fraction: float = setting(0.2, "kaggle/aptos layouts: share of patients held out as the test split")
    split_seed: int = 0
    val_fraction: float = setting(0.1, "share of the training patients held out for validation, stratified by "
                                  "grade: it picks the kept checkpoint, the cut points and the screening thresholds")
    select_on: Literal["validation", "test"] = setting(
        "validation", "split that picks the kept checkpoint (test = the reports' optimistic choice, labelled so)")
    bootstrap: int = setting(2000, "bootstrap resamples for the 95%% intervals in metrics.json (0 = none)")
    skip_bad: bool = setting(False, "leave out images that validation finds missing or undecodable")
    loader: Literal["cache", "pil"] = setting(
        "cache", "cache = decoded uint8 cache + batch augmentation (fast); pil = per-image PIL pipeline")
    workers: int | None = setting(None, "processes for decoding (default: all cores)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps")
    precision: Literal["auto", "bf16", "fp32"] = setting(
        "auto", "auto = bf16 autocast where the hardware has native bf16, fp32 elsewhere")
    compile: bool = setting(False, "torch.compile the model")
    seed: int = 0
    deterministic: bool = setting(False, "deterministic algorithms (slower; bit-identical reruns)")
    best_metric: Literal["accuracy", "qwk", "last"] = setting(
        "accuracy", "which epoch's checkpoint is kept (last = the final one)")
    tta: bool = setting(False, "average predictions over flips for the final predictions")
    progress: bool = setting(True, "progress bars (--no-progress for batch runs)")
    resume: bool = setting(False, "continue an interrupted run in --out (or reuse a finished one)")
    recipe: str | None = setting(None, "named settings; explicit ones override them")

    def __post_init__(self) -> None:
        self.weights = normalize_weights(self.weights)
        for name, allowed in choices(type(self)).items():
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
        if not 0 <= self.val_fraction < 1:
            raise RetinoError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction == 0 and self.select_on == "validation" and self.best_metric != "last":
            raise RetinoError("select_on validation needs a validation split: give --val-fraction (e.g. 0.1), "
                              "or keep the last epoch (--best-metric last)")
        if self.bootstrap < 0:
            raise RetinoError(f"bootstrap must be 0 (no intervals) or more resamples, got {self.bootstrap}")
        if self.warmup_epochs < 0:
            raise RetinoError(f"warmup_epochs must be 0 or more, got {self.warmup_epochs}")

    @property
    def is_regression(self) -> bool:
        return self.loss in REGRESSION_LOSSES

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

    @classmethod
    def from_settings(cls, settings: dict, **paths) -> "TrainConfig":
        """A run's config from a ``settings`` dict (pipeline.yaml, notebook 02) and its folders."""
        return cls.with_recipe(**{**settings, **paths})


def choices(config_class: type = None) -> dict[str, tuple[str, ...]]:
    """The allowed values of every setting typed as a ``Literal`` (of TrainConfig by default)."""
    hints = typing.get_type_hints(config_class or TrainConfig)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


def normalize_weights(weights) -> str | None:
    if weights is None:
        return None
    text = str(weights)
    return None if text.lower() in ("", "none", "null", "scratch") else text


def save_config(config: TrainConfig, path: Path) -> None:
    from .atomic import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: Path, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RetinoError(f"cannot read config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise RetinoError(f"config {path} is not a mapping of settings")
    return config_class.from_dict(values)
