"""What the benchmark scripts share: their output flags and how they hand back their figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from retino_utils.atomic import write_json


def add_output_arguments(parser: argparse.ArgumentParser, smoke_help: str) -> None:
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)


def publish(results: dict, print_table: Callable[[dict], None], json_path: Path | None) -> int:
    """Print the table, write the JSON if asked; the script's exit status."""
    print_table(results)
    if json_path:
        write_json(json_path, results)
    return 0
