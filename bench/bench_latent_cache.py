"""Latent caching throughput: pictures/s of the trainer's latents with no cache, the memory cache
and kohya's disk cache (``cache_latents_to_disk``: ``<picture>.npz`` reused by the next run), against
a plain diffusers loop that opens each picture and encodes it with the VAE.

    .venv/bin/python bench/bench_latent_cache.py [--pictures 64] [--size 64] [--threads 2]

Two epochs each. "epoch 1" is the cold pass (every picture encoded; the disk mode also writes its
.npz files), "epoch 2" what every later epoch costs; "next run" is a new trainer on the same folder
(the disk cache is read back, checked against each picture's size, mtime and bucket). The ratio
column is Kiln's cold pass against the plain loop doing the same work (goal ≤ 1.0×).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.models.checkpoint import load_checkpoint  # noqa: E402
from core.shapes import world  # noqa: E402
from core.training.data import DataOptions  # noqa: E402
from core.training.loop import LoopOptions, LoraTrainer  # noqa: E402
from core.training.lora import LoraJob, OutputOptions, prepare_data  # noqa: E402
from core.training.network import LoRANetwork, NetworkSpec  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"


def write_pictures(folder: Path, n: int, size: int) -> Path:
    from PIL import Image

    concept = folder / "train" / "1_shapes"
    concept.mkdir(parents=True)
    for i, sample in enumerate(world.sample_world(5, n)):
        image = sample.image if size == world.IMAGE_SIZE else sample.image.resize((size, size), Image.Resampling.BICUBIC)
        image.save(concept / f"{i:03d}.png")
        (concept / f"{i:03d}.txt").write_text(sample.caption, encoding="utf-8")
    return folder / "train"


def trainer_for(model, train_dir: Path, size: int, cache: bool, disk: bool) -> LoraTrainer:
    job = LoraJob(train_data_dir=train_dir, output=OutputOptions(train_dir.parent / "out", "bench"),
                  data=DataOptions(resolution=(size, size), caption_extension=".txt"),
                  network=NetworkSpec(network_dim=4, network_alpha=4),
                  loop=LoopOptions(cache_latents=cache, cache_latents_to_disk=disk), learning_rate=1e-4)
    data = prepare_data(job)
    network = LoRANetwork(model.unet, model.text_encoders, model.spec.family, job.network, model.spec.unet_config)
    return LoraTrainer(model, network, data, job.loop, lambda groups: torch.optim.AdamW(groups, lr=1e-4),
                       lambda optimizer, total: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                       (None, None, 1e-4))


def epoch_seconds(trainer: LoraTrainer) -> float:
    start = time.perf_counter()
    for item in trainer.data.items:
        trainer.latents(item, False)
    return time.perf_counter() - start


def plain_seconds(model, train_dir: Path) -> float:
    from PIL import Image

    start = time.perf_counter()
    for path in sorted(train_dir.glob("*/*.png")):
        pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
        with torch.no_grad():
            model.vae.encode((pixels / 127.5 - 1)[None]).latent_dist.mean * model.spec.vae_scaling_factor
    return time.perf_counter() - start


def rate(pictures: int, seconds: float) -> str:
    per_second = pictures / seconds
    return f"{per_second:.1f}" if per_second < 100 else f"{per_second:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(SHIPPED)
    n = args.pictures
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        train_dir = write_pictures(Path(folder), n, args.size)
        plain = plain_seconds(model, train_dir)
        for label, cache, disk in (("no cache", False, False), ("memory cache", True, False),
                                   ("disk cache (.npz)", True, True)):
            trainer = trainer_for(model, train_dir, args.size, cache, disk)
            first, second = epoch_seconds(trainer), epoch_seconds(trainer)
            again = epoch_seconds(trainer_for(model, train_dir, args.size, cache, disk))
            rows.append((label, first, second, again))
    print(f"Latents of {n} pictures {args.size}², built-in model, CPU {args.threads} threads (pictures/s)")
    print("| | epoch 1 | epoch 2 | next run | epoch 1 / plain |\n|---|---|---|---|---|")
    print(f"| plain diffusers loop | {rate(n, plain)} | {rate(n, plain)} | {rate(n, plain)} | 1.00× |")
    for label, first, second, again in rows:
        print(f"| Kiln, {label} | {rate(n, first)} | {rate(n, second)} | {rate(n, again)} | {first / plain:.2f}× |")


if __name__ == "__main__":
    main()
