"""``python -m retino_utils.data {validate,preprocess,stats,cache} ...``: dataset chores from the shell."""

from __future__ import annotations

import argparse
from typing import Sequence

from retino_utils.data.cache import ImageCache
from retino_utils.data.dataset import open_dataset
from retino_utils.data.layouts import LAYOUTS, SPLITS, read_split
from retino_utils.data.preprocess import PREPARATIONS, check_size, preprocess_dataset
from retino_utils.data.stats import channel_stats
from retino_utils.data.validate import validate_dataset
from retino_utils.errors import run_cli

LAYOUT_CHOICES = ("auto", *LAYOUTS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retino_utils.data",
        description="Dataset chores: validate a folder, preprocess a copy, channel stats, the decoded cache.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("validate", help="check labels and decode every image; exit 1 on any problem")
    _add_dataset_arguments(check)

    prep = commands.add_parser("preprocess", help="crop to the disc, pad to square, resize: a copy in the same layout")
    prep.add_argument("src", help="dataset folder to read (never modified)")
    prep.add_argument("dst", help="new folder to write; rerun the same command to resume")
    prep.add_argument("--size", type=int, default=512, help="output side in pixels (default 512)")
    prep.add_argument("--prepare", choices=list(PREPARATIONS), default="crop",
                      help="; ".join(f"{name}: {what}" for name, what in PREPARATIONS.items()) + " (default crop)")
    prep.add_argument("--graham", dest="prepare", action="store_const", const="graham", help="= --prepare graham")
    prep.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto")
    prep.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    stats = commands.add_parser("stats", help="per-channel mean/std of a split (cached)")
    _add_dataset_arguments(stats)
    stats.add_argument("--split", choices=("train", "test"), default="train")
    stats.add_argument("--size", type=int, default=None, help="resize to this side first (default: native size)")
    stats.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")

    cache = commands.add_parser("cache", help="decode both splits into the uint8 cache that training reads")
    _add_dataset_arguments(cache)
    cache.add_argument("--size", type=int, required=True, help="image side in pixels")
    cache.add_argument("--skip-bad", action="store_true", help="leave out images that validation finds bad")
    return parser


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="layouts without a test table (kaggle, aptos, ...): share of patients held out")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="layouts without a test table: seed of the held-out split")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"validate": _validate, "preprocess": _preprocess, "stats": _stats, "cache": _cache}[args.command](args)


def _split_kwargs(args: argparse.Namespace) -> dict:
    return {"layout": args.layout, "test_fraction": args.test_fraction, "split_seed": args.split_seed}


def _validate(args: argparse.Namespace) -> int:
    report = validate_dataset(args.root, workers=args.workers, **_split_kwargs(args))
    print(report.format())
    return 0 if report.ok else 1


def _preprocess(args: argparse.Namespace) -> int:
    check_size(args.size, "--size")
    summary = preprocess_dataset(args.src, args.dst, args.size, args.prepare, workers=args.workers, layout=args.layout)
    print(f"wrote {summary.written} images to {args.dst} ({summary.skipped} already there)")
    if summary.failed:
        print(f"{len(summary.failed)} source images could not be read:")
        print("\n".join(f"  {where}: {reason}" for where, reason in summary.failed[:20]))
        return 1
    return 0


def _stats(args: argparse.Namespace) -> int:
    index = read_split(args.root, args.split, **_split_kwargs(args))
    stats = channel_stats(index, args.size, cache=not args.no_cache, workers=args.workers)
    print(f"{index.root} ({index.layout} layout), {args.split} split")
    print(stats.format())
    return 0


def _cache(args: argparse.Namespace) -> int:
    for split in SPLITS:
        index = open_dataset(args.root, split, skip_bad=args.skip_bad, **_split_kwargs(args)).index
        cache = ImageCache.build(index, args.size, workers=args.workers)
        print(f"{split}: {len(cache)} images at {args.size} px in {cache.path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
