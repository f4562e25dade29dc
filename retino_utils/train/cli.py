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
import os
import shlex
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from retino_utils.errors import RetinoError
from retino_utils.models.imagenet import require_imagenet_weights
from retino_utils.train.config import RECIPES, TrainConfig, load_config
from retino_utils.train.events import append_event

if TYPE_CHECKING:
    import pandas as pd

PROG = "python -m retino_utils.train"


def fit(config: TrainConfig | dict, *, on_epoch_end: Callable[[dict], None] | None = None) -> "pd.DataFrame":
    """Train (or resume, or reuse a finished run) as ``config`` says; returns the per-epoch history.

    A refusal (RetinoError) is also recorded as an ``error`` event with its code in the run folder.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    check_folders(config)  # before any event is recorded: a wrong --out gets no folder made
    try:
        check_config(config)
        from retino_utils.train.trainer import run_training

        return run_training(config, on_epoch_end)
    except RetinoError as error:
        if config.out and os.environ.get("RANK", "0") == "0":
            append_event(config.out, "error", code=error.code, message=str(error))
        raise


def layouts_read() -> str:
    """The layouts a dataset folder may have, loaded only for an error: torch loads after the weights check."""
    from retino_utils.data.layouts import LAYOUTS_READ

    return LAYOUTS_READ


def check_folders(config: TrainConfig) -> None:
    """A data folder that is one, and a run folder that can be one."""
    if not config.data:
        raise RetinoError(f"no data folder given: pass --data DIR (a dataset {layouts_read()})")
    if not Path(config.data).is_dir():
        what = "is a file, not a folder" if Path(config.data).exists() else "does not exist"
        raise RetinoError(f"--data {config.data} {what}: pass a dataset folder {layouts_read()}")
    if not config.out:
        raise RetinoError("no run folder given: pass --out RUN_DIR")
    if Path(config.out).is_file():
        raise RetinoError(f"--out {config.out} is a file: pass a folder for the run")


def check_config(config: TrainConfig) -> None:
    """What can be refused before any heavy import: unavailable ImageNet weights."""
    finished = (Path(config.out) / "metrics.json").is_file() and config.resume
    if config.weights == "imagenet" and not finished:
        require_imagenet_weights(config.arch)


# -- command line ---------------------------------------------------------------------------------------
def build_parser(config_class: type[TrainConfig] = TrainConfig) -> argparse.ArgumentParser:
    """One flag per field of ``config_class``, its type and choices read from the annotation."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of settings (e.g. a run's config.yaml); flags override it")
    helps = {field.name: field.metadata.get("help", "") for field in dataclasses.fields(config_class)}
    parser.add_argument("--recipe", choices=sorted(RECIPES), help=helps["recipe"])
    for name, hint in typing.get_type_hints(config_class).items():
        if name == "recipe":
            continue
        kwargs: dict = {"help": helps[name]}
        types = {arg for arg in typing.get_args(hint) if arg is not type(None)} or {hint}
        if typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif types <= {int, float}:
            kwargs["type"] = float if float in types else int
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    return parser


def config_from_args(argv: Sequence[str] | None, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    args = vars(build_parser(config_class).parse_args(argv))
    base = load_config(Path(args.pop("config")), config_class).to_dict() if "config" in args else {}
    recipe = args.pop("recipe", base.pop("recipe", None))
    return config_class.with_recipe(recipe, **{**base, **args})


def resume_command(argv: Sequence[str]) -> str:
    """The exact command that continues an interrupted run: the same arguments, with --resume."""
    args = list(argv)
    if "--resume" not in args or "--no-resume" in args:
        args.append("--resume")
    return f"{PROG} {shlex.join(args)}"


def main(argv: Sequence[str] | None = None) -> int:
    fit(config_from_args(argv))
    return 0
