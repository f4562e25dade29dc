"""Error types for bad input, and the CLI wrapper that turns them into a one-line message."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


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
    try:
        status = main(argv)
    except RetinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted: {on_interrupt() if on_interrupt else 'rerun the same command to resume'}",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
