"""The data layer: dataset layouts, decoding, validation, preprocessing, channel stats, and the
decoded-image cache with its batch loader."""

from retino_utils.data.batches import BatchLoader, DecodedImages
from retino_utils.data.cache import ImageCache
from retino_utils.data.cachedir import dataset_cache_dir
from retino_utils.data.dataset import FundusDataset, open_dataset
from retino_utils.data.images import load_resized, load_rgb
from retino_utils.data.layouts import (
    LAYOUTS,
    SPLITS,
    SplitIndex,
    dataset_fingerprint,
    detect_layout,
    fold_split,
    holdout_split,
    read_lab_pair,
    read_split,
)
from retino_utils.data.preprocess import preprocess_dataset
from retino_utils.data.stats import ChannelStats, channel_stats
from retino_utils.data.summary import (
    grade_table,
    image_size_table,
    preparation_comparison,
    samples_per_grade,
    stats_table,
    synthetic_record,
)
from retino_utils.data.transforms import (
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
from retino_utils.data.validate import ValidationReport, image_problems, validate_dataset

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
    "fold_split",
    "holdout_split",
    "image_size_table",
    "image_problems",
    "load_resized",
    "load_rgb",
    "normalization",
    "normalize_batch",
    "open_dataset",
    "preparation_comparison",
    "preprocess_dataset",
    "read_lab_pair",
    "read_split",
    "sample_choices",
    "samples_per_grade",
    "stats_table",
    "synthetic_record",
    "validate_dataset",
]
