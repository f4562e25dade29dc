"""Checkpoints: a ``Checkpoint`` (declared once, below) saved as a plain dict with its schema version,
serialised in memory first (so its size is known before the disk is touched), replaced atomically, and read
back with ``weights_only=True`` (no arbitrary code from a file)."""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from retino_utils.atomic import write_bytes
from retino_utils.errors import RetinoError
from retino_utils.schema import checked_fields


CHECKPOINT_VERSION = 2  # 1: checkpoints written before the version was (the same fields), read as they are


class CheckpointDamaged(RetinoError):
    """The file exists but is truncated or is not a checkpoint this project wrote."""


@dataclass(kw_only=True)
class Checkpoint:
    """One epoch of a run, enough to continue it exactly (``--resume``) or to grade with it (``predict``)."""

    model: dict  # the trained weights (state dict)
    optimizer: dict
    scheduler: dict | None
    epoch: int
    config: dict  # TrainConfig.to_dict()
    history: list[dict]  # one row per epoch so far (run_folder.HISTORY_COLUMNS)
    rng: dict  # rng_state(): resumed runs draw the same batches and augmentations
    best: dict  # {"metric", "value", "epoch", "column"}: the checkpoint kept so far
    thresholds: list[float] | None = None  # regression cut points of this epoch
    ema: dict | None = None  # the moving average's state, where the run keeps one
    scaler: dict | None = None  # fp16's loss scaling
    data_fingerprint: str | None = None  # run_safety.data_fingerprint of the data it trained on
    schema_version: int = CHECKPOINT_VERSION

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it would copy every tensor

    @classmethod
    def from_dict(cls, values: dict, path: Path) -> Checkpoint:
        return cls(**checked_fields(cls, values, f"checkpoint {path}", "checkpoint", CHECKPOINT_VERSION,
                                    mismatch=CheckpointDamaged))


def save_checkpoint(state: Checkpoint, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically; on a full disk DiskFullError, and the old file stays."""
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise RetinoError(f"checkpoint {path} not found")
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, or objects we refuse to unpickle; torch's advice (unsafe loading) is not ours
        raise CheckpointDamaged(f"checkpoint {path} is damaged (truncated, or not a checkpoint written by "
                                f"retino_utils)") from None
    if not isinstance(values, dict):
        raise CheckpointDamaged(f"checkpoint {path} is not a checkpoint written by retino_utils (a bare "
                                f"{type(values).__name__}): pass a run folder's best.pt or last.pt")
    return Checkpoint.from_dict(values, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def scored_weights(state: Checkpoint) -> dict:
    """The weights a run evaluates and keeps: the moving average's where it trained one (``ema``)."""
    averaged = state.ema
    if not averaged:
        return state.model
    return {key.removeprefix("module."): value for key, value in averaged.items() if key.startswith("module.")}
