"""Model quality on real fundus photos: the reports' recipe against ours, from scratch, on a CPU.

Trains ResNet-18 from scratch through the engine on the lab split of ``../shared/data/eyepacs-dev``
(2,490 train / 608 test photos, 10% of the training patients held out for validation) with the
reference reports' recipe (cross entropy, SGD 1e-3, flips; 30 epochs at 128 px, last epoch kept) and
with the engine's ``best-cpu`` recipe as it declares itself (its epochs, sizes and validation-chosen
checkpoint), on the photos as they are and on prepared copies (``python -m retino_utils.data preprocess
--prepare graham|retina``, written once under ``--out``), and scores each once on the test split, with 95%
patient-bootstrap intervals, against always answering the majority grade; and on every photo of
``../shared/data/clinical-ext-dev`` (another camera, never trained on), graded as ``predict --preprocess``
grades new photos, with the paired differences between the recipes on both.

    python benchmarks/real_data.py                      # 3-4 hours on a 2-core CPU (40-epoch runs ~45-60 min)
    python benchmarks/real_data.py --json real.json

Runs are kept under ``--out``: an interrupted benchmark resumes, a finished one reprints its table.
The ``best-cpu`` settings and the normalisation were chosen on the validation split
(``benchmarks/cpu_levers.py``), its saturation on the validation folds and on clinical-ext-dev
(``benchmarks/transfer_levers.py``): for the recipe with saturation, clinical-ext-dev is a validation view.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retino_utils import NUM_CLASSES, data
from retino_utils.errors import RetinoError, run_cli
from retino_utils.evaluation.metrics import compute_metrics
from retino_utils.evaluation.record import RunRecord, Scores
from retino_utils.evaluation.results import ece_text, load_run, signed_interval, with_interval
from retino_utils.evaluation.uncertainty import paired_difference
from retino_utils.predict.external import validate
from retino_utils.train.cli import fit
from retino_utils.train.config import RECIPES, TrainConfig

from _common import BEFORE_SATURATION, EXTERNAL_DATA, prepared_copy, real_data_parser, run_on_real_data


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the table: a recipe trained on the photos as they are or on a prepared copy of them."""

    recipe: str
    label: str
    prepare: str | None = None  # ``preprocess --prepare`` of the copy it trains on; None: the photos as they are
    overrides: dict = dataclasses.field(default_factory=dict)  # recipe settings this entry changes

    @property
    def settings(self) -> dict:
        """The recipe's settings as this entry trains them."""
        return {**RECIPES[self.recipe], **self.overrides}


ENTRIES = {
    "reports": Entry("reports", "reports' recipe (CE, SGD 1e-3, flips)"),
    "best-cpu": Entry("best-cpu", "ours (--recipe best-cpu)"),
    "best-cpu-graham": Entry("best-cpu", "ours on Graham-normalised photos", prepare="graham"),
    "best-cpu-retina": Entry("best-cpu", "ours on photos prepared as retina", prepare="retina"),
    # The recipe before saturation joined it: what the lever, chosen on clinical-ext-dev, changes.
    "best-cpu-retina-no-saturation": Entry("best-cpu", "ours on retina photos without saturation (the previous "
                                           "recipe)", prepare="retina", overrides=BEFORE_SATURATION),
}
# (a, b): a minus b on the same photos, when both ran.
PAIRS = (("best-cpu-graham", "best-cpu"), ("best-cpu-retina", "best-cpu-graham"),
         ("best-cpu-retina", "best-cpu-retina-no-saturation"))


def entry_config(name: str, args) -> TrainConfig:
    """Our recipe as it declares itself; the reports' one for a fixed length at 128 px (their resolution,
    512 px, is out of a CPU's reach), keeping its last epoch."""
    entry = ENTRIES[name]
    settings = dict(arch="resnet18", seed=args.seed, progress=args.progress, resume=True, device=args.device,
                    **entry.overrides)
    if entry.recipe == "reports":
        settings.update(epochs=args.reports_epochs, image_size=128, best_metric="last")
    if args.smoke:
        settings.update(epochs=2, image_size=32, batch_size=8, bootstrap=100)
    photos = prepared_copy(args, entry.prepare) if entry.prepare else args.data
    config = TrainConfig.with_recipe(entry.recipe, data=str(photos), **settings)
    return dataclasses.replace(config, out=str(args.out / f"{name}-{config.image_size}px-{config.epochs}ep"))


def majority_scores(train_labels: np.ndarray, test_labels: np.ndarray) -> Scores:
    majority = int(np.bincount(train_labels, minlength=NUM_CLASSES).argmax())
    return Scores(**compute_metrics(test_labels, np.full_like(test_labels, majority)))


def run(args) -> dict:
    train, test = data.read_split(args.data, "train"), data.read_split(args.data, "test")
    print(f"{args.data}: {len(train)} train / {len(test)} test photos; ResNet-18 from scratch", flush=True)
    start = time.perf_counter()
    external = args.data if args.smoke else args.external  # smoke: the synthetic photos, raw, stand in
    if not external.is_dir():
        print(f"no external set at {external}: only the test split is scored", flush=True)
        external = None
    tables: dict[str, pd.DataFrame] = {}
    results = {"data": str(args.data), "external": str(external) if external else None,
               "baseline": {"label": "majority grade", "scores": majority_scores(train.labels, test.labels).to_dict()},
               "runs": {}}
    for name in args.runs:
        entry, config = ENTRIES[name], entry_config(name, args)
        print(f"\n== {entry.label}: {config.epochs} epochs -> {config.out}", flush=True)
        fit(config)  # a finished run in the folder is reused as it is
        finished = load_run(config.out)
        results["runs"][name] = {"record": finished.metrics.to_dict(), "label": entry.label, "epochs": config.epochs,
                                 "settings": entry.settings, "prepare": entry.prepare, "out": config.out,
                                 "sizes": config.size_stages(), "training_minutes": finished.history["seconds"].sum() / 60}
        if external is not None:
            checked = validate(finished, "external", external, args.device)
            tables[name] = checked.table
            results["runs"][name]["external"] = checked.metrics.to_dict()
            results["runs"][name]["external_change"] = checked.drop  # external minus internal, unpaired
    ran = [(a, b) for a, b in PAIRS if a in results["runs"] and b in results["runs"]]
    results["differences"] = {f"{a} - {b}": paired_on_test(results["runs"][a]["out"], results["runs"][b]["out"])
                              for a, b in ran}
    results["external_differences"] = {f"{a} - {b}": paired(tables[a], tables[b]) for a, b in ran if tables}
    results["minutes"] = (time.perf_counter() - start) / 60
    return results


def paired_on_test(run_a: str, run_b: str) -> dict:
    """Run a minus run b on the same test photos, with paired patient-bootstrap intervals."""
    a, b = (pd.read_csv(Path(run) / "predictions.csv") for run in (run_a, run_b))
    if a["name"].tolist() != b["name"].tolist():
        raise RetinoError(f"{run_a} and {run_b} graded different test photos: no paired difference")
    return paired(a, b)


def paired(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Grades a minus grades b of the same photos (tables with name, true_grade, pred_grade, referable_score)."""
    return paired_difference(a["true_grade"], a["pred_grade"], b["pred_grade"], a["referable_score"],
                             b["referable_score"], a["name"].tolist())


def print_table(results: dict) -> None:
    baseline = Scores.from_dict(results["baseline"]["scores"], "the majority baseline")
    records = {name: RunRecord.from_dict(r["record"], f"run {name}") for name, r in results["runs"].items()}
    rows = [(results["baseline"], baseline), *((r, records[name]) for name, r in results["runs"].items())]
    width = max(len(r["label"]) for r, _ in rows) + 2
    print(f"\ntest split of {results['data']} ({baseline.n} photos), scored once; "
          f"{results['minutes']:.1f} minutes in all")
    grades = "".join(f"{'rec' + str(g):>6}" for g in range(NUM_CLASSES))
    print(f"{'':<{width}}{'epochs':>7}{'kept':>5}{'acc [95% CI]':>22}{'QWK [95% CI]':>24}{'mF1':>7}{grades}"
          f"{'refAUC [95% CI]':>24}")
    for r, m in rows:
        recall = "".join(f"{v:>6.2f}" for v in m.recall)
        kept = m.best_epoch if isinstance(m, RunRecord) else ""
        print(f"{r['label']:<{width}}{r.get('epochs', ''):>7}{kept:>5}"
              f"{with_interval(m.accuracy, m.interval('accuracy'), '.1%'):>22}"
              f"{with_interval(m.qwk, m.interval('qwk')):>24}{m.macro_f1:>7.3f}{recall}"
              f"{'' if m.referable_auc is None else with_interval(m.referable_auc, m.interval('referable_auc')):>24}")
    figures = ("accuracy", "qwk", "referable_auc")
    for pair, difference in results.get("differences", {}).items():
        print(f"{pair}, paired on the same test photos: "
              + ", ".join(f"{figure} {signed_interval(difference[figure])}" for figure in figures))
    if results.get("external"):
        print(f"\nexternal: {results['external']} (every photo, graded as predict --preprocess does; never trained "
              f"on); the screening threshold is the run's, chosen on its validation split")
        for name, r in results["runs"].items():
            m = Scores.from_dict(r["external"], f"run {name} (external)")
            target = m.screening.point("target")
            point = (f"; at its 87%-sensitivity threshold: sensitivity {target['sensitivity']:.1%}, specificity "
                     f"{target['specificity']:.1%}" if target else "")
            print(f"{r['label']:<{width}} accuracy {with_interval(m.accuracy, m.interval('accuracy'), '.1%')}, "
                  f"QWK {with_interval(m.qwk, m.interval('qwk'))}, referable AUC "
                  f"{with_interval(m.referable_auc, m.interval('referable_auc'))}{point}")
            change = r.get("external_change")
            if change:
                print(f"{'':<{width}} external minus internal (unpaired): "
                      + ", ".join(f"{figure} {signed_interval(change[figure])}" for figure in figures))
            for where, scores in (("internal", records[name]), ("external", m)):
                calibration = scores.screening.calibration
                if calibration:
                    print(f"{'':<{width}} ECE {where} (calibrated on validation): {ece_text(calibration['calibrated'])}")
        for pair, difference in results.get("external_differences", {}).items():
            print(f"{pair}, paired on the same external photos: "
                  + ", ".join(f"{figure} {signed_interval(difference[figure])}" for figure in figures))
    for name, r in results["runs"].items():
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items()) or "the engine's defaults"
        sizes = " -> ".join(f"{size} px x {epochs}" for size, epochs in r["sizes"])
        photos = f"photos prepared as {r['prepare']}" if r.get("prepare") else "photos as they are"
        print(f"{r['label']}: {settings}; {photos}; {sizes}; kept epoch {records[name].best_epoch} "
              f"({records[name].select_on}); "
              f"trained {r['training_minutes']:.1f} minutes")


def main(argv=None) -> int:
    parser = real_data_parser(__doc__.split("\n\n")[0], "real_data", "tiny synthetic data, 32 px, 2 epochs (for CI)")
    parser.add_argument("--reports-epochs", type=int, default=30, help="epochs of the reports' recipe at 128 px")
    parser.add_argument("--runs", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    parser.add_argument("--external", type=Path, default=EXTERNAL_DATA,
                        help="photos of another source, never trained on, also graded (default %(default)s)")
    return run_on_real_data(parser.parse_args(argv), run, print_table)


if __name__ == "__main__":
    run_cli(main)
