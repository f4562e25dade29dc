"""The training configuration: one dataclass, written as YAML next to a run's outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import yaml

from retino_utils.errors import RetinoError
from retino_utils.models.architectures import ARCHITECTURES, IMPLS
from retino_utils.models.losses import CLASS_WEIGHTINGS, LOSSES, REGRESSION_LOSSES

# Named recipes fill in settings the user did not give explicitly.
RECIPES: dict[str, dict] = {
    # The reference reports' recipe: plain cross entropy, SGD 1e-3, flips.
    "reports": {},
    # ResNet-18 from scratch on real photos in under 45 minutes of a 2-core CPU, each lever measured on a
    # validation split of the 2,490 eyepacs-dev training photos (benchmarks/cpu_levers.py, README
    # "Quality on real photos"): a regression head cut at the training grade frequencies, AdamW
    # one-cycle, every grade drawn equally often, any-angle rotations, 128 -> 192 -> 256 px, a moving
    # average of the weights, the two eyes of a patient blended, the checkpoint with the best
    # validation QWK; and random saturation (0.5), the one robustness lever that helped on another
    # camera's photos across three cross-validation folds (benchmarks/transfer_levers.py).
    # The report's imbalance and ablation runs use it with their own loss and sampler.
    "best-cpu": {"loss": "mse", "cut_points": "frequencies", "optimizer": "adamw", "lr": 0.001,
                 "schedule": "onecycle", "sampler": "weighted", "rotation": 180.0, "saturation": 0.5,
                 "image_size": 256, "sizes": "128:14,192:10", "epochs": 40, "ema": 0.99, "fuse_eyes": 0.25,
                 "best_metric": "qwk"},
}

def setting(default, help: str):
    """A field with its ``--help`` text, so a setting and its documentation are one line."""
    return dataclasses.field(default=default, metadata={"help": help})


# Settings that change how a run is executed but not what it computes: a resumed run may differ in them.
RUNTIME_FIELDS = ("out", "resume", "device", "progress", "workers", "compile")
MIN_IMAGE_SIZE = 16  # the smallest side the ResNets still reduce to a 1 x 1 feature map
PATH_FIELDS = ("data", "out")  # stored absolute: a relative path means another folder elsewhere
# The random changes training applies to its photos (off: false or 0), handed to the batch loader as they are.
AUGMENTATION_FIELDS = ("hflip", "vflip", "rotation", "scale", "shift", "color", "gamma", "saturation", "blur", "jpeg")
TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "none"}


@dataclass
class TrainConfig:
    """Every training setting, declared once: the CLI flags, the notebooks' ``settings`` and the run's
    ``config.yaml`` all come from these fields (a ``Literal`` type lists a setting's choices)."""

    data: str = setting("", "dataset folder (in one of the layouts: see --layout)")
    out: str = setting("", "run folder for checkpoints, history.csv, predictions.csv, metrics.json")
    arch: Literal[tuple(ARCHITECTURES)] = setting(  # the choices: retino_utils/models/architectures.py
        "resnet18", "the network (declared in retino_utils/models/architectures.py)")
    weights: str | None = setting(None, "none | imagenet | PATH to a state dict or checkpoint")
    impl: Literal[IMPLS] = setting("torchvision", "native = the ResNets built from their "
                                                     "blocks, as reports 003/004 did (same weights and outputs)")
    epochs: int = setting(10, "epochs in all, feature-extraction ones included")
    fe_epochs: int = setting(0, "leading feature-extraction epochs (backbone frozen, only the head trains)")
    batch_size: int = setting(32, "photos per training step (evaluation uses twice as many)")
    lr: float = setting(1e-3, "learning rate (the peak, with a schedule)")
    optimizer: Literal["sgd", "adamw"] = setting("sgd", "sgd = SGD with momentum (the reports'); adamw = AdamW")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "L2 penalty (SGD) or decoupled weight decay (AdamW)")
    schedule: Literal["none", "cosine", "onecycle"] = setting(
        "none", "learning-rate schedule of fine-tuning: none = constant; cosine = cosine decay to zero; onecycle = "
                "torch's OneCycleLR")
    warmup_epochs: int = setting(0, "linear warm-up epochs at the start of fine-tuning (none/cosine schedules)")
    image_size: int = setting(256, "side in pixels the photos are resized to (the kept checkpoint's size)")
    sizes: str = setting("", "progressive resizing: smaller sizes trained first, as SIZE:EPOCHS pairs (e.g. "
                         "128:10,192:8); the remaining epochs train at image_size, and only they can be kept "
                         "(a recipe's schedule applies only when image_size is not given)")
    loss: Literal[LOSSES] = setting(  # the choices: retino_utils/models/losses/__init__.py
        "ce", "ce, wce (class-weighted), focal: 5-way softmax; mse, smooth_l1: a regression head cut into grades")
    focal_gamma: float = setting(2.0, "focal loss exponent: how much easy photos are down-weighted")
    cut_points: Literal["qwk", "frequencies"] = setting(
        "qwk", "regression cut points, set on the validation split: qwk = tuned for its QWK; frequencies = "
               "each grade gets its share of the training split (no validation labels used)")
    class_weighting: Literal[CLASS_WEIGHTINGS] = setting("inverse", "class weights of wce (and focal alpha)")
    sampler: Literal["none", "weighted", "weighted_to_natural"] = setting(
        "none", "weighted = every grade drawn equally often; weighted_to_natural = from that at the first epoch "
                "to the natural frequencies at the last, linearly")
    hflip: bool = setting(True, "random horizontal flips (a left eye mirrored looks like a right one)")
    vflip: bool = setting(True, "random vertical flips")
    rotation: float = setting(0.0, "degrees of random rotation (180 = any angle)")
    scale: float = setting(0.0, "random zoom by a factor in [1 - scale, 1 + scale]")
    shift: float = setting(0.0, "random shift up to this share of the image size, in x and y")
    color: float = setting(0.0, "random brightness and contrast factors in [1 - color, 1 + color]")
    gamma: float = setting(0.0, "random gamma exp(u), u in [-gamma, gamma] (exposure of another camera)")
    saturation: float = setting(0.0, "random saturation factor in [1 - saturation, 1 + saturation]")
    blur: float = setting(0.0, "random Gaussian blur up to this sigma in pixels, or as much sharpening")
    jpeg: int = setting(0, "half the training photos re-encoded as JPEG at a random quality in [jpeg, 95] "
                        "(0 = off)")
    normalize: Literal["auto", "dataset", "imagenet", "report", "none"] = setting(
        "auto", "auto = ImageNet stats for ImageNet weights, the training split's own otherwise; "
                "none = pixels scaled to [0, 1] only")
    # The layouts of retino_utils/data/layouts.py (LAYOUTS; a test checks the two lists agree).
    layout: Literal["auto", "lab", "kaggle", "aptos", "ddr", "idrid", "messidor2", "deepdrid", "folders"] = setting(
        "auto", "the dataset's layout (auto = detected from its files; the README lists each)")
    test_fraction: float = setting(0.2, "layouts without a test table: share of patients held out as the test split")
    split_seed: int = setting(0, "seed of the held-out splits (validation, and test where the layout has none)")
    val_fraction: float = setting(0.1, "share of the training patients held out for validation, stratified by "
                                  "grade: it picks the kept checkpoint, the cut points and the screening thresholds")
    folds: int = setting(0, "k-fold cross-validation: split the training patients into this many folds (stratified "
                         "by grade) and validate on one of them instead of val_fraction (0 = off)")
    fold: int = setting(0, "the fold held out for validation when folds is set (0 to folds - 1)")
    select_on: Literal["validation", "test"] = setting(
        "validation", "split that picks the kept checkpoint (test = the reports' optimistic choice, labelled so)")
    bootstrap: int = setting(2000, "bootstrap resamples for the 95%% intervals in metrics.json (0 = none)")
    skip_bad: bool = setting(False, "leave out images that validation finds missing or undecodable")
    loader: Literal["cache", "pil"] = setting(
        "cache", "cache = decoded uint8 cache + batch augmentation (fast); pil = per-image PIL pipeline")
    workers: int | None = setting(None, "processes for decoding (default: all cores)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", "auto = bf16 autocast where the hardware computes bf16 natively (CUDA 8.0+, CPUs with "
                "AVX512-BF16/AMX), fp16 autocast with a gradient scaler on older CUDA cards (T4, V100, P100), "
                "fp32 elsewhere")
    compile: bool = setting(False, "torch.compile the model")
    seed: int = setting(0, "seed of the weights, batches, augmentation and bootstrap")
    deterministic: bool = setting(False, "deterministic algorithms (slower; bit-identical reruns)")
    best_metric: Literal["accuracy", "qwk", "last"] = setting(
        "accuracy", "which epoch's checkpoint is kept (last = the final one)")
    ema: float = setting(0.0, "decay of an exponential moving average of the weights, which is then what is "
                         "evaluated and kept (0 = off; 0.99 averages over about 100 steps)")
    tta: bool = setting(False, "average the kept checkpoint's predictions over the four flips")
    fuse_eyes: float = setting(0.0, "weight of a patient's other eye in each eye's output, where both "
                               "<patient>_left and _right are in the same split (0 = off)")
    progress: bool = setting(True, "progress bars (--no-progress for batch runs)")
    resume: bool = setting(False, "continue an interrupted run in --out (or reuse a finished one)")
    recipe: str | None = setting(None, "named settings (RECIPES, above in retino_utils/train/config.py); explicit "
                                       "flags override them")

    def __post_init__(self) -> None:
        self._check_types()
        self.weights = normalize_weights(self.weights)
        if self.weights not in (None, "imagenet"):
            self.weights = os.path.abspath(os.path.expanduser(self.weights))
        for name in PATH_FIELDS:  # a run is found again from any working directory
            if getattr(self, name):
                setattr(self, name, os.path.abspath(os.path.expanduser(getattr(self, name))))
        for name, allowed in choices(type(self)).items():
            value = getattr(self, name)
            if value not in allowed:
                raise RetinoError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise RetinoError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise RetinoError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise RetinoError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {self.image_size}")
        if not 0 <= self.fe_epochs <= self.epochs:
            raise RetinoError(f"fe_epochs must be between 0 and epochs ({self.epochs}), got {self.fe_epochs}")
        if not 0 <= self.val_fraction < 1:
            raise RetinoError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.folds:  # a cross-validation run, which loads the data layer (and torch) anyway
            from retino_utils.data.layouts import check_fold

            check_fold(self.folds, self.fold)
        if self.fold and not self.folds:
            raise RetinoError(f"fold {self.fold} needs --folds (how many folds the training patients are split into)")
        if self.val_fraction == 0 and not self.folds and self.select_on == "validation" and self.best_metric != "last":
            raise RetinoError("select_on validation needs a validation split: give --val-fraction (e.g. 0.1), "
                              "or keep the last epoch (--best-metric last)")
        if self.bootstrap < 0:
            raise RetinoError(f"bootstrap must be 0 (no intervals) or more resamples, got {self.bootstrap}")
        if self.jpeg and not 1 <= self.jpeg <= 95:
            raise RetinoError(f"jpeg must be 0 (off) or a quality in [1, 95], got {self.jpeg}")
        if self.warmup_epochs < 0:
            raise RetinoError(f"warmup_epochs must be 0 or more, got {self.warmup_epochs}")
        for name, high in (("scale", 1), ("shift", 0.5), ("color", 1), ("ema", 1), ("fuse_eyes", 0.5), ("gamma", 1),
                           ("saturation", 1), ("blur", 5)):
            if not 0 <= getattr(self, name) < high or (name == "fuse_eyes" and self.fuse_eyes == high):
                raise RetinoError(f"{name} must be in [0, {high}), got {getattr(self, name)}")
        self.size_stages()  # refuses a malformed --sizes

    def augmentation(self) -> dict:
        """The training photos' random changes (AUGMENTATION_FIELDS), as the batch loader takes them."""
        return {name: getattr(self, name) for name in AUGMENTATION_FIELDS}

    def _check_types(self) -> None:
        """Each value of the type its field declares (YAML and notebooks pass anything): one line if not."""
        for name, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is Literal:
                continue  # checked against its choices below
            value, kinds = getattr(self, name), set(typing.get_args(hint)) or {hint}
            if value is None and type(None) in kinds:
                continue
            if float in kinds and isinstance(value, (int, str)) and not isinstance(value, bool):
                with contextlib.suppress(ValueError):  # an int, or text: YAML reads 1e-3 (no dot) as text
                    setattr(self, name, float(value))
                    continue
            # bool is an int to Python: true or false passes only where the field is a bool
            if isinstance(value, bool) == (bool in kinds) and isinstance(value, tuple(kinds - {type(None)})):
                continue
            wanted = " or ".join(TYPE_NAMES.get(kind, kind.__name__) for kind in kinds)
            raise RetinoError(f"setting {name} must be {wanted}, got {value!r}")

    def size_stages(self) -> list[tuple[int, int]]:
        """(size, epochs) of each progressive-resizing stage, the last at image_size."""
        stages = []
        for part in filter(None, (p.strip() for p in str(self.sizes or "").split(","))):
            size, _, epochs = part.partition(":")
            try:
                stages.append((int(size), int(epochs)))
            except ValueError:
                raise RetinoError(f"sizes wants SIZE:EPOCHS pairs such as 128:10,192:8, got {self.sizes!r}") from None
        used = sum(epochs for _, epochs in stages)
        sizes = [size for size, _ in stages] + [self.image_size]
        if any(epochs < 1 for _, epochs in stages) or used >= self.epochs or sizes != sorted(set(sizes)) \
                or sizes[0] < MIN_IMAGE_SIZE:
            raise RetinoError(f"sizes {self.sizes!r} must grow from at least {MIN_IMAGE_SIZE} px towards image_size "
                              f"({self.image_size}) and leave "
                              f"epochs for it (of {self.epochs}): change them, or train at image_size throughout "
                              f"with --sizes ''")
        return stages + [(self.image_size, self.epochs - used)]

    def size_at(self, epoch: int) -> int:
        """The training resolution of ``epoch`` (1-based)."""
        end = 0
        for size, epochs in self.size_stages():
            end += epochs
            if epoch <= end:
                return size
        return self.image_size

    @property
    def is_regression(self) -> bool:
        return self.loss in REGRESSION_LOSSES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def semantic_dict(self) -> dict:
        """The settings that define what a run computes (compared when resuming), recipe aside.

        Paths are compared resolved: ``DIR``, ``./DIR`` and ``DIR/`` name the same data.
        """
        # The recipe only names settings already resolved into the others.
        values = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS and k != "recipe"}
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
        """Build a config: dataclass defaults < the recipe's settings < explicit values (None = not given).

        An image size given explicitly replaces the recipe's size schedule too (``sizes`` leads up to the
        recipe's own size): training "at 128 px" means at 128 px throughout unless ``sizes`` is given as well.
        """
        if recipe is not None and recipe not in RECIPES:
            raise RetinoError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        given = {k: v for k, v in explicit.items() if v is not None}
        settings = dict(RECIPES.get(recipe, {}))
        if "image_size" in given:
            settings.pop("sizes", None)
        return cls.from_dict({**settings, **given, "recipe": recipe})

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
    from retino_utils.atomic import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: Path, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RetinoError(f"cannot read config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise RetinoError(f"config {path} is not a mapping of settings")
    return config_class.from_dict(values)
