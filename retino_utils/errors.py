"""One error type for bad input, and the CLI wrapper that turns it into a one-line message."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


class RetinoError(Exception):
    """Bad input or environment: the message is one line that names the thing and what to do."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI entry point; a RetinoError becomes ``error: <message>`` on stderr and exit status 2."""
    try:
        status = main(argv)
    except RetinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
