"""Drawing one synthetic fundus photograph of a given grade (no real photo is used).

A dark camera field around an orange-red retina with an optic disc, a macula and a branching vessel
tree, plus the lesions that define each grade. Lesion counts, sizes and contrast vary within a grade
and overlap between grades 2 and 3, and grade 1 (a few microaneurysms) is barely visible at low
resolution, so the task is imbalanced and genuinely hard, as with real data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retino_utils import GRADES
from retino_utils.errors import RetinoError

SUPERSAMPLE = 2
"""Vessels and drawn lesions are drawn at this multiple of the output size, then box-reduced."""

VESSEL_STEP = 0.022
"""Length of one vessel segment, in field radii."""

FOVEAL_AVASCULAR_RADIUS = 0.11
NOISE_MARGIN = 128
"""Pixels of slack in the cached noise tile, for a random crop offset per image."""


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Frame:
    """Maps anatomy coordinates (field radius = 1, right eye, disc towards +x) to pixels.

    Per-image pose variation lives here: mirroring for the left eye, rotation, zoom and
    an offset of the fixation point.
    """

    origin: np.ndarray  # (2,) pixel position of the anatomy origin
    matrix: np.ndarray  # (2, 2) rotation x zoom x mirror
    scale: float  # pixels per field radius

    def px(self, points: np.ndarray, factor: float = 1.0) -> np.ndarray:
        return (points @ self.matrix.T + self.origin) * factor


@dataclass(frozen=True)
class _Camera:
    """Where the circular field sits in the image and how the photo is exposed."""

    centre: np.ndarray  # (2,) pixels
    radius: float  # pixels
    band: float | None  # half-height of the sensor when it cuts the circle top and bottom
    exposure: float
    gains: np.ndarray  # (3,) colour cast
    gamma: float
    blur: float  # pixels
    haze: float  # bluish-white glare at one side of the rim
    haze_angle: float


@dataclass(frozen=True)
class _Anatomy:
    disc: np.ndarray
    disc_radius: float
    macula: np.ndarray


@dataclass
class _Vessel:
    points: np.ndarray  # (N, 2) anatomy coordinates
    width0: float  # at the start, in field radii
    width1: float  # at the end
    density: float  # optical density of the blood column, 0-1
    vein: bool


@dataclass
class _Scene:
    """One photo being drawn: its geometry and the layers the compositor blends onto the retina.

    The layers are at output size except ``canvas``, which is drawn at SUPERSAMPLE x.
    """

    frame: _Frame
    anatomy: _Anatomy
    veins: np.ndarray  # (2, N, 2) paths of the main temporal veins, where new vessels and sheen go
    canvas: Image.Image  # blood: vessels, flame and pre-retinal haemorrhages, new vessels
    draw: ImageDraw.ImageDraw
    blood: np.ndarray  # splatted red lesions (microaneurysms, dot/blot haemorrhages), dust
    exudate: np.ndarray  # hard exudates and drusen-like specks (yellow)
    cotton: np.ndarray  # cotton-wool spots and reflexes (pale white)
    lesion_scale: float = 1.0  # lesion size relative to the real one (>1 exaggerates, for low-resolution demos)

    @property
    def lesion_px(self) -> float:
        """Pixels per field radius for lesion sizes (positions use ``frame.scale``)."""
        return self.frame.scale * self.lesion_scale


@lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float32) + 0.5
    return centres[None, :], centres[:, None]


@lru_cache(maxsize=4)
def _noise_tile(size: int) -> np.ndarray:
    """Fine sensor/texture noise, cropped at a random offset per image (drawing it anew is slow)."""
    side = size + NOISE_MARGIN
    return np.random.default_rng(20150101).standard_normal((side, side)).astype(np.float32)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (tanh approximation, error < 2e-4), as numpy has no erf."""
    return 0.5 * (1.0 + np.tanh(0.7978845608 * (z + 0.044715 * z * z * z)))


def _splat(layer: np.ndarray, x: float, y: float, sigma: float, peak: float) -> None:
    """Add a Gaussian spot integrated over each pixel, so sub-pixel lesions fade, not vanish."""
    size = layer.shape[0]
    r = int(3.0 * sigma + 2.0)
    x0, y0 = max(int(x) - r, 0), max(int(y) - r, 0)
    x1, y1 = min(int(x) + r + 1, size), min(int(y) + r + 1, size)
    if x0 >= x1 or y0 >= y1:
        return
    wx = np.diff(_normal_cdf((np.arange(x0, x1 + 1, dtype=np.float32) - x) / sigma))
    wy = np.diff(_normal_cdf((np.arange(y0, y1 + 1, dtype=np.float32) - y) / sigma))
    layer[y0:y1, x0:x1] += (peak * 2.0 * math.pi * sigma * sigma) * np.outer(wy, wx)


def _unit(angle: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


# --------------------------------------------------------------------------- anatomy


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    """Disc about 0.6 field radii nasal of centre; macula 2.5 disc diameters temporal, a bit lower."""
    disc = np.array([rng.uniform(0.52, 0.68), rng.uniform(-0.07, 0.04)])
    disc_radius = rng.uniform(0.105, 0.135)
    macula = disc + [-5.0 * disc_radius * rng.uniform(0.88, 1.02), rng.uniform(0.03, 0.10)]
    return _Anatomy(disc, disc_radius, macula)


def _sprouts(x, y, heading, width, length, density, vein, depth, bend=0.0) -> np.ndarray:
    """Vessels still to grow, one row each: x, y, heading, width, length, density, vein, depth, bend."""
    columns = (x, y, heading, width, length, density, vein, depth, bend)
    rows = np.empty((max(np.size(c) for c in columns), len(columns)))
    for i, column in enumerate(columns):
        rows[:, i] = column
    return rows


def _grow(rng: np.random.Generator, sprouts: np.ndarray, macula: np.ndarray) -> list[_Vessel]:
    """Grow wandering, tapering vessels and their forks, one generation at a time (vectorised).

    A vessel stops at the foveal avascular zone or past the field; ``depth`` says how many
    generations of branches it still has.
    """
    vessels = []
    while len(sprouts):
        x, y, heading, width, length, density, vein, depth, bend = sprouts.T
        m = len(sprouts)
        steps = np.maximum(3, (length / VESSEL_STEP).astype(int))
        n = int(steps.max())
        heads = heading[:, None] + np.cumsum(rng.normal(0.0, 0.07, (m, n)) + bend[:, None], axis=1)
        pts = np.empty((m, n + 1, 2))
        pts[:, 0, 0], pts[:, 0, 1] = x, y
        pts[:, 1:, 0] = x[:, None] + VESSEL_STEP * np.cumsum(np.cos(heads), axis=1)
        pts[:, 1:, 1] = y[:, None] + VESSEL_STEP * np.cumsum(np.sin(heads), axis=1)
        off = pts - macula
        blocked = ((off[..., 0] ** 2 + off[..., 1] ** 2 < FOVEAL_AVASCULAR_RADIUS**2)
                   | (pts[..., 0] ** 2 + pts[..., 1] ** 2 > 1.1)
                   | (np.arange(n + 1) > steps[:, None]))
        blocked[:, 0] = False
        count = np.where(blocked.any(axis=1), blocked.argmax(axis=1), n + 1)
        end_width = width * rng.uniform(0.3, 0.5, m)
        for i in np.flatnonzero(count >= 2):
            vessels.append(_Vessel(pts[i, : count[i]], width[i], end_width[i], density[i], bool(vein[i])))
        forks = np.minimum(3, rng.poisson(0.5 + length / 0.25)) * ((depth > 0) & (end_width >= 0.004) & (count >= 4))
        parent = np.repeat(np.arange(m), forks)
        k = len(parent)
        j = 1 + (rng.uniform(0.25, 0.85, k) * (count[parent] - 2)).astype(int)
        t = j / (count[parent] - 1)
        turn = rng.choice([-1.0, 1.0], k) * np.radians(rng.uniform(20, 55, k))
        local = width[parent] + (end_width[parent] - width[parent]) * t
        sprouts = _sprouts(pts[parent, j, 0], pts[parent, j, 1], heads[parent, j - 1] + turn,
                           local * rng.uniform(0.55, 0.8, k),
                           length[parent] * (1 - t) * rng.uniform(0.6, 1.0, k) + 0.08,
                           density[parent] * rng.uniform(0.85, 0.97, k), vein[parent], depth[parent] - 1,
                           rng.normal(0.0, 0.012, k))
    return vessels


def _arcades(rng: np.random.Generator, anatomy: _Anatomy, vein_width: float, vein_density: float,
             artery_density: float) -> tuple[list[_Vessel], np.ndarray, np.ndarray]:
    """The four main temporal vessels (vein and artery, above and below the macula) and their branches.

    Each is a parabola from the disc opening temporally around the macula, with a wobble.
    Returns the vessels, the sprouts of their branches and the two vein paths.
    """
    side = np.array([-1.0, -1.0, 1.0, 1.0])
    vein = np.array([True, False, True, False])
    width = vein_width * np.where(vein, 1.0, rng.uniform(0.65, 0.8, 4))
    density = np.where(vein, vein_density, artery_density)
    t = np.linspace(0.0, 1.0, 44)
    y = side[:, None] * rng.uniform(0.8, 1.0, 4)[:, None] * t
    x = -(y * y) / rng.uniform(0.26, 0.40, 4)[:, None]
    start = anatomy.disc + anatomy.disc_radius * np.stack([rng.uniform(-0.3, 0.3, 4), 0.15 * side], axis=1)
    pts = start[:, None, :] + np.stack([x, y], axis=-1)
    tangent = np.gradient(pts, axis=1)
    tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
    normal = np.stack([-tangent[..., 1], tangent[..., 0]], axis=-1)
    amplitude, frequency, phase = (rng.uniform(lo, hi, (4, 3, 1)) for lo, hi in ((0.004, 0.016), (1.5, 4.5), (0, 6.3)))
    wobble = (amplitude * np.sin(2 * np.pi * frequency * t + phase)).sum(axis=1) * np.sqrt(t)
    pts += normal * wobble[..., None]
    vessels = [_Vessel(pts[i], width[i], width[i] * rng.uniform(0.35, 0.5), density[i], bool(vein[i]))
               for i in range(4)]

    a = np.repeat(np.arange(4), rng.integers(4, 8, 4))
    k = len(a)
    along = rng.uniform(0.1, 0.85, k)
    j = (along * (len(t) - 1)).astype(int)
    away = normal[a, j] * np.sign(np.sum(normal[a, j] * (pts[a, j] - anatomy.macula), axis=1))[:, None]
    inward = rng.random(k) < 0.35
    angle = np.radians(rng.uniform(30, 60, k))[:, None]
    direction = np.cos(angle) * tangent[a, j] + np.sin(angle) * np.where(inward[:, None], -away, away)
    sprouts = _sprouts(pts[a, j, 0], pts[a, j, 1], np.arctan2(direction[:, 1], direction[:, 0]),
                       width[a] * (1 - 0.55 * along) * rng.uniform(0.5, 0.75, k),
                       np.where(inward, rng.uniform(0.12, 0.3, k), rng.uniform(0.3, 0.6, k)),
                       density[a] * rng.uniform(0.85, 0.95, k), vein[a], np.where(inward, 1, 2))
    return vessels, sprouts, pts[vein]


def _vessel_tree(rng: np.random.Generator, anatomy: _Anatomy) -> tuple[list[_Vessel], np.ndarray]:
    """Arcades, two nasal trunk pairs and a few small nasal and macular vessels, all from the disc.

    Returns the vessels (veins first, so arteries cross over them) and the main vein paths.
    """
    vein_width = rng.uniform(0.019, 0.027)
    vein_density = rng.uniform(0.72, 0.88)
    artery_density = vein_density * rng.uniform(0.55, 0.7)
    vessels, arcade_branches, veins = _arcades(rng, anatomy, vein_width, vein_density, artery_density)
    disc_x, disc_y = anatomy.disc
    side = np.array([-1.0, -1.0, 1.0, 1.0])
    vein = np.array([1.0, 0.0, 1.0, 0.0])
    nasal = _sprouts(disc_x, disc_y, side * np.radians(rng.uniform(35, 80, 4)), vein_width * rng.uniform(0.5, 0.75, 4),
                     rng.uniform(0.45, 0.75, 4), np.where(vein > 0, vein_density, artery_density), vein, 2,
                     -side * rng.uniform(0.0, 0.02, 4))
    n = rng.integers(1, 4)
    small_nasal = _sprouts(disc_x, disc_y, np.radians(rng.uniform(-25, 25, n)), vein_width * rng.uniform(0.3, 0.45, n),
                           rng.uniform(0.25, 0.45, n), artery_density, 0.0, 1)
    n = rng.integers(1, 4)
    macular = _sprouts(disc_x, disc_y, np.pi + np.radians(rng.uniform(-25, 25, n)),
                       vein_width * rng.uniform(0.25, 0.4, n), rng.uniform(0.2, 0.4, n), artery_density, 0.0, 0)
    vessels += _grow(rng, np.concatenate([arcade_branches, nasal, small_nasal, macular]), anatomy.macula)
    vessels.sort(key=lambda v: not v.vein)
    return vessels, veins


def _draw_vessels(rng: np.random.Generator, scene: _Scene, vessels: list[_Vessel], beading: float) -> None:
    """Tapered polylines on the supersampled canvas; thinner than a pixel means fainter.

    ``beading`` > 0 (severe grades) adds irregular dilations to some of the large veins.
    """
    k = SUPERSAMPLE
    frame = scene.frame
    for vessel in vessels:
        pts = frame.px(vessel.points, k)
        w0, w1 = vessel.width0 * frame.scale * k, vessel.width1 * frame.scale * k
        pieces = 1 if w0 < 2.0 else min(4, len(pts) - 1)
        for i in range(pieces):
            w = w0 + (w1 - w0) * (i + 0.5) / pieces
            lo, hi = (len(pts) - 1) * i // pieces, (len(pts) - 1) * (i + 1) // pieces
            scene.draw.line(pts[lo : hi + 1].ravel().tolist(), fill=int(255 * vessel.density * min(1.0, w)),
                            width=max(1, round(w)))
        if beading and vessel.vein and vessel.width0 > 0.012 and rng.random() < 0.6:
            _draw_beads(rng, scene.draw, pts, vessel, frame.scale * k, beading)


def _draw_beads(rng: np.random.Generator, draw: ImageDraw.ImageDraw, pts: np.ndarray, vessel: _Vessel, scale: float,
                amount: float) -> None:
    """Venous beading: irregular sausage-like dilations along a stretch of the vein."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    width = vessel.width0 * scale
    at = arc[-1] * rng.uniform(0.1, 0.4) + np.cumsum(width * rng.uniform(2.0, 5.0, int(arc[-1] * 0.1 / width) + 1))
    at = at[at < arc[-1]]
    taper = 1 - (1 - vessel.width1 / vessel.width0) * at / arc[-1]
    radius = 0.5 * width * taper * (1 + amount * rng.uniform(0.5, 1.0, len(at)))
    fill = int(255 * vessel.density)
    for x, y, r in zip(np.interp(at, arc, pts[:, 0]), np.interp(at, arc, pts[:, 1]), radius):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


# --------------------------------------------------------------------------- lesions


def _points_near(rng: np.random.Generator, n: int, centre: np.ndarray, radius: float, anatomy: _Anatomy,
                 quadrant: int | None = None) -> np.ndarray:
    """``n`` points uniform in a disc (or one quadrant of it) inside the field and off the optic disc."""
    found = np.empty((0, 2))
    while len(found) < n:
        m = 3 * n + 8
        angle = rng.uniform(0, 2 * np.pi, m) if quadrant is None else rng.uniform(quadrant, quadrant + 1, m) * np.pi / 2
        pts = centre + radius * np.sqrt(rng.random(m))[:, None] * _unit(angle)
        ok = (np.hypot(*pts.T) < 0.93) & (np.hypot(*(pts - anatomy.disc).T) > 1.4 * anatomy.disc_radius)
        found = np.concatenate([found, pts[ok]])
    return found[:n]


def _scattered(rng: np.random.Generator, n: int, anatomy: _Anatomy, spread: float) -> np.ndarray:
    """Posterior-pole lesions; ``spread`` is the share thrown anywhere in the field instead."""
    far = rng.binomial(n, spread)
    return np.concatenate([_points_near(rng, n - far, anatomy.macula, 0.55, anatomy),
                           _points_near(rng, far, np.zeros(2), 0.95, anatomy)])


def _all_quadrants(rng: np.random.Generator, per_quadrant: Sequence[int], anatomy: _Anatomy) -> np.ndarray:
    return np.concatenate([_points_near(rng, n, anatomy.macula, 0.9, anatomy, quadrant=q)
                           for q, n in enumerate(per_quadrant)])


def _microaneurysms(rng: np.random.Generator, scene: _Scene, pts: np.ndarray, contrast: float) -> None:
    """Tiny dark-red dots, 1-3 px across at 512 px: single faint pixels at 128 px."""
    scale = scene.lesion_px
    for x, y in scene.frame.px(pts):
        _splat(scene.blood, x, y, scale * rng.uniform(0.0028, 0.005), (0.5 + 0.5 * contrast) * rng.uniform(0.7, 1.0))


def _haemorrhages(rng: np.random.Generator, scene: _Scene, pts: np.ndarray, contrast: float,
                  blot_share: float) -> None:
    """Dot haemorrhages (round) and blots (a few overlapping spots with ragged outline)."""
    scale = scene.lesion_px
    for x, y in scene.frame.px(pts):
        if rng.random() < blot_share:
            spread = scale * rng.uniform(0.008, 0.02)
            for _ in range(rng.integers(3, 7)):
                dx, dy = rng.normal(0, spread, 2)
                _splat(scene.blood, x + dx, y + dy, scale * rng.uniform(0.007, 0.015),
                       contrast * rng.uniform(0.35, 0.7))
        else:
            _splat(scene.blood, x, y, scale * rng.uniform(0.005, 0.011), contrast * rng.uniform(0.6, 1.0))


def _flame_haemorrhages(rng: np.random.Generator, scene: _Scene, pts: np.ndarray, contrast: float) -> None:
    """Streaks along the nerve fibres, i.e. roughly radial from the disc."""
    k = SUPERSAMPLE
    for p in pts:
        radial = (p - scene.anatomy.disc) / np.linalg.norm(p - scene.anatomy.disc)
        half = radial * rng.uniform(0.012, 0.028) * scene.lesion_scale
        ends = scene.frame.px(np.stack([p - half, p + half]), k)
        width = max(1, round(scene.lesion_px * k * rng.uniform(0.008, 0.015)))
        scene.draw.line(ends.ravel().tolist(), fill=int(255 * contrast * rng.uniform(0.55, 0.8)), width=width)


def _exudate_clusters(rng: np.random.Generator, scene: _Scene, clusters: int, dots: int, contrast: float) -> None:
    """Hard exudates: small sharp yellow deposits, in clumps or partial (circinate) rings."""
    for centre in _points_near(rng, clusters, scene.anatomy.macula, 0.45, scene.anatomy):
        ring = rng.uniform(0.025, 0.09)
        start, extent = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0) * 2 * np.pi
        angle = start + extent * rng.random(dots)
        radius = ring * (1 + rng.normal(0, 0.18, dots)) if rng.random() < 0.6 else ring * np.sqrt(rng.random(dots))
        for x, y in scene.frame.px(centre + radius[:, None] * _unit(angle)):
            _splat(scene.exudate, x, y, scene.lesion_px * rng.uniform(0.0025, 0.0065),
                   contrast * rng.uniform(0.7, 1.3))


def _cotton_wool(rng: np.random.Generator, scene: _Scene, n: int, contrast: float) -> None:
    """Fluffy pale-white patches near the arcades."""
    scale = scene.lesion_px
    for x, y in scene.frame.px(_points_near(rng, n, scene.anatomy.macula, 0.6, scene.anatomy)):
        spread = scale * rng.uniform(0.01, 0.02)
        for _ in range(rng.integers(4, 9)):
            dx, dy = rng.normal(0, spread, 2)
            _splat(scene.cotton, x + dx, y + dy, scale * rng.uniform(0.008, 0.02), contrast * rng.uniform(0.08, 0.18))


def _new_vessels(rng: np.random.Generator, scene: _Scene, centre: np.ndarray, radius: float, contrast: float) -> None:
    """Neovascularisation: a tangle of fine looping vessels."""
    k = SUPERSAMPLE
    for _ in range(rng.integers(12, 30)):
        n = rng.integers(8, 20)
        start = centre + radius * np.sqrt(rng.random()) * _unit(rng.uniform(0, 2 * np.pi))
        headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.7, n))
        pts = start + np.cumsum(radius * 0.18 * _unit(headings), axis=0)
        width = max(1, round(scene.lesion_px * k * rng.uniform(0.003, 0.006)))
        scene.draw.line(scene.frame.px(pts, k).ravel().tolist(), fill=int(255 * contrast * rng.uniform(0.55, 0.85)),
                        width=width)


def _preretinal(rng: np.random.Generator, scene: _Scene, contrast: float) -> None:
    """Boat-shaped haemorrhage: flat top (the blood level, horizontal in the image), round bottom."""
    k = SUPERSAMPLE
    x, y = scene.frame.px(_points_near(rng, 1, scene.anatomy.macula, 0.55, scene.anatomy))[0] * k
    a = scene.lesion_px * k * rng.uniform(0.05, 0.12)
    b = a * rng.uniform(0.6, 1.0)
    theta = np.linspace(0, np.pi, 24)
    ragged = 1 + rng.normal(0, 0.04, 24)
    outline = np.stack([x + a * ragged * np.cos(theta), y + b * ragged * np.sin(theta)], axis=1)
    scene.draw.polygon(outline.ravel().tolist(), fill=int(255 * (0.45 + 0.3 * contrast)))


def _mild(rng: np.random.Generator, scene: _Scene, severity: float, contrast: float) -> None:
    """Grade 1: microaneurysms only, one to five."""
    pts = _scattered(rng, 1 + rng.binomial(4, 0.3 + 0.4 * severity), scene.anatomy, 0.15)
    _microaneurysms(rng, scene, pts, contrast)


def _moderate(rng: np.random.Generator, scene: _Scene, severity: float, contrast: float) -> None:
    """Grade 2: more microaneurysms, some haemorrhages, often hard exudates, rarely a cotton-wool spot."""
    anatomy = scene.anatomy
    _microaneurysms(rng, scene, _scattered(rng, 2 + rng.poisson(3 + 10 * severity), anatomy, 0.25), contrast)
    _haemorrhages(rng, scene, _scattered(rng, 1 + rng.poisson(1.5 + 8 * severity), anatomy, 0.3), contrast, 0.3)
    if rng.random() < 0.55:
        _exudate_clusters(rng, scene, 1 + rng.binomial(1, 0.3), 3 + rng.poisson(4 + 8 * severity), contrast)
    if rng.random() < 0.15:
        _cotton_wool(rng, scene, 1, contrast)


def _severe(rng: np.random.Generator, scene: _Scene, severity: float, contrast: float) -> None:
    """Grade 3: haemorrhages in all four quadrants, cotton-wool spots, exudates (beading is drawn with the veins).

    The fewest haemorrhages here overlap with the most in grade 2.
    """
    anatomy = scene.anatomy
    _microaneurysms(rng, scene, _scattered(rng, 8 + rng.poisson(10 + 15 * severity), anatomy, 0.5), contrast)
    per_quadrant = 2 + rng.poisson(1 + 6 * severity, 4)
    _haemorrhages(rng, scene, _all_quadrants(rng, per_quadrant, anatomy), contrast, 0.5)
    _flame_haemorrhages(rng, scene, _scattered(rng, rng.poisson(1 + 3 * severity), anatomy, 0.3), contrast)
    if rng.random() < 0.6:
        _exudate_clusters(rng, scene, rng.integers(1, 4), 4 + rng.poisson(6 + 8 * severity), contrast)
    if rng.random() < 0.75:
        _cotton_wool(rng, scene, 1 + rng.poisson(1 + 2 * severity), contrast)


def _proliferative(rng: np.random.Generator, scene: _Scene, severity: float, contrast: float) -> None:
    """Grade 4: new vessels at the disc and/or along an arcade, sometimes a pre-retinal haemorrhage,
    usually over severe (else moderate) background retinopathy."""
    if rng.random() < 0.3:
        _moderate(rng, scene, max(severity, 0.5), contrast)
    else:
        _severe(rng, scene, severity, contrast)
    at_disc = rng.random() < 0.6
    if at_disc:
        _new_vessels(rng, scene, scene.anatomy.disc, 1.4 * scene.anatomy.disc_radius, contrast)
    if not at_disc or rng.random() < 0.3:
        path = scene.veins[rng.integers(len(scene.veins))]
        site = path[rng.integers(len(path) // 4, 3 * len(path) // 4)]
        _new_vessels(rng, scene, site, rng.uniform(0.05, 0.1), contrast)
    if rng.random() < 0.35:
        _preretinal(rng, scene, contrast)


_LESIONS_BY_GRADE = {1: _mild, 2: _moderate, 3: _severe, 4: _proliferative}


def _add_normal_variation(rng: np.random.Generator, scene: _Scene) -> None:
    """Things healthy eyes show too (reflexes, dust, specks), so 'no lesion' is not trivially visible."""
    frame, anatomy = scene.frame, scene.anatomy
    if rng.random() < 0.35:  # nerve-fibre sheen along the arcades (young eyes)
        for path in scene.veins:
            for x, y in frame.px(path[5 : len(path) // 2 : 3]):
                _splat(scene.cotton, x, y, frame.scale * rng.uniform(0.02, 0.04), rng.uniform(0.03, 0.09))
    if rng.random() < 0.5:  # foveal reflex
        x, y = frame.px(anatomy.macula)
        _splat(scene.cotton, x, y, frame.scale * rng.uniform(0.004, 0.008), rng.uniform(0.2, 0.5))
    if rng.random() < 0.3:  # dust on the lens: soft dark spots
        for x, y in frame.px(_points_near(rng, rng.integers(1, 4), np.zeros(2), 0.9, anatomy)):
            _splat(scene.blood, x, y, scene.lesion_px * rng.uniform(0.008, 0.02), rng.uniform(0.1, 0.25))
    if rng.random() < 0.2:  # small pale specks (drusen-like)
        for x, y in frame.px(_points_near(rng, rng.integers(1, 5), anatomy.macula, 0.5, anatomy)):
            _splat(scene.exudate, x, y, scene.lesion_px * rng.uniform(0.003, 0.006), rng.uniform(0.2, 0.5))


# --------------------------------------------------------------------------- rendering


def _camera(rng: np.random.Generator, size: int, eye: str) -> tuple[_Frame, _Camera]:
    """Field placement, anatomy pose (mirrored for the left eye) and exposure for one photo."""
    centre = size / 2 + rng.normal(0, 0.01 * size, 2)
    radius = size * rng.uniform(0.455, 0.53)
    angle = np.radians(np.clip(rng.normal(0, 6), -12, 12))
    scale = radius * rng.uniform(0.92, 1.08)
    mirror = -1.0 if eye == "left" else 1.0
    cos, sin = np.cos(angle), np.sin(angle)
    frame = _Frame(centre + rng.normal(0, 0.04, 2) * radius,
                   scale * np.array([[cos * mirror, -sin], [sin * mirror, cos]]), scale)
    defocused = rng.random() < 0.15
    camera = _Camera(
        centre=centre,
        radius=radius,
        band=radius * rng.uniform(0.82, 0.95) if rng.random() < 0.35 else None,
        exposure=rng.uniform(0.75, 1.3),
        gains=rng.uniform(0.88, 1.12, 3),
        gamma=rng.uniform(0.8, 1.15),
        blur=(size / 256) * (rng.uniform(0.8, 1.8) if defocused else rng.uniform(0.15, 0.7)),
        haze=rng.uniform(0.1, 0.35) if rng.random() < 0.4 else 0.0,
        haze_angle=rng.uniform(0, 2 * np.pi),
    )
    return frame, camera


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uneven illumination plus mottled choroidal texture: coarse noise grids, smoothly resized.

    The grids do not depend on ``size``, so one seed gives the same eye at every size.
    """
    cells = 64
    coarse = Image.fromarray(rng.standard_normal((6, 6)).astype(np.float32), mode="F")
    grid = rng.uniform(0.04, 0.1) * np.asarray(coarse.resize((cells, cells), Image.BICUBIC))
    grid += rng.uniform(0.01, 0.035) * rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))


def _retina(rng: np.random.Generator, camera: _Camera, frame: _Frame, anatomy: _Anatomy,
            dx: np.ndarray, dy: np.ndarray, rho2: np.ndarray) -> np.ndarray:
    """Orange-red retina, darker towards the rim and at the macula, as (3, H, W) float32.

    Channels come first throughout the compositing: numpy broadcasts far faster that way.
    """
    size = rho2.shape[0]
    light = 1.0 - np.float32(rng.uniform(0.15, 0.35)) * rho2 - np.float32(rng.uniform(0.1, 0.3)) * rho2 * rho2
    gx, gy = rng.normal(0, 0.08, 2) / camera.radius
    light += np.float32(gx) * dx + np.float32(gy) * dy
    light += _texture(rng, size)
    ox, oy = rng.integers(0, NOISE_MARGIN, 2)
    light += np.float32(rng.uniform(0.01, 0.025)) * _noise_tile(size)[oy : oy + size, ox : ox + size]
    np.maximum(light, 0, out=light)  # noise can dip below zero at the rim
    _macula(rng, light, frame, anatomy)
    red = rng.uniform(0.78, 0.95)
    colour = np.array([red, red * rng.uniform(0.36, 0.5), red * rng.uniform(0.12, 0.24)], dtype=np.float32)
    return light[None] * colour[:, None, None]


def _patch(size: int, centre: np.ndarray, radius: float):
    """Slices and offsets (dx a row, dy a column) of a square patch around ``centre``: cheaper than the image."""
    x0, y0 = (max(int(c - radius), 0) for c in centre)
    x1, y1 = (min(int(c + radius) + 1, size) for c in centre)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - centre[0])
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - centre[1])
    return (slice(y0, y1), slice(x0, x1)), dx, dy


def _macula(rng: np.random.Generator, light: np.ndarray, frame: _Frame, anatomy: _Anatomy) -> None:
    """Darker macula with a darker foveal pit at its centre."""
    sigma = frame.scale * anatomy.disc_radius * rng.uniform(0.9, 1.4)
    where, dx, dy = _patch(light.shape[0], frame.px(anatomy.macula), 3.5 * sigma)
    d2 = dx * dx + dy * dy
    fovea = sigma * 0.25
    light[where] *= (1 - rng.uniform(0.2, 0.45) * np.exp(-d2 / (2 * sigma * sigma))
                     - rng.uniform(0.03, 0.12) * np.exp(-d2 / (2 * fovea * fovea)))


def _optic_disc(rng: np.random.Generator, img: np.ndarray, frame: _Frame, anatomy: _Anatomy) -> None:
    """Yellowish disc, slightly oval with a sharp-ish margin, and a paler cup a little temporal of centre."""
    radius = frame.scale * anatomy.disc_radius
    centre = frame.px(anatomy.disc)
    where, dx, dy = _patch(img.shape[1], centre, 1.6 * radius)
    d = np.sqrt(dx * dx + (dy / np.float32(rng.uniform(1.0, 1.12))) ** 2) / np.float32(radius)
    alpha = np.clip((1.05 - d) / 0.18, 0, 1) * np.float32(rng.uniform(0.65, 0.85))
    colour = np.array([1.0, rng.uniform(0.6, 0.72), rng.uniform(0.36, 0.48)], np.float32) * rng.uniform(0.8, 0.95)
    cup_x, cup_y = frame.px(anatomy.disc - [anatomy.disc_radius * 0.15, 0]) - centre
    cup_sigma = radius * rng.uniform(0.25, 0.45)
    cup = np.exp(-((dx - cup_x) ** 2 + (dy - cup_y) ** 2) / np.float32(2 * cup_sigma * cup_sigma))
    target = colour[:, None, None] + np.float32(rng.uniform(0.15, 0.35)) * cup * np.array([[[0.5]], [[0.9]], [[1.0]]],
                                                                                        np.float32)
    patch = img[(slice(None), *where)]
    patch += alpha * (target - patch)


def _expose(rng: np.random.Generator, img: np.ndarray, scene: _Scene, camera: _Camera,
            dx: np.ndarray, dy: np.ndarray, rho2: np.ndarray) -> np.ndarray:
    """Blend the scene's layers in, cut out the camera field, then exposure, colour cast and focus blur."""
    size = img.shape[1]
    density = np.asarray(scene.canvas.reduce(SUPERSAMPLE), dtype=np.float32) * np.float32(1 / 255)
    density += scene.blood
    np.clip(density, 0, 1, out=density)
    absorb = np.array([rng.uniform(0.45, 0.6), rng.uniform(0.8, 0.9), rng.uniform(0.7, 0.85)], np.float32)
    img *= 1 - density * absorb[:, None, None]
    for layer, colour in ((scene.exudate, (1.1, 0.97, 0.5)), (scene.cotton, (1.05, 1.0, 0.9))):
        rows, cols = np.flatnonzero(layer.any(axis=1)), np.flatnonzero(layer.any(axis=0))
        if len(rows):  # blend only the bounding box of the (sparse) spots
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            part = img[(slice(None), *box)]
            part += np.clip(layer[box], 0, 0.75) * (np.array(colour, np.float32)[:, None, None] - part)
    rho = np.sqrt(rho2)
    edge = max(1.5 * size / 256, 0.75)
    field = np.clip((1 - rho) * np.float32(camera.radius / edge), 0, 1)
    if camera.band is not None:
        field *= np.clip((np.float32(camera.band) - np.abs(dy)) / np.float32(edge), 0, 1)
    if camera.haze:
        toward = dx * np.float32(np.cos(camera.haze_angle)) + dy * np.float32(np.sin(camera.haze_angle))
        rim = np.clip((rho - 0.7) / 0.3, 0, 1)
        ramp = rim * rim * np.clip(0.5 + toward / np.float32(2 * camera.radius), 0, 1)
        img += (np.float32(camera.haze) * ramp) * np.array([[[0.45]], [[0.6]], [[0.75]]], np.float32)
    img *= field * np.float32(200)  # every term is >= 0, so only the top needs clipping
    pixels = Image.merge("RGB", [Image.fromarray(channel) for channel in np.minimum(img, 255).astype(np.uint8)])
    levels = np.clip(np.arange(256) / 200 * camera.exposure * camera.gains[:, None], 0, 1) ** camera.gamma
    pixels = pixels.point(np.round(255 * levels).astype(int).ravel().tolist())
    box = (camera.blur * math.sqrt(12) - 1) / 2  # a box of width 2r+1 has this standard deviation
    if box > 0.05:
        pixels = pixels.filter(ImageFilter.BoxBlur(box))
    return np.asarray(pixels)


LESION_LEVEL = 0.05  # a pixel whose lesion layers rose by more than this belongs to the lesion mask


def render_fundus(grade: int, size: int, rng: np.random.Generator, eye: str | None = None,
                  lesion_scale: float = 1.0, with_mask: bool = False):
    """One synthetic fundus photo of ``grade`` as an (H, W, 3) uint8 array (and its lesion mask).

    With ``with_mask`` it returns ``(pixels, mask)``: a boolean (H, W) array, True where the lesions
    of the grade (not the normal variation, not the vessels) were drawn, inside the camera field.
    The mask is read off the drawing layers and draws nothing at random, so the photo is the same.

    The rng is split into four streams (camera, anatomy, normal variation, lesions), so the
    same rng state gives the same eye and photo for every grade: only the lesions differ.
    ``eye`` is ``"left"`` (disc on the left) or ``"right"``; None picks one from the rng.
    ``lesion_scale`` draws lesions (and lesion-like specks) that many times their real size:
    real lesions are sub-pixel at the 64-128 px a CPU can train at, so a quick demo exaggerates.
    """
    if grade not in GRADES:
        raise RetinoError(f"grade {grade!r} is not one of {GRADES}")
    if not 32 <= size <= 4096:
        raise RetinoError(f"image size {size!r} px is out of range: use 32 to 4096")
    if eye not in (None, "left", "right"):
        raise RetinoError(f"eye {eye!r} is not 'left' or 'right'")
    cam_rng, anatomy_rng, normal_rng, lesion_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 4))
    if eye is None:
        eye = "left" if cam_rng.random() < 0.5 else "right"
    frame, camera = _camera(cam_rng, size, eye)
    anatomy = _anatomy(anatomy_rng)
    vessels, veins = _vessel_tree(anatomy_rng, anatomy)
    canvas = Image.new("L", (size * SUPERSAMPLE,) * 2)
    scene = _Scene(frame, anatomy, veins, canvas, ImageDraw.Draw(canvas),
                   *(np.zeros((size, size), np.float32) for _ in range(3)), lesion_scale=lesion_scale)
    beading = lesion_rng.uniform(0.3, 0.7) if grade >= 3 and lesion_rng.random() < 0.6 else 0.0
    _draw_vessels(lesion_rng, scene, vessels, beading)
    _add_normal_variation(normal_rng, scene)
    before = _lesion_layers(scene) if with_mask else None
    if grade > 0:
        severity, contrast = lesion_rng.random(), lesion_rng.uniform(0.5, 1.0)
        _LESIONS_BY_GRADE[grade](lesion_rng, scene, severity, contrast)
    xs, ys = _pixel_grid(size)
    dx, dy = xs - np.float32(camera.centre[0]), ys - np.float32(camera.centre[1])
    rho2 = (dx * dx + dy * dy) * np.float32(1 / camera.radius**2)
    img = _retina(anatomy_rng, camera, frame, anatomy, dx, dy, rho2)
    _optic_disc(anatomy_rng, img, frame, anatomy)
    pixels = _expose(cam_rng, img, scene, camera, dx, dy, rho2)
    if not with_mask:
        return pixels
    grown = np.max([after - earlier for after, earlier in zip(_lesion_layers(scene), before)], axis=0)
    in_field = rho2 < 1
    if camera.band is not None:
        in_field &= np.abs(dy) < np.float32(camera.band)
    return pixels, (grown > LESION_LEVEL) & in_field


def _lesion_layers(scene: _Scene) -> list[np.ndarray]:
    """Copies of the layers lesions are drawn into, at output size (the blood canvas reduced)."""
    canvas = np.asarray(scene.canvas.reduce(SUPERSAMPLE), dtype=np.float32) * np.float32(1 / 255)
    return [canvas, scene.blood.copy(), scene.exudate.copy(), scene.cotton.copy()]
