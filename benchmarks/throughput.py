"""Training speed: the reference reports' input pipeline against the engine's, and the ceiling.

For each architecture, at one resolution, on the same images and device, interleaving repeats:

1. reference: a Dataset opening each JPEG with PIL per item, Resize + random flips + ToTensor +
   Normalize, a DataLoader, fp32, NCHW (what the reports wrote);
2. ours: the engine's default path: the decoded uint8 cache, batch-level flips and normalisation
   on the device, bf16 autocast + channels_last where the hardware has native bf16 (fp32 +
   channels_last elsewhere);
3. ceiling: the training step alone on a batch already on the device, same precision as 2.
4. with ``--compile``, instead of 1: 2 again with the model ``torch.compile``d, timed in the same
   rounds, and the seconds its first steps took beyond two compiled steps (the compilation).

Prints images/s (medians), the speed-up 2/1 and the efficiency 2/3, or with ``--compile`` the
speed-up 4/2 and after how many training images compiling has paid for itself; ``--json`` writes them.

    python benchmarks/throughput.py                  # 128 px on a CPU, 512 px on a GPU
    python benchmarks/throughput.py --size 224 --archs resnet18 --json out.json
    python benchmarks/throughput.py --compile        # eager against compiled, in one run
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time

# Compile from cold, as a user's first run does: Inductor's on-disk cache would otherwise hide the cost. The
# cold cache is this run's own and goes with it (each run would otherwise leave one in the temporary folder).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="throughput-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from retino_utils import data
from retino_utils.paths import cache_root
from retino_utils.synthetic import cached_dataset
from retino_utils.train.device import PRECISION_LABELS, autocast, resolve_device, resolve_precision, use_channels_last

from _common import REAL_DATA, add_output_arguments, device_name, publish


class ReportsDataset(Dataset):
    """The reports' per-item pipeline (plus a Resize, so every pipeline trains at the same size)."""

    def __init__(self, index: "data.SplitIndex", size: int):
        self.paths, self.labels = index.paths, index.labels
        self.transform = T.Compose([
            T.Resize((size, size)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor(),
            T.Normalize(data.REPORT_MEAN, data.REPORT_STD),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), int(self.labels[i])


def endless(loader):
    while True:
        yield from loader


class Pipeline:
    """A model, its optimizer, and the batches it trains on; ``rate`` times ``steps`` training steps."""

    def __init__(self, name, arch, batches, device, precision, channels_last, compiled=False):
        torch.manual_seed(0)
        self.name, self.device, self.precision = name, device, precision
        self.model = getattr(torchvision.models, arch)(num_classes=5).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        if compiled:
            self.model = torch.compile(self.model)
        self.batches = batches

    def step(self) -> int:
        x, y = next(self.batches)[:2]
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            loss = F.cross_entropy(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return len(y)

    def warm_up(self) -> float:
        """Seconds of the first two steps: allocations, kernel selection and, when compiled, compilation."""
        start = time.perf_counter()
        self.step()
        self.step()
        _sync(self.device)
        return time.perf_counter() - start

    def rate(self, steps: int) -> float:
        self.step()  # the first batch after a switch pays for cache misses and allocator work
        _sync(self.device)
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            images += self.step()
        _sync(self.device)
        return images / (time.perf_counter() - start)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_for_benchmark(smoke: bool) -> tuple[Path, str]:
    """The real eyepacs-dev photos when they are beside the project, synthetic ones otherwise."""
    if REAL_DATA.is_dir() and not smoke:
        return REAL_DATA, "eyepacs-dev (real JPEGs, 256 px)"
    n = 64 if smoke else 600
    folder = cached_dataset(cache_root() / f"benchmark-synthetic-{n}", n, 8, size=256)
    return folder, f"synthetic ({n} JPEGs, 256 px)"


def measure(args) -> dict:
    device = resolve_device(args.device)
    size = args.size or (512 if device.type == "cuda" else 128)
    precision, channels_last = resolve_precision(device, args.precision), use_channels_last(device)
    root, source = images_for_benchmark(args.smoke)
    index = data.read_split(root, "train")
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = data.ImageCache.build(index, size, cache_dir=cache_dir, progress=False)
        cache_rate = len(index) / (time.perf_counter() - start)
        print(f"{source}: {len(index)} images; cache built at {cache_rate:.0f} images/s; {device}, {size} px, "
              f"batch {args.batch_size}; ours in {PRECISION_LABELS[precision]}"
              f"{' + channels_last' if channels_last else ''}{'; eager and torch.compile' if args.compile else ''}",
              flush=True)
        results = {"device": str(device), "device_name": device_name(device), "images": source,
                   "size": size, "batch_size": args.batch_size, "precision": precision, "channels_last": channels_last,
                   "compile": args.compile,
                   "cache_build_images_per_s": cache_rate, "archs": {}}
        mean, std = data.normalization("report")
        for arch in args.archs:
            ours_loader = data.BatchLoader(cache, args.batch_size, shuffle=True, augment=True, mean=mean, std=std,
                                           device=device, channels_last=channels_last, drop_last=True)
            fixed = next(iter(ours_loader))
            pipelines = [Pipeline("ours", arch, endless(ours_loader), device, precision, channels_last),
                         Pipeline("ceiling", arch, itertools.repeat(fixed), device, precision, channels_last)]
            if args.compile:
                # Without the reference: once this process had compiled, the reference's PIL pipeline ran 40x
                # slower (1.9 images/s), which says nothing about either. Compiled first, before loader threads.
                pipelines.insert(0, Pipeline("compiled", arch, endless(ours_loader), device, precision,
                                             channels_last, compiled=True))
            else:
                reference_loader = DataLoader(ReportsDataset(index, size), batch_size=args.batch_size, shuffle=True,
                                              num_workers=args.reference_workers, drop_last=True)
                pipelines.insert(0, Pipeline("reference", arch, endless(reference_loader), device, False, False))
            warm_up = {p.name: p.warm_up() for p in pipelines}
            rates = {p.name: [] for p in pipelines}
            for _ in range(args.repeats):
                for pipeline in pipelines:  # interleaved, so drifts of a noisy machine hit all of them alike
                    rates[pipeline.name].append(pipeline.rate(args.steps))
            medians = {name: statistics.median(values) for name, values in rates.items()}
            figures = {**{f"{k}_images_per_s": v for k, v in medians.items()},
                       "efficiency": medians["ours"] / medians["ceiling"], "repeats": rates}
            if args.compile:
                first_steps = 2 * args.batch_size / medians["compiled"]  # what they take once compiled
                figures.update(compile_payback(warm_up["compiled"] - first_steps, medians["ours"],
                                               medians["compiled"]))
            else:
                figures["speedup"] = medians["ours"] / medians["reference"]
            results["archs"][arch] = figures
            print(f"  {arch}: " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()) + " images/s", flush=True)
    return results


def compile_payback(compile_s: float, eager_rate: float, compiled_rate: float) -> dict:
    """The compiled speed-up and how many training images it takes to earn back the compilation."""
    saved_per_image = 1 / eager_rate - 1 / compiled_rate
    return {"compile_s": compile_s, "compile_speedup": compiled_rate / eager_rate,
            "payback_images": compile_s / saved_per_image if saved_per_image > 0 else None}


def print_table(results: dict) -> None:
    print(f"\ntraining throughput, {results['device_name']}, {results['size']} px, batch {results['batch_size']}")
    if results["compile"]:
        print(f"{'model':<10}{'eager':>10}{'compiled':>10}{'speed-up':>10}{'compile s':>11}{'pays back after':>22}")
        for arch, r in results["archs"].items():
            payback = "never" if r["payback_images"] is None else f"{r['payback_images']:,.0f} images"
            print(f"{arch:<10}{r['ours_images_per_s']:>10.1f}{r['compiled_images_per_s']:>10.1f}"
                  f"{r['compile_speedup']:>9.2f}x{r['compile_s']:>11.1f}{payback:>22}")
    else:
        print(f"{'model':<10}{'reference':>12}{'ours':>10}{'ceiling':>10}{'ours/ref':>10}{'ours/ceil':>11}")
        for arch, r in results["archs"].items():
            print(f"{arch:<10}{r['reference_images_per_s']:>12.1f}{r['ours_images_per_s']:>10.1f}"
                  f"{r['ceiling_images_per_s']:>10.1f}{r['speedup']:>9.2f}x{r['efficiency']:>11.2f}")
    print(f"(images/s, medians of interleaved repeats; cache build {results['cache_build_images_per_s']:.0f} images/s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="training resolution (default 128 on a CPU, 512 on a GPU)")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per pipeline")
    parser.add_argument("--reference-workers", type=int, default=0,
                        help="DataLoader workers of the reference pipeline (the reports used the default, 0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                        help="of ours and the ceiling: auto = bf16 autocast where the hardware has native bf16")
    parser.add_argument("--compile", action="store_true", help="time ours torch.compiled against ours eager (instead of the reference)")
    add_output_arguments(parser, "a few steps at 32 px on synthetic images (for CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.archs, args.steps, args.repeats, args.batch_size = 32, ["resnet18"], 2, 3, 8
    return publish(measure(args), print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
