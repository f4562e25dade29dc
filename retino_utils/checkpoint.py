"""Checkpoints: one dict {model, optimizer, scheduler, scaler, epoch, config, history, rng, best},
replaced atomically and read back with ``weights_only=True`` (no arbitrary code from a file)."""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import RetinoError


def save_checkpoint(state: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RetinoError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or one holding objects we refuse to unpickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RetinoError(f"cannot read checkpoint {path}: {first}; delete it to start the run afresh") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
