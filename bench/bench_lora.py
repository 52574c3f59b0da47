"""Cost of a LoRA at sampling time: fused weights (Kiln) against runtime adapters (peft).

    .venv/bin/python bench/bench_lora.py [--size tiny|sd15] [--runs 7] [--iters 5] [--device cpu] [--rank 16]

One U-Net (the shared tiny SD1 layout, or SD1.5's dimensions with random weights), one kohya
LoRA on every attention/projection layer (the default kohya targets). Three ways to run it:

* none     – the plain U-Net;
* fused    – ``NetworkManager.apply`` merged ΔW into the weights once;
* runtime  – peft LoRA layers injected into the same modules (diffusers' adapter path): two
             extra small matmuls per layer per step.

Runs alternate between the three so machine load hits all alike; the table shows the median
it/s (one U-Net forward with batch 2 = one CFG step). The fused outputs are checked against the
runtime adapters' outputs first, so both compute the same network. Also printed: the one-time
merge and restore costs, paid when the LoRA set or its weights change between jobs.
Decision rule: keep fused unless runtime is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import UNet2DConditionModel  # noqa: E402

from core.models.fixtures import full_size_sd15_spec, tiny_unet_config  # noqa: E402
from core.networks.fixtures import NetworkFileWriter, save_safetensors  # noqa: E402
from core.networks.lora import NetworkManager  # noqa: E402


def build_unet(size: str, device: torch.device, dtype: torch.dtype) -> UNet2DConditionModel:
    config = tiny_unet_config("sd1") if size == "tiny" else full_size_sd15_spec().unet_config
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def inputs(unet: UNet2DConditionModel, size: str, device, dtype):
    g = torch.Generator().manual_seed(1)
    side = 8 if size == "tiny" else 64
    sample = torch.randn(2, 4, side, side, generator=g).to(device, dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(device, dtype)
    return sample, torch.tensor([500, 500], device=device), context


def forward(unet, args) -> torch.Tensor:
    with torch.no_grad():
        return unet(args[0], args[1], encoder_hidden_states=args[2]).sample


def add_runtime_adapters(unet, lora: dict[str, torch.Tensor], names: dict[str, str], rank: int, alpha: float):
    """Inject peft LoRA layers into the same modules and copy the file's up/down weights in."""
    from peft import LoraConfig, inject_adapter_in_model

    by_kohya = {v: k for k, v in names.items()}
    targets = sorted({by_kohya[k.split(".")[0]] for k in lora})
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, unet, adapter_name="bench")
    with torch.no_grad():
        for path in targets:
            layer = unet.get_submodule(path)
            key = names[path]
            layer.lora_A["bench"].weight.copy_(lora[f"{key}.lora_down.weight"].reshape(layer.lora_A["bench"].weight.shape))
            layer.lora_B["bench"].weight.copy_(lora[f"{key}.lora_up.weight"].reshape(layer.lora_B["bench"].weight.shape))
    return unet


def time_it(unet, args, iters: int) -> float:
    forward(unet, args)  # warm-up
    if args[0].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        forward(unet, args)
    if args[0].is_cuda:
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    opts = ap.parse_args(argv)
    device = torch.device(opts.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    base = build_unet(opts.size, device, dtype)
    writer = NetworkFileWriter("sd1", base, [], None, seed=0)
    lora = {k: v.to(dtype) for k, v in writer.kohya_lora(rank=opts.rank, alpha=opts.rank / 2).items()}
    args = inputs(base, opts.size, device, dtype)

    with tempfile.TemporaryDirectory() as tmp:
        path = save_safetensors(Path(tmp) / "bench.safetensors", lora)
        manager = NetworkManager(base, [], "sd1")
        net = manager.load(path)
        t0 = time.perf_counter()
        manager.apply([(net, 1.0, 1.0, None)])
        merge_s = time.perf_counter() - t0
        fused_out = forward(base, args)
        t0 = time.perf_counter()
        manager.restore()
        restore_s = time.perf_counter() - t0

        runtime = build_unet(opts.size, device, dtype)
        add_runtime_adapters(runtime, lora, writer.unet_names, opts.rank, opts.rank / 2)
        runtime_out = forward(runtime, args)
        diff = (fused_out.float() - runtime_out.float()).abs().max().item()
        scale = fused_out.float().abs().max().item()
        if diff > 1e-3 * max(scale, 1.0) * (50 if dtype == torch.float16 else 1):
            print(f"fused and runtime outputs differ: max |Δ| = {diff:.3g} (scale {scale:.3g})")
            return 1

        results: dict[str, list[float]] = {"none": [], "fused": [], "runtime": []}
        for _ in range(opts.runs):
            results["none"].append(time_it(base, args, opts.iters))
            manager.apply([(net, 1.0, 1.0, None)])
            results["fused"].append(time_it(base, args, opts.iters))
            manager.restore()
            results["runtime"].append(time_it(runtime, args, opts.iters))

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"U-Net {opts.size} on {device} ({dtype}), LoRA rank {opts.rank} on {len(lora) // 3} layers, "
          f"batch 2, median of {opts.runs} runs × {opts.iters} forwards")
    print(f"fused vs runtime max |Δ| = {diff:.2e}")
    print(f"{'mode':<10}{'it/s':>10}{'vs none':>10}")
    for mode in ("none", "fused", "runtime"):
        print(f"{mode:<10}{med[mode]:>10.2f}{med[mode] / med['none']:>10.3f}")
    print(f"fused / runtime = {med['fused'] / med['runtime']:.3f}")
    print(f"one-time merge {merge_s * 1000:.1f} ms, restore {restore_s * 1000:.1f} ms")
    choice = "runtime" if med["runtime"] > med["fused"] else "fused"
    print(f"choice: {choice}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
