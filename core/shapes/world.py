"""The Shapes world: seeded pictures of one shape on a plain background, with captions.

Everything here is deterministic from a seed, so the built-in model's recipe, the tests
and later tools (dataset writer, tagger, LoRA trainer) all see the same pictures.
Captions read exactly "a red circle on a blue background".

The new concept (issue #19): the colour **orange**, RGB (230, 125, 30), in ``CONCEPT_PALETTE``,
a table apart from ``PALETTE``. The base model is trained and evaluated on ``PALETTE`` only, so
it never sees the word or the colour; the demo dataset, the Shapes tagger and the checker (with
``concepts=True``) know it, which is what a LoRA or an embedding must teach. Why a colour and
not a new shape such as a star: the shipped model follows colour words (0.91 in the first
measurements, see SHAPES-NOTES) but shape words barely above chance, so a colour is a concept a
LoRA trained for minutes can be shown to learn, and the checker reads colour by nearest RGB,
which is robust on blurry generated pictures. Why orange (``python -m core.shapes.colour_study``,
table in core/shapes/concept_lora.py): a LoRA trains the U-Net only, so the concept must be a
colour the shipped VAE decodes faithfully, and this VAE, trained on the palette alone, does so
only near the palette's colours. Every colour ≥ 150 from the palette fails the round trip
(magenta (230, 60, 200) comes back as (208, 187, 106), cyan as blue, purple as teal); orange
comes back within 18 on average (32 at worst) and is 96 from red and 95 from yellow, more from
the rest, which the checker still tells apart: 2 % of the base model's own palette pictures
read as orange.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from core.errors import InvalidParameterError
from core.fileio import atomic_write_text

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # draw at 4x and downscale: anti-aliased edges like a real photo of a shape
# Per-shape radius factors that give the three shapes about the same area (circle 2.3 r²,
# square 2 r², triangle 1.9 r² for circumradius r), so area alone never tells them apart.
CIRCLE_SCALE = 0.85
TRIANGLE_SCALE = 1.2

# Saturated, far-apart RGB values: every pair differs by more than 150 in RGB distance,
# so a blurry generated picture still maps to the right name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
# Colours the world can draw but the base model's training and evaluation never use (see the
# module docstring); ≥ 95 RGB distance from each PALETTE colour (not the palette's 150: the
# shipped VAE decodes no colour that far from the palette, see core/shapes/colour_study.py).
CONCEPT_PALETTE: dict[str, tuple[int, int, int]] = {
    "orange": (230, 125, 30),
}
CONCEPT_COLORS: tuple[str, ...] = tuple(CONCEPT_PALETTE)
ALL_PALETTE: dict[str, tuple[int, int, int]] = {**PALETTE, **CONCEPT_PALETTE}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# ~10% of the 90 (colour, shape, background) combinations never appear in the training
# split. Every colour, shape and background still appears in training with the others,
# so a model that composes words generalises to these; the evaluation checks exactly that.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "green"),
        ("green", "circle", "black"),
        ("blue", "square", "yellow"),
        ("yellow", "triangle", "blue"),
        ("white", "circle", "red"),
        ("black", "square", "white"),
        ("red", "square", "white"),
        ("blue", "circle", "green"),
        ("green", "triangle", "black"),
    }
)


@dataclass(frozen=True)
class ShapeParams:
    """Where and how big the shape is, in pixels of the 64x64 picture.

    ``size`` is the circumradius (the distance from the centre to a corner, or the radius
    of a circle); ``rotation`` is in degrees, counter-clockwise.
    """

    cx: float
    cy: float
    size: float
    rotation: float


@dataclass(frozen=True)
class Jitter:
    """How much the world varies a shape (changing it changes every recipe stage's key).

    v1/v1.1 used size 13-18, ±5 px, ±20°: there the mean of 200 pictures of a shape word,
    thresholded, reads as the wrong shape (square as circle, triangle as square), and a
    model trained for minutes learns a word's mean picture first. v1.2 uses larger shapes
    with less offset and rotation. Measured with the recipe's monitor (36 prompts, CFG 3),
    text encoder at 0.1x the UNet's learning rate, shape class at steps 1000/1500/2000:
    size 14-17 ±3 px ±10°: 0.31 / 0.25 / 0.36; size 16-20 ±3 px ±10°: 0.31 / 0.47 / 0.56.
    A larger shape moves more latent pixels between circle, square and triangle, so the
    shape word matters more to the loss. At 20 + 3 px the triangle (circumradius 1.2 x
    size) stays 5 px inside the picture."""

    size_min: float = 16.0
    size_max: float = 20.0
    offset: float = 3.0
    rotation: float = 10.0


DEFAULT_JITTER = Jitter()


@dataclass
class ShapeSample:
    image: Image.Image
    caption: str
    shape: str
    color: str
    background: str
    params: ShapeParams


def caption_for(color: str, shape: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


def caption_variants(color: str, shape: str, background: str) -> list[str]:
    """Shorter captions of the same picture, each naming part of it. Trained now and then in
    place of the full caption, they give single words a meaning of their own, which a
    negative prompt such as "red" or a prompt of a few words needs."""
    return [
        f"a {color} {shape}",
        f"a {shape} on a {background} background",
        f"{color} {shape}, {background} background",
        color,
        shape,
        f"{background} background",
    ]


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) the world can draw, in a fixed order."""
    return [(c, s, b) for c in COLORS for s in SHAPES for b in COLORS if b != c]


def combinations(split: str) -> list[tuple[str, str, str]]:
    if split == "train":
        return [combo for combo in all_combinations() if combo not in HELD_OUT]
    if split == "heldout":
        return [combo for combo in all_combinations() if combo in HELD_OUT]
    if split == "all":
        return all_combinations()
    raise InvalidParameterError("split", f"unknown split {split!r}", hint="use 'train', 'heldout' or 'all'")


def random_params(rng: random.Random, jitter: Jitter = DEFAULT_JITTER) -> ShapeParams:
    centre = IMAGE_SIZE / 2
    return ShapeParams(
        cx=centre + rng.uniform(-jitter.offset, jitter.offset),
        cy=centre + rng.uniform(-jitter.offset, jitter.offset),
        size=rng.uniform(jitter.size_min, jitter.size_max),
        rotation=rng.uniform(-jitter.rotation, jitter.rotation),
    )


def shape_vertices(shape: str, params: ShapeParams, scale: float = 1.0) -> list[tuple[float, float]]:
    """Corner points of a square or triangle (pointing up at rotation 0), in pixels × scale."""
    corners = {"square": 4, "triangle": 3}[shape]
    radius = params.size * (TRIANGLE_SCALE if shape == "triangle" else 1.0)
    # Square corners sit at 45°, triangle's first corner points up (screen y grows down).
    start = 45.0 if shape == "square" else 90.0
    points = []
    for k in range(corners):
        angle = math.radians(start + params.rotation + 360.0 * k / corners)
        points.append(
            ((params.cx + radius * math.cos(angle)) * scale, (params.cy - radius * math.sin(angle)) * scale)
        )
    return points


def _check_names(shape: str, color: str, background: str) -> None:
    if shape not in SHAPES:
        raise InvalidParameterError("shape", f"unknown shape {shape!r}", hint=f"use one of {', '.join(SHAPES)}")
    for field, name in (("color", color), ("background", background)):
        if name not in ALL_PALETTE:
            raise InvalidParameterError(field, f"unknown colour {name!r}",
                                        hint=f"use one of {', '.join(ALL_PALETTE)}")
    if color == background:
        raise InvalidParameterError("color", "shape colour equals the background colour", hint="pick two colours")


def render(
    shape: str, color: str, background: str, rng_or_params: random.Random | ShapeParams | None = None
) -> Image.Image:
    """Draw one shape on a plain background as a 64x64 RGB picture.

    ``rng_or_params`` is either exact ``ShapeParams`` or a ``random.Random`` to draw them
    from (None: the centred, unrotated shape of middle size).
    """
    if isinstance(rng_or_params, ShapeParams):
        params = rng_or_params
    elif rng_or_params is None:
        params = ShapeParams(IMAGE_SIZE / 2, IMAGE_SIZE / 2, (DEFAULT_JITTER.size_min + DEFAULT_JITTER.size_max) / 2, 0.0)
    else:
        params = random_params(rng_or_params)
    return render_scene(shape, color, background, params, IMAGE_SIZE, IMAGE_SIZE)


def render_scene(shape: str, color: str, background: str, params: ShapeParams, width: int, height: int) -> Image.Image:
    """Draw one shape on a ``width`` x ``height`` canvas; ``params`` are in that canvas's pixels.

    The demo dataset and the tagger's training use it for pictures larger than 64 px, not
    square, with the shape anywhere; ``render`` is the 64x64 case.
    """
    _check_names(shape, color, background)
    if width < 1 or height < 1:
        raise InvalidParameterError("width", f"the canvas must be at least 1x1 pixels, got {width}x{height}")
    canvas = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), ALL_PALETTE[background])
    draw = ImageDraw.Draw(canvas)
    fill = ALL_PALETTE[color]
    if shape == "circle":
        r = params.size * CIRCLE_SCALE * SUPERSAMPLE
        x, y = params.cx * SUPERSAMPLE, params.cy * SUPERSAMPLE
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    else:
        draw.polygon(shape_vertices(shape, params, SUPERSAMPLE), fill=fill)
    return canvas.resize((width, height), Image.Resampling.BOX)


def concept_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) with a concept colour as the shape's colour: the
    pictures a LoRA or embedding of the concept is trained on and evaluated with."""
    return [(c, s, b) for c in CONCEPT_COLORS for s in SHAPES for b in COLORS]


def sample(combo: tuple[str, str, str], rng: random.Random, jitter: Jitter = DEFAULT_JITTER) -> ShapeSample:
    color, shape, background = combo
    params = random_params(rng, jitter)
    return ShapeSample(
        image=render(shape, color, background, params),
        caption=caption_for(color, shape, background),
        shape=shape,
        color=color,
        background=background,
        params=params,
    )


def iter_world(seed: int, n: int, split: str = "train", jitter: Jitter = DEFAULT_JITTER) -> Iterator[ShapeSample]:
    """``n`` samples cycling through the split's combinations in a seeded shuffled order,
    so every combination appears equally often (±1)."""
    combos = combinations(split)
    rng = random.Random(seed)
    order: list[tuple[str, str, str]] = []
    for _ in range(n):
        if not order:
            order = list(combos)
            rng.shuffle(order)
        yield sample(order.pop(), rng, jitter)


def sample_world(seed: int, n: int, split: str = "train", jitter: Jitter = DEFAULT_JITTER) -> list[ShapeSample]:
    return list(iter_world(seed, n, split, jitter))


def write_dataset(folder: str | Path, n: int, seed: int, split: str = "train", repeats: int = 10) -> Path:
    """Write a kohya-style dataset: ``folder/<repeats>_shapes/NNNNN.png`` + ``.txt`` captions.

    Returns the image folder. Existing files with the same names are replaced (the
    content is a pure function of the seed).
    """
    image_dir = Path(folder) / f"{repeats}_shapes"
    image_dir.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(iter_world(seed, n, split)):
        stem = image_dir / f"{index:05d}"
        item.image.save(stem.with_suffix(".png"))
        atomic_write_text(stem.with_suffix(".txt"), item.caption + "\n")
    return image_dir


def params_dict(params: ShapeParams) -> dict[str, float]:
    return asdict(params)
