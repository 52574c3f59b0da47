"""Per-step cost of Kiln's denoise loop against a plain diffusers loop over the same UNet.

    .venv/bin/python bench/bench_sampler_overhead.py [--steps 20] [--runs 7] [--device cpu] [--threads 1] [--check]

Both loops run Euler with classifier-free guidance (cond + uncond batched in one UNet call) over the
same tiny random UNet2DConditionModel: Kiln through core.sampling (CFGDenoiser -> DiscreteDenoiser ->
sample_euler), diffusers through EulerDiscreteScheduler with the usual pipeline loop. Runs alternate
so that load changes on the machine hit both alike; the table shows the median ms/step of each.
A second pass swaps the UNet for a null network (zeros) to show the bare per-step cost of each loop.
Goal: Kiln <= 1.02 x diffusers with the UNet (the loop should cost nothing next to the network).
CPU runs use one thread by default: on a small shared machine more threads only add contention noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import EulerDiscreteScheduler, UNet2DConditionModel  # noqa: E402

from core.sampling.cfg import CFGDenoiser, StepConditioning  # noqa: E402
from core.sampling.denoiser import DiscreteDenoiser  # noqa: E402
from core.sampling.k_samplers import sample_euler  # noqa: E402
from core.sampling.schedule import NoiseSchedule  # noqa: E402
from core.sampling.schedulers import get_sigmas  # noqa: E402

GOAL_RATIO = 1.02
CFG_SCALE = 7.0


def tiny_unet(device: torch.device) -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return unet.to(device).eval()


class NullUNet(torch.nn.Module):
    """Same call signature as the UNet, no work: isolates the loops' own per-step cost."""

    def forward(self, x, t, encoder_hidden_states):
        return _Output(torch.zeros_like(x))


class _Output:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample


def kiln_loop(unet, latents, cond, uncond, steps: int, schedule: NoiseSchedule) -> torch.Tensor:
    def model_fn(x, t, context):
        return unet(x, t, encoder_hidden_states=context).sample

    sigmas = get_sigmas("Automatic", steps, schedule).to(latents.device)
    conditioning = StepConditioning([({"context": cond}, 1.0)], {"context": uncond})
    cfg = CFGDenoiser(DiscreteDenoiser(model_fn, schedule), lambda i: conditioning, CFG_SCALE, sigmas=sigmas)
    return sample_euler(cfg, latents * sigmas[0], sigmas)


def diffusers_loop(unet, latents, cond, uncond, steps: int, scheduler: EulerDiscreteScheduler) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=latents.device)
    context = torch.cat([uncond, cond])
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
        noise_uncond, noise_cond = unet(x_in, t, encoder_hidden_states=context).sample.chunk(2)
        noise = noise_uncond + CFG_SCALE * (noise_cond - noise_uncond)
        x = scheduler.step(noise, t, x).prev_sample
    return x


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(unet, latents, cond, uncond, steps, runs, device, schedule, scheduler) -> dict[str, float]:
    """Median ms/step of each loop; runs alternate (ABBA) so machine load hits both alike."""
    loops = {
        "kiln": lambda: kiln_loop(unet, latents, cond, uncond, steps, schedule),
        "diffusers": lambda: diffusers_loop(unet, latents, cond, uncond, steps, scheduler),
    }
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    with torch.inference_mode():
        for fn in loops.values():
            fn()  # warm-up: allocator, kernels, lazy imports
        order = list(loops)
        for _ in range(runs):
            for name in order:
                seconds[name].append(timed(loops[name], device))
            order.reverse()  # ABBA: neither loop always runs right after the other
    return {name: statistics.median(values) / steps * 1000 for name, values in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless the ratio is <= {GOAL_RATIO}")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    unet = tiny_unet(device)
    schedule = NoiseSchedule.from_config()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace")
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 16, 16, generator=generator).to(device)
    cond = torch.randn(1, 77, 32, generator=generator).to(device)
    uncond = torch.randn(1, 77, 32, generator=generator).to(device)

    per_step = measure(unet, latents, cond, uncond, args.steps, args.runs, device, schedule, scheduler)
    bare = measure(NullUNet(), latents, cond, uncond, args.steps, args.runs * 5, device, schedule, scheduler)
    ratio = per_step["kiln"] / per_step["diffusers"]
    print(f"device {device}, threads {torch.get_num_threads()}, {args.steps} steps, {args.runs} runs, "
          f"tiny UNet2DConditionModel, CFG {CFG_SCALE}")
    print(f"{'loop':<12}{'ms/step':>10}{'loop only':>12}")
    for name in per_step:
        print(f"{name:<12}{per_step[name]:>10.3f}{bare[name]:>12.3f}")
    verdict = "ok" if ratio <= GOAL_RATIO else "over goal"
    print(f"{'ratio':<12}{ratio:>10.3f}  (goal <= {GOAL_RATIO}: {verdict})")
    return 1 if args.check and ratio > GOAL_RATIO else 0


if __name__ == "__main__":
    raise SystemExit(main())
