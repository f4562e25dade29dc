"""Builders of tiny datasets in each layout, shared by the data-layer tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pixels_for(name: str, size=(24, 20)) -> np.ndarray:
    """Deterministic random RGB pixels for a name: (height, width, 3) uint8."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def write_image(path: Path, name: str = "", size=(24, 20)) -> Path:
    """Write the name's pixels; the format follows the suffix (JPEG quality 95, or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels_for(name or path.stem, size))
    if path.suffix.lower() in (".jpeg", ".jpg"):
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path)
    return path


def grades_cycle(n: int, offset: int = 0) -> list[int]:
    return [(i + offset) % 5 for i in range(n)]


def make_lab(
    root: Path,
    n_train: int = 6,
    n_test: int = 4,
    header: bool = False,
    image_dir: str = "",
    size=(24, 20),
) -> dict[str, list[tuple[str, int]]]:
    """A lab-layout folder: one name or label per line, images ``<root>/<image_dir>/<name>.jpeg``."""
    rows = {
        "train": [(f"{100 + i}_left", g) for i, g in enumerate(grades_cycle(n_train))],
        "test": [(f"{900 + i}_right", g) for i, g in enumerate(grades_cycle(n_test, 2))],
    }
    for split, entries in rows.items():
        write_lines(root / f"{split}_img.csv", (["image"] if header else []) + [name for name, _ in entries])
        write_lines(root / f"{split}_label.csv", (["level"] if header else []) + [str(g) for _, g in entries])
        for name, _ in entries:
            write_image(root / image_dir / f"{name}.jpeg", size=size)
    return rows


def make_kaggle(root: Path, n_patients: int = 30, image_dir: str = "train", ext: str = ".jpeg", size=(16, 16)):
    """Kaggle layout: two eyes per patient; grades chosen so every grade has patients."""
    rows = []
    for patient in range(n_patients):
        worst = patient % 5
        for eye, grade in (("left", worst), ("right", max(0, worst - patient % 2))):
            rows.append((f"{10 + patient}_{eye}", grade))
    write_lines(root / "trainLabels.csv", ["image,level"] + [f"{name},{grade}" for name, grade in rows])
    for name, _ in rows:
        write_image(root / image_dir / f"{name}{ext}", size=size)
    return rows


def make_aptos(root: Path, n: int = 20, size=(16, 16)):
    rows = [(f"{i:04x}abcd", g) for i, g in enumerate(grades_cycle(n))]
    write_lines(root / "train.csv", ["id_code,diagnosis"] + [f"{name},{grade}" for name, grade in rows])
    for name, _ in rows:
        write_image(root / "train_images" / f"{name}.png", size=size)
    return rows


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
