"""Progress bars that batch runs can switch off (``RETINO_PROGRESS=0``)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_enabled(enabled: bool | None = None) -> bool:
    """The environment switch wins; otherwise ``enabled`` (default on)."""
    if os.environ.get("RETINO_PROGRESS", "1").lower() in ("0", "false", "no", "off"):
        return False
    return True if enabled is None else enabled


def progress(iterable=None, *, enabled: bool | None = None, **kwargs):
    """``tqdm.auto.tqdm`` that is silent when disabled; kwargs go to tqdm (desc, total, unit...)."""
    return tqdm(iterable, disable=not progress_enabled(enabled), dynamic_ncols=True, **kwargs)
