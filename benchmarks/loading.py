"""Loading at 512 px: what the uint8 cache needs for a whole dataset, and what the ``pil`` loader decodes.

A GPU training at 512 px must be fed as fast as it consumes. This prints:

1. the uint8 cache's size on disk (and in memory, when it is to stay in the page cache) for a dataset
   of ``--photos`` photos at ``--size`` px;
2. the images/s the ``pil`` loader (``DecodedImages``: ``load_resized`` in threads) reaches decoding
   real 512 px JPEGs here, with 1 thread and with one per core, and what one core gives; and the
   images/s of reading the same photos from the cache (gathering rows of the memmap);
3. beside them, what GPUs consume training at 512 px, from published figures (each with its source,
   as estimates), and how many such cores the ``pil`` loader would need to keep up.

The photos: ``../shared/data/clinical-ext-dev`` (camera photos of about 1024 px) prepared to 512 px by
``preprocess`` (as a user prepares theirs before training at 512 px), read several times over.

    python benchmarks/loading.py                    # 35,126 photos (the lab's EyePACS) at 512 px
    python benchmarks/loading.py --photos 3662      # APTOS
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retino_utils import data
from retino_utils.atomic import format_bytes
from retino_utils.data.preprocess import preprocess_dataset
from retino_utils.errors import RetinoError, run_cli
from retino_utils.paths import cache_root
from retino_utils.synthetic import cached_dataset

from _common import EXTERNAL_DATA, add_output_arguments, device_name, publish

NVIDIA_RN50 = ("NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md "
               "(1 GPU, 224 px, mixed precision)")
# ResNet-18 needs 1.81 GFLOPs a 224 px image against ResNet-50's 4.09 (torchvision's model tables).
RESNET18_FACTOR = 4.09 / 1.81
# Published training images/s of ResNet-50 at 224 px, scaled here by (224/512)^2 and RESNET18_FACTOR.
GPU_RN50_224 = {
    "A100": (2470, NVIDIA_RN50),
    "V100": (1200, NVIDIA_RN50),
    # No published T4 training figure: its inference (1,198 images/s, same README) divided by the V100's
    # ratio of inference to training there (3,382 / 1,200).
    "T4": (1198 / (3382 / 1200), NVIDIA_RN50 + ", derived from T4 inference"),
}


def gpu_consumption(size: int) -> dict:
    """Estimated training images/s at ``size`` px of each GPU, for ResNet-18 and ResNet-50."""
    scale = (224 / size) ** 2
    return {gpu: {"resnet50": rate * scale, "resnet18": rate * scale * RESNET18_FACTOR, "source": source}
            for gpu, (rate, source) in GPU_RN50_224.items()}


def photos_for_benchmark(args, folder: Path) -> Path:
    """512 px JPEGs as ``preprocess`` writes them: from the camera photos beside the project, or synthetic."""
    if args.smoke or not EXTERNAL_DATA.is_dir():
        source = cached_dataset(cache_root() / "benchmark-loading-synthetic", 24 if args.smoke else 200, 8,
                                size=2 * args.size)
    else:
        source = EXTERNAL_DATA
    summary = preprocess_dataset(source, folder, args.size, prepare="crop", progress=False)
    if summary.failed:
        raise RetinoError(f"{len(summary.failed)} photos of {source} could not be read, e.g. {summary.failed[0]}")
    return source


def rate(source, size: int, count: int, batch: int, repeats: int) -> float:
    """Median images/s of ``source.read`` over ``repeats`` passes through ``count`` photos in batches."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        order = rng.permutation(count)
        start = time.perf_counter()
        for first in range(0, count, batch):
            indices = order[first:first + batch]
            source.read(indices, np.empty((len(indices), size, size, 3), dtype=np.uint8))
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(args) -> dict:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        source = photos_for_benchmark(args, folder)
        index = data.read_split(folder, "train")
        jpeg_bytes = statistics.median(Path(p).stat().st_size for p in index.paths)
        decode = {}
        for threads in sorted({1, cores}):
            decoded = data.DecodedImages(index, args.size, threads)
            decode[threads] = rate(decoded, args.size, len(index), args.batch_size, args.repeats)
            decoded.pool.shutdown()
        cache = data.ImageCache.build(index, args.size, cache_dir=Path(tmp) / "cache", progress=False)
        cached = rate(cache, args.size, len(index), args.batch_size, args.repeats)
    per_photo = args.size * args.size * 3
    per_core = decode[cores] / cores
    gpus = gpu_consumption(args.size)
    for figures in gpus.values():
        figures["pil_cores_needed"] = {arch: figures[arch] / per_core for arch in ("resnet18", "resnet50")}
    return {"photos": args.photos, "size": args.size, "cache_bytes": args.photos * per_photo,
            "cache_bytes_per_photo": per_photo, "benchmark_photos": len(index), "source": str(source),
            "median_jpeg_bytes": jpeg_bytes, "cores": cores, "cpu": device_name(torch.device("cpu")),
            "pil_images_per_s": {str(k): v for k, v in decode.items()}, "pil_images_per_s_per_core": per_core,
            "cache_images_per_s": cached, "gpus": gpus}


def print_table(r: dict) -> None:
    print(f"\nthe uint8 cache of {r['photos']:,} photos at {r['size']} px: {format_bytes(r['cache_bytes'])} on disk "
          f"({format_bytes(r['cache_bytes_per_photo'])} a photo), as much memory to keep it in the page cache")
    print(f"decoding {r['benchmark_photos']} photos of {r['source']} prepared to {r['size']} px "
          f"(median JPEG {format_bytes(r['median_jpeg_bytes'])}) on {r['cpu']}, {r['cores']} cores:")
    for threads, value in r["pil_images_per_s"].items():
        print(f"  pil loader, {threads} thread(s): {value:.0f} images/s")
    print(f"  pil loader per core: {r['pil_images_per_s_per_core']:.0f} images/s; "
          f"the cache (memmap rows): {r['cache_images_per_s']:.0f} images/s")
    print(f"\n{'GPU (estimates)':<18}{'ResNet-18 img/s':>16}{'cores':>7}{'ResNet-50 img/s':>17}{'cores':>7}  "
          f"(cores: what the pil loader needs to keep up)")
    for gpu, g in r["gpus"].items():
        print(f"{gpu:<18}{g['resnet18']:>16.0f}{g['pil_cores_needed']['resnet18']:>7.1f}"
              f"{g['resnet50']:>17.0f}{g['pil_cores_needed']['resnet50']:>7.1f}")
    print(f"from ResNet-50 at 224 px in {NVIDIA_RN50} (T4: derived from its inference), x (224/{r['size']})^2; "
          f"ResNet-18 x {RESNET18_FACTOR:.2f} (GFLOPs)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=35_126, help="photos in the dataset to size the cache for")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="passes through the photos per measurement")
    add_output_arguments(parser, "a few synthetic photos at 64 px (for CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats, args.batch_size = 64, 1, 8
    return publish(measure(args), print_table, args.json)


if __name__ == "__main__":
    run_cli(main)
