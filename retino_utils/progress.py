"""Progress bars on long work; tqdm's own ``TQDM_DISABLE=1`` silences them all (batch runs, tests)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable=None, *, enabled: bool | None = None, **kwargs):
    """``tqdm.auto.tqdm``, silent when ``enabled`` is False or ``TQDM_DISABLE`` is set.

    tqdm reads ``TQDM_*`` variables once, when it is imported; this reads ``TQDM_DISABLE`` at
    each call, so a process can switch bars off after importing the package.
    """
    disabled = enabled is False or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes", "on")
    return tqdm(iterable, dynamic_ncols=True, disable=disabled, **kwargs)
