"""Which colour can be the demo concept? The study behind ``CONCEPT_PALETTE`` (issue #19).

    python -m core.shapes.colour_study [--seeds 2] [--grid 10]

A concept colour must pass three tests on the shipped model (``kiln-shapes-v1``):

1. **distance**: ≥ 150 RGB distance from every ``PALETTE`` colour (the palette's own rule, so the
   checker's nearest-colour reading tells it apart on blurry pictures);
2. **round trip**: the shipped VAE decodes it faithfully — world pictures of the colour (circles,
   squares, triangles on every background) through encode → decode, the error of the shape's
   core read by the checker's way (median of the core), max and mean over the pictures. A LoRA on
   the U-Net cannot draw a colour the decoder cannot produce (magenta comes back yellow);
3. **base false positives**: the share of the base model's own txt2img pictures (the evaluation's
   palette prompts × seeds) that the checker, with the candidate added to the palette, reads as
   the candidate — the base model must not already draw it (≤ 10 %).

``study`` returns one ``Candidate`` per colour; ``main`` prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.shapes import checker, world

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"
# Named candidates (besides the best of a grid search): the old concept, last session's brown,
# the colours the palette's distance rule leaves room for (magenta / cyan corners, navy, purple).
NAMED: dict[str, tuple[int, int, int]] = {
    "magenta": (230, 60, 200),
    "brown": (130, 80, 30),
    "cyan": (30, 220, 220),
    "sky": (30, 200, 250),
    "teal": (0, 150, 150),
    "navy": (0, 0, 120),
    "purple": (120, 0, 160),
    "violet": (160, 40, 250),
    "pink": (250, 120, 220),
    "grey": (128, 128, 128),
    "orange": (250, 130, 0),
    "orange2": (230, 125, 30),
    "amber": (230, 150, 30),
    "rust": (200, 90, 30),
}


@dataclass(frozen=True)
class Candidate:
    name: str
    rgb: tuple[int, int, int]
    palette_distance: float  # to the nearest PALETTE colour
    nearest: str
    roundtrip_max: float  # RGB distance of the decoded shape core from the colour, worst picture
    roundtrip_mean: float
    decoded: tuple[int, int, int]  # the median decoded core colour over the pictures
    false_positive: float | None  # share of base pictures read as this colour (None: not measured)

    def passes(self, distance: float = 150.0, roundtrip: float = 25.0, false_positive: float = 0.10) -> bool:
        return (self.palette_distance >= distance and self.roundtrip_mean <= roundtrip
                and (self.false_positive is None or self.false_positive <= false_positive))


def palette_distance(rgb: Sequence[int]) -> tuple[float, str]:
    distances = {name: float(np.linalg.norm(np.subtract(rgb, value, dtype=np.float32)))
                 for name, value in world.PALETTE.items()}
    nearest = min(distances, key=distances.__getitem__)
    return distances[nearest], nearest


def grid_candidates(step: int = 10, distance: float = 150.0) -> list[tuple[int, int, int]]:
    """Every RGB on a ``step`` grid at least ``distance`` from each palette colour."""
    values = range(0, 256, step)
    return [rgb for rgb in itertools.product(values, values, values) if palette_distance(rgb)[0] >= distance]


def _core_rgb(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.median(array[mask], axis=0)


@torch.no_grad()
def roundtrip_errors(vae, colours: Sequence[tuple[int, int, int]], pictures: int = 6,
                     seed: int = 0) -> list[tuple[float, float, tuple[int, int, int]]]:
    """(max, mean error, median decoded colour) of each colour's shape core through encode → decode."""
    rng = random.Random(seed)
    layouts = [(world.SHAPES[k % 3], world.COLORS[k % len(world.COLORS)], world.random_params(rng))
               for k in range(pictures)]
    masks = []
    for shape, _background, params in layouts:
        probe = np.asarray(world.render_scene(shape, "white", "black", params, 64, 64), dtype=np.float32)
        masks.append(probe[..., 0] > 240)  # the shape's core: fully covered pixels
    out = []
    for rgb in colours:
        arrays = []
        # The world's backgrounds that the colour stands out from (no red shape on red).
        backgrounds = [b for b in world.COLORS
                       if np.linalg.norm(np.subtract(world.PALETTE[b], rgb, dtype=np.float32)) >= 100]
        for k, (shape, _background, params) in enumerate(layouts):
            background = backgrounds[k % len(backgrounds)]
            canvas = Image.new("RGB", (64 * world.SUPERSAMPLE,) * 2, world.PALETTE[background])
            picture = _draw(canvas, shape, rgb, params)
            arrays.append(np.asarray(picture, dtype=np.float32))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        param = next(vae.parameters())
        latents = vae.encode(batch.to(param.device, param.dtype)).latent_dist.mean
        decoded = ((vae.decode(latents).sample.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).float().cpu().numpy()
        cores = np.stack([_core_rgb(d, m) for d, m in zip(decoded, masks)])
        errors = np.linalg.norm(cores - np.asarray(rgb, dtype=np.float32), axis=1)
        median = tuple(int(round(v)) for v in np.median(cores, axis=0))
        out.append((float(errors.max()), float(errors.mean()), median))
    return out


def _draw(canvas: Image.Image, shape: str, rgb: tuple[int, int, int], params: world.ShapeParams) -> Image.Image:
    """``world.render_scene`` with an arbitrary RGB as the shape's colour."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        r = params.size * world.CIRCLE_SCALE * world.SUPERSAMPLE
        x, y = params.cx * world.SUPERSAMPLE, params.cy * world.SUPERSAMPLE
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rgb))
    else:
        draw.polygon(world.shape_vertices(shape, params, world.SUPERSAMPLE), fill=tuple(rgb))
    return canvas.resize((64, 64), Image.Resampling.BOX)


def base_colour_reads(model, seeds: int = 2, steps: int = 20) -> list[np.ndarray]:
    """The median core colour of each base-model picture (the evaluation's 64 palette prompts × seeds)."""
    from core.models.header_facts import rescale_cfg_default
    from core.shapes.evaluate import eval_prompts, sampler_generate_fn

    generate = sampler_generate_fn(model, steps=steps, rescale_cfg=rescale_cfg_default(model.spec.zero_terminal_snr))
    prompts = eval_prompts()
    texts = [p.prompt for p in prompts for _ in range(seeds)]
    seed_list = [p.seed + 1000 * k for p in prompts for k in range(seeds)]
    return [shape_rgb(image) for image in generate(texts, seed_list)]


def shape_rgb(image: Image.Image) -> np.ndarray | None:
    """The colour the checker reads the shape from (None: no shape found)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    background_rgb = np.median(checker.ring_pixels(array), axis=0)
    mask, coverage = checker.shape_mask(array, background_rgb)
    if mask.mean() < checker.MIN_SHAPE_FRACTION:
        return None
    mask = checker.largest_component(mask)
    core = mask & (coverage > 0.8)
    return np.median(array[core if core.any() else mask], axis=0)


def false_positive_rate(reads: Sequence[np.ndarray | None], rgb: Sequence[int]) -> float:
    """Share of pictures whose shape colour is nearer ``rgb`` than every palette colour."""
    table = np.array([*world.PALETTE.values(), rgb], dtype=np.float32)
    hits = sum(int(np.argmin(np.linalg.norm(table - r, axis=1)) == len(table) - 1) for r in reads if r is not None)
    return hits / max(len(reads), 1)


def study(model, colours: dict[str, tuple[int, int, int]], seeds: int = 2) -> list[Candidate]:
    trips = roundtrip_errors(model.vae, list(colours.values()))
    reads = base_colour_reads(model, seeds) if seeds else []
    out = []
    for (name, rgb), (worst, mean, decoded) in zip(colours.items(), trips):
        distance, nearest = palette_distance(rgb)
        out.append(Candidate(name, tuple(rgb), distance, nearest, worst, mean, decoded,
                             false_positive_rate(reads, rgb) if seeds else None))
    return out


def table(candidates: Sequence[Candidate]) -> str:
    lines = ["| colour | RGB | nearest palette colour | round trip max / mean | decoded as | base false positives |",
             "|---|---|---|---|---|---|"]
    for c in candidates:
        fp = "–" if c.false_positive is None else f"{c.false_positive:.0%}"
        lines.append(f"| {c.name} | {c.rgb} | {c.nearest} {c.palette_distance:.0f} | "
                     f"{c.roundtrip_max:.0f} / {c.roundtrip_mean:.0f} | {c.decoded} | {fp} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per evaluation prompt (0: skip txt2img)")
    parser.add_argument("--grid", type=int, default=0,
                        help="also search an RGB grid of this step and add its 8 best round trips")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from core.models.checkpoint import load_checkpoint

    model = load_checkpoint(args.model)
    colours = dict(NAMED)
    if args.grid:
        grid = grid_candidates(args.grid)
        trips = roundtrip_errors(model.vae, grid)
        best = sorted(zip(grid, trips), key=lambda item: item[1][1])[:8]
        for rgb, _trip in best:
            colours[f"grid{rgb}"] = rgb
    print(table(study(model, colours, args.seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
