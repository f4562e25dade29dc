"""The fast path: each split decoded once into a uint8 memmap (``batches.BatchLoader`` serves it).

``ImageCache.build`` decodes with ``load_resized`` (the dataset's own decode) in a process pool;
the build resumes after an interruption and is keyed by the split's fingerprint and the size.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from retino_utils.atomic import atomic_path, format_bytes
from retino_utils.data.cachedir import bigger_disk_advice, dataset_cache_dir, derived_prefix, remove_stale
from retino_utils.data.images import load_resized
from retino_utils.data.layouts import SplitIndex
from retino_utils.data.parallel import parallel_map
from retino_utils.errors import DiskFullError, RetinoError

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

    def read(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Copy images ``indices`` into ``out`` (B, S, S, 3), reading the memmap in ascending order."""
        ascending = np.argsort(indices, kind="stable")
        out[ascending] = self.images[indices[ascending]]

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
            f"only {format_bytes(free)} free; free some space, use a smaller size, or {bigger_disk_advice(partial.parent)}"
        )
    images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    return images, np.zeros(shape[0], dtype=bool)


def _checkpoint(images: np.ndarray, done: np.ndarray, done_path: Path) -> None:
    """Flush the pixels before the mask that vouches for them, so a crash never marks unwritten images done."""
    images.flush()
    with atomic_path(done_path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, done)
