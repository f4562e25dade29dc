"""Synthetic fundus photographs, graded 0-4, so the report runs end to end without real data.

``render`` draws one photo; ``dataset`` writes a whole dataset in the lab layout:

    python -m retino_utils.synthetic --out DIR --train 2000 --test 500 --size 256 --seed 0
"""

from retino_utils.synthetic.generate import (
    DEFAULT_SHARES,
    cached_dataset,
    generate_dataset,
    grade_counts,
    main,
    mask_path,
    normalise_shares,
    plan_dataset,
    profile_dataset,
)
from retino_utils.synthetic.render import render_fundus

__all__ = [
    "DEFAULT_SHARES",
    "cached_dataset",
    "generate_dataset",
    "grade_counts",
    "main",
    "mask_path",
    "normalise_shares",
    "plan_dataset",
    "profile_dataset",
    "render_fundus",
]
