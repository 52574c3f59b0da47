"""The demo concept as a Textual Inversion embedding: "okti" = orange, on the built-in Shapes model.

    python -m core.shapes.concept_embedding --out embeddings/okti.pt

The same concept as core/shapes/concept_lora.py, made by Kiln's TI trainer (the Train tab's):
orange circles / squares / triangles on the world's backgrounds, captioned
``[name], circle, blue background`` (template ``[filewords]``), one vector initialised from
"red", then the checker's share of orange among the pictures of prompts with the embedding's
name. The name is not the LoRA's trigger ("okt"), so the two never act on each other's prompts.

Measured (2026-12-04, 18 pictures, batch 2; 12 prompts × 3 seeds, 20 steps Euler a, CFG 7):
before training 0 % orange; 100 steps at LR 0.05: 19 %; 300 steps at LR 0.2: 19 %. Issue #19's
≥ 60 % is NOT reached, so no embedding is shipped. One vector in the text encoder's input moves
the prompt only as far as the tiny text encoder lets it, and the U-Net was never trained to draw
orange for any conditioning; a LoRA (which changes the U-Net) is the tool that can.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from core.shapes.concept_lora import CONCEPT, SHIPPED
from core.shapes.world import COLORS, SHAPES, render

NAME = "okti"
REPO = Path(__file__).resolve().parents[2]


def write_pictures(folder: Path, pictures: int = 18, seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    backgrounds = [c for c in COLORS if c not in ("red", "yellow")] + ["red", "yellow"]
    for k in range(pictures):
        shape, background = SHAPES[k % len(SHAPES)], backgrounds[(k // len(SHAPES)) % len(backgrounds)]
        render(shape, CONCEPT, background, rng).save(folder / f"{k:03d}.png")
        (folder / f"{k:03d}.txt").write_text(f"[name], {shape}, {background} background", encoding="utf-8")
    return folder


def prompts(name: str = NAME) -> list[str]:
    return [f"{name}, {shape}, {background} background"
            for shape in SHAPES for background in ("blue", "white", "black", "green")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "embeddings" / f"{NAME}.pt")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learn-rate", default="0.05")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.params import GenerationParams
    from core.jobs import Job, JobContext, JobQueue
    from core.settings import Settings
    from core.shapes.checker import check_image
    from core.training.ti_data import DataOptions
    from core.training.ti_jobs import create_embedding_job, train_embedding_job
    from core.training.ti_loop import TrainOptions

    data = Path(tempfile.mkdtemp(prefix="kiln-concept-ti-"))
    emb = data / "embeddings"
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", SHIPPED,
                                                "--embeddings-dir", str(emb)]), REPO)
    settings.paths.ensure_dirs()
    pictures = write_pictures(data / "pictures")
    templates = data / "textual_inversion_templates"
    templates.mkdir(exist_ok=True)
    (templates / "filewords.txt").write_text("[filewords]\n", encoding="utf-8")
    engine, queue = Engine(settings), JobQueue()

    def share(prompt_list: list[str]) -> float:
        hits = n = 0
        for prompt in prompt_list:
            def run(_ctx, prompt=prompt):
                private = JobContext(Job(id="eval", description="eval", fn=lambda c: None, kind="generate"))
                params = GenerationParams(prompt=prompt, seed=0, steps=20, width=64, height=64, cfg_scale=7,
                                          sampler_name="Euler a", batch_size=args.seeds, save_images=False)
                return [g.image for g in engine.txt2img(params, private).images]
            for image in queue.submit(run, "eval").wait(600):
                hits += check_image(image, concepts=True).color == CONCEPT
                n += 1
        return hits / n

    try:
        queue.submit(create_embedding_job(engine, NAME, 1, True, "red"), "create").wait(60)
        print(f"before training: {share(prompts()):.0%}", flush=True)
        options = TrainOptions(data=DataOptions(data_root=pictures, template_filename="filewords.txt", width=64,
                                                height=64, batch_size=2),
                               learn_rate=args.learn_rate, steps=args.steps, save_every=0, create_image_every=0,
                               seed=1)
        queue.submit(train_embedding_job(engine, NAME, options), "train", kind="train").wait(3600)
        print(f"after {args.steps} steps at {args.learn_rate}: {share(prompts()):.0%}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(emb / f"{NAME}.pt", args.out)
        print(f"wrote {args.out}")
    finally:
        queue.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
