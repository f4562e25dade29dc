"""A process pool with a progress bar for the long per-image jobs (validate, preprocess, stats, cache,
the synthetic generator).

On Linux workers are forked, as torch's DataLoader does: they start at once, and scripts without an
``if __name__ == "__main__":`` guard still work ("spawn" and "forkserver" re-run the main script).
The workers only decode with PIL and numpy, never touching torch's thread pools. Elsewhere the
platform's default start method is used. Tiny jobs run in-process, where a pool costs more than it saves.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from typing import Any, Callable, Hashable, Iterator, Sequence

from retino_utils.errors import DiskFullError
from retino_utils.progress import progress as progress_bar

POOL_MIN_TASKS = 32


def default_workers() -> int:
    return os.cpu_count() or 1


def parallel_map(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Hashable, tuple]],
    *,
    workers: int | None = None,
    desc: str = "",
    progress: bool = True,
) -> Iterator[tuple[Hashable, Any, str | None]]:
    """Run ``fn(*args)`` for each ``(key, args)``; yield ``(key, result, error)`` in completion order.

    ``fn`` must be a module-level function. An exception becomes ``error`` (``"Type: message"``)
    so the caller can name the file it came from; ``result`` is then None. A full disk is the
    exception: every later task would fail the same way, so DiskFullError stops the whole map.
    """
    workers = max(1, min(workers or default_workers(), len(tasks)))
    jobs = [(fn, key, args) for key, args in tasks]
    bar = progress_bar(total=len(jobs), desc=desc, unit="img", enabled=None if progress else False)
    try:
        if workers == 1 or len(jobs) < POOL_MIN_TASKS:
            for job in jobs:
                yield _run(job)
                bar.update()
            return
        chunksize = max(1, min(16, len(jobs) // (workers * 8)))
        with _context().Pool(workers, initializer=_ignore_interrupts) as pool:
            for outcome in pool.imap_unordered(_run, jobs, chunksize=chunksize):
                yield outcome
                bar.update()
    finally:
        bar.close()


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and prints one line (no tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _context():
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def _run(job: tuple[Callable[..., Any], Hashable, tuple]) -> tuple[Hashable, Any, str | None]:
    fn, key, args = job
    try:
        return key, fn(*args), None
    except DiskFullError:
        raise
    except Exception as exc:  # reported per task by the caller, which knows the file
        return key, None, f"{type(exc).__name__}: {exc}"
