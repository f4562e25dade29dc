"""From a training config to the splits and batch iterators the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retino_utils import data
from retino_utils.data.layouts import check_disjoint
from retino_utils.errors import RetinoError
from retino_utils.models.losses.class_weights import sample_weights, scheduled_sample_weights
from retino_utils.train.config import TrainConfig
from retino_utils.train.distributed import DistContext


@dataclass
class RunData:
    """The splits of a run and their batch iterators; ``val`` is carved from the training split."""

    train: "data.SplitIndex"
    val: "data.SplitIndex | None"  # None when val_fraction is 0 and no folds are set
    test: "data.SplitIndex"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_loader: object
    val_loader: object | None
    test_loader: object
    train_eval_loader: object  # the training split without augmentation (cut points without a validation split)
    config: TrainConfig

    def start_epoch(self, epoch: int) -> None:
        """Seed the training batches of ``epoch`` and, for a sampling schedule, set its weights."""
        self.train_loader.set_epoch(epoch)
        if self.config.sampler == "weighted_to_natural":
            progress = (epoch - 1) / max(self.config.epochs - 1, 1)
            self.train_loader.set_sample_weights(scheduled_sample_weights(self.train.labels, progress))


def read_splits(config: TrainConfig) -> tuple["data.SplitIndex", "data.SplitIndex | None", "data.SplitIndex"]:
    """Train, validation (a stratified share or fold of the training patients, or None) and test."""
    kwargs = dict(layout=config.layout, test_fraction=config.test_fraction, split_seed=config.split_seed,
                  skip_bad=config.skip_bad)
    train = data.open_dataset(config.data, "train", **kwargs).index
    test = data.open_dataset(config.data, "test", **kwargs).index
    check_disjoint(train, test)
    val = None
    if config.folds:
        keep, held = data.fold_split(train, config.folds, config.fold, seed=config.split_seed)
        train, val = train.subset(keep), train.subset(held)
    elif config.val_fraction > 0:
        keep, held = data.holdout_split(train, config.val_fraction, seed=config.split_seed)
        train, val = train.subset(keep), train.subset(held)
    for split_name, index in (("train", train), ("validation", val), ("test", test)):
        if index is not None and len(index) == 0:
            raise RetinoError(f"the {split_name} split of {config.data} is empty: check its CSV files "
                              f"(python -m retino_utils.data validate {config.data}) or --val-fraction")
    return train, val, test


def resolve_normalization(config: TrainConfig, train: "data.SplitIndex"):
    """``auto`` means ImageNet statistics for ImageNet weights, the training split's own otherwise."""
    choice = config.normalize
    if choice == "auto":
        choice = "imagenet" if config.weights == "imagenet" else "dataset"
    if choice == "dataset":
        stats = data.channel_stats(train, image_size=config.image_size, progress=config.progress)
        return tuple(map(float, stats.mean)), tuple(map(float, stats.std))
    return data.normalization(choice)


def build_run_data(config: TrainConfig, device: torch.device, ctx: DistContext, channels_last: bool,
                   image_size: int | None = None, like: RunData | None = None) -> RunData:
    """The splits and loaders at ``image_size`` (default: the config's). ``like``: the run's data at another
    size (progressive resizing), whose splits and normalisation are reused rather than read again."""
    image_size = image_size or config.image_size
    if like is not None:
        (train, val, test), (mean, std) = (like.train, like.val, like.test), (like.mean, like.std)
    else:
        train, val, test = read_splits(config)
        mean, std = ctx.main_first(lambda: resolve_normalization(config, train))
    weights = sample_weights(train.labels) if config.sampler != "none" else None
    common = dict(device=device, mean=mean, std=std, rank=ctx.rank, world_size=ctx.world_size,
                  channels_last=channels_last)
    splits = [index for index in (train, val, test) if index is not None]
    if config.loader == "cache":
        build = dict(progress=config.progress, workers=config.workers)
        sources = ctx.main_first(lambda: [data.ImageCache.build(index, image_size, **build) for index in splits])
    else:
        sources = [data.DecodedImages(index, image_size, config.workers) for index in splits]
    train_source, test_source = sources[0], sources[-1]
    val_source = sources[1] if val is not None else None
    eval_batch = 2 * config.batch_size

    def evaluation(source):
        return None if source is None else data.BatchLoader(source, eval_batch, shuffle=False, augment=False, **common)

    return RunData(
        train, val, test, mean, std,
        data.BatchLoader(train_source, config.batch_size, shuffle=True, augment=True, **config.augmentation(),
                         sample_weights=weights, seed=config.seed, drop_last=False, **common),
        evaluation(val_source), evaluation(test_source), evaluation(train_source), config,
    )


class DataBySize:
    """A run's splits and loaders at each image size it trains at (progressive resizing), built on first use;
    every size reuses the splits and normalisation statistics of the config's own size."""

    def __init__(self, config: TrainConfig, device: torch.device, ctx: DistContext, channels_last: bool):
        self._settings = (config, device, ctx, channels_last)
        self.first = build_run_data(config, device, ctx, channels_last)
        self._built = {config.image_size: self.first}

    def at(self, size: int) -> RunData:
        if size not in self._built:
            self._built[size] = build_run_data(*self._settings, image_size=size, like=self.first)
        return self._built[size]
