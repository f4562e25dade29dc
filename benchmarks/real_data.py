"""Model quality on real fundus photos: the reports' recipe against ours, from scratch, on a CPU budget.

Trains ResNet-18 from scratch through the engine on the lab split of ``../shared/data/eyepacs-dev``
(2,490 train / 608 test photos) twice: with the reference reports' recipe (cross entropy, SGD 1e-3,
flips) and with the engine's ``best-cpu`` recipe. Both train at the same resolution for as many
epochs as half the time budget affords (measured with a short probe before training), keep their
last epoch (no epoch is picked on the test split), and are scored once on the test split against
the majority-grade baseline.

    python benchmarks/real_data.py                      # 30 minutes in all on a 2-core CPU
    python benchmarks/real_data.py --budget-min 60 --json real.json

The epochs follow from the probe, so a busier machine trains fewer; ``--epochs 12 10`` repeats a
given plan exactly. Runs are kept under ``--out``: an interrupted benchmark resumes, a finished one
reprints its table.
The ``best-cpu`` settings were chosen on a validation split of the 2,490 training photos only
(then ``--holdout``, now the engine's ``--val-fraction``); see the README's performance section.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from _common import add_output_arguments, publish

from retino_utils import NUM_CLASSES, data
from retino_utils.config import RECIPES, TrainConfig
from retino_utils.device import resolve_device
from retino_utils.engine import evaluate, train_one_epoch
from retino_utils.errors import RetinoError, run_cli
from retino_utils.metrics import compute_metrics
from retino_utils.optim import build_optimizer
from retino_utils.paths import BUILD_DIR, SHARED_DATA_DIR, cache_root
from retino_utils.results import load_run
from retino_utils.synthetic import cached_dataset
from retino_utils.train import fit
from retino_utils.trainer import build_components

REAL_DATA = SHARED_DATA_DIR / "eyepacs-dev"
RECIPE_LABELS = {"reports": "reports' recipe (CE, SGD 1e-3, flips)", "best-cpu": "ours (--recipe best-cpu)"}
PROBE_BATCHES = 10


class _FirstBatches:
    """The first ``n`` batches of a loader, for timing a few steps with the engine's own loop."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, min(n, len(loader))

    def __len__(self):
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


def recipe_config(recipe: str, args, epochs: int) -> TrainConfig:
    return TrainConfig.with_recipe(
        recipe, data=str(args.data), out=str(args.out / f"{recipe}-{args.size}px-{epochs}ep"), arch="resnet18",
        epochs=epochs, image_size=args.size, batch_size=args.batch_size, best_metric="last",
        seed=args.seed, progress=args.progress, resume=True, device=args.device)


def seconds_per_epoch(config: TrainConfig) -> float:
    """Estimated wall time of one epoch: a few timed training and evaluation batches, scaled up."""
    parts = build_components(config, resolve_device(config.device))  # builds the caches fit reuses
    model, loss_fn, run_data = parts.model, parts.loss_fn, parts.data
    optimizer = build_optimizer(model.parameters(), config)
    common = dict(device=parts.device, bf16=parts.bf16, show_progress=False)
    train_one_epoch(model, loss_fn, optimizer, _FirstBatches(run_data.train_loader, 1), **common)  # warm-up
    trained = train_one_epoch(model, loss_fn, optimizer, _FirstBatches(run_data.train_loader, PROBE_BATCHES), **common)
    evaluated = evaluate(model, loss_fn, _FirstBatches(run_data.test_loader, PROBE_BATCHES), **common)
    # Every epoch evaluates the validation and test splits (regression tunes its cut points on validation).
    eval_images = len(run_data.test) + (len(run_data.val) if run_data.val is not None else 0)
    return len(run_data.train) * trained.seconds / trained.n + eval_images * evaluated.seconds / evaluated.n


def plan_epochs(args) -> dict[str, int]:
    """Epochs per recipe so that the two trainings share the budget equally."""
    if args.epochs:
        if len(args.epochs) not in (1, len(args.recipes)):
            raise RetinoError(f"--epochs takes one number, or one per recipe ({len(args.recipes)}), "
                              f"got {len(args.epochs)}")
        return dict(zip(args.recipes, args.epochs * len(args.recipes) if len(args.epochs) == 1 else args.epochs))
    share = args.budget_min * 60 / len(args.recipes)
    plan = {}
    for recipe in args.recipes:
        estimate = seconds_per_epoch(recipe_config(recipe, args, 1))
        plan[recipe] = max(1, min(args.max_epochs, math.floor(share / estimate)))
        print(f"{recipe}: about {estimate:.0f} s per epoch -> {plan[recipe]} epochs in {share / 60:.0f} minutes",
              flush=True)
    return plan


def majority_metrics(train_labels: np.ndarray, test_labels: np.ndarray) -> dict:
    majority = int(np.bincount(train_labels, minlength=NUM_CLASSES).argmax())
    return compute_metrics(test_labels, np.full_like(test_labels, majority))


def run(args) -> dict:
    train, test = data.read_split(args.data, "train"), data.read_split(args.data, "test")
    print(f"{args.data}: {len(train)} train / {len(test)} test photos; ResNet-18 from scratch at {args.size} px; "
          f"budget {args.budget_min:g} minutes", flush=True)
    start = time.perf_counter()
    plan = plan_epochs(args)
    results = {"data": str(args.data), "size": args.size, "budget_min": args.budget_min,
               "baseline": {"label": "majority grade", **majority_metrics(train.labels, test.labels)}, "runs": {}}
    for recipe, epochs in plan.items():
        config = recipe_config(recipe, args, epochs)
        print(f"\n== {RECIPE_LABELS.get(recipe, recipe)}: {epochs} epochs -> {config.out}", flush=True)
        fit(config)  # a finished run in the folder is reused as it is
        finished = load_run(config.out)
        results["runs"][recipe] = {**finished.metrics, "label": RECIPE_LABELS.get(recipe, recipe), "epochs": epochs,
                                   "settings": RECIPES[recipe], "loss_function": config.loss, "out": config.out,
                                   "training_minutes": finished.history["seconds"].sum() / 60}
    results["minutes"] = (time.perf_counter() - start) / 60
    return results


def print_table(results: dict) -> None:
    rows = [results["baseline"], *results["runs"].values()]
    width = max(len(r["label"]) for r in rows) + 2
    print(f"\ntest split of {results['data']} ({results['baseline']['n']} photos), {results['size']} px, "
          f"{results['minutes']:.1f} minutes in all")
    grades = "".join(f"{'rec' + str(g):>7}" for g in range(NUM_CLASSES))
    print(f"{'':<{width}}{'epochs':>7}{'acc':>8}{'QWK':>8}{'mF1':>7}{grades}{'refAUC':>8}")
    for r in rows:
        auc = r.get("referable_auc")
        recall = "".join(f"{v:>7.2f}" for v in r["recall"])
        print(f"{r['label']:<{width}}{r.get('epochs', ''):>7}{r['accuracy']:>8.1%}{r['qwk']:>8.3f}"
              f"{r['macro_f1']:>7.3f}{recall}{'' if auc is None else format(auc, '.3f'):>8}")
    for r in results["runs"].values():
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items()) or "the engine's defaults"
        print(f"{r['label']}: {settings}; loss {r['loss_function']}; trained {r['training_minutes']:.1f} minutes")


def smoke_data() -> Path:
    """A tiny synthetic dataset in the lab layout (what CI has when ../shared is absent)."""
    return cached_dataset(cache_root() / "benchmark-real-data-smoke", 48, 24, size=64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="dataset in the lab layout (default %(default)s)")
    parser.add_argument("--budget-min", type=float, default=30.0, help="minutes for the whole benchmark")
    parser.add_argument("--size", type=int, default=128, help="training resolution of both recipes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, nargs="+",
                        help="fixed epochs, one for all recipes or one per recipe, instead of what the budget affords")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPE_LABELS), choices=list(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=BUILD_DIR / "benchmarks" / "real_data",
                        help="run folders (kept, so an interrupted benchmark resumes)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_output_arguments(parser, "tiny synthetic data, 32 px, 12 seconds (for CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.size, args.batch_size, args.budget_min, args.max_epochs = smoke_data(), 32, 8, 0.2, 2
    if not args.data.is_dir():
        raise RetinoError(f"no dataset at {args.data}: pass --data DIR (the eyepacs-dev photos in the lab layout)")
    return publish(run(args), print_table, args.json)


if __name__ == "__main__":
    run_cli(main)
