"""The data layer: dataset layouts, decoding, validation, preprocessing, channel stats, and the
decoded-image cache with its batch loader.

``validate`` and ``preprocess`` here are the functions; their modules (same names) are reached
with ``importlib.import_module("retino_utils.data.validate")``.
"""

from .batches import BatchLoader, DecodedImages
from .cache import ImageCache
from .cachedir import dataset_cache_dir
from .dataset import FundusDataset, open_dataset
from .images import load_resized, load_rgb
from .layouts import (
    LAYOUTS,
    SPLITS,
    SplitIndex,
    dataset_fingerprint,
    detect_layout,
    holdout_split,
    read_lab_pair,
    read_split,
)
from .preprocess import preprocess
from .stats import ChannelStats, channel_stats
from .summary import (
    grade_table,
    image_size_table,
    preparation_comparison,
    samples_per_grade,
    stats_table,
    synthetic_record,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REPORT_MEAN,
    REPORT_STD,
    AugmentChoices,
    DecodePreset,
    EvalPreset,
    TrainPreset,
    augment_batch,
    normalization,
    normalize_batch,
    sample_choices,
)
from .validate import ValidationReport, image_problems, validate

__all__ = [
    "AugmentChoices",
    "BatchLoader",
    "ChannelStats",
    "DecodedImages",
    "DecodePreset",
    "EvalPreset",
    "FundusDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageCache",
    "LAYOUTS",
    "REPORT_MEAN",
    "REPORT_STD",
    "SPLITS",
    "SplitIndex",
    "TrainPreset",
    "ValidationReport",
    "augment_batch",
    "channel_stats",
    "dataset_cache_dir",
    "dataset_fingerprint",
    "detect_layout",
    "grade_table",
    "holdout_split",
    "image_size_table",
    "image_problems",
    "load_resized",
    "load_rgb",
    "normalization",
    "normalize_batch",
    "open_dataset",
    "preparation_comparison",
    "preprocess",
    "read_lab_pair",
    "read_split",
    "sample_choices",
    "samples_per_grade",
    "stats_table",
    "synthetic_record",
    "validate",
]
