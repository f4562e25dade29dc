"""What keeps a run folder safe: one process trains in it at a time, it records the data it learned
from, and a run that no longer matches its settings or data is moved aside, never deleted.

Light (no torch): the report checks run folders with it before any notebook starts.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from retino_utils.atomic import write_json
from retino_utils.errors import RetinoError
from retino_utils.train.config import TrainConfig, load_config

LOCK_FILE = ".lock"
FINGERPRINT_FILE = "data_fingerprint.json"
SUPERSEDED_DIR = ".superseded"


# -- one trainer per run folder ------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The process's start time since boot (Linux), so a reused pid is not taken for the lock's owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so it holds the folder
    pid = int(owner.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = owner.get("process_start")
    return started is None or _process_start(pid) in (None, started)


class RunLock:
    """``RUN/.lock`` while a process trains in RUN: a second trainer is refused with the holder named;
    a lock whose process is gone (killed) is recognised as stale and taken over."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def holder(self) -> dict | None:
        """The live process holding the folder, or None (no lock, or a stale one)."""
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            owner = {}  # half-written by a killed process: stale
        return owner if owner and _alive(owner) else None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.holder()
                if owner is not None:
                    raise RetinoError(in_use_message(self.path.parent, owner)) from None
                self.path.unlink(missing_ok=True)  # stale: its process was killed
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise RetinoError(f"{self.path.parent} is being locked by another process right now: try again")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def in_use_message(folder: Path, owner: dict) -> str:
    return (f"{folder} is in use: process {owner.get('pid')} on {owner.get('host')} has trained in it since "
            f"{owner.get('since')} ({owner.get('command')}); wait for it to finish or choose another --out")


# -- the data a run learned from -----------------------------------------------------------------------
def data_fingerprint(config: TrainConfig) -> str:
    """The fingerprint of the run's data as the run splits it (its layout, test fraction and seed)."""
    from retino_utils.data.layouts import dataset_fingerprint

    return dataset_fingerprint(config.data, config.layout, config.test_fraction, config.split_seed)


def write_fingerprint(folder: str | Path, config: TrainConfig, fingerprint: str) -> None:
    write_json(Path(folder) / FINGERPRINT_FILE, {"data": config.data, "fingerprint": fingerprint})


def recorded_fingerprint(folder: str | Path) -> str | None:
    try:
        return json.loads((Path(folder) / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- what changed, and moving a run aside --------------------------------------------------------------
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.json")


def holds_run(folder: str | Path) -> bool:
    """Whether training ever started in ``folder`` (an events file of a refused start is no run)."""
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def setting_changes(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """``name: old -> new`` for every setting that changes what a run computes."""
    old, new = saved.semantic_dict(), wanted.semantic_dict()
    return [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]


def run_changes(folder: str | Path, wanted: TrainConfig, fingerprint: str) -> list[str]:
    """Why the run in ``folder`` is not the run ``wanted`` on data ``fingerprint`` (empty: it is)."""
    folder = Path(folder)
    try:
        changes = setting_changes(load_config(folder / "config.yaml"), wanted)
    except RetinoError as unreadable:
        return [f"its config.yaml cannot be read ({unreadable})"]
    recorded = recorded_fingerprint(folder)
    if recorded != fingerprint:
        changes.append(f"data {wanted.data}: fingerprint {recorded or 'not recorded'} -> {fingerprint} "
                       f"(labels or photos changed)")
    return changes


def supersede(folder: str | Path, why: str) -> Path:
    """Move the run in ``folder`` to ``<parent>/.superseded/<name>-<time>/`` and say so, with the way back."""
    folder = Path(folder)
    owner = RunLock(folder).holder()
    if owner is not None:
        raise RetinoError(in_use_message(folder, owner))
    target = folder.parent / SUPERSEDED_DIR / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.rsplit('~', 1)[0]}~{suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder, target)
    print(f"      {folder.name}: {why}; its run was moved to {target} (to get it back: "
          f"mv {shlex.quote(str(target))} {shlex.quote(str(folder))})", flush=True)
    return target
