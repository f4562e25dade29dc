"""Train one model, resumably, and write what the report draws.

``python -m retino_utils.train --data DIR --arch resnet18 --epochs N --out RUN_DIR`` (``--help`` for all
settings) or ``fit(TrainConfig(...))``. RUN_DIR receives ``config.yaml``, ``history.csv`` (a row per
epoch), ``last.pt`` and ``best.pt`` checkpoints, and after the last epoch ``predictions.csv`` and
``metrics.json`` for the best checkpoint on the evaluated split.

This module imports neither torch nor the data layer at import time: the command line checks its
settings and the ImageNet weights first and answers a mistake in about a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .config import CHOICES, RECIPES, TrainConfig, load_config
from .errors import RetinoError, run_cli
from .imagenet import require_imagenet_weights

if TYPE_CHECKING:
    import pandas as pd

PROG = "python -m retino_utils.train"


def fit(config: TrainConfig | dict, *, on_epoch_end: Callable[[dict], None] | None = None) -> "pd.DataFrame":
    """Train (or resume, or reuse a finished run) as ``config`` says; returns the per-epoch history."""
    config = check_config(config)
    from .trainer import run_training

    return run_training(config, on_epoch_end)


def check_config(config: TrainConfig | dict) -> TrainConfig:
    """What can be refused before any heavy import: missing folders, unavailable ImageNet weights."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not config.data:
        raise RetinoError("no data folder given: pass --data DIR (a dataset in the lab, kaggle or aptos layout)")
    if not config.out:
        raise RetinoError("no run folder given: pass --out RUN_DIR")
    finished = (Path(config.out) / "metrics.json").is_file() and config.resume
    if config.weights == "imagenet" and not finished:
        require_imagenet_weights(config.arch)
    return config


# -- command line ---------------------------------------------------------------------------------------
_HELP = {
    "data": "dataset folder (lab, kaggle or aptos layout)",
    "out": "run folder for checkpoints, history.csv, predictions.csv, metrics.json",
    "weights": "none | imagenet | PATH to a state dict",
    "fe_epochs": "leading feature-extraction epochs (backbone frozen, only the head trains)",
    "holdout": "evaluate on this stratified share of the training split instead of the test split",
    "normalize": "auto = ImageNet stats for ImageNet weights, the training split's own otherwise",
    "loader": "cache = decoded uint8 cache + batch augmentation (fast); pil = per-image PIL pipeline",
    "precision": "auto = bf16 autocast where the hardware has native bf16, fp32 elsewhere",
    "resume": "continue an interrupted run in --out (or reuse a finished one)",
    "tta": "average predictions over flips for the final predictions",
    "progress": "progress bars (--no-progress for batch runs)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of settings (e.g. a run's config.yaml); flags override it")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="named settings; explicit flags override them")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "recipe":
            continue
        flag = "--" + field.name.replace("_", "-")
        kwargs = {"help": _HELP.get(field.name, "")}
        if field.name in CHOICES:
            kwargs["choices"] = CHOICES[field.name]
        if field.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.type in ("int", "int | None"):
            kwargs["type"] = int
        elif field.type in ("float",):
            kwargs["type"] = float
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(argv: Sequence[str] | None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    base = load_config(Path(args.pop("config"))).to_dict() if "config" in args else {}
    recipe = args.pop("recipe", base.pop("recipe", None))
    return TrainConfig.with_recipe(recipe, **{**base, **args})


def resume_command(argv: Sequence[str]) -> str:
    """The exact command that continues an interrupted run: the same arguments, with --resume."""
    args = list(argv)
    if "--resume" not in args or "--no-resume" in args:
        args.append("--resume")
    return f"{PROG} {shlex.join(args)}"


def main(argv: Sequence[str] | None = None) -> int:
    fit(config_from_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:], on_interrupt=lambda: f"continue with: {resume_command(sys.argv[1:])}")
