"""Grade new photos with a trained run, and show where it looks.

``python -m retino_utils.predict RUN_DIR INPUT --out grades.csv [--tta] [--cam DIR] [--preprocess
[--prepare NAME]] [--batch-size B] [--device D]``; in Python ``Predictor.from_run(RUN_DIR)(photos)``.

It uses what the run learned and never what the new photos look like: the architecture and image
size of the run's config, the normalisation statistics of its training split, its kept checkpoint
(chosen on validation) and regression cut points, and the screening threshold and calibration of
the referable score (``referable_probability``) fitted on its validation split. INPUT is a folder of
photos, a text file of paths (one a line), or a dataset in one of the layouts, whose test split
(``--split``) is then also scored against its labels.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from retino_utils import NUM_CLASSES
from retino_utils.atomic import atomic_path, write_json
from retino_utils.data import SPLITS, BatchLoader, SplitIndex, dataset_fingerprint, detect_layout, read_split
from retino_utils.data.images import ImageSource, decode_problem, fundus_doubt, load_resized, load_rgb, square_resize
from retino_utils.data.layouts import IMAGE_EXTENSIONS
from retino_utils.data.preprocess import PREPARATIONS, copy_settings, preparation_of, prepared_photo
from retino_utils.errors import RetinoError
from retino_utils.evaluation.calibration import calibrated, calibration_report
from retino_utils.evaluation.cam import grad_cam, overlay, upsample
from retino_utils.evaluation.eyes import fuse_eyes
from retino_utils.evaluation.metrics import compute_metrics
from retino_utils.evaluation.record import RECORD_FILE, RunRecord, Scores, Screening, read_record
from retino_utils.evaluation.results import with_interval
from retino_utils.evaluation.screening import operating_points
from retino_utils.evaluation.uncertainty import N_RESAMPLES, intervals
from retino_utils.models.networks import build_model
from retino_utils.progress import progress
from retino_utils.train.checkpoint import Checkpoint, load_checkpoint, scored_weights
from retino_utils.train.config import TrainConfig, load_config
from retino_utils.train.device import resolve_device, resolve_precision, use_channels_last
from retino_utils.train.engine import evaluate, output_table
from retino_utils.train.run_safety import recorded_fingerprint, setting_changes

EVERY_SPLIT = "all"  # --split all: every photo of a dataset (an external set, none of it trained on)
PREPROCESS_SIZE = 512  # the side `data preprocess` writes by default (for runs not trained on such a copy)


class _Photos:
    """Photos (paths or PIL images) decoded as the run's training pipeline decoded its own."""

    def __init__(self, items: Sequence[ImageSource], image_size: int, prepare: str | None, preprocess_size: int):
        self.items, self.image_size = list(items), image_size
        self.prepare, self.preprocess_size = prepare, preprocess_size  # prepare None: the photos as they are
        self.labels = np.zeros(len(self.items), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, i: int) -> np.ndarray:
        if self.prepare is None:
            return load_resized(self.items[i], self.image_size)
        size = self.preprocess_size
        photo = prepared_photo(load_rgb(self.items[i], draft_size=2 * size), size, self.prepare)
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
    precision: str  # the run's --precision, resolved on this machine's hardware
    channels_last: bool
    batch_size: int
    record: RunRecord  # the run's metrics.json
    config: TrainConfig  # the settings the checkpoint was trained with
    fuse_eyes: float = 0.0  # the run's weight of a patient's other eye, for photos named <patient>_left/right
    preprocess_size: int = PREPROCESS_SIZE  # --preprocess writes photos this big: the run's training copy's side
    preparation: str = "crop"  # how --preprocess prepares photos: as the run's training copy was prepared
    calibrator: dict | None = None  # the referable score's isotonic map, fitted on validation (older runs: none)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", batch_size: int | None = None,
                 checkpoint: str = "best.pt") -> "Predictor":
        run_dir = Path(run_dir)
        if not (run_dir / RECORD_FILE).is_file():
            raise RetinoError(f"{run_dir} holds no finished run (no {RECORD_FILE}): pass a run folder that "
                              f"training completed")
        record = read_record(run_dir)
        state = load_checkpoint(run_dir / checkpoint)
        config = trained_config(run_dir, state)
        target = resolve_device(device if device != "auto" else config.device)
        model = build_model(config.arch, None, num_classes=1 if config.is_regression else NUM_CLASSES,
                            impl=config.impl)
        model.load_state_dict(scored_weights(state))
        channels_last = use_channels_last(target)
        model = model.to(target, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
        target_point = record.screening.point("target")
        training_copy = copy_settings(config.data)
        return cls(run_dir, model, config.image_size, record.mean, record.std, record.thresholds,
                   target_point["threshold"] if target_point else None, target,
                   resolve_precision(target, config.precision),
                   channels_last, batch_size or 2 * config.batch_size, record, config, config.fuse_eyes,
                   training_copy.size if training_copy else PREPROCESS_SIZE,
                   training_copy.prepare if training_copy else "crop",
                   (record.screening.calibration or {}).get("calibrator"))

    def loader(self, photos) -> BatchLoader:
        return BatchLoader(photos, self.batch_size, shuffle=False, augment=False, mean=self.mean, std=self.std,
                           device=self.device, channels_last=self.channels_last)

    def __call__(self, photos: Sequence[ImageSource], tta: bool = False, prepare: str | None = None,
                 show_progress: bool = False) -> pd.DataFrame:
        """One row per photo: grade, class probabilities (or the regression score), referable score (and its
        calibrated probability where the run fitted one), refer."""
        source = _Photos(photos, self.image_size, prepare, self.preprocess_size)
        result = evaluate(self.model, None, self.loader(source), device=self.device, precision=self.precision, tta=tta,
                          show_progress=show_progress, desc="grading")
        names = [Path(p).stem if isinstance(p, (str, Path)) else "" for p in photos]
        table = output_table(fuse_eyes(result.outputs, names, self.fuse_eyes), self.cut_points)
        if self.calibrator is not None:
            table["referable_probability"] = calibrated(self.calibrator, table["referable_score"])
        table["refer"] = (table["referable_score"] >= self.refer_threshold) if self.refer_threshold is not None \
            else pd.NA
        return table

    def cams(self, photos: Sequence[ImageSource], target: str = "grade",
             prepare: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each photo as the model saw it (N, S, S, 3 uint8) and its Grad-CAM (N, S, S in [0, 1])."""
        source = _Photos(photos, self.image_size, prepare, self.preprocess_size)
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


def trained_config(run_dir: Path, state: Checkpoint) -> TrainConfig:
    """The settings the checkpoint was trained with; an edited ``config.yaml`` that disagrees is refused."""
    trained = TrainConfig.from_dict(state.config)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        changes = setting_changes(trained, load_config(saved))
        if changes:
            raise RetinoError(f"{saved} disagrees with the checkpoint it describes ({'; '.join(changes)}, "
                              f"checkpoint -> config.yaml): the checkpoint's settings are what it learned with; "
                              f"restore config.yaml, or train a run with the new settings")
    return trained


# -- inputs --------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    names: list[str]
    paths: list[Path]
    labels: np.ndarray | None  # the dataset's grades, when INPUT is a dataset


def read_inputs(source: str | Path, split: str = "test", run: TrainConfig | None = None,
                run_fingerprint: str | None = None) -> Inputs:
    """A photo, a folder of photos, a text file of paths, or a dataset (its ``split``, with labels).

    A dataset is split as the ``run`` split its own data (layout, test fraction, seed), so its test
    split is the run's when it is the run's data; that data changed since (``run_fingerprint``) is refused.
    """
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            return Inputs([source.stem], [source], None)
        paths = read_path_list(source)
        return Inputs([p.stem for p in paths], paths, None)
    if not source.is_dir():
        raise RetinoError(f"{source} does not exist: pass a photo, a folder of photos, a text file of paths, "
                          f"or a dataset")
    try:
        detect_layout(source)
    except RetinoError:
        photos = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not photos:
            raise RetinoError(f"{source} holds no photos ({', '.join(IMAGE_EXTENSIONS)}) and no dataset layout") from None
        return Inputs([p.stem for p in photos], photos, None)
    split_settings = {}
    if run is not None:
        split_settings = dict(layout=run.layout, test_fraction=run.test_fraction, split_seed=run.split_seed)
        if run_fingerprint and os.path.realpath(source) == os.path.realpath(run.data):
            now = dataset_fingerprint(source, **split_settings)
            if now != run_fingerprint:
                raise RetinoError(f"{source} is the run's own data but has changed since it trained (fingerprint "
                                  f"{run_fingerprint} -> {now}: labels or photos edited), so its {split} split "
                                  f"is no longer the run's: grade a folder of photos instead, or train again")
    indexes: list[SplitIndex] = [read_split(source, part, **split_settings)
                                 for part in (SPLITS if split == EVERY_SPLIT else (split,))]
    return Inputs([name for index in indexes for name in index.names],
                  [Path(path) for index in indexes for path in index.paths],
                  np.concatenate([index.labels for index in indexes]))


def read_path_list(source: Path) -> list[Path]:
    """One path a line (UTF-8 or UTF-16 with its byte-order mark); relative paths are from the list's folder."""
    raw = source.read_bytes()
    try:
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RetinoError(f"{source} is neither a photo ({', '.join(IMAGE_EXTENSIONS)}) nor a text list of paths "
                          f"in UTF-8 or UTF-16: give one path per line") from None
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.lower() == "path":
            continue
        path = Path(line) if Path(line).is_absolute() else source.parent / line
        first = line.split(",")[0].strip()  # a CSV whose first column is the path
        if not path.exists() and "," in line and (source.parent / first).exists():
            path = source.parent / first
        paths.append(path)
    if not paths:
        raise RetinoError(f"{source} lists no photos: give one path per line")
    return paths


def preparation_note(run_dir: Path, config: TrainConfig, photos: Sequence[Path], prepare: str | None) -> str | None:
    """A note when the photos will reach the model prepared unlike the run's training photos: ``prepare`` is
    what ``--preprocess`` applies (None: the photos as they are, which may be a ``preprocess`` copy)."""
    trained = preparation_of(config.data) or "crop"
    if prepare is None:
        given = preparation_of(Path(photos[0]).parent) if photos else None
        if given is None and trained != "crop":
            return (f"note: {run_dir} learned from photos prepared as {trained!r} ({config.data}) and these are "
                    f"not prepared: add --preprocess for camera photos")
        if given is not None and given != trained:
            return (f"note: {run_dir} learned from photos prepared as {trained!r} ({config.data}) and these were "
                    f"prepared as {given!r}: grade the camera photos with --preprocess instead")
        return None
    if prepare != trained:
        return (f"note: {run_dir} learned from photos prepared as {trained!r} ({config.data}); --prepare {prepare} "
                f"shows it photos unlike anything it saw: drop --prepare (--preprocess alone prepares as the run's)")
    return None


def score_against_labels(table: pd.DataFrame, predictor: Predictor) -> Scores:
    """The figures training reports, with the run's own bootstrap settings and screening thresholds."""
    y_true, y_pred = table["true_grade"].to_numpy(), table["pred_grade"].to_numpy()
    score, names = table["referable_score"].to_numpy(), table["name"].tolist()
    resampling = {"n_resamples": predictor.config.bootstrap or N_RESAMPLES, "seed": predictor.config.seed}
    thresholds = {name: point["threshold"] for name, point in predictor.record.screening.operating_points.items()}
    calibration = None
    if predictor.calibrator is not None:
        calibration = calibration_report(predictor.calibrator, predictor.config.is_regression, y_true, score, names,
                                         **resampling)
    return Scores(**compute_metrics(y_true, y_pred, referable_score=score),
                  intervals=intervals(y_true, y_pred, score, names, **resampling),
                  screening=Screening(operating_points=operating_points(thresholds, y_true, score, names, **resampling),
                                      calibration=calibration))


# -- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retino_utils.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished training run (metrics.json, best.pt, config.yaml)")
    parser.add_argument("input", type=Path, help="a folder of photos, a text file of paths, or a dataset")
    parser.add_argument("--out", type=Path, required=True, help="CSV of grades to write")
    parser.add_argument("--split", default="test", choices=(*SPLITS, EVERY_SPLIT),
                        help="dataset input: which split (all: every photo, for a set of another source)")
    parser.add_argument("--tta", action="store_true", help="average over the four flips")
    parser.add_argument("--cam", type=Path, help="folder for one Grad-CAM overlay PNG per photo")
    parser.add_argument("--cam-target", default="grade", choices=("grade", "referable"),
                        help="what the map explains: the predicted grade or the referable score")
    parser.add_argument("--preprocess", action="store_true",
                        help="crop the disc, resize and prepare raw camera photos as `data preprocess` prepared the "
                             "run's training copy (its preparation and side; crop at 512 px for a run that trained "
                             "on photos as they were)")
    parser.add_argument("--prepare", choices=list(PREPARATIONS),
                        help="with --preprocess: another preparation than the run's own (for comparisons)")
    parser.add_argument("--graham", dest="prepare", action="store_const", const="graham",
                        help="= --prepare graham (kept for older commands)")
    parser.add_argument("--batch-size", type=int, help="photos per batch (default: the run's evaluation batch)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return parser


def check_outputs(out: Path, cam: Path | None) -> None:
    """Refuse, before any grading, outputs that cannot be written."""
    if out.is_dir():
        raise RetinoError(f"--out {out} is a folder: give the CSV file to write, e.g. {out / 'grades.csv'}")
    if not out.parent.is_dir():
        raise RetinoError(f"--out {out}: its folder {out.parent} does not exist: create it or choose another --out")
    if not os.access(out.parent, os.W_OK):
        raise RetinoError(f"--out {out}: its folder {out.parent} is not writable: choose another --out")
    if cam is not None:
        if cam.exists() and not cam.is_dir():
            raise RetinoError(f"--cam {cam} is a file: give a folder for the overlays")
        existing = next((folder for folder in (cam, *cam.parents) if folder.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK):
            raise RetinoError(f"--cam {cam}: {existing} is not writable: choose another folder")


def unreadable_message(paths: list[Path], problems: dict[int, str]) -> str:
    listed = "; ".join(f"{paths[i]}: {reason}" for i, reason in list(problems.items())[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"none of the {len(paths)} photos could be read: {listed}{more}"


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is shown escaped, not a traceback
        stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    if args.prepare and not args.preprocess:
        raise RetinoError(f"--prepare {args.prepare} applies to --preprocess: add --preprocess (or drop it)")
    check_outputs(args.out, args.cam)
    predictor = Predictor.from_run(args.run_dir, args.device, args.batch_size)
    inputs = read_inputs(args.input, args.split, predictor.config, recorded_fingerprint(args.run_dir))
    if inputs.labels is not None and args.split != "test" and os.path.realpath(args.input) == os.path.realpath(
            predictor.config.data):
        print(f"note: the {args.split} split of {args.input} holds the photos {args.run_dir} trained on: its figures "
              f"against the labels are no test (--split test is)", file=sys.stderr)
    prepare = (args.prepare or predictor.preparation) if args.preprocess else None
    if note := preparation_note(args.run_dir, predictor.config, inputs.paths, prepare):
        print(note, file=sys.stderr)
    problems = {i: reason for i, path in enumerate(progress(inputs.paths, desc="checking", unit="img"))
                if (reason := decode_problem(path))}
    if len(problems) == len(inputs.paths):
        raise RetinoError(unreadable_message(inputs.paths, problems))
    good = [i for i in range(len(inputs.paths)) if i not in problems]
    doubts = {i: doubt for i in good if (doubt := fundus_doubt(inputs.paths[i]))}
    table = predictor([inputs.paths[i] for i in good], tta=args.tta, prepare=prepare, show_progress=True)
    table.insert(0, "path", [str(inputs.paths[i]) for i in good])
    table.insert(0, "name", [inputs.names[i] for i in good])
    if inputs.labels is not None:
        table.insert(2, "true_grade", inputs.labels[good])
    table["not_fundus"] = [doubts.get(i, "") for i in good]
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f", errors="surrogateescape")
    print(f"graded {len(table)} photos with {args.run_dir} -> {args.out}")
    scored = args.out.with_suffix(".metrics.json")
    if inputs.labels is not None:
        scores = score_against_labels(table, predictor)
        write_json(scored, scores.to_file_dict())
        print(f"against the labels: accuracy {with_interval(scores.accuracy, scores.interval('accuracy'), '.1%')}, "
              f"QWK {with_interval(scores.qwk, scores.interval('qwk'))}, referable AUC "
              f"{with_interval(scores.referable_auc, scores.interval('referable_auc'))} "
              f"(all figures in {scored})")
    elif scored.exists():
        scored.unlink()  # an earlier grading's figures must not pass for these grades
        print(f"removed {scored}: it scored an earlier grading against labels, and these photos have none")
    if args.cam:
        write_overlays(predictor, [inputs.paths[i] for i in good], args.cam, args.cam_target, prepare)
        print(f"wrote {len(good)} Grad-CAM overlays ({args.cam_target}) to {args.cam}")
    for i, doubt in doubts.items():
        print(f"warning: {inputs.paths[i]} cannot be a fundus photo ({doubt}): graded, but its grade means "
              f"nothing (column not_fundus)", file=sys.stderr)
    for i, reason in problems.items():
        print(f"could not grade {inputs.paths[i]}: {reason}", file=sys.stderr)
    return 1 if problems else 0


def overlay_names(paths: list[Path]) -> list[str]:
    """A file name per photo: its own, or with its folders in front where two photos share one."""
    stems = [path.stem for path in paths]
    taken = Counter(stems)
    names = []
    for path, stem in zip(paths, stems):
        if taken[stem] > 1:
            stem = "__".join([*path.parent.parts[-2:], stem]).replace(os.sep, "_").lstrip("_")
        names.append(stem)
    seen: Counter = Counter()
    unique = []
    for name in names:  # still equal (same folders too): numbered
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def write_overlays(predictor: Predictor, paths: list[Path], folder: Path, target: str,
                   prepare: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = overlay_names(paths)
    for start in progress(range(0, len(paths), predictor.batch_size), desc="Grad-CAM", unit="batch"):
        chunk = slice(start, start + predictor.batch_size)
        seen, heat = predictor.cams(paths[chunk], target, prepare)
        for name, photo, cam in zip(names[chunk], seen, heat):
            picture = overlay(photo, cam)
            with atomic_path(folder / f"{name}.png") as tmp:
                picture.save(tmp, format="PNG")
