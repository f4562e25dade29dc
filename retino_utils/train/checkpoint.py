"""Checkpoints: one dict {model, optimizer, scheduler, epoch, config, history, rng, best, thresholds, ema,
scaler, data_fingerprint}, serialised in memory first (so its size is known before the disk is touched),
replaced atomically, and read back with ``weights_only=True`` (no arbitrary code from a file)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from retino_utils.atomic import write_bytes
from retino_utils.errors import RetinoError


class CheckpointDamaged(RetinoError):
    """The file exists but is truncated or is not a checkpoint this project wrote."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically; on a full disk DiskFullError, and the old file stays."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RetinoError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, or objects we refuse to unpickle; torch's advice (unsafe loading) is not ours
        raise CheckpointDamaged(f"checkpoint {path} is damaged (truncated, or not a checkpoint written by "
                                f"retino_utils)") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def scored_weights(state: dict) -> dict:
    """The weights a run evaluates and keeps: the moving average's where it trained one (``ema``)."""
    averaged = state.get("ema")
    if not averaged:
        return state["model"]
    return {key.removeprefix("module."): value for key, value in averaged.items() if key.startswith("module.")}
