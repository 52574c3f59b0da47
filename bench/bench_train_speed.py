"""LoRA training speed and memory: Kiln's trainer against a plain diffusers + peft loop.

    .venv/bin/python bench/bench_train_speed.py [--steps 20] [--batch 8] [--rank 8] [--threads 2]

Both train a rank-``--rank`` LoRA on the U-Net's and text encoder's attention layers (kohya's
targets) of the built-in model at 64², batch ``--batch``, AdamW, on the same pictures and
captions: latents encoded once (both cache them), captions through the text encoder every step
(it is trained), ε/v loss as the model predicts, backward, clip, step. Each runs in its own
subprocess so peak RSS is its own; the table shows the median s/step after 3 warm-up steps and
the peak RSS, and the ratio Kiln / plain (goal ≤ 1.0×).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"


def _dataset(root: Path, n: int) -> Path:
    from core.shapes import world

    folder = root / "train" / "1_shapes"
    folder.mkdir(parents=True)
    for i, sample in enumerate(world.sample_world(3, n)):
        sample.image.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(sample.caption, encoding="utf-8")
    return root / "train"


def run_kiln(args) -> list[float]:
    from core.models.checkpoint import load_checkpoint
    from core.training.data import DataOptions
    from core.training.loop import LoopOptions
    from core.training.lora import Hooks, LoraJob, OutputOptions, train_lora
    from core.training.network import NetworkSpec

    root = Path(tempfile.mkdtemp())
    _dataset(root, args.batch * 4)
    model = load_checkpoint(SHIPPED)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(_report) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
    job = LoraJob(train_data_dir=root / "train", output=OutputOptions(root / "out", "bench"),
                  data=DataOptions(resolution=(64, 64), caption_extension=".txt"),
                  network=NetworkSpec(network_dim=args.rank, network_alpha=args.rank),
                  loop=LoopOptions(train_batch_size=args.batch, max_train_steps=args.steps, seed=0),
                  learning_rate=1e-4)
    last[0] = time.perf_counter()
    train_lora(job, model, Hooks(on_step=tick))
    return times


def run_plain(args) -> list[float]:
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from core.models.checkpoint import load_checkpoint
    from core.networks.kohya import target_modules
    from core.sampling.schedule import NoiseSchedule
    from core.shapes import world

    model = load_checkpoint(SHIPPED)
    unet, vae, te, tok = model.unet, model.vae, model.text_encoders[0], model.tokenizers[0]
    for part in (unet, vae, te):
        part.requires_grad_(False)
    targets = target_modules(unet, [te])
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=[p for c, p, _ in targets if c == 0]))
    inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                       target_modules=[p for c, p, _ in targets if c == 1]), te)
    params = [p for m in (unet, te) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    samples = world.sample_world(3, args.batch * 4)
    pixels = torch.stack([torch.from_numpy(__import__("numpy").asarray(s.image, dtype="float32")).permute(2, 0, 1)
                          for s in samples]) / 127.5 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * model.spec.vae_scaling_factor
    captions = [s.caption for s in samples]
    abar = NoiseSchedule.from_config(zero_terminal_snr=model.spec.zero_terminal_snr,
                                     prediction_type=model.spec.prediction_type).alphas_cumprod.float()
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        idx = [(step * args.batch + i) % len(samples) for i in range(args.batch)]
        x0 = latents[idx]
        ids = tok([captions[i] for i in idx], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        context = te(ids).last_hidden_state
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if model.spec.prediction_type == "v_prediction" else noise
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def child(which: str, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    times = (run_kiln if which == "kiln" else run_plain)(args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s_per_step": statistics.median(times[3:]), "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("kiln", "plain"), default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    results = {}
    for which in ("plain", "kiln"):
        out = subprocess.run([sys.executable, __file__, "--child", which, "--steps", str(args.steps), "--batch",
                              str(args.batch), "--rank", str(args.rank), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    k, p = results["kiln"], results["plain"]
    print(f"LoRA rank {args.rank}, built-in model 64², batch {args.batch}, {args.steps} steps, CPU {args.threads} threads")
    print("| | s/step (median) | peak RSS |\n|---|---|---|")
    print(f"| diffusers + peft loop | {p['s_per_step']:.3f} | {p['peak_mb']:.0f} MB |")
    print(f"| Kiln trainer | {k['s_per_step']:.3f} | {k['peak_mb']:.0f} MB |")
    print(f"| ratio Kiln / plain | {k['s_per_step'] / p['s_per_step']:.2f}× | {k['peak_mb'] / p['peak_mb']:.2f}× |")


if __name__ == "__main__":
    main()
