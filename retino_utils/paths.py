"""Project locations resolved from the package, so notebooks and scripts run from any folder."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
FIGURES_DIR = REPO_ROOT / "figures"
BUILD_DIR = REPO_ROOT / "build"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def cache_root() -> Path:
    """Where derived data goes when the data folder itself is read-only.

    ``RETINO_CACHE`` overrides; the default follows XDG.
    """
    env = os.environ.get("RETINO_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "retino"
