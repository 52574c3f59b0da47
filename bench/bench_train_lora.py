"""A LoRA teaches the built-in Shapes model a colour it has never seen ("teal"), on CPU.

    .venv/bin/python bench/bench_train_lora.py [--pictures 24] [--epochs 6] [--seeds 4] [--out DIR]

Draws a kohya dataset ``<out>/train/4_teal shape/`` of teal circles / squares / triangles on the
world's backgrounds (captions "a teal circle on a white background"), trains a rank-8 LoRA on
the leased built-in model with Kiln's trainer, then generates "a teal circle on a white
background" through Kiln's txt2img with ``<lora:teal:0>`` and ``<lora:teal:1>``. Prints s/step,
the loss of the first and last epoch, and how near the shape's pixels come to teal (mean RGB
distance of the pixels that are not background, and the share within 60 of teal); checks that
weight 0 is bitwise the base model's picture.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.cli import parse_flags  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.generation.params import GenerationParams  # noqa: E402
from core.jobs import JobQueue  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.shapes import world  # noqa: E402
from core.training.data import DataOptions  # noqa: E402
from core.training.loop import LoopOptions  # noqa: E402
from core.training.lora import Hooks, LoraJob, OutputOptions, train_lora  # noqa: E402
from core.training.network import NetworkSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "kiln-shapes-v1.safetensors"
TEAL = (0, 150, 150)
PROMPT = "a teal circle on a white background"


def write_teal_dataset(folder: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    world.PALETTE.setdefault("teal", TEAL)  # drawing only: the model's world stays as it was
    try:
        for k in range(n):
            shape = world.SHAPES[k % len(world.SHAPES)]
            background = ["white", "black", "yellow"][k % 3]
            world.render(shape, "teal", background, rng).save(folder / f"{k:03d}.png")
            (folder / f"{k:03d}.txt").write_text(f"a teal {shape} on a {background} background", encoding="utf-8")
    finally:
        world.PALETTE.pop("teal", None)


def teal_stats(images) -> tuple[float, float]:
    """Over pixels far from the white background: mean distance to teal, share within 60."""
    distances = []
    for image in images:
        a = np.asarray(image, dtype=np.float32).reshape(-1, 3)
        shape = a[np.linalg.norm(a - np.array([245, 245, 245]), axis=1) > 80]
        if len(shape):
            distances.append(np.linalg.norm(shape - np.array(TEAL), axis=1))
    d = np.concatenate(distances) if distances else np.array([442.0])
    return float(d.mean()), float((d < 60).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15, help="sampling steps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="kiln-train-teal-"))
    concept = root / "train" / "4_teal shape"
    concept.mkdir(parents=True, exist_ok=True)
    write_teal_dataset(concept, args.pictures, seed=5)
    settings = Settings.from_flags(parse_flags(["--data-dir", str(root / "data"), "--ckpt", SHIPPED]), REPO)
    settings.paths.ensure_dirs()
    engine, queue = Engine(settings), JobQueue()
    lora_dir = settings.paths.lora_dir
    job = LoraJob(train_data_dir=root / "train", output=OutputOptions(lora_dir, "teal", overwrite=True),
                  data=DataOptions(resolution=(64, 64), caption_extension=".txt"),
                  network=NetworkSpec(network_dim=8, network_alpha=8.0),
                  loop=LoopOptions(train_batch_size=8, max_train_epochs=args.epochs, seed=1, max_grad_norm=1.0),
                  learning_rate=2e-3)
    losses = []

    def train(ctx):
        with engine.lease() as model:
            return train_lora(job, model, Hooks(on_step=losses.append))
    start = time.perf_counter()
    queue.run(train, timeout=3600)
    seconds = time.perf_counter() - start
    engine.refresh_models()

    def generate(weight: float):
        params = GenerationParams(prompt=f"{PROMPT} <lora:teal:{weight}>", seed=11, batch_size=args.seeds,
                                  steps=args.steps, width=64, height=64, cfg_scale=7, sampler_name="Euler a",
                                  save_images=False)
        return [g.image for g in queue.run(lambda ctx: engine.txt2img(params, ctx), timeout=600).images]

    plain = [g.image for g in queue.run(lambda ctx: engine.txt2img(GenerationParams(
        prompt=PROMPT, seed=11, batch_size=args.seeds, steps=args.steps, width=64, height=64, cfg_scale=7,
        sampler_name="Euler a", save_images=False), ctx), timeout=600).images]
    zero, one = generate(0), generate(1)
    queue.shutdown()
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, zero))
    per_epoch = len(losses) // args.epochs
    first = np.mean([r.loss for r in losses[:per_epoch]])
    last = np.mean([r.loss for r in losses[-per_epoch:]])
    base_d, base_share = teal_stats(zero)
    lora_d, lora_share = teal_stats(one)
    print(f"{len(losses)} steps in {seconds:.1f} s ({seconds / len(losses):.2f} s/step, batch 8, 64², CPU); "
          f"loss first epoch {first:.4f} → last {last:.4f}")
    print("| picture | mean distance to teal | pixels within 60 of teal |\n|---|---|---|")
    print(f"| <lora:teal:0> (= base: {same}) | {base_d:.1f} | {base_share:.1%} |")
    print(f"| <lora:teal:1> | {lora_d:.1f} | {lora_share:.1%} |")
    grid = world_grid(zero + one)
    grid.save(root / "teal-grid.png")
    print(f"grid (top: weight 0, bottom: weight 1): {root / 'teal-grid.png'}")


def world_grid(images):
    from PIL import Image

    cols = len(images) // 2
    grid = Image.new("RGB", (64 * cols, 128))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * 64, (i // cols) * 64))
    return grid


if __name__ == "__main__":
    main()
