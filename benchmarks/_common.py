"""What the benchmark scripts share: their output flags and how they hand back their figures."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

from retino_utils.atomic import write_json
from retino_utils.errors import RetinoError
from retino_utils.paths import BUILD_DIR, SHARED_DATA_DIR, cache_root

REAL_DATA = SHARED_DATA_DIR / "eyepacs-dev"
PREPARED_SIZE = 256  # the side of eyepacs-dev's photos: a prepared copy keeps every pixel
EXTERNAL_DATA = SHARED_DATA_DIR / "clinical-ext-dev"  # another camera and population: never trained on
# ``--recipe best-cpu`` before transfer_levers.py's winner (saturation) joined it on 2026-12-05: the footing the
# levers were judged on, and the previous recipe real_data.py scores today's against.
BEFORE_SATURATION = {"saturation": 0.0}


def add_output_arguments(parser: argparse.ArgumentParser, smoke_help: str) -> None:
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)


def publish(results: dict, print_table: Callable[[dict], None], json_path: Path | None) -> int:
    """Print the table, write the JSON if asked; the script's exit status."""
    print_table(results)
    if json_path:
        write_json(json_path, results)
    return 0


def real_data_parser(description: str, out_name: str, smoke_help: str) -> argparse.ArgumentParser:
    """The flags of the scripts that train on real photos: data, seed, device, kept run folders, output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="dataset in the lab layout (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=BUILD_DIR / "benchmarks" / out_name,
                        help="run folders (kept, so an interrupted benchmark resumes)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_output_arguments(parser, smoke_help)
    return parser


def parse_study(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """The arguments of a study that compares variants with bootstrap intervals (fewer resamples in --smoke)."""
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the intervals")
    args = parser.parse_args(argv)
    if args.smoke:
        args.resamples = 50
    return args


def run_on_real_data(args, run: Callable, print_table: Callable[[dict], None]) -> int:
    """``run(args)`` on the real photos, or on tiny synthetic ones with ``--smoke``; then publish."""
    if args.smoke:
        args.data = smoke_data()
    if not args.data.is_dir():
        raise RetinoError(f"no dataset at {args.data}: pass --data DIR (the eyepacs-dev photos in the lab layout)")
    return publish(run(args), print_table, args.json)


def prepared_copy(args, prepare: str) -> Path:
    """``args.data`` prepared as ``prepare`` (``python -m retino_utils.data preprocess --prepare``), written once
    under ``args.out`` (a rerun only checks it)."""
    from retino_utils.data.preprocess import preprocess_dataset

    size = 64 if args.smoke else PREPARED_SIZE
    copy = args.out / f"{prepare}-{size}px-photos"
    summary = preprocess_dataset(args.data, copy, size, prepare=prepare, progress=args.progress)
    if summary.failed:
        raise RetinoError(f"{len(summary.failed)} photos of {args.data} could not be read, e.g. {summary.failed[0]}")
    return copy


def device_name(device) -> str:
    """The GPU's name, or the CPU's with its cores and torch's threads: quoted next to every speed figure."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return f"{caps.get('cpu_name', 'cpu')} ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"


def smoke_data() -> Path:
    """A tiny synthetic dataset in the lab layout (what CI has when ../shared is absent)."""
    from retino_utils.synthetic import cached_dataset

    return cached_dataset(cache_root() / "benchmark-real-data-smoke", 48, 24, size=64)
