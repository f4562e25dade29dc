"""From a training config to the splits and batch iterators the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

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
    # Rank 0 does the one-off work (stats, caches) first; the others then find it done.
    if ctx.is_main:
        mean, std = resolve_normalization(config, train)
    ctx.barrier()
    if not ctx.is_main:
        mean, std = resolve_normalization(config, train)
    weights = sample_weights(train.labels) if config.sampler == "weighted" else None
    common = dict(device=device, mean=mean, std=std, rank=ctx.rank, world_size=ctx.world_size,
                  channels_last=channels_last)
    make = _cache_loader if config.loader == "cache" else _pil_loader
    if ctx.is_main:
        loaders = make(config, train, evaluated, weights, common)
    ctx.barrier()
    if not ctx.is_main:
        loaders = make(config, train, evaluated, weights, common)
    return RunData(train, evaluated, eval_split, mean, std, *loaders)


def _cache_loader(config, train, evaluated, weights, common):
    build = dict(progress=config.progress, workers=config.workers)
    train_cache = data.ImageCache.build(train, config.image_size, **build)
    eval_cache = data.ImageCache.build(evaluated, config.image_size, **build)
    eval_batch = 2 * config.batch_size
    return (
        data.BatchLoader(train_cache, config.batch_size, shuffle=True, augment=True, hflip=config.hflip,
                         vflip=config.vflip, rotation=config.rotation, sample_weights=weights,
                         seed=config.seed, drop_last=False, **common),
        data.BatchLoader(eval_cache, eval_batch, shuffle=False, augment=False, **common),
        data.BatchLoader(train_cache, eval_batch, shuffle=False, augment=False, **common),
    )


class _Indexed(Dataset):
    """Per-image path: (image, label, index), so predictions can be matched to names."""

    def __init__(self, index, transform):
        self.dataset = data.FundusDataset(index, transform=transform)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, y, i


class _DeviceBatches:
    """Moves a DataLoader's batches to the device, in the engine's (x, y, idx) form."""

    def __init__(self, loader: DataLoader, device, channels_last: bool):
        self.loader, self.device, self.channels_last = loader, device, channels_last

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y, idx in self.loader:
            yield (x.to(self.device, non_blocking=True, memory_format=fmt),
                   y.to(self.device, non_blocking=True), idx)


def _pil_loader(config, train, evaluated, weights, common):
    """The per-image PIL pipeline: slower, but needs no disk cache (huge datasets)."""
    device, mean, std = common["device"], common["mean"], common["std"]
    rank, world = common["rank"], common["world_size"]
    train_tf = data.TrainPreset(config.image_size, mean, std, hflip=config.hflip, vflip=config.vflip,
                                rotation=config.rotation)
    eval_tf = data.EvalPreset(config.image_size, mean, std)
    workers = config.workers if config.workers is not None else min(4, torch.get_num_threads())

    def loader(index, transform, batch, train_mode):
        dataset = _Indexed(index, transform)
        sampler = None
        if train_mode and weights is not None:
            sampler = torch.utils.data.WeightedRandomSampler(weights, len(dataset) // world, replacement=True)
        elif train_mode and world > 1:
            sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=config.seed)
        elif world > 1:  # evaluation: every image exactly once over all ranks, no padding
            sampler = range(rank, len(dataset), world)
        dl = DataLoader(dataset, batch_size=batch, shuffle=train_mode and sampler is None, sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        return _DeviceBatches(dl, device, common["channels_last"])

    return (
        loader(train, train_tf, config.batch_size, True),
        loader(evaluated, eval_tf, 2 * config.batch_size, False),
        loader(train, eval_tf, 2 * config.batch_size, False),
    )
