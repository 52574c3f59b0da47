"""Reads a Shapes-world picture back: background colour, shape colour, shape class.

Works on the world's own renders and on generated pictures alike, so tests can prove
that a prompt's words reached the pixels. Geometry, not learning: the background is the
median of a ring just inside the border (VAEs smear a 2-3 px frame of another colour along
the edge), the shape is every pixel far from that colour, and its class comes from how
much of the circle around its centroid it fills — unchanged by rotation.

``concepts=True`` also reads the world's concept colours (``CONCEPT_PALETTE``: orange), for
judging a LoRA or embedding of the concept. Off by default, so the base model's evaluation
maps every picture to the six colours it was trained on, exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.shapes.world import ALL_PALETTE, PALETTE

PALETTE_NAMES = tuple(PALETTE)
PALETTE_RGB = np.array([PALETTE[n] for n in PALETTE_NAMES], dtype=np.float32)
CONCEPT_NAMES = tuple(ALL_PALETTE)  # the base palette, then the concept colours
CONCEPT_RGB = np.array([ALL_PALETTE[n] for n in CONCEPT_NAMES], dtype=np.float32)

RING_OUTER = 3  # skip the outermost 3 pixels
RING_WIDTH = 3
MIN_SHAPE_FRACTION = 0.01  # fewer shape pixels than this: "no shape"

# How much of the circle around the shape's centroid (radius: its farthest pixel) the shape
# fills: circle 1, square 2/π ≈ 0.64, equilateral triangle 3√3/4π ≈ 0.41. Unchanged by
# rotation and far less sensitive to pixelation than perimeter-based measures.
DISC_FILL = {"circle": 1.0, "square": 2 / math.pi, "triangle": 3 * math.sqrt(3) / (4 * math.pi)}
CIRCLE_SQUARE_SPLIT = 0.80
SQUARE_TRIANGLE_SPLIT = 0.52


@dataclass(frozen=True)
class Expected:
    color: str
    shape: str
    background: str


@dataclass(frozen=True)
class CheckResult:
    background: str
    color: str | None  # None when no shape was found
    shape: str | None
    background_confidence: float  # 0..1 margin between the nearest and second palette colour
    color_confidence: float
    shape_confidence: float  # 0..1 distance of the disc fill from the nearest decision boundary
    disc_fill: float  # shape area / area of the centroid-centred circle through its farthest pixel
    solidity: float  # shape area / convex hull area (1 for convex shapes; blobs score lower)
    shape_fraction: float  # share of the picture the shape covers


def nearest_palette(rgb: np.ndarray, concepts: bool = False) -> tuple[str, float]:
    """Nearest palette name and a 0..1 margin (1: on the colour, 0: halfway to the next);
    ``concepts``: the concept colours count too."""
    names, table = (CONCEPT_NAMES, CONCEPT_RGB) if concepts else (PALETTE_NAMES, PALETTE_RGB)
    distances = np.linalg.norm(table - rgb.astype(np.float32), axis=1)
    first, second = np.argsort(distances)[:2]
    margin = 1.0 - distances[first] / max(distances[second], 1e-6)
    return names[first], float(np.clip(margin, 0.0, 1.0))


def ring_pixels(array: np.ndarray, outer: int = RING_OUTER, width: int = RING_WIDTH) -> np.ndarray:
    h, w = array.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    mask[outer : h - outer, outer : w - outer] = True
    inner = outer + width
    mask[inner : h - inner, inner : w - inner] = False
    return array[mask]


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; ``points`` (N, 2) → hull vertices counter-clockwise."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return pts

    def half(sequence: np.ndarray) -> list:
        chain: list = []
        for p in sequence:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _cross(o, a, b) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def polygon_area_perimeter(vertices: np.ndarray) -> tuple[float, float]:
    if len(vertices) < 3:
        return 0.0, 0.0
    x, y = vertices[:, 0], vertices[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    perimeter = float(np.linalg.norm(vertices - np.roll(vertices, -1, axis=0), axis=1).sum())
    return area, perimeter


def shape_mask(array: np.ndarray, background_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape pixels (distance from the background above half the largest distance) and
    the per-pixel coverage in 0..1 that anti-aliased edges carry."""
    distance = np.linalg.norm(array - background_rgb, axis=2)
    inner = distance[RING_OUTER:-RING_OUTER, RING_OUTER:-RING_OUTER]
    peak = float(np.percentile(inner, 99.5))
    if peak < 60.0:  # nothing stands out from the background
        return np.zeros(distance.shape, dtype=bool), np.zeros(distance.shape, dtype=np.float32)
    coverage = np.clip(distance / peak, 0.0, 1.0)
    # The world keeps shapes clear of the outer frame, where VAEs smear other colours.
    coverage[:RING_OUTER, :] = coverage[-RING_OUTER:, :] = 0.0
    coverage[:, :RING_OUTER] = coverage[:, -RING_OUTER:] = 0.0
    return coverage > 0.5, coverage


def classify_geometry(mask: np.ndarray) -> tuple[str, float, float, float]:
    """(shape, confidence, disc fill, solidity) from a boolean mask."""
    ys, xs = np.nonzero(mask)
    area = float(len(ys))
    radius = float(np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max()) + 0.5
    fill = area / (math.pi * radius**2)
    # Each pixel contributes its four corners, so the hull encloses whole pixels.
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    hull_area, _ = polygon_area_perimeter(convex_hull(corners).astype(np.float64))
    solidity = area / max(hull_area, 1e-6)
    if fill >= CIRCLE_SQUARE_SPLIT:
        shape, lo, hi = "circle", CIRCLE_SQUARE_SPLIT, 2 * DISC_FILL["circle"] - CIRCLE_SQUARE_SPLIT
    elif fill >= SQUARE_TRIANGLE_SPLIT:
        shape, lo, hi = "square", SQUARE_TRIANGLE_SPLIT, CIRCLE_SQUARE_SPLIT
    else:
        shape, lo, hi = "triangle", 2 * DISC_FILL["triangle"] - SQUARE_TRIANGLE_SPLIT, SQUARE_TRIANGLE_SPLIT
    half_width = (hi - lo) / 2
    confidence = float(np.clip(1.0 - abs(fill - (lo + hi) / 2) / half_width, 0.0, 1.0))
    return shape, confidence, fill, solidity


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region: generated pictures can carry specks elsewhere."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_label else mask


def check_image(image: Image.Image, concepts: bool = False) -> CheckResult:
    """Background, shape colour and class of one picture; ``concepts``: colours may also be the
    world's concept colours (orange), else only the base palette's six."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    background_rgb = np.median(ring_pixels(array), axis=0)
    background, background_confidence = nearest_palette(background_rgb, concepts)
    mask, coverage = shape_mask(array, background_rgb)
    fraction = float(mask.mean())
    if fraction < MIN_SHAPE_FRACTION:
        return CheckResult(background, None, None, background_confidence, 0.0, 0.0, 0.0, 0.0, fraction)
    mask = largest_component(mask)
    # The colour comes from the shape's core, away from edge pixels mixed with background.
    core = mask & (coverage > 0.8)
    color_rgb = np.median(array[core if core.any() else mask], axis=0)
    color, color_confidence = nearest_palette(color_rgb, concepts)
    shape, shape_confidence, fill, solidity = classify_geometry(mask)
    return CheckResult(
        background, color, shape, background_confidence, color_confidence, shape_confidence, fill, solidity, fraction
    )


def score(results: Sequence[CheckResult], expected: Sequence[Expected]) -> dict[str, float]:
    """Accuracy per attribute, and of all three at once."""
    if len(results) != len(expected):
        raise ValueError(f"{len(results)} results for {len(expected)} expectations")
    n = max(len(results), 1)
    hits = {"background": 0, "color": 0, "shape": 0, "all": 0}
    for result, want in zip(results, expected):
        ok = (result.background == want.background, result.color == want.color, result.shape == want.shape)
        hits["background"] += ok[0]
        hits["color"] += ok[1]
        hits["shape"] += ok[2]
        hits["all"] += all(ok)
    return {key: value / n for key, value in hits.items()}
