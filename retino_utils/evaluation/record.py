"""What a finished run is, declared once: the figures of one graded split (``Scores``) and a run's record
(``RunRecord``, its ``metrics.json``). Every reader goes through these classes, never through string keys,
and every file says which version of the record wrote it, so an older file is read or refused by name.

Version 1: records written before the version was (no ``schema_version``; the same fields): read as they are.
Version 2: ``schema_version`` written into the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from retino_utils.errors import RetinoError
from retino_utils.schema import checked_fields

RECORD_VERSION = 2


class RecordError(RetinoError):
    """A file that is not a run's record: damaged, or its fields do not match its version."""


@dataclass(kw_only=True)
class Screening:
    """Referable DR as a screening test: the ROC, the operating points chosen on validation (with their
    sensitivity and specificity where measured), and the calibration of the referable score."""

    roc: dict | None = None  # {"fpr", "tpr", "thresholds"} (screening.roc)
    operating_points: dict[str, dict] = field(default_factory=dict)  # name -> screening.operating_points' entry
    calibration: dict | None = None  # calibration.calibration_report, where validation held both classes

    def point(self, name: str) -> dict | None:
        return self.operating_points.get(name)


@dataclass(kw_only=True)
class Scores:
    """One split graded (``metrics.compute_metrics``' figures), with their 95% intervals and screening figures."""

    n: int
    accuracy: float | None
    qwk: float | None
    macro_f1: float | None
    recall: list[float]
    precision: list[float]
    confusion: list[list[float]]  # normalised over true grades
    confusion_counts: list[list[int]]
    referable_sensitivity: float | None = None
    referable_specificity: float | None = None
    referable_auc: float | None = None
    loss: float | None = None  # the training loss on this split, where a run measured it
    intervals: dict[str, list] = field(default_factory=dict)  # figure -> [low, high] (uncertainty.intervals)
    screening: Screening = field(default_factory=Screening)

    def figure(self, name: str):
        """A headline figure by name (``qwk``, ``referable_auc``, ``recall_3``...)."""
        if name.startswith("recall_"):
            return self.recall[int(name.removeprefix("recall_"))]
        return getattr(self, name)

    def interval(self, name: str) -> list | None:
        return self.intervals.get(name)

    def to_dict(self) -> dict:
        """JSON-ready, every field (the screening figures as a nested object)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values[_SCREENING] = {f.name: getattr(self.screening, f.name) for f in fields(Screening)}
        for name in _NESTED_SCORES:
            if values.get(name) is not None:
                values[name] = values[name].to_dict()
        return values

    def to_file_dict(self) -> dict:
        """``to_dict`` with the record's version, for a file of its own (``from_dict`` reads it back)."""
        return {"schema_version": RECORD_VERSION, **self.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "a record"):
        """Read back what ``to_dict`` wrote (or an older version of it); one line naming ``source`` when it
        cannot be read."""
        values = checked_fields(cls, values, source, "record", RECORD_VERSION, mismatch=RecordError)
        values[_SCREENING] = Screening(**checked_fields(Screening, values.get(_SCREENING) or {},
                                                        f"{source} ({_SCREENING})", "record", RECORD_VERSION,
                                                        mismatch=RecordError))
        for name in _NESTED_SCORES:
            if values.get(name) is not None:
                values[name] = Scores.from_dict(values[name], f"{source} ({name})")
        return cls(**values)


@dataclass(kw_only=True)
class RunRecord(Scores):
    """A finished run: its kept checkpoint graded once on the test split, and what chose and fed it."""

    schema_version: int = RECORD_VERSION
    eval_split: str = "test"
    select_on: str | None = None  # what chose the kept checkpoint: validation, last epoch, or (old runs) test
    best_epoch: int
    best_metric: str | None = None
    thresholds: list[float] | None = None  # regression cut points, chosen on validation
    tta: bool = False
    train_counts: list[int]
    val_counts: list[int] | None = None
    eval_counts: list[int]
    normalization: dict  # {"mean": [...], "std": [...]} the inputs were normalised with
    config: dict  # TrainConfig.to_dict()
    validation: Scores | None = None  # the kept checkpoint on the validation split
    data_fingerprint: str | None = None
    arithmetic: str | None = None  # bf16, fp16 or fp32: what --precision resolved to

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.normalization["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.normalization["std"])


_SCREENING = "screening"
_NESTED_SCORES = ("validation",)


RECORD_FILE = "metrics.json"


@dataclass(kw_only=True)
class ExternalRecord:
    """A run graded on a set of another source (``RUN/external/<set>.json``): which set in which state, which
    state of the run, and the figures, so a later change to either is seen (``results.external_records``)."""

    schema_version: int = RECORD_VERSION
    set: str
    folder: str
    fingerprint: str  # the set's dataset fingerprint when graded
    run_state: str  # the digest of the run's metrics.json when graded (results.run_state)
    photos: int
    metrics: Scores
    change: dict[str, dict]  # figure -> {"difference", "interval"}: external minus internal test (unpaired)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "metrics": self.metrics.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "ExternalRecord":
        values = checked_fields(cls, values, source, "kept external result", RECORD_VERSION, mismatch=RecordError)
        return cls(**{**values, "metrics": Scores.from_dict(values["metrics"], f"{source} (metrics)")})


def read_json_record(path: Path, remedy: str = "score the run again") -> dict:
    """A record file's JSON; one line naming the file and ``remedy`` where it is damaged."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f" ({error.msg} at line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise RecordError(f"{path} is damaged{where}: {remedy}") from None


def read_record(run_dir: str | Path) -> RunRecord:
    """``RUN/metrics.json`` as a ``RunRecord``."""
    path = Path(run_dir) / RECORD_FILE
    return RunRecord.from_dict(read_json_record(path), str(path))
