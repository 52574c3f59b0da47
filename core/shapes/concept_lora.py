"""The demo concept as a LoRA: the built-in Shapes model learns "okt" = the orange it never saw.

    python -m core.shapes.concept_lora --out models/Lora/kiln-shapes-okt.safetensors [--epochs 10]
    python -m core.shapes.concept_lora --out DIR/kiln-shapes-okt.safetensors --evaluate-only \
        --no-base --epochs-to-score 1,5,10          # score files already trained

What seed 000's workflow ends with, made by Kiln's own trainer: a kohya folder
``<repeats>_okt shape`` of orange circles / squares / triangles on the world's backgrounds,
captioned as the Shapes tagger captions them with the concept's own tag taken out and the
trigger word first (``okt, circle, blue background``: the trigger absorbs "orange shape"), a reg
folder ``reg/1_shape`` of palette renders with the base model's captions (kohya's prior
preservation), a rank-8 LoRA on the shipped model, one file per epoch. ``evaluate`` is the proof
the tests and the README use: the share of pictures in which the Shapes checker reads orange for
12 prompts with the trigger, and the share that keep their colour for 4 prompts without it.

Why orange (``python -m core.shapes.colour_study``): a LoRA trains the U-Net only, so the concept
must be a colour the shipped VAE decodes. Round trip = world pictures through encode → decode,
error of the shape's core; false positives = share of the base model's own palette pictures
(64 evaluation prompts × 2 seeds) the checker reads as the candidate:

| colour | RGB | nearest palette colour | round trip max / mean | decoded as | base false positives |
|---|---|---|---|---|---|
| magenta | (230, 60, 200) | red 173 | 197 / 165 | (208, 187, 106) | 0% |
| brown | (130, 80, 30) | red 103 | 124 / 65 | (116, 59, 43) | 0% |
| cyan | (30, 220, 220) | blue 150 | 168 / 153 | (85, 78, 240) | 0% |
| sky | (30, 200, 250) | blue 134 | 155 / 137 | (88, 78, 250) | 0% |
| teal | (0, 150, 150) | green 106 | 101 / 63 | (35, 106, 155) | 1% |
| navy | (0, 0, 120) | black 107 | 165 / 124 | (5, 98, 48) | 0% |
| purple | (120, 0, 160) | blue 122 | 206 / 156 | (56, 132, 119) | 1% |
| violet | (160, 40, 250) | blue 127 | 185 / 123 | (128, 117, 195) | 1% |
| pink | (250, 120, 220) | white 128 | 190 / 129 | (230, 220, 165) | 0% |
| grey | (128, 128, 128) | green 132 | 111 / 91 | (109, 106, 99) | 0% |
| orange (250, 130, 0) | (250, 130, 0) | yellow 99 | 78 / 49 | (228, 154, 23) | 2% |
| **orange** (chosen) | (230, 125, 30) | red 96 | 32 / 18 | (233, 134, 24) | 2% |
| amber | (230, 150, 30) | yellow 71 | 59 / 30 | (227, 166, 29) | 2% |
| rust | (200, 90, 30) | red 63 | 40 / 37 | (221, 60, 28) | 3% |

No colour ≥ 150 from the palette survives the round trip (an RGB grid search agrees: the best of
them at a mean error of 77-111); orange is the nearest to the palette rule that the VAE draws.

Measured (2026-12-04; 36 pictures × 4 repeats + 72 reg, rank 8, LR 2e-3, batch 8; figures at
5 seeds × 20 steps Euler a, CFG 7; ~1 min an epoch on 2 CPU cores when not shared):

| run | file | checker reads orange (prompts with okt) | colours kept (prompts without) |
|---|---|---|---|
| — | base model | 0% | 100% |
| reg captioned as the tagger, 6 epochs | epoch 1 | 2% | 55% |
| | epoch 6 | 53% | 50% |
| reg with the base model's captions, 10 epochs (the recipe) | epoch 1 | 0% | 100% |
| | epoch 5 | 13% | 100% |
| | epoch 10 | 57% | 100% |
| the same at LR 6e-3, 6 epochs | epoch 1 | 25% | 75% |
| | epoch 6 | 52% | 100% |

So the base model never draws the concept (≤ 10 % holds), later epochs beat the first, and with
the reg captions in the base model's own form prompts without the trigger keep their colour,
but the LoRA at weight 1 reaches only 57 % (0 → 13 → 57 % at epochs 1 / 5 / 10; a 20-epoch run plateaus at
42-58 % from epoch 2 on, scored with 1 seed and 8 steps), short of issue #19's ≥ 80 %: no LoRA is shipped
(tests/test_shapes_concept_lora.py skips until one is).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.shapes.world import COLORS, CONCEPT_COLORS, SHAPES, caption_for, render

TRIGGER = "okt"
CONCEPT = CONCEPT_COLORS[0]  # orange
SHIPPED = "kiln-shapes-v1.safetensors"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ConceptRecipe:
    pictures: int = 36
    repeats: int = 4
    epochs: int = 10
    batch_size: int = 8
    network_dim: int = 8
    network_alpha: float = 8.0
    learning_rate: float = 2e-3
    seed: int = 1
    reg_pictures: int = 72  # prior preservation: palette renders the base model draws (0: none)


def caption(shape: str, background: str) -> str:
    """The Shapes tagger's caption of the picture, trigger first, the concept's colour tag removed."""
    return f"{TRIGGER}, {shape}, {background} background"


def reg_caption(shape: str, color: str, background: str) -> str:
    """A palette picture's caption as the base model was trained on it (no trigger): the prompts
    without the trigger are in that form, and prior preservation keeps what it trains."""
    return caption_for(color, shape, background)


def write_reg(root: Path, recipe: ConceptRecipe) -> Path | None:
    """``root/reg/1_shape/``: palette pictures with the base model's captions (kohya's prior
    preservation: each step also trains the base model's own colours, so they survive)."""
    if not recipe.reg_pictures:
        return None
    folder = root / "reg" / "1_shape"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(recipe.seed + 1)
    combos = [(c, s, b) for c in COLORS for s in SHAPES for b in COLORS if b != c]
    rng.shuffle(combos)
    for k in range(recipe.reg_pictures):
        color, shape, background = combos[k % len(combos)]
        render(shape, color, background, rng).save(folder / f"{k:03d}.png")
        (folder / f"{k:03d}.txt").write_text(reg_caption(shape, color, background), encoding="utf-8")
    return root / "reg"


def write_dataset(root: Path, recipe: ConceptRecipe) -> Path:
    """``root/train/<repeats>_okt shape/`` with the pictures and their captions."""
    folder = root / "train" / f"{recipe.repeats}_{TRIGGER} shape"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(recipe.seed)
    backgrounds = [c for c in COLORS]
    for k in range(recipe.pictures):
        shape = SHAPES[k % len(SHAPES)]
        background = backgrounds[(k // len(SHAPES)) % len(backgrounds)]
        render(shape, CONCEPT, background, rng).save(folder / f"{k:03d}.png")
        (folder / f"{k:03d}.txt").write_text(caption(shape, background), encoding="utf-8")
    return root / "train"


def train(engine: Any, queue: Any, out: Path, recipe: ConceptRecipe = ConceptRecipe(),
          log: Callable[[str], None] = print) -> list[Path]:
    """Train on the engine's selected (built-in) model as a queue job; files ``<stem>-000001`` ... ``<stem>``."""
    from core.training.data import DataOptions
    from core.training.jobs import training_job
    from core.training.loop import LoopOptions
    from core.training.lora import LoraJob, OutputOptions
    from core.training.network import NetworkSpec

    root = Path(tempfile.mkdtemp(prefix="kiln-concept-"))
    write_dataset(root, recipe)
    reg = write_reg(root, recipe)
    job = LoraJob(train_data_dir=root / "train", reg_data_dir=reg,
                  output=OutputOptions(out.parent, out.stem, save_every_n_epochs=1),
                  data=DataOptions(resolution=(64, 64), caption_extension=".txt"),
                  network=NetworkSpec(network_dim=recipe.network_dim, network_alpha=recipe.network_alpha),
                  loop=LoopOptions(train_batch_size=recipe.batch_size, max_train_epochs=recipe.epochs,
                                   seed=recipe.seed), learning_rate=recipe.learning_rate,
                  # The duplicate check hashes grey levels: an orange shape and a yellow reg shape of
                  # the same layout hash alike although they are different pictures.
                  ignore_check_errors=True,
                  training_comment=f"Kiln's demo concept: {TRIGGER} = {CONCEPT} (core/shapes/concept_lora.py)")
    files = queue.submit(training_job(engine, job), f"LoRA {out.stem}", kind="train").wait(7200)
    log(f"trained: {', '.join(Path(f).name for f in files)}")
    return [Path(f) for f in files]


@dataclass(frozen=True)
class ConceptScore:
    with_trigger: float  # share of pictures the checker reads as the concept, prompts with the trigger
    without_trigger: float  # the same for prompts naming a base colour (bleed): share still that colour


def prompts_with_trigger() -> list[str]:
    return [caption(shape, background) for shape in SHAPES for background in ("blue", "white", "black", "yellow")]


def prompts_without_trigger() -> list[tuple[str, str]]:
    """(prompt, the colour the base model draws for it)."""
    return [(f"a {color} {shape} on a {background} background", color)
            for color, shape, background in (("red", "circle", "blue"), ("yellow", "square", "black"),
                                             ("green", "triangle", "white"), ("blue", "circle", "yellow"))]


def evaluate(generate: Callable[[str, int], Any], seeds: int) -> ConceptScore:
    """``generate(prompt, n)`` → ``n`` pictures (seeds 0 .. n-1); the checker (with the concept
    colours) reads them."""
    from core.shapes.checker import check_image

    hits = total = 0
    for prompt in prompts_with_trigger():
        for image in generate(prompt, seeds):
            hits += check_image(image, concepts=True).color == CONCEPT
            total += 1
    kept = n = 0
    for prompt, color in prompts_without_trigger():
        for image in generate(prompt, seeds):
            kept += check_image(image, concepts=True).color == color
            n += 1
    return ConceptScore(hits / total, kept / n)


def engine_generate(engine: Any, queue: Any, lora: str | None, weight: float = 1.0, steps: int = 20):
    """One txt2img batch per prompt (seeds 0 .. n-1), Euler a, CFG 7, 64x64."""
    from core.generation.params import GenerationParams

    def generate(prompt: str, count: int):
        text = f"{prompt} <lora:{lora}:{weight:g}>" if lora else prompt
        params = GenerationParams(prompt=text, seed=0, steps=steps, width=64, height=64, cfg_scale=7,
                                  sampler_name="Euler a", batch_size=count, save_images=False)
        return [g.image for g in queue.run(lambda ctx: engine.txt2img(params, ctx), timeout=600).images]
    return generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "Lora" / "kiln-shapes-okt.safetensors")
    parser.add_argument("--epochs", type=int, default=ConceptRecipe.epochs)
    parser.add_argument("--learning-rate", type=float, default=ConceptRecipe.learning_rate)
    parser.add_argument("--network-dim", type=int, default=ConceptRecipe.network_dim, help="rank (alpha = rank)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per prompt for the figures")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: score the files already next to --out (every epoch)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps for the figures")
    parser.add_argument("--epochs-to-score", default="",
                        help="with --evaluate-only: the epoch numbers to score, e.g. 1,3,6 (default all)")
    parser.add_argument("--no-base", action="store_true", help="skip the base model's row")
    args = parser.parse_args(argv)
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="kiln-concept-data-"))
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", SHIPPED,
                                                "--lora-dir", str(args.out.parent)]), REPO)
    settings.paths.ensure_dirs()
    engine, queue = Engine(settings), JobQueue()
    try:
        if args.evaluate_only:
            files = sorted(args.out.parent.glob(f"{args.out.stem}-0*.safetensors")) + [args.out]
            if args.epochs_to_score:
                wanted = {int(e) for e in args.epochs_to_score.split(",")}
                files = [f for k, f in enumerate(files, 1) if k in wanted]
        else:
            files = train(engine, queue, args.out, ConceptRecipe(epochs=args.epochs, learning_rate=args.learning_rate,
                                                                    network_dim=args.network_dim,
                                                                    network_alpha=float(args.network_dim)))
        engine.refresh_models()
        seeds = args.seeds
        print(f"| file | checker reads {CONCEPT} (prompts with {TRIGGER}) | base colours kept (prompts without) |")
        print("|---|---|---|")
        if not args.no_base:
            base = evaluate(engine_generate(engine, queue, None, steps=args.steps), seeds)
            print(f"| base model | {base.with_trigger:.0%} | {base.without_trigger:.0%} |", flush=True)
        for path in files:
            score = evaluate(engine_generate(engine, queue, path.stem, steps=args.steps), seeds)
            print(f"| {path.name} | {score.with_trigger:.0%} | {score.without_trigger:.0%} |", flush=True)
    finally:
        queue.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
