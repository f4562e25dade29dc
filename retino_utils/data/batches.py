"""Batches for training and evaluation: one sampling, sharding and augmentation path for every source.

A source is a split of images at one size that can ``read(indices, out)`` uint8 pixels: the decoded
``ImageCache`` (fast, a disk cache) or ``DecodedImages`` (decodes each photo when asked, no cache).
``BatchLoader`` plans each epoch's order, gathers whole batches in a background thread, and flips,
rotates and normalises them a batch at a time on the target device, so both sources give the same
tensors for the same seed.
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from retino_utils.data.images import load_resized
from retino_utils.data.layouts import SplitIndex
from retino_utils.data.transforms import AugmentChoices, augment_batch, jpeg_roundtrip, normalize_batch, sample_choices


class ImageSource(Protocol):
    index: SplitIndex
    image_size: int

    @property
    def labels(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray, out: np.ndarray) -> None: ...


class DecodedImages:
    """A split decoded photo by photo as batches ask for it (``load_resized``, the cache's own decode),
    in a few threads: PIL releases the GIL while it decodes. For data too big to cache."""

    def __init__(self, index: SplitIndex, image_size: int, threads: int | None = None):
        self.index, self.image_size = index, image_size
        self.pool = ThreadPoolExecutor(max_workers=threads or min(4, torch.get_num_threads()))

    @property
    def labels(self) -> np.ndarray:
        return self.index.labels

    def __len__(self) -> int:
        return len(self.index)

    def read(self, indices: np.ndarray, out: np.ndarray) -> None:
        for k, pixels in enumerate(self.pool.map(lambda i: load_resized(self.index.paths[i], self.image_size),
                                                 indices.tolist())):
            out[k] = pixels


class BatchLoader:
    """Batches ``(x, y, idx)`` from an image source: x float32 [B,3,S,S] normalised on ``device``,
    y int64 on ``device``, idx the int64 dataset indices (CPU).

    Each epoch's randomness comes from one generator seeded by (seed, epoch): the order
    (a permutation, or ``torch.multinomial(sample_weights, N, replacement=True)``), then the
    augmentation choices. With ``world_size > 1`` every rank computes the same order and takes
    ``order[rank::world_size]``, the order first padded to a multiple of world_size when training
    (like DistributedSampler); evaluation (no shuffle, no augment) is not padded, so the ranks
    together see every index exactly once.
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        mean,
        std,
        device: str | torch.device = "cpu",
        hflip: bool = True,
        vflip: bool = True,
        rotation: float = 0.0,
        scale: float = 0.0,
        shift: float = 0.0,
        color: float = 0.0,
        gamma: float = 0.0,
        saturation: float = 0.0,
        blur: float = 0.0,
        jpeg: int = 0,
        sample_weights=None,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = True,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        self.source = source
        self.batch_size = batch_size
        self.shuffle, self.augment = shuffle, augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.augmentation = dict(hflip=hflip, vflip=vflip, rotation=rotation, scale=scale, shift=shift, color=color,
                                 gamma=gamma, saturation=saturation, blur=blur, jpeg=jpeg)
        self.set_sample_weights(sample_weights)
        self.drop_last = drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.prefetch = prefetch
        self.epoch = 0
        self._labels = torch.tensor(source.labels, dtype=torch.int64)

    @property
    def training(self) -> bool:
        return self.shuffle or self.augment or self.sample_weights is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_sample_weights(self, sample_weights) -> None:
        """Draw epochs with replacement in proportion to ``sample_weights`` (None: a permutation)."""
        self.sample_weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.float64)
        if self.sample_weights is not None and self.sample_weights.shape != (len(self.source),):
            raise ValueError(f"sample_weights has shape {tuple(self.sample_weights.shape)}, "
                             f"expected ({len(self.source)},)")

    def __len__(self) -> int:
        n = self._rank_length()
        # A last training batch of one photo is left out: BatchNorm cannot train on a single sample
        # (the photo is drawn again in other epochs' orders).
        lone_last = self.training and n > 1 and n % self.batch_size == 1
        return n // self.batch_size if self.drop_last or lone_last else math.ceil(n / self.batch_size)

    def _rank_length(self) -> int:
        n = len(self.source)
        if self.training:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def epoch_plan(self) -> tuple[torch.Tensor, AugmentChoices | None]:
        """This rank's indices for the current epoch, and their augmentation choices (None without augment)."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        n = len(self.source)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.training and self.world_size > 1:
            padded = math.ceil(n / self.world_size) * self.world_size
            order = order.repeat(math.ceil(padded / n))[:padded]
        choices = None
        if self.augment:
            choices = sample_choices(len(order), generator, **self.augmentation)
            choices = choices[self.rank :: self.world_size]
        return order[self.rank :: self.world_size], choices

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order, choices = self.epoch_plan()
        bounds = [(start, min(start + self.batch_size, len(order))) for start in range(0, len(order), self.batch_size)]
        bounds = bounds[: len(self)]

        def gather(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            start, stop = bounds[k]
            pixels = self._gather(order[start:stop].numpy())
            if choices is not None and choices.jpeg is not None:  # on the CPU, in the prefetching thread
                for row, quality in enumerate(choices.jpeg[start:stop].tolist()):
                    if quality:
                        pixels[row] = torch.from_numpy(jpeg_roundtrip(pixels[row].numpy(), quality))
            return order[start:stop], pixels

        for k, (idx, pixels) in enumerate(_prefetched(gather, len(bounds), self.prefetch)):
            start, stop = bounds[k]
            yield self._finish(pixels, idx, None if choices is None else choices[start:stop])

    def batch(self, indices, choices: AugmentChoices | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of the given dataset indices with explicit choices (None: no augmentation)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self._finish(self._gather(idx.numpy()), idx, choices)

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 [B,S,S,3] on the host (pinned for CUDA)."""
        size = self.source.image_size
        pixels = torch.empty((len(indices), size, size, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        self.source.read(indices, pixels.numpy())
        return pixels

    def _finish(self, pixels: torch.Tensor, idx: torch.Tensor, choices: AugmentChoices | None):
        # NHWC -> NCHW as a view: its strides already are the channels_last layout.
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        y = self._labels[idx].to(self.device, non_blocking=True)
        if choices is None:
            x = normalize_batch(x, self.mean, self.std)
        else:
            x = augment_batch(x, choices, self.mean, self.std)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format), y, idx


def _epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _prefetched(produce: Callable[[int], object], count: int, depth: int) -> Iterator:
    """``produce(0..count-1)`` computed in a background thread, up to ``depth`` items ahead."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for k in range(count):
                if stop.is_set():
                    return
                put(produce(k))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    thread = threading.Thread(target=work, name="BatchLoader-prefetch", daemon=True)
    thread.start()
    try:
        for _ in range(count):
            item = ready.get()
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
