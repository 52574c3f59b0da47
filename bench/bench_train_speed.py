"""LoRA training speed and memory: Kiln's trainer against a plain diffusers + peft loop.

    .venv/bin/python bench/bench_train_speed.py [--steps 20] [--batch 8] [--rank 8] [--threads 2]
    .venv/bin/python bench/bench_train_speed.py --model sd15 --size 512 --batch 1 --steps 8 [--device cuda]
    .venv/bin/python bench/bench_train_speed.py --network loha   # lora | dora | loha | lokr

Both train a rank-``--rank`` LoRA on the U-Net's and text encoder's attention layers (kohya's
targets) of the built-in model at 64² (``--model shapes``), or of a random-weight checkpoint with
SD1.5's dimensions at ``--size`` (``--model sd15``: the real file layout and layer sizes, written
once into a temporary folder, 2 GB), batch ``--batch``, AdamW, on the same pictures and
captions: latents encoded once (both cache them), captions through the text encoder every step
(it is trained), ε/v loss as the model predicts, backward, clip, step. Each runs in its own
subprocess so peak RSS is its own; the table shows the median s/step after 3 warm-up steps and
the peak RSS, and the ratio Kiln / plain (goal ≤ 1.0×).

``--network``: ``lora`` (kohya's attention targets; peft ``LoraConfig``), ``dora`` (the same with
a trained magnitude; Kiln's ``dora_wd=True`` against peft's ``use_dora``), ``loha`` / ``lokr``
(LyCORIS's full preset of layers; Kiln's lycoris-lora modules against peft's ``LoHaConfig`` /
``LoKrConfig`` on the very same layers).
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


def _checkpoint(args) -> Path:
    return SHIPPED if args.model == "shapes" else Path(args.checkpoint)


def _load(args):
    import torch

    from core.models.checkpoint import load_checkpoint

    return load_checkpoint(_checkpoint(args), device=args.device, dtype=torch.float32)


def _pictures(n: int, size: int) -> list:
    """The world's pictures and captions, at ``size`` (the world draws 64²; larger sizes are resampled)."""
    from PIL import Image

    from core.shapes import world

    samples = world.sample_world(3, n)
    if size == world.IMAGE_SIZE:
        return [(s.image, s.caption) for s in samples]
    return [(s.image.resize((size, size), Image.Resampling.BICUBIC), s.caption) for s in samples]


def _dataset(root: Path, n: int, size: int) -> Path:
    folder = root / "train" / "1_shapes"
    folder.mkdir(parents=True)
    for i, (image, caption) in enumerate(_pictures(n, size)):
        image.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(caption, encoding="utf-8")
    return root / "train"


def _kiln_network(args):
    from core.training.network import NetworkSpec

    if args.network in ("loha", "lokr"):
        return NetworkSpec(network_dim=args.rank, network_alpha=args.rank, network_module="lycoris.kohya",
                           algo=args.network)
    return NetworkSpec(network_dim=args.rank, network_alpha=args.rank, dora_wd=args.network == "dora")


def _peft_configs(args, unet, te):
    """(U-Net config, text-encoder config) for peft, on the layers Kiln's network of that kind trains."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if args.network in ("loha", "lokr"):
        from core.training.lycoris_net import te_targets, unet_targets

        make = LoHaConfig if args.network == "loha" else LoKrConfig
        return (make(r=args.rank, alpha=args.rank, target_modules=[p for p, _ in unet_targets(unet)]),
                make(r=args.rank, alpha=args.rank, target_modules=[p for p, _ in te_targets(te)]))
    from core.networks.kohya import target_modules

    targets = target_modules(unet, [te])
    dora = args.network == "dora"
    return tuple(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", use_dora=dora,
                            target_modules=[p for c, p, _ in targets if c == component]) for component in (0, 1))


def run_kiln(args) -> list[float]:
    from core.training.data import DataOptions
    from core.training.loop import LoopOptions
    from core.training.lora import Hooks, LoraJob, OutputOptions, train_lora
    root = Path(tempfile.mkdtemp())
    _dataset(root, args.batch * 4, args.size)
    model = _load(args)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(_report) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
    job = LoraJob(train_data_dir=root / "train", output=OutputOptions(root / "out", "bench"),
                  data=DataOptions(resolution=(args.size, args.size), caption_extension=".txt"),
                  network=_kiln_network(args),
                  loop=LoopOptions(train_batch_size=args.batch, max_train_steps=args.steps, seed=0),
                  learning_rate=1e-4)
    last[0] = time.perf_counter()
    train_lora(job, model, Hooks(on_step=tick))
    return times


def run_plain(args) -> list[float]:
    import torch
    from peft import inject_adapter_in_model

    from core.sampling.schedule import NoiseSchedule

    model = _load(args)
    device = torch.device(args.device)
    unet, vae, te, tok = model.unet, model.vae, model.text_encoders[0], model.tokenizers[0]
    for part in (unet, vae, te):
        part.requires_grad_(False)
    unet_config, te_config = _peft_configs(args, unet, te)
    inject_adapter_in_model(unet_config, unet)
    inject_adapter_in_model(te_config, te)
    params = [p for m in (unet, te) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    samples = _pictures(args.batch * 4, args.size)
    pixels = torch.stack([torch.from_numpy(__import__("numpy").asarray(image, dtype="float32")).permute(2, 0, 1)
                          for image, _ in samples]) / 127.5 - 1
    with torch.no_grad():  # one picture at a time, as both trainers cache latents
        latents = torch.cat([vae.encode(p[None].to(device)).latent_dist.mean for p in pixels])
        latents = latents * model.spec.vae_scaling_factor
    captions = [caption for _, caption in samples]
    abar = NoiseSchedule.from_config(zero_terminal_snr=model.spec.zero_terminal_snr,
                                     prediction_type=model.spec.prediction_type).alphas_cumprod.float()
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.steps):
        _sync(device)
        start = time.perf_counter()
        idx = [(step * args.batch + i) % len(samples) for i in range(args.batch)]
        x0 = latents[idx]
        ids = tok([captions[i] for i in idx], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        context = te(ids).last_hidden_state
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        a = abar[t].view(-1, 1, 1, 1).to(device)
        t = t.to(device)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if model.spec.prediction_type == "v_prediction" else noise
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(which: str, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    times = (run_kiln if which == "kiln" else run_plain)(args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    print(json.dumps({"s_per_step": statistics.median(times[min(3, len(times) - 1):]), "peak_mb": peak_mb,
                      "gpu_mb": gpu_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=("shapes", "sd15"), default="shapes")
    parser.add_argument("--size", type=int, default=None, help="picture size (default 64 for shapes, 512 for sd15)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--network", choices=("lora", "dora", "loha", "lokr"), default="lora")
    parser.add_argument("--child", choices=("kiln", "plain"), default=None)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or (64 if args.model == "shapes" else 512)
    if args.child:
        child(args.child, args)
        return
    with tempfile.TemporaryDirectory() as folder:
        if args.model == "sd15":
            from core.models.fixtures import write_full_size_sd15

            args.checkpoint = str(write_full_size_sd15(folder))
        results = {}
        for which in ("plain", "kiln"):
            command = [sys.executable, __file__, "--child", which, "--steps", str(args.steps), "--batch",
                       str(args.batch), "--rank", str(args.rank), "--threads", str(args.threads), "--model",
                       args.model, "--size", str(args.size), "--device", args.device, "--network", args.network]
            if args.checkpoint:
                command += ["--checkpoint", args.checkpoint]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    k, p = results["kiln"], results["plain"]
    model = "built-in model" if args.model == "shapes" else "SD1.5-size checkpoint"
    where = f"CPU {args.threads} threads" if args.device == "cpu" else args.device
    kind = {"lora": "LoRA", "dora": "DoRA", "loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr"}[args.network]
    print(f"{kind} rank {args.rank}, {model} {args.size}², batch {args.batch}, {args.steps} steps, {where}")
    gpu = p["gpu_mb"] is not None
    print("| | s/step (median) | peak RSS |" + (" peak GPU |" if gpu else "") + "\n|---|---|---|" + ("---|" if gpu else ""))
    for label, r in (("diffusers + peft loop", p), ("Kiln trainer", k)):
        print(f"| {label} | {r['s_per_step']:.3f} | {r['peak_mb']:.0f} MB |" + (f" {r['gpu_mb']:.0f} MB |" if gpu else ""))
    ratio = f"| ratio Kiln / plain | {k['s_per_step'] / p['s_per_step']:.2f}× | {k['peak_mb'] / p['peak_mb']:.2f}× |"
    print(ratio + (f" {k['gpu_mb'] / p['gpu_mb']:.2f}× |" if gpu else ""))


if __name__ == "__main__":
    main()
