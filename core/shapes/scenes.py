"""Scenes: one world shape anywhere on a canvas of any size, as photos in a real dataset are.

The base model's world (``world.iter_world``) is 64x64 with the shape near the centre. A
tagger must read pictures users bring (larger, not square, shape off-centre, JPEG), and the
demo dataset must give the preprocessing steps something to crop and resize, so both draw
from here. Seeded: the same ``random.Random`` state gives the same scene.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from core.shapes.world import ALL_PALETTE, SHAPES, TRIANGLE_SCALE, ShapeParams, render_scene

# Margin between the shape's circumradius and the canvas edge, as a share of the short side:
# the checker ignores a ring 3-6 px inside the border, and a cropped shape is another shape.
EDGE_MARGIN = 0.1


@dataclass(frozen=True)
class SceneRanges:
    """What a random scene varies: canvas sides (px), share of square canvases, shape size as a
    share of the short side (circumradius), rotation (± degrees)."""

    side_min: int = 64
    side_max: int = 192
    square_share: float = 0.4
    max_aspect: float = 2.0
    size_min: float = 0.16
    size_max: float = 0.32
    rotation: float = 180.0


@dataclass
class Scene:
    image: Image.Image
    color: str
    shape: str
    background: str
    params: ShapeParams


def random_canvas(rng: random.Random, ranges: SceneRanges) -> tuple[int, int]:
    if rng.random() < ranges.square_share:
        side = rng.randint(ranges.side_min, ranges.side_max)
        return side, side
    long_side = rng.randint(ranges.side_min, ranges.side_max)
    short_side = max(ranges.side_min, round(long_side / rng.uniform(1.15, ranges.max_aspect)))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def random_params_on(rng: random.Random, width: int, height: int, ranges: SceneRanges) -> ShapeParams:
    """A shape of random size, anywhere it fits whole (off-centre as often as not)."""
    short = min(width, height)
    size = rng.uniform(ranges.size_min, ranges.size_max) * short
    reach = size * TRIANGLE_SCALE + EDGE_MARGIN * short  # the triangle reaches farthest
    cx = rng.uniform(reach, width - reach) if width > 2 * reach else width / 2
    cy = rng.uniform(reach, height - reach) if height > 2 * reach else height / 2
    return ShapeParams(cx, cy, size, rng.uniform(-ranges.rotation, ranges.rotation))


def random_scene(
    rng: random.Random,
    colors: Sequence[str] = tuple(ALL_PALETTE),
    backgrounds: Sequence[str] = tuple(ALL_PALETTE),
    shapes: Sequence[str] = SHAPES,
    ranges: SceneRanges = SceneRanges(),
) -> Scene:
    """One scene: the shape's colour from ``colors``, the background from ``backgrounds`` (never
    the same colour), both canvas and placement random within ``ranges``."""
    color = rng.choice(list(colors))
    background = rng.choice([b for b in backgrounds if b != color])
    shape = rng.choice(list(shapes))
    width, height = random_canvas(rng, ranges)
    params = random_params_on(rng, width, height, ranges)
    return Scene(render_scene(shape, color, background, params, width, height), color, shape, background, params)
