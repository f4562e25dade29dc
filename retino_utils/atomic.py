"""Atomic file writes: a reader never sees half a file, an interrupted writer leaves the old one.

Temporary files are named ``.<name>.<random>.tmp`` beside their target; a hard kill can leave one
behind, and ``remove_stale_temp_files`` clears them on the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from retino_utils.errors import DiskFullError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # what mkstemp(prefix=".<name>.", suffix=".tmp") makes
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KB"``: sizes in the unit that keeps them readable (decimal units, as df -H)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds.

    A full disk (checked up front when ``needed`` bytes are known, or met while writing) raises
    DiskFullError naming the folder and the sizes; ``path`` itself is never touched then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if needed is not None:
        free = shutil.disk_usage(path.parent).free
        if needed > free:
            raise DiskFullError(_full_message(path, needed, free))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise DiskFullError(_full_message(path, needed)) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result should be an ordinary file
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise DiskFullError(_full_message(path, needed)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _full_message(path: Path, needed: int | None, free: int | None = None) -> str:
    if free is None:
        free = shutil.disk_usage(path.parent).free
    size = f" (needs {format_bytes(needed)})" if needed is not None else ""
    return f"the disk under {path.parent} is full: writing {path.name}{size} failed, only {format_bytes(free)} free"


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Delete temporary files of our own naming left by a killed writer; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = 0
    for path in candidates:
        if path.is_file() and _TEMP_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
