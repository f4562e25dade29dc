"""Error types for bad input, and the CLI wrapper that turns them into a one-line message."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable, Sequence

# Set by Ctrl-C under run_cli. CPython swallows an exception raised while a finalizer (``__del__``, a
# generator's ``finally`` during garbage collection) runs, so the KeyboardInterrupt itself can be lost;
# the flag is not: long loops call ``stop_if_interrupted`` and run_cli checks it when ``main`` returns.
_interrupted = threading.Event()


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt where Ctrl-C was pressed but its exception was swallowed on the way."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


def _on_interrupt(signum, frame) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


class RetinoError(Exception):
    """Bad input or environment: the message is one line that names the thing and what to do.

    ``code`` is stable across releases and processes (events, the report), unlike the message.
    """

    code = "bad-input"


class DiskFullError(RetinoError):
    """A write ran out of space; whatever was there before the write is left intact."""

    code = "disk-full"


class WeightsUnavailableError(RetinoError):
    """ImageNet weights are neither in the torch hub cache nor downloadable from here."""

    code = "weights-unavailable"


def run_cli(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    on_interrupt: Callable[[], str] | None = None,
) -> None:
    """Run a CLI entry point; a RetinoError becomes ``error: <message>`` on stderr and exit status 2.

    ``on_interrupt`` says what to run to continue after Ctrl-C (default: the same command).
    """
    _interrupted.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_interrupt) if in_main_thread else None
    try:
        status = main(argv)
        stop_if_interrupted()  # finished although Ctrl-C was pressed: it still must not pass as a clean exit
    except RetinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted: {on_interrupt() if on_interrupt else 'rerun the same command to resume'}",
              file=sys.stderr)
        sys.exit(130)
    finally:
        if previous is not None:  # None: not ours to restore (another thread, or a handler set outside Python)
            signal.signal(signal.SIGINT, previous)
    sys.exit(status or 0)
