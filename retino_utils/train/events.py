"""The structured channel from a training run to whoever follows it: ``RUN_DIR/events.jsonl``.

One JSON object a line, ``{"event": "start" | "epoch" | "done" | "error", ...}``; an error carries
its stable ``code`` (``RetinoError.code``), so the report tells a missing ImageNet file from a
bug across the notebook kernel's boundary without reading messages. Light: no torch import.
"""

from __future__ import annotations

import json
from pathlib import Path

EVENTS_FILE = "events.jsonl"


def append_event(run_dir: str | Path, kind: str, **payload) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / EVENTS_FILE, "a", encoding="utf-8") as stream:
        stream.write(json.dumps({"event": kind, **payload}) + "\n")


def read_events(run_dir: str | Path, start: int = 0) -> tuple[list[dict], int]:
    """Events from byte ``start`` of the run's events file, and where the next read starts.

    A line still being written (no newline yet) is left for the next read; one cut by a kill is skipped.
    """
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return [], start
    with open(path, "rb") as stream:
        stream.seek(start)
        chunk = stream.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    events = []
    for line in complete.decode("utf-8", "replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, start + len(complete)
