"""Reading ``pipeline.yaml``: the runs, their groups and settings per profile (see the file's comments).

The whole file is checked when it is read, before any step runs: an unknown key anywhere (``trian:``
for ``train:``), a setting TrainConfig does not know, a value of the wrong type or out of its
choices, a profile override naming no run. A typo stops the build with one line and touches
nothing.
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path

import yaml

from retino_utils.data.preprocess import check_preparation, check_size
from retino_utils.errors import RetinoError
from retino_utils.train.config import TrainConfig

PIPELINE_FILE = Path(__file__).with_name("pipeline.yaml")

# The keys each part of the file may hold (values: required or not).
TOP_KEYS = {"runs": True, "profiles": True, "notebooks": True, "index_figures": False}
PROFILE_KEYS = {"description": False, "synthetic": False, "second_camera": False, "prepare": False, "train": False,
                "runs": False, "differences": False}
PREPARE_KEYS = {"preparation": True, "size": True}  # the copy of the data a profile's runs train on
SYNTHETIC_KEYS = {"train": True, "test": True, "size": True, "seed": True, "lesion_scale": False}
SECOND_CAMERA_KEYS = {"photos": True, "size": True, "seed": True, "lesion_scale": False}  # a synthetic external set
NOTEBOOK_KEYS = {"step": True, "notebook": True, "parameters": False, "per_run": False, "depends": False,
                 "run_groups": False}
RUN_KEYS_BESIDES_SETTINGS = ("groups",)
SET_BY_THE_REPORT = ("data", "out", "resume")  # every run's folders come from the build
REPORTS_PROFILE = "full"  # the reports' settings: every other profile's differences are stated against it


def load_pipeline(path: str | Path = PIPELINE_FILE) -> dict:
    path = Path(path)
    try:
        pipeline = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RetinoError(f"cannot read the pipeline {path}: {' '.join(str(exc).split())}") from None
    validate_pipeline(pipeline, path.name)
    return pipeline


def validate_pipeline(pipeline, where: str = PIPELINE_FILE.name) -> None:
    """Every key known, every run's settings valid under every profile; RetinoError naming the place if not."""
    _keys(pipeline, TOP_KEYS, where)
    runs = _mapping(pipeline["runs"], f"{where} runs")
    settings_keys = {name: False for name in TrainConfig.__dataclass_fields__ if name not in SET_BY_THE_REPORT}
    for name, spec in runs.items():
        _keys(spec, {**settings_keys, **{key: False for key in RUN_KEYS_BESIDES_SETTINGS}},
              f"{where} run {name}", "a training setting: python -m retino_utils.train --help lists them")
    for profile, spec in _mapping(pipeline["profiles"], f"{where} profiles").items():
        place = f"{where} profile {profile}"
        _keys(spec, PROFILE_KEYS, place)
        if spec.get("synthetic") is not None:
            _keys(spec["synthetic"], SYNTHETIC_KEYS, f"{place} synthetic")
        if spec.get("second_camera") is not None:
            _keys(spec["second_camera"], SECOND_CAMERA_KEYS, f"{place} second_camera")
        if spec.get("prepare") is not None:
            _keys(spec["prepare"], PREPARE_KEYS, f"{place} prepare")
            try:
                check_preparation(spec["prepare"]["preparation"])
                check_size(spec["prepare"]["size"], "size")
            except RetinoError as error:
                raise RetinoError(f"{place} prepare: {error}") from None
        _keys(spec.get("train") or {}, settings_keys, f"{place} train", "a training setting")
        for pattern, overrides in _mapping(spec.get("runs") or {}, f"{place} runs").items():
            if not any(char in pattern for char in "*?[") and pattern not in runs:  # a pattern may match none
                raise RetinoError(f"{place} runs: {pattern!r} names no run (runs are {', '.join(runs)})")
            _keys(overrides, settings_keys, f"{place} runs {pattern}", "a training setting")
        for run in runs:
            try:
                TrainConfig.from_settings(run_settings(pipeline, profile, run))
            except RetinoError as error:
                raise RetinoError(f"{place}, run {run}: {error}") from None
    for number, entry in enumerate(pipeline["notebooks"] or [], 1):
        _keys(entry, NOTEBOOK_KEYS, f"{where} notebooks entry {number}")


def _mapping(value, place: str) -> dict:
    if not isinstance(value, dict):
        raise RetinoError(f"{place} must be a mapping of names to settings, got {value!r}")
    return value


def _keys(value, allowed: dict[str, bool], place: str, what: str = "") -> None:
    """``value`` is a mapping whose keys are all in ``allowed`` and holds the required ones."""
    _mapping(value, place)
    unknown = sorted(set(value) - set(allowed), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(allowed), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = f"not {what}" if what else f"known are {', '.join(allowed)}"
        raise RetinoError(f"{place}: unknown key {unknown[0]!r} ({hint}{known}); fix the pipeline file, nothing was run")
    missing = [key for key, required in allowed.items() if required and key not in value]
    if missing:
        raise RetinoError(f"{place}: missing key {missing[0]!r}; fix the pipeline file, nothing was run")


def run_settings(pipeline: dict, profile: str, run: str) -> dict:
    """Training settings of ``run`` under ``profile``: profile train < run < profile overrides."""
    spec = pipeline["profiles"][profile]
    settings = dict(spec.get("train") or {})
    settings.update({k: v for k, v in pipeline["runs"][run].items() if k not in RUN_KEYS_BESIDES_SETTINGS})
    for pattern, overrides in (spec.get("runs") or {}).items():
        if fnmatch.fnmatchcase(run, pattern):
            settings.update(overrides)
    return settings


def setting_differences(pipeline: dict, profile: str) -> list[str]:
    """How ``profile`` trains its runs unlike the reports (the ``full`` profile), from the settings themselves:
    one line per setting and pair of values, naming the runs it applies to."""
    if profile == REPORTS_PROFILE or REPORTS_PROFILE not in pipeline["profiles"]:
        return []  # the reports' own settings, or a pipeline without them to compare with
    changes: dict[str, dict[tuple[str, str], list[str]]] = {}  # setting -> (ours, theirs) -> runs
    for run in pipeline["runs"]:
        ours, theirs = run_settings(pipeline, profile, run), run_settings(pipeline, REPORTS_PROFILE, run)
        for key in dict.fromkeys([*theirs, *ours]):
            if ours.get(key) != theirs.get(key):
                pair = (_shown(ours.get(key)), _shown(theirs.get(key)))
                changes.setdefault(key, {}).setdefault(pair, []).append(run)
    return [f"{key}: {ours} instead of {theirs} ({_run_list(pipeline, names)})"
            for key, pairs in changes.items() for (ours, theirs), names in pairs.items()]


def _shown(value) -> str:
    return "the default" if value is None else "none" if value == "" else str(value)


def _run_list(pipeline: dict, names: list[str]) -> str:
    """``every run``, or the names with a family written ``family_*`` where all of its runs are listed."""
    if len(names) == len(pipeline["runs"]):
        return "every run"
    families: dict[str, list[str]] = {}
    for name in pipeline["runs"]:
        families.setdefault(name.split("_")[0], []).append(name)
    shown = []
    for family, members in families.items():
        listed = [name for name in members if name in names]
        shown += [f"{family}_*"] if listed == members and len(members) > 1 else listed
    return ", ".join(shown)


EVERY_RUN = "*"  # the group every run belongs to


def runs_in_group(pipeline: dict, group: str) -> list[str]:
    runs = [name for name, spec in pipeline["runs"].items() if group == EVERY_RUN or group in spec.get("groups", ())]
    if not runs:
        known = sorted({g for spec in pipeline["runs"].values() for g in spec.get("groups", ())})
        raise RetinoError(f"no run of group {group!r} in the pipeline: groups are {', '.join(known)}")
    return runs
