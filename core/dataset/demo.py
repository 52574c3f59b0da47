"""The demo dataset: an untagged picture folder of a concept the built-in Shapes model does not know.

``python -m core.dataset demo --out DIR`` (and Dataset › Folders & checks › "Make demo dataset")
writes 16 pictures of the world's concept colour, orange (see core/shapes/world.py for why that
concept), one shape on a plain background each: 96-192 px canvases, some not square, the shape
off-centre and of varied size, some saved as JPEG. So that every step of the workflow has
something to do, it also plants the mistakes Kiln's checks are there for:

- ``duplicate``: a byte-identical copy of one picture under another name;
- ``small``: a 40x40 picture, smaller than the Shapes model's 64 px training resolution;
- ``shared-caption``: ``a.jpg`` and ``a.png``, two different pictures that would share ``a.txt``.

No captions: tagging them (the Shapes tagger writes "circle, orange shape, blue background")
is one of the steps. Nothing is ever written over: an existing file of any planted name stops
the whole demo before a file is written.
"""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.errors import KilnError
from core.fileio import atomic_save_with
from core.shapes.scenes import Scene, SceneRanges, random_canvas, random_params_on
from core.shapes.world import COLORS, CONCEPT_COLORS, SHAPES, ShapeParams, render_scene

CONCEPT = CONCEPT_COLORS[0]  # "orange"
PICTURES = 16
TRAINING_RESOLUTION = 64  # the Shapes model's native size: the size the small picture falls under
SMALL_SIDE = 40
DISTINCT_BITS = 12  # twice the checks' near-duplicate distance
JPEG_EVERY = 4  # every 4th picture is a JPEG, as a downloaded folder mixes formats
# Larger than the model's 64 px so preprocessing has something to resize; shapes big enough
# that the Shapes tagger reads them after the 2:1 ones are padded to a square.
DEMO_RANGES = SceneRanges(side_min=96, side_max=192, square_share=0.4, max_aspect=1.8,
                          size_min=0.2, size_max=0.32, rotation=30.0)


@dataclass
class DemoDataset:
    folder: Path
    pictures: list[Path]  # every file written, planted ones included
    scenes: dict[str, Scene] = field(default_factory=dict)  # file name → what it shows
    planted: dict[str, tuple[Path, ...]] = field(default_factory=dict)  # check code → its files


def _distinct_scene(rng: random.Random, shape: str, background: str, seen: list
                    ) -> tuple[Image.Image, ShapeParams]:
    """A scene whose perceptual hash is far from every earlier one: plain pictures of one colour
    can land within the near-duplicate check's 6 bits by chance, and only the planted duplicate
    should be flagged."""
    import imagehash

    while True:
        width, height = random_canvas(rng, DEMO_RANGES)
        params = random_params_on(rng, width, height, DEMO_RANGES)
        image = render_scene(shape, CONCEPT, background, params, width, height)
        digest = imagehash.phash(image)
        if all(digest - other > DISTINCT_BITS for other in seen):
            seen.append(digest)
            return image, params


def _plan(seed: int) -> list[tuple[str, Scene]]:
    """The 16 pictures: every (shape, background) pairing drawn in turn, in a seeded order."""
    rng = random.Random(seed)
    pairs = [(shape, background) for shape in SHAPES for background in COLORS]
    rng.shuffle(pairs)
    plan: list[tuple[str, Scene]] = []
    seen: list = []
    for index in range(PICTURES):
        shape, background = pairs[index % len(pairs)]
        image, params = _distinct_scene(rng, shape, background, seen)
        suffix = ".jpg" if index % JPEG_EVERY == JPEG_EVERY - 1 else ".png"
        plan.append((f"{CONCEPT}_{index + 1:02d}{suffix}", Scene(image, CONCEPT, shape, background, params)))
    # a.png and a.jpg: two different pictures whose captions would both be a.txt
    for name, (shape, background) in (("a.png", ("circle", "blue")), ("a.jpg", ("square", "yellow"))):
        image, params = _distinct_scene(rng, shape, background, seen)
        plan.append((name, Scene(image, CONCEPT, shape, background, params)))
    small_params = random_params_on(rng, SMALL_SIDE, SMALL_SIDE, DEMO_RANGES)
    plan.append(("small.png", Scene(render_scene("triangle", CONCEPT, "green", small_params, SMALL_SIDE, SMALL_SIDE),
                                    CONCEPT, "triangle", "green", small_params)))
    return plan


def _save(image: Image.Image, path: Path) -> None:
    kind = "JPEG" if path.suffix == ".jpg" else "PNG"
    atomic_save_with(path, lambda tmp: image.save(tmp, format=kind, **({"quality": 92} if kind == "JPEG" else {})))


def make_demo(out: str | Path, seed: int = 0) -> DemoDataset:
    """Write the demo pictures into ``out`` (created if absent; other files in it are left alone)."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise KilnError("not a folder", path=folder, hint="name a folder to put the demo pictures in")
    plan = _plan(seed)
    duplicate_of = plan[2][0]
    duplicate = f"{Path(duplicate_of).stem} copy{Path(duplicate_of).suffix}"
    names = [name for name, _ in plan] + [duplicate]
    taken = [folder / n for n in names if (folder / n).exists()]
    if taken:
        raise KilnError(f"{taken[0].name} is already there; nothing was written", path=folder,
                        hint="choose an empty or new folder for the demo dataset")
    folder.mkdir(parents=True, exist_ok=True)
    result = DemoDataset(folder, [])
    for name, scene in plan:
        _save(scene.image, folder / name)
        result.pictures.append(folder / name)
        result.scenes[name] = scene
    # The copy is of the file's bytes, so it is a duplicate by hash, not only by looks.
    shutil.copyfile(folder / duplicate_of, folder / duplicate)
    result.pictures.append(folder / duplicate)
    result.scenes[duplicate] = result.scenes[duplicate_of]
    result.planted = {"duplicate": (folder / duplicate_of, folder / duplicate),
                      "small-picture": (folder / "small.png",),
                      "shared-caption": (folder / "a.jpg", folder / "a.png")}
    return result


def describe(result: DemoDataset) -> list[str]:
    """What was written and what was planted, for the CLI."""
    lines = [f"{len(result.pictures)} pictures of the new concept '{CONCEPT}' in {result.folder} (untagged)"]
    lines += [f"planted {code}: {', '.join(p.name for p in paths)}" for code, paths in result.planted.items()]
    lines.append("next: tag them (e.g. with kiln-shapes-tagger), copy them into a kohya folder, check, train")
    return lines


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help=f"write a small untagged dataset of the new concept '{CONCEPT}'")
    demo.add_argument("--out", required=True, help="folder to write the pictures into (never over existing files)")
    demo.add_argument("--seed", type=int, default=0, help="another seed gives other pictures")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    for line in describe(make_demo(args.out, args.seed)):
        print(line)
    return 0
