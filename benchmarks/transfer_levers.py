"""Which preparation and which training levers carry a model to another camera: each judged twice.

Trains ResNet-18 from scratch with ``--recipe best-cpu`` as the levers were judged on (``BEFORE_SATURATION``:
without the saturation this study put into it) on the training photos of
``../shared/data/eyepacs-dev`` (lab split) once per variant, and judges every variant on two views:
its own validation split (10% of the training patients, an internal view: the source it learns from,
whose photos their publisher contrast-enhanced) and ``../shared/data/clinical-ext-dev`` (140 raw photos
of another camera and population, graded by ophthalmologists, never trained on: the external view),
graded as ``predict --preprocess`` grades new photos (the run's own preparation and cut points). The
test split is not read. Each figure has its 95% patient-bootstrap interval, and each variant its paired
difference to the variant it changes (same photos on both sides), internally and externally; a lever
that helps one view and hurts the other shows it.

Variants: the preparation of the photos (``graham``, the first one; ``retina``, each channel's local detail
scaled to one spread inside the retina; ``green``, the green channel's), then robustness levers on
``retina``: brightness/contrast, gamma, saturation, blur/sharpening, JPEG re-encoding, and all of them.

    python benchmarks/transfer_levers.py                           # every variant; hours on a 2-core CPU
    python benchmarks/transfer_levers.py --only graham retina --device cuda
    python benchmarks/transfer_levers.py --only retina+blur --folds 3   # 3-fold CV: internal view on every training photo

With ``--folds K`` the internal view is k-fold cross-validation over the training patients (``TrainConfig``'s
``folds``/``fold``): each variant is trained K times, each photo of the training split is graded by the run that
held it out, every figure is the mean of the folds' figures (each fold's model scored among its own photos) and
the bootstrap resamples patients across all folds; the external photos are graded by all K runs.

Runs are kept under ``--out``: an interrupted study resumes, a finished one reprints its table.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from retino_utils.errors import RetinoError, run_cli
from retino_utils.evaluation.results import load_run, signed_interval, with_interval
from retino_utils.predict.external import grade_set
from retino_utils.predict.predictor import Predictor
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig

from _common import BEFORE_SATURATION, EXTERNAL_DATA, parse_study, prepared_copy, real_data_parser, run_on_real_data
from cpu_levers import ValidationGrader, summarise

ROBUST = {"color": 0.3, "gamma": 0.4, "saturation": 0.5, "blur": 1.0, "jpeg": 30}


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    prepare: str
    settings: dict = dataclasses.field(default_factory=dict)  # over the recipe
    versus: str | None = None  # the variant it changes one thing of


VARIANTS = {
    "graham": Variant("best-cpu on Graham-normalised photos (the first preparation)", "graham"),
    "retina": Variant("prepared: each channel scaled to one spread in the retina", "retina", versus="graham"),
    "green": Variant("prepared: the green channel's detail, as grey", "green", versus="graham"),
    **{f"retina+{name}": Variant(f"retina + {name} {value}", "retina", {name: value}, "retina")
       for name, value in ROBUST.items()},
    "retina+robust": Variant("retina + all of: " + ", ".join(f"{k} {v}" for k, v in ROBUST.items()), "retina",
                             ROBUST, "retina"),
}


def study_variants(wanted) -> list[str]:
    """The variants asked for and the one each is compared with, in declaration order.

    Only the direct reference is added (``retina+jpeg`` brings ``retina``, not ``graham`` too): a lever's
    study does not retrain what the preparation's study already judged.
    """
    needed = set(wanted) | {VARIANTS[name].versus for name in wanted}
    return [name for name in VARIANTS if name in needed]


def variant_config(name: str, args, fold: int | None = None) -> TrainConfig:
    """The variant's training config; with ``--folds``, the run that validates on ``fold``."""
    variant = VARIANTS[name]
    # On the recipe as the variants were judged: the study stays reproducible, retina+saturation differs from retina.
    settings = {**BEFORE_SATURATION, **variant.settings}
    out = args.out / name
    if fold is not None:
        settings.update(folds=args.folds, fold=fold)
        out = args.out / f"{args.folds}-folds" / name / f"fold{fold}"
    if args.image_size:  # a quicker screen: one size throughout
        settings.update(image_size=args.image_size)
    if args.epochs:
        settings.update(epochs=args.epochs)
    if args.smoke:
        settings.update(epochs=2, image_size=32, batch_size=8, bootstrap=50)
    photos = prepared_copy(args, variant.prepare)
    return TrainConfig.with_recipe("best-cpu", data=str(photos), out=str(out), seed=args.seed,
                                   progress=args.progress, resume=True, device=args.device, **settings)


def external_scores(config: TrainConfig, external: Path) -> dict:
    """The run graded on every photo of ``external`` as ``predict --preprocess`` grades new photos."""
    table = grade_set(Predictor.from_run(config.out, config.device), external)
    return {"scores": table["score"].to_numpy(), "grades": table["pred_grade"].to_numpy(),
            "labels": table["true_grade"].to_numpy(), "names": table["name"].tolist()}


def stacked(parts: list[dict]) -> dict:
    """The folds' scores of one variant as one set, each row tagged with its fold (``summarise`` scores
    each fold's rows among themselves and averages)."""
    if len(parts) == 1:
        return parts[0]
    joined = {key: np.concatenate([part[key] for part in parts]) for key in ("scores", "grades", "labels")}
    return {**joined, "names": [name for part in parts for name in part["names"]],
            "folds": np.concatenate([np.full(len(part["labels"]), fold) for fold, part in enumerate(parts)])}


def run(args) -> dict:
    start = time.perf_counter()
    names = study_variants(args.only or VARIANTS)
    external = args.data if args.smoke else args.external  # smoke: the synthetic photos, raw, stand in
    if not external.is_dir():
        raise RetinoError(f"no external set at {external}: pass --external DIR (clinical-ext-dev)")
    folds = list(range(args.folds)) if args.folds else [None]
    internal, outside, minutes = {}, {}, {}
    for name in names:
        variant, inside_parts, outside_parts, minutes[name] = VARIANTS[name], [], [], 0.0
        for fold in folds:
            config = variant_config(name, args, fold)
            print(f"\n== {name}{'' if fold is None else f' (fold {fold} of {args.folds})'}: {variant.label} -> "
                  f"{config.out}", flush=True)
            fit(config)
            inside_parts.append(ValidationGrader(config).scores(frequencies=True))
            outside_parts.append(external_scores(config, external))
            minutes[name] += float(load_run(config.out).history["seconds"].sum() / 60)
        internal[name], outside[name] = stacked(inside_parts), stacked(outside_parts)
    rows = {}
    for name in names:
        variant = VARIANTS[name]
        reference = variant.versus if variant.versus in names else None
        rows[name] = {"label": variant.label, "prepare": variant.prepare, "settings": variant.settings,
                      "compared_with": reference, "training_minutes": minutes[name],
                      **{view: summarise(variant.label, scores[name], scores.get(reference), args.resamples)
                         for view, scores in (("internal", internal), ("external", outside))}}
    return {"data": str(args.data), "external": str(external), "recipe": "best-cpu", "footing": BEFORE_SATURATION,
            "variants": rows,
            "overrides": {"image_size": args.image_size, "epochs": args.epochs}, "folds": args.folds,
            "validation_photos": len(next(iter(internal.values()))["labels"]),
            "external_photos": len(next(iter(outside.values()))["labels"]) // len(folds),
            "minutes": (time.perf_counter() - start) / 60}


def print_table(results: dict) -> None:
    overrides = ", ".join(f"{k} {v}" for k, v in results["overrides"].items() if v) or "none"
    folds = results.get("folds")
    internal = (f"each of {folds} folds of the training patients graded by the run that did not train on it "
                f"({results['validation_photos']} photos in all" if folds else
                f"its validation split ({results['validation_photos']} photos")
    external = f"; each figure the mean of the {folds} folds' runs" if folds else ""
    footing = ", ".join(f"{k} {v}" for k, v in results.get("footing", {}).items()) or "the recipe as declared then"
    print(f"\n--recipe best-cpu (as judged on: {footing}; overridden: {overrides}) on {results['data']}; "
          f"internal: {internal}, cut at the "
          f"training grade frequencies); external: {results['external']} ({results['external_photos']} photos, "
          f"graded as predict --preprocess does){external}; the test split is not read; "
          f"{results['minutes']:.1f} minutes in all. vs: paired difference to the variant named")
    print(f"{'':<22}{'view':<10}{'min':>6} {'QWK':>22} {'vs':>24} {'referable AUC':>22} {'vs':>24}")
    for name, row in results["variants"].items():
        for view in ("internal", "external"):
            figures = row[view]
            versus = [signed_interval(figures[key]) if key in figures else "" for key in ("qwk_difference",
                                                                                          "auc_difference")]
            minutes = f"{row['training_minutes']:.1f}" if view == "internal" else ""
            print(f"{name if view == 'internal' else '':<22}{view:<10}{minutes:>6} "
                  f"{with_interval(figures['qwk'], figures['qwk_interval']):>22} {versus[0]:>24} "
                  f"{with_interval(figures['referable_auc'], figures['auc_interval']):>22} {versus[1]:>24}")
        if row["compared_with"]:
            print(f"{'':<22}(vs {row['compared_with']}, paired)")


def main(argv=None) -> int:
    parser = real_data_parser(__doc__.split("\n\n")[0], "transfer_levers",
                              "tiny synthetic data, 32 px, 2 epochs per variant, graded raw as the external set "
                              "(for CI)")
    parser.add_argument("--external", type=Path, default=EXTERNAL_DATA,
                        help="photos of another source, never trained on (default %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants (and the one each is compared with)")
    parser.add_argument("--image-size", type=int, help="train at this one size instead of the recipe's schedule")
    parser.add_argument("--epochs", type=int, help="instead of the recipe's 40")
    parser.add_argument("--folds", type=int, default=0,
                        help="k-fold cross-validation over the training patients: each variant trained once per "
                             "fold, judged on every training photo by the run that did not train on it (0 = the "
                             "validation split only)")
    return run_on_real_data(parse_study(parser, argv), run, print_table)


if __name__ == "__main__":
    run_cli(main)
