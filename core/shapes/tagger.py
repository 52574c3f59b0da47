"""The Shapes tagger: a WD14-format tagger of the Shapes world, trained from the world generator.

``python -m core.shapes.tagger --out models/tagger/kiln-shapes-tagger`` trains a small CNN on
world scenes (every colour including the concept colour orange, 64-192 px canvases, not all
square, the shape anywhere, some JPEG-compressed or blurred) on the CPU (the shipped build: 2000
steps, 22 minutes on a 2-core machine other jobs were loading, ~0.6 s a step), and writes what
SmilingWolf's taggers ship: ``model.onnx`` (input ``float32[N, 64, 64, 3]`` BGR 0-255 NHWC,
output sigmoid scores ``float32[N, K]``) and ``selected_tags.csv`` (``tag_id,name,category,count``,
all tags general, category 0). Kiln's WD14 code runs it like any
WD14 model: its preprocessing (pad to a square on white, resize to the model's input size, BGR)
is the one the training pictures go through, so training and tagging see the same pixels.

Tags read as WD14 captions do: the shape ("circle"), the shape's colour as booru tags name the
colour of a thing ("orange_shape", cf. "red_hair"), the background as booru tags do
("blue_background"). Held-out micro F1 at kohya's threshold 0.35, through the exported model and
Kiln's WD14 code, is printed at the end and stored in ``kiln-tagger.json`` beside the model.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from core.errors import KilnError
from core.fileio import atomic_save_with, atomic_write_json, atomic_write_text
from core.shapes.scenes import Scene, SceneRanges, random_scene
from core.shapes.world import ALL_PALETTE, SHAPES

INPUT_SIZE = 64  # the world's native size; Kiln's WD14 code reads it from the model's input
THRESHOLD = 0.35  # kohya's --thresh default, the one TagOptions uses
TAGS: tuple[str, ...] = (*SHAPES, *(f"{c}_shape" for c in ALL_PALETTE), *(f"{c}_background" for c in ALL_PALETTE))
INFO_FILE = "kiln-tagger.json"
DEFAULT_OUT = Path("models") / "tagger" / "kiln-shapes-tagger"
# Shapes smaller than a fifth of the short side become a few pixels once a 2:1 picture is padded
# and shrunk to 64 px; there a triangle and a circle are no longer different pictures.
TAGGER_RANGES = SceneRanges(size_min=0.2, size_max=0.34, max_aspect=1.8)


@dataclass(frozen=True)
class TaggerRecipe:
    """Everything that decides the model; stored with it."""

    seed: int = 0
    train_images: int = 12000
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    width: int = 16  # channels of the first conv; 16 keeps model.onnx near 0.3 MB
    eval_images: int = 1000
    eval_seed: int = 1_000_003  # scenes no training seed draws
    jpeg_share: float = 0.25
    blur_share: float = 0.15


def _say(line: str) -> None:
    print(line, flush=True)  # a recipe's progress shows as it goes, also when logged to a file


def tags_of(color: str, shape: str, background: str) -> list[str]:
    return [shape, f"{color}_shape", f"{background}_background"]


def degrade(image: Image.Image, rng: random.Random, recipe: TaggerRecipe) -> Image.Image:
    """JPEG artefacts (a.jpg in a real folder) and blur (generated pictures are soft)."""
    if rng.random() < recipe.blur_share:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    if rng.random() < recipe.jpeg_share:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(60, 95))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def make_scenes(seed: int, n: int, recipe: TaggerRecipe) -> list[tuple[Image.Image, Scene]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = random_scene(rng, ranges=TAGGER_RANGES)
        out.append((degrade(scene.image, rng, recipe), scene))
    return out


def encode(scenes: Sequence[tuple[Image.Image, Scene]]) -> tuple[np.ndarray, np.ndarray]:
    """Pictures through Kiln's WD14 preprocessing (uint8 BGR NHWC) and their 0/1 tag targets."""
    from core.dataset.taggers.wd14 import preprocess

    index = {tag: i for i, tag in enumerate(TAGS)}
    x = np.empty((len(scenes), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    y = np.zeros((len(scenes), len(TAGS)), dtype=np.float32)
    for row, (image, scene) in enumerate(scenes):
        x[row] = preprocess(image, INPUT_SIZE).astype(np.uint8)
        for tag in tags_of(scene.color, scene.shape, scene.background):
            y[row, index[tag]] = 1.0
    return x, y


def build_net(n_tags: int, width: int):
    """Three stride-2 convs to 8x8 and one more at 8x8 (corners and curves are local, so a 31 px
    receptive field tells the shapes apart; the strides keep a training step cheap on 2 cores),
    then mean and max over the picture: max finds the small shape's colour, mean the
    background's, and both are unchanged by where the shape sits."""
    import torch
    from torch import nn

    class ShapesTaggerNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = [3, width, 2 * width, 4 * width, 4 * width]
            for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
                stride = 2 if i < 3 else 1
                layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Linear(8 * width, 64), nn.ReLU(), nn.Linear(64, n_tags))

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            # WD14 input: NHWC, BGR, 0-255 floats
            h = self.features(x.permute(0, 3, 1, 2) / 127.5 - 1.0)
            pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
            return self.head(pooled)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logits(x))

    return ShapesTaggerNet()


def train(recipe: TaggerRecipe, log=_say):
    """The trained network (eval mode) and the per-tag training counts."""
    import torch

    torch.manual_seed(recipe.seed)
    started = time.monotonic()
    x, y = encode(make_scenes(recipe.seed, recipe.train_images, recipe))
    log(f"{len(x)} training pictures rendered in {time.monotonic() - started:.0f} s")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net = build_net(len(TAGS), recipe.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(recipe.seed)
    net.train()
    for step in range(1, recipe.steps + 1):
        rows = torch.randint(0, len(xt), (recipe.batch_size,), generator=generator)
        batch = xt[rows].float()
        if step % 2:  # mirror half the batches: every tag is unchanged by a flip
            batch = batch.flip(2)
        loss = loss_fn(net.logits(batch), yt[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == recipe.steps:
            log(f"step {step}/{recipe.steps}  loss {loss.item():.4f}  {time.monotonic() - started:.0f} s")
    net.eval()
    return net, y.sum(axis=0).astype(int)


def export(net, folder: Path, counts: Sequence[int]) -> None:
    """``model.onnx`` (dynamic batch) + ``selected_tags.csv``, each written atomically."""
    import torch

    dummy = torch.zeros(1, INPUT_SIZE, INPUT_SIZE, 3)

    def write_onnx(tmp: str) -> None:
        torch.onnx.export(net, (dummy,), tmp, dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17)

    atomic_save_with(folder / "model.onnx", write_onnx)
    lines = ["tag_id,name,category,count"]
    lines += [f"{i},{tag},0,{int(count)}" for i, (tag, count) in enumerate(zip(TAGS, counts))]
    atomic_write_text(folder / "selected_tags.csv", "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Figures:
    f1: float  # micro F1 over every tag at THRESHOLD
    precision: float
    recall: float
    shape: float  # share of pictures whose tags hold exactly the right shape
    color: float
    background: float
    images: int


def evaluate_folder(folder: str | Path, seed: int, n: int, recipe: TaggerRecipe = TaggerRecipe()) -> Figures:
    """Held-out figures of a tagger folder, through Kiln's WD14 loader and tag selection."""
    from core.dataset.taggers.common import TagOptions
    from core.dataset.taggers.wd14 import WD14Tagger

    scenes = make_scenes(seed, n, recipe)
    tagger = WD14Tagger(folder, device="cpu")
    options = TagOptions(general_threshold=THRESHOLD, replace_underscore=False)
    results = []
    for start in range(0, len(scenes), 256):
        chunk = scenes[start:start + 256]
        results += tagger.tag([image for image, _ in chunk], options)
    tagger.close()
    return score_tags([{tag for tag, _ in r.tags} for r in results], [s for _, s in scenes])


def score_tags(predicted: Sequence[set[str]], scenes: Sequence[Scene]) -> Figures:
    """Micro precision / recall / F1 and per-attribute exactness; tags with or without underscores."""
    tp = fp = fn = 0
    right = {"shape": 0, "color": 0, "background": 0}
    for tags, scene in zip(predicted, scenes):
        got = {t.replace(" ", "_") for t in tags}  # with or without replace_underscore
        want = set(tags_of(scene.color, scene.shape, scene.background))
        tp, fp, fn = tp + len(got & want), fp + len(got - want), fn + len(want - got)
        right["shape"] += got & set(SHAPES) == {scene.shape}
        right["color"] += {t for t in got if t.endswith("_shape")} == {f"{scene.color}_shape"}
        right["background"] += {t for t in got if t.endswith("_background")} == {f"{scene.background}_background"}
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    n = max(len(scenes), 1)
    return Figures(f1, precision, recall, right["shape"] / n, right["color"] / n, right["background"] / n, len(scenes))


def make_tagger(out: str | Path, recipe: TaggerRecipe = TaggerRecipe(), overwrite: bool = False, log=_say) -> Figures:
    """Train, export into ``out`` and measure; refuses to replace a model there unless ``overwrite``."""
    folder = Path(out)
    existing = [folder / f for f in ("model.onnx", "selected_tags.csv", INFO_FILE) if (folder / f).exists()]
    if existing and not overwrite:
        raise KilnError(f"{existing[0].name} already exists; not replacing it", path=folder,
                        hint="choose another --out folder, or pass --overwrite to replace the tagger there")
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    started = time.monotonic()
    net, counts = train(recipe, log)
    minutes = (time.monotonic() - started) / 60
    folder.mkdir(parents=True, exist_ok=True)
    export(net, folder, counts)
    figures = evaluate_folder(folder, recipe.eval_seed, recipe.eval_images, recipe)
    atomic_write_json(folder / INFO_FILE, {"recipe": asdict(recipe), "train_minutes": round(minutes, 1),
                                           "threshold": THRESHOLD, "heldout": asdict(figures),
                                           "command": "python -m core.shapes.tagger"})
    log(f"trained in {minutes:.1f} min; held-out ({figures.images} pictures, threshold {THRESHOLD}): "
        f"F1 {figures.f1:.4f} (precision {figures.precision:.4f}, recall {figures.recall:.4f}); "
        f"shape {figures.shape:.3f}, colour {figures.color:.3f}, background {figures.background:.3f}")
    return figures


def main(argv: list[str] | None = None) -> int:
    defaults = TaggerRecipe()
    parser = argparse.ArgumentParser(prog="python -m core.shapes.tagger", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"tagger folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--train-images", type=int, default=defaults.train_images)
    parser.add_argument("--eval-images", type=int, default=defaults.eval_images)
    parser.add_argument("--overwrite", action="store_true", help="replace a tagger already in --out")
    args = parser.parse_args(argv)
    recipe = TaggerRecipe(seed=args.seed, steps=args.steps, train_images=args.train_images,
                          eval_images=args.eval_images)
    try:
        make_tagger(args.out, recipe, overwrite=args.overwrite)
    except KilnError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
