"""Grade new photos with a trained run, and show where it looks.

``python -m retino_utils.predict RUN_DIR INPUT --out grades.csv [--tta] [--cam DIR] [--preprocess
[--graham]] [--batch-size B] [--device D]``; in Python ``Predictor.from_run(RUN_DIR)(photos)``.

It uses what the run learned and never what the new photos look like: the architecture and image
size of the run's config, the normalisation statistics of its training split, its kept checkpoint
(chosen on validation) and regression cut points, and the screening threshold chosen on its
validation split. INPUT is a folder of photos, a text file of paths (one a line), or a dataset in
one of the three layouts, whose test split (``--split``) is then also scored against its labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from . import GRADES
from .atomic import atomic_path, write_json
from .cam import grad_cam, overlay, upsample
from .checkpoint import load_checkpoint, scored_weights
from .config import load_config
from .data import BatchLoader, SplitIndex, detect_layout, read_split
from .data.images import ImageSource, decode_problem, load_rgb, load_resized, square_resize
from .data.layouts import IMAGE_EXTENSIONS
from .data.preprocess import copy_settings, is_graham_copy, prepared_photo
from .device import resolve_device, use_bf16, use_channels_last
from .engine import evaluate, predict_grades, referable_scores
from .errors import RetinoError, run_cli
from .eyes import fuse_eyes
from .metrics import compute_metrics
from .models import build_model
from .progress import progress
from .results import with_interval
from .screening import operating_points
from .uncertainty import N_RESAMPLES, intervals

PREPROCESS_SIZE = 512  # the side `data preprocess` writes by default (for runs not trained on such a copy)


class _Photos:
    """Photos (paths or PIL images) decoded as the run's training pipeline decoded its own."""

    def __init__(self, items: Sequence[ImageSource], image_size: int, preprocess: bool, graham: bool,
                 preprocess_size: int):
        self.items, self.image_size = list(items), image_size
        self.preprocess, self.graham, self.preprocess_size = preprocess, graham, preprocess_size
        self.labels = np.zeros(len(self.items), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, i: int) -> np.ndarray:
        if not self.preprocess:
            return load_resized(self.items[i], self.image_size)
        size = self.preprocess_size
        photo = prepared_photo(load_rgb(self.items[i], draft_size=2 * size), size, self.graham)
        return np.array(square_resize(photo, self.image_size))

    def read(self, indices: np.ndarray, out: np.ndarray) -> None:
        for k, i in enumerate(indices.tolist()):
            out[k] = self.pixels(i)


@dataclass
class Predictor:
    """A trained run, ready to grade photos: ``predictor(photos)`` returns one row per photo."""

    run_dir: Path
    model: torch.nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cut_points: list[float] | None
    refer_threshold: float | None  # on the referable score, chosen on the run's validation split
    device: torch.device
    bf16: bool
    channels_last: bool
    batch_size: int
    metrics: dict
    fuse_eyes: float = 0.0  # the run's weight of a patient's other eye, for photos named <patient>_left/right
    preprocess_size: int = PREPROCESS_SIZE  # --preprocess writes photos this big: the run's training copy's side

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", batch_size: int | None = None,
                 checkpoint: str = "best.pt") -> "Predictor":
        run_dir = Path(run_dir)
        if not (run_dir / "metrics.json").is_file():
            raise RetinoError(f"{run_dir} holds no finished run (no metrics.json): pass a run folder that "
                              f"training completed")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = load_config(run_dir / "config.yaml")
        target = resolve_device(device if device != "auto" else config.device)
        model = build_model(config.arch, None, num_classes=1 if config.is_regression else len(GRADES),
                            impl=config.impl)
        model.load_state_dict(scored_weights(load_checkpoint(run_dir / checkpoint)))
        channels_last = use_channels_last(target)
        model = model.to(target, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
        target_point = metrics.get("screening", {}).get("operating_points", {}).get("target")
        training_copy = copy_settings(config.data)
        return cls(run_dir, model, config.image_size, tuple(metrics["normalization"]["mean"]),
                   tuple(metrics["normalization"]["std"]), metrics.get("thresholds"),
                   target_point["threshold"] if target_point else None, target, use_bf16(target, config.precision),
                   channels_last, batch_size or 2 * config.batch_size, metrics, config.fuse_eyes,
                   training_copy.size if training_copy else PREPROCESS_SIZE)

    def loader(self, photos) -> BatchLoader:
        return BatchLoader(photos, self.batch_size, shuffle=False, augment=False, mean=self.mean, std=self.std,
                           device=self.device, channels_last=self.channels_last)

    def __call__(self, photos: Sequence[ImageSource], tta: bool = False, preprocess: bool = False,
                 graham: bool = False, show_progress: bool = False) -> pd.DataFrame:
        """One row per photo: grade, class probabilities (or the regression score), referable score, refer."""
        source = _Photos(photos, self.image_size, preprocess, graham, self.preprocess_size)
        result = evaluate(self.model, None, self.loader(source), device=self.device, bf16=self.bf16, tta=tta,
                          show_progress=show_progress, desc="grading")
        names = [Path(p).stem if isinstance(p, (str, Path)) else "" for p in photos]
        outputs = fuse_eyes(result.outputs, names, self.fuse_eyes)
        table = pd.DataFrame({"pred_grade": predict_grades(outputs, self.cut_points)})
        if outputs.ndim == 1:
            table["score"] = outputs.numpy()
        else:
            probs = torch.softmax(outputs.double(), 1).numpy()
            for grade in GRADES:
                table[f"p{grade}"] = probs[:, grade]
        table["referable_score"] = referable_scores(outputs)
        table["refer"] = (table["referable_score"] >= self.refer_threshold) if self.refer_threshold is not None \
            else pd.NA
        return table

    def cams(self, photos: Sequence[ImageSource], target: str = "grade", preprocess: bool = False,
             graham: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Each photo as the model saw it (N, S, S, 3 uint8) and its Grad-CAM (N, S, S in [0, 1])."""
        source = _Photos(photos, self.image_size, preprocess, graham, self.preprocess_size)
        seen = np.zeros((len(source), self.image_size, self.image_size, 3), dtype=np.uint8)
        source.read(np.arange(len(source)), seen)
        decoded = _Decoded(seen)  # the batches below reuse these pixels instead of decoding again
        loader = self.loader(decoded)
        heat = np.zeros(seen.shape[:3], dtype=np.float32)
        for start in range(0, len(seen), self.batch_size):
            batch = np.arange(start, min(start + self.batch_size, len(seen)))
            heat[batch] = upsample(grad_cam(self.model, loader.batch(batch)[0], target).cpu(), self.image_size)
        return seen, heat


class _Decoded:
    """Photos already decoded (N, S, S, 3 uint8), as a batch source."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.image_size = pixels.shape[1]
        self.labels = np.zeros(len(pixels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pixels)

    def read(self, indices: np.ndarray, out: np.ndarray) -> None:
        out[:] = self.pixels[indices]


# -- inputs --------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    names: list[str]
    paths: list[Path]
    labels: np.ndarray | None  # the dataset's grades, when INPUT is a dataset


def read_inputs(source: str | Path, split: str = "test") -> Inputs:
    """A folder of photos, a text file of paths, or a dataset (its ``split``, with labels)."""
    source = Path(source)
    if source.is_file():
        base = source.parent
        lines = [line.split(",")[0].strip() for line in source.read_text(encoding="utf-8-sig").splitlines()]
        paths = [Path(line) if Path(line).is_absolute() else base / line for line in lines
                 if line and line.lower() != "path"]
        if not paths:
            raise RetinoError(f"{source} lists no photos: give one path per line")
        return Inputs([p.stem for p in paths], paths, None)
    if not source.is_dir():
        raise RetinoError(f"{source} does not exist: pass a folder of photos, a text file of paths, or a dataset")
    try:
        detect_layout(source)
    except RetinoError:
        photos = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not photos:
            raise RetinoError(f"{source} holds no photos ({', '.join(IMAGE_EXTENSIONS)}) and no dataset layout") from None
        return Inputs([p.stem for p in photos], photos, None)
    index: SplitIndex = read_split(source, split)
    return Inputs(list(index.names), list(index.paths), index.labels)


def normalisation_mismatch(run_dir: Path, photos: Sequence[Path], graham: bool) -> str | None:
    """A note when the photos to grade and the run's training photos differ in Ben Graham's normalisation
    (a copy made by ``preprocess --graham`` holds its photos in its root or in ``images/``)."""
    trained_on = Path(load_config(run_dir / "config.yaml").data)
    trained = is_graham_copy(trained_on)
    given = graham or any(is_graham_copy(folder) for photo in photos[:1] for folder in Path(photo).parents[:2])
    if trained and not given:
        return (f"note: {run_dir} learned from Graham-normalised photos ({trained_on}) and these are not: add "
                f"--preprocess --graham for camera photos, or grade a copy made by "
                f"`python -m retino_utils.data preprocess --graham`")
    if given and not trained:
        return (f"note: {run_dir} learned from photos without Graham's normalisation ({trained_on}); normalised "
                f"photos are unlike anything it saw: drop --graham, or grade the photos as they are")
    return None


def score_against_labels(table: pd.DataFrame, predictor: Predictor) -> dict:
    """The metrics training reports, with the run's own bootstrap settings and screening thresholds."""
    y_true, y_pred = table["true_grade"].to_numpy(), table["pred_grade"].to_numpy()
    score, names = table["referable_score"].to_numpy(), table["name"].tolist()
    config = predictor.metrics.get("config", {})
    resampling = {"n_resamples": config.get("bootstrap") or N_RESAMPLES, "seed": config.get("seed", 0)}
    metrics = compute_metrics(y_true, y_pred, referable_score=score)
    metrics["intervals"] = intervals(y_true, y_pred, score, names, **resampling)
    thresholds = {name: point["threshold"] for name, point in
                  predictor.metrics.get("screening", {}).get("operating_points", {}).items()}
    metrics["screening"] = {"operating_points": operating_points(thresholds, y_true, score, names, **resampling)}
    return metrics


# -- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retino_utils.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished training run (metrics.json, best.pt, config.yaml)")
    parser.add_argument("input", type=Path, help="a folder of photos, a text file of paths, or a dataset")
    parser.add_argument("--out", type=Path, required=True, help="CSV of grades to write")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="dataset input: which split")
    parser.add_argument("--tta", action="store_true", help="average over the four flips")
    parser.add_argument("--cam", type=Path, help="folder for one Grad-CAM overlay PNG per photo")
    parser.add_argument("--cam-target", default="grade", choices=("grade", "referable"),
                        help="what the map explains: the predicted grade or the referable score")
    parser.add_argument("--preprocess", action="store_true",
                        help="crop the disc and resize as `data preprocess` does (raw camera photos), at the side "
                             "of the run's training copy if it trained on one, else 512")
    parser.add_argument("--graham", action="store_true", help="with --preprocess: Ben Graham's colour normalisation")
    parser.add_argument("--batch-size", type=int, help="photos per batch (default: the run's evaluation batch)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.graham and not args.preprocess:
        raise RetinoError("--graham applies to --preprocess: add --preprocess (or drop --graham)")
    predictor = Predictor.from_run(args.run_dir, args.device, args.batch_size)
    inputs = read_inputs(args.input, args.split)
    if note := normalisation_mismatch(args.run_dir, inputs.paths, args.graham):
        print(note, file=sys.stderr)
    problems = {i: reason for i, path in enumerate(progress(inputs.paths, desc="checking", unit="img"))
                if (reason := decode_problem(path))}
    good = [i for i in range(len(inputs.paths)) if i not in problems]
    table = predictor([inputs.paths[i] for i in good], tta=args.tta, preprocess=args.preprocess,
                      graham=args.graham, show_progress=True)
    table.insert(0, "path", [str(inputs.paths[i]) for i in good])
    table.insert(0, "name", [inputs.names[i] for i in good])
    if inputs.labels is not None:
        table.insert(2, "true_grade", inputs.labels[good])
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    print(f"graded {len(table)} photos with {args.run_dir} -> {args.out}")
    if inputs.labels is not None and len(table):
        metrics = score_against_labels(table, predictor)
        write_json(args.out.with_suffix(".metrics.json"), metrics)
        spans = metrics["intervals"]
        print(f"against the labels: accuracy {with_interval(metrics['accuracy'], spans['accuracy'], '.1%')}, "
              f"QWK {with_interval(metrics['qwk'], spans['qwk'])}, referable AUC "
              f"{with_interval(metrics['referable_auc'], spans['referable_auc'])} "
              f"(all figures in {args.out.with_suffix('.metrics.json')})")
    if args.cam:
        write_overlays(predictor, [inputs.paths[i] for i in good], [inputs.names[i] for i in good], args.cam,
                       args.cam_target, args.preprocess, args.graham)
        print(f"wrote {len(good)} Grad-CAM overlays ({args.cam_target}) to {args.cam}")
    for i, reason in problems.items():
        print(f"could not grade {inputs.paths[i]}: {reason}", file=sys.stderr)
    return 1 if problems else 0


def write_overlays(predictor: Predictor, paths: list[Path], names: list[str], folder: Path, target: str,
                   preprocess: bool, graham: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for start in progress(range(0, len(paths), predictor.batch_size), desc="Grad-CAM", unit="batch"):
        chunk = slice(start, start + predictor.batch_size)
        seen, heat = predictor.cams(paths[chunk], target, preprocess, graham)
        for name, photo, cam in zip(names[chunk], seen, heat):
            picture = overlay(photo, cam)
            with atomic_path(folder / f"{name}.png") as tmp:
                picture.save(tmp, format="PNG")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])

