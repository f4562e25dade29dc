"""Where derived files of a dataset (validation results, channel stats, decoded caches) live."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from retino_utils.paths import cache_root

if TYPE_CHECKING:
    from retino_utils.data.layouts import SplitIndex

LOCAL_CACHE_NAME = ".retino-cache"


def dataset_cache_dir(root: str | os.PathLike) -> Path:
    """``<root>/.retino-cache`` when the data folder may be written, else a folder under ``cache_root()``.

    "May be written" follows the folder's permission bits as well as ``os.access``: root ignores
    the bits, but a folder made read-only (like ``../shared/data``) must stay untouched.
    """
    root = Path(root).resolve()
    local = root / LOCAL_CACHE_NAME
    # Looked at once: a concurrent build may create the folder between two looks, and both must choose it.
    exists = local.exists()
    if _may_write(local) if exists else _may_write(root):
        local.mkdir(exist_ok=True)
        return local
    fallback = cache_root() / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def bigger_disk_advice(folder: Path) -> str:
    """How to move a cache folder to a bigger disk: ``RETINO_CACHE`` moves only the fallback folders."""
    root = cache_root().resolve()
    if Path(folder).resolve().is_relative_to(root):
        return f"point RETINO_CACHE at a bigger disk (now {root})"
    return f"make {folder} a link to a folder on a bigger disk"


def _may_write(folder: Path) -> bool:
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return stat.S_ISDIR(mode) and bool(mode & write_bits) and os.access(folder, os.W_OK)


def derived_prefix(index: "SplitIndex", kind: str, detail: str = "") -> str:
    """``<kind>-<layout>-<split>[-<detail>]-<entries digest>-``: a derived file's name before the fingerprint.

    Different entry lists (a held-out subset, skip_bad) get their own files, side by side; the same
    entries with changed files get a new fingerprint, and ``remove_stale`` drops the old result.
    """
    parts = [kind, index.layout, index.split, *([detail] if detail else []), index.entries_digest()]
    return "-".join(parts) + "-"


def remove_stale(folder: Path, prefix: str, keep: str) -> None:
    """Delete the files of an older key: names starting with ``prefix`` that do not contain ``keep``."""
    for path in folder.glob(f"{prefix}*"):
        if keep not in path.name:
            path.unlink(missing_ok=True)
