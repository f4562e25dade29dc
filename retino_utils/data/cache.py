"""The fast path: each split decoded once into a uint8 memmap, then served as ready batches.

``ImageCache.build`` decodes with ``load_resized`` (the dataset's own decode) in a process pool;
the build resumes after an interruption and is keyed by the split's fingerprint and the size.
``BatchLoader`` gathers whole batches from the memmap with one fancy index, in a background
thread, and applies augmentation to the batch on the target device.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import DiskFullError, RetinoError, format_bytes
from .cachedir import dataset_cache_dir, derived_prefix, remove_stale
from .images import load_resized
from .layouts import SplitIndex
from .parallel import parallel_map
from .transforms import AugmentChoices, augment_batch, normalize_batch, sample_choices

CHECKPOINT_SECONDS = 5.0


class ImageCache:
    """Decoded images of one split at one size: ``images`` is an (N, S, S, 3) uint8 read-only memmap."""

    def __init__(self, index: SplitIndex, image_size: int, path: Path):
        self.index = index
        self.image_size = image_size
        self.path = path
        self.images = np.load(path, mmap_mode="r")
        if self.images.shape != _shape(index, image_size) or self.images.dtype != np.uint8:
            expected = _shape(index, image_size)
            raise ValueError(f"{path} holds {self.images.shape} {self.images.dtype}, not {expected} uint8")

    @property
    def labels(self) -> np.ndarray:
        return self.index.labels

    @property
    def names(self) -> tuple[str, ...]:
        return self.index.names

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def build(
        cls,
        index: SplitIndex,
        image_size: int,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        workers: int | None = None,
        on_image: Callable[[int], None] | None = None,
    ) -> "ImageCache":
        """Open the cache of ``index`` at ``image_size``, decoding what is not done yet.

        Decoding goes to ``<key>.npy.partial`` with a done-mask checkpointed every few seconds and
        on any exit; a later build resumes from it, and the file is renamed to ``<key>.npy`` when
        complete. The key names the entries, the size and the files' state: edited files replace
        the old cache; another entry list (e.g. a held-out subset) gets its own, beside it.
        ``on_image(n_done)`` is called after each stored image (tests use it to interrupt).
        """
        if not len(index):
            raise RetinoError(f"cannot cache the empty {index.split} split of {index.root}")
        folder = Path(cache_dir) if cache_dir else dataset_cache_dir(index.root) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        fingerprint = index.fingerprint()
        prefix = derived_prefix(index, "images", f"{image_size}px")
        final = folder / f"{prefix}{fingerprint}.npy"
        with _exclusive(folder / f"{prefix}{fingerprint}.lock"):
            if final.is_file():
                try:
                    return cls(index, image_size, final)
                except (ValueError, OSError):
                    final.unlink()  # damaged: rebuild below
            remove_stale(folder, prefix, fingerprint)
            _decode_into(final, index, image_size, progress, workers, on_image)
        return cls(index, image_size, final)


def _decode_into(
    final: Path,
    index: SplitIndex,
    image_size: int,
    progress: bool,
    workers: int | None,
    on_image: Callable[[int], None] | None,
) -> None:
    """Decode the images not done yet into ``final``'s partial file; rename it to ``final`` when complete."""
    partial = final.with_name(final.name + ".partial")
    done_path = final.with_name(final.stem + ".done.npy")
    images, done = _open_partial(partial, done_path, index, image_size)
    todo = np.flatnonzero(~done)
    tasks = [(int(i), (index.paths[i], image_size)) for i in todo]
    failures = []
    last_checkpoint = time.monotonic()
    outcomes = parallel_map(
        load_resized, tasks, workers=workers, desc=f"caching {index.split} at {image_size} px", progress=progress
    )
    try:
        for i, pixels, error in outcomes:
            if error:
                failures.append((index.paths[i], error))
                continue
            images[i] = pixels
            done[i] = True
            if on_image:
                on_image(int(done.sum()))
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                _checkpoint(images, done, done_path)
                last_checkpoint = time.monotonic()
    finally:
        outcomes.close()  # stops the pool now, not when the generator is collected
        _checkpoint(images, done, done_path)
    if failures:
        path, error = failures[0]
        raise RetinoError(
            f"cannot decode {path} ({error}) and {len(failures) - 1} more; run `python -m retino_utils.data "
            f"validate {index.root}`, or pass --skip-bad (skip_bad=True in Python) to leave bad images out"
        )
    del images
    os.replace(partial, final)
    done_path.unlink()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``: a second process building the same cache waits, then finds it done."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shape(index: SplitIndex, image_size: int) -> tuple[int, int, int, int]:
    return (len(index), image_size, image_size, 3)


def _open_partial(partial: Path, done_path: Path, index: SplitIndex, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The writable memmap and done-mask of an interrupted build, or fresh ones."""
    shape = _shape(index, image_size)
    if partial.is_file() and done_path.is_file():
        try:
            images = np.lib.format.open_memmap(partial, mode="r+")
            done = np.load(done_path)
            if images.shape == shape and done.shape == (shape[0],):
                return images, done.astype(bool)
        except ValueError:
            pass  # unreadable leftovers: start over
    needed = math.prod(shape)
    free = shutil.disk_usage(partial.parent).free
    if needed > free:
        raise DiskFullError(
            f"the {image_size} px cache of {len(index)} images needs {format_bytes(needed)} in {partial.parent}, "
            f"only {format_bytes(free)} free; free some space, use a smaller size, or point RETINO_CACHE elsewhere"
        )
    images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    return images, np.zeros(shape[0], dtype=bool)


def _checkpoint(images: np.ndarray, done: np.ndarray, done_path: Path) -> None:
    """Flush the pixels before the mask that vouches for them, so a crash never marks unwritten images done."""
    images.flush()
    with atomic_path(done_path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, done)


class BatchLoader:
    """Batches ``(x, y, idx)`` from an ImageCache: x float32 [B,3,S,S] normalised on ``device``,
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
        cache: ImageCache,
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
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle, self.augment = shuffle, augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.hflip, self.vflip, self.rotation = hflip, vflip, rotation
        self.sample_weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.float64)
        if self.sample_weights is not None and self.sample_weights.shape != (len(cache),):
            raise ValueError(f"sample_weights has shape {tuple(self.sample_weights.shape)}, expected ({len(cache)},)")
        self.drop_last = drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.prefetch = prefetch
        self.epoch = 0
        self._labels = torch.tensor(cache.labels, dtype=torch.int64)

    @property
    def training(self) -> bool:
        return self.shuffle or self.augment or self.sample_weights is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self._rank_length()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _rank_length(self) -> int:
        n = len(self.cache)
        if self.training:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def epoch_plan(self) -> tuple[torch.Tensor, AugmentChoices | None]:
        """This rank's indices for the current epoch, and their augmentation choices (None without augment)."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        n = len(self.cache)
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
            choices = sample_choices(len(order), generator, self.hflip, self.vflip, self.rotation)
            choices = choices[self.rank :: self.world_size]
        return order[self.rank :: self.world_size], choices

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order, choices = self.epoch_plan()
        bounds = [(start, min(start + self.batch_size, len(order))) for start in range(0, len(order), self.batch_size)]
        bounds = bounds[: len(self)]

        def gather(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            start, stop = bounds[k]
            return order[start:stop], self._gather(order[start:stop].numpy())

        for k, (idx, pixels) in enumerate(_prefetched(gather, len(bounds), self.prefetch)):
            start, stop = bounds[k]
            yield self._finish(pixels, idx, None if choices is None else choices[start:stop])

    def batch(self, indices, choices: AugmentChoices | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of the given dataset indices with explicit choices (None: no augmentation)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self._finish(self._gather(idx.numpy()), idx, choices)

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 [B,S,S,3] on the host (pinned for CUDA), read in ascending index order for locality."""
        size = self.cache.image_size
        pixels = torch.empty((len(indices), size, size, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        ascending = np.argsort(indices, kind="stable")
        pixels.numpy()[ascending] = self.cache.images[indices[ascending]]
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
