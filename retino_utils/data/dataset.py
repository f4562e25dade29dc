"""The per-image dataset: one split, decoded file by file (the slow, simple path beside the cache)."""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch
from torch.utils.data import Dataset

from retino_utils.data.layouts import SplitIndex, nested_folder_message, nested_image_folder, read_split
from retino_utils.data.transforms import DecodePreset
from retino_utils.data.validate import image_problems
from retino_utils.errors import RetinoError

BAD_NAMES_SHOWN = 5


class FundusDataset(Dataset):
    """``dataset[i] -> (transform(path), grade)``; the default transform gives a native-size uint8 tensor."""

    def __init__(self, index: SplitIndex, transform: Callable | None = None):
        self.index = index
        self.transform = transform or DecodePreset()

    @property
    def names(self) -> tuple[str, ...]:
        return self.index.names

    @property
    def labels(self):
        return self.index.labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.index.paths[i]), int(self.index.labels[i])


def open_dataset(
    root: str | os.PathLike,
    split: str = "train",
    layout: str = "auto",
    transform: Callable | None = None,
    skip_bad: bool = False,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> FundusDataset:
    """Read a split and check it is usable now, rather than failing at some batch of epoch 3.

    Without ``skip_bad`` a missing image raises RetinoError; with it, entries that validation finds
    missing or undecodable (its cached result, computed if needed) are left out with one warning.
    Images unzipped one folder too deep are reported in one line either way.
    """
    index = read_split(root, split, layout, test_fraction, split_seed)
    hint = f"run `python -m retino_utils.data validate {root}`"
    nested = nested_image_folder(index)
    if nested:
        raise RetinoError(nested_folder_message(index, nested))
    if skip_bad:
        bad = image_problems(index)
        if bad:
            shown = ", ".join(f"{name} ({reason})" for name, reason in list(bad.items())[:BAD_NAMES_SHOWN])
            warnings.warn(
                f"left out {len(bad)} of {len(index)} {split} entries whose image is missing or does not "
                f"decode: {shown}{', ...' if len(bad) > BAD_NAMES_SHOWN else ''}; {hint} for the full list",
                stacklevel=2,
            )
            index = index.subset([name not in bad for name in index.names])
    else:
        missing = [(name, path) for name, path in zip(index.names, index.paths) if not path.is_file()]
        if missing:
            name, path = missing[0]
            raise RetinoError(
                f"image {path} for entry {name!r} is missing ({len(missing)} of {len(index)} in the {split} "
                f"split); {hint}, or pass --skip-bad (skip_bad=True in Python) to leave such entries out"
            )
    if not len(index):
        raise RetinoError(f"the {split} split of {root} has no usable entries; {hint}")
    return FundusDataset(index, transform)
