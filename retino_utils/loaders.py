"""From a training config to the splits and batch iterators the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import data
from .config import TrainConfig
from .data.layouts import check_disjoint
from .distributed import DistContext
from .errors import RetinoError
from .losses.class_weights import sample_weights


@dataclass
class RunData:
    train: "data.SplitIndex"
    eval: "data.SplitIndex"
    eval_split: str  # "test", or "holdout" when a share of the training split is held out
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_loader: object
    eval_loader: object
    train_eval_loader: object  # the training split without augmentation (threshold tuning)


def read_splits(config: TrainConfig) -> tuple["data.SplitIndex", "data.SplitIndex", str]:
    """The training split and the split evaluated every epoch (test, or a held-out share of train)."""
    kwargs = dict(layout=config.layout, test_fraction=config.test_fraction, split_seed=config.split_seed,
                  skip_bad=config.skip_bad)
    train = data.open_dataset(config.data, "train", **kwargs).index
    if config.holdout > 0:
        keep, held = data.holdout_split(train, config.holdout, seed=config.split_seed)
        train, evaluated, name = train.subset(keep), train.subset(held), "holdout"
    else:
        evaluated, name = data.open_dataset(config.data, "test", **kwargs).index, "test"
        check_disjoint(train, evaluated)
    for split_name, index in (("train", train), (name, evaluated)):
        if len(index) == 0:
            raise RetinoError(f"the {split_name} split of {config.data} is empty: check its CSV files "
                              f"(python -m retino_utils.data validate {config.data})")
    return train, evaluated, name


def resolve_normalization(config: TrainConfig, train: "data.SplitIndex"):
    """``auto`` means ImageNet statistics for ImageNet weights, the training split's own otherwise."""
    choice = config.normalize
    if choice == "auto":
        choice = "imagenet" if config.weights == "imagenet" else "dataset"
    if choice == "dataset":
        stats = data.channel_stats(train, image_size=config.image_size, progress=config.progress)
        return tuple(map(float, stats.mean)), tuple(map(float, stats.std))
    return data.normalization(choice)


def build_run_data(config: TrainConfig, device: torch.device, ctx: DistContext, channels_last: bool) -> RunData:
    train, evaluated, eval_split = read_splits(config)
    mean, std = ctx.main_first(lambda: resolve_normalization(config, train))
    weights = sample_weights(train.labels) if config.sampler == "weighted" else None
    common = dict(device=device, mean=mean, std=std, rank=ctx.rank, world_size=ctx.world_size,
                  channels_last=channels_last)
    if config.loader == "cache":
        build = dict(progress=config.progress, workers=config.workers)
        sources = ctx.main_first(lambda: [data.ImageCache.build(index, config.image_size, **build)
                                          for index in (train, evaluated)])
    else:
        sources = [data.DecodedImages(index, config.image_size, config.workers) for index in (train, evaluated)]
    train_source, eval_source = sources
    eval_batch = 2 * config.batch_size
    return RunData(
        train, evaluated, eval_split, mean, std,
        data.BatchLoader(train_source, config.batch_size, shuffle=True, augment=True, hflip=config.hflip,
                         vflip=config.vflip, rotation=config.rotation, sample_weights=weights, seed=config.seed,
                         drop_last=False, **common),
        data.BatchLoader(eval_source, eval_batch, shuffle=False, augment=False, **common),
        data.BatchLoader(train_source, eval_batch, shuffle=False, augment=False, **common),
    )
