"""txt2img speed at 512² on the device present: Kiln's whole path vs a plain diffusers pipeline.

    python bench/bench_txt2img.py [--file PATH] [--steps 10] [--size 512]

Both run the same checkpoint, sampler (Euler, a fixed schedule), steps, size and CFG, on the
device Kiln's flags would pick (CUDA fp16 when present, else CPU fp32). Prints s/it for each
and the ratio. Without --file it uses the full-size random SD1.5 file of bench_checkpoint_load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.params import GenerationParams
    from core.jobs import JobQueue
    from core.models.fixtures import full_size_sd15_spec, write_diffusers_config_dir, write_full_size_sd15
    from core.settings import Settings

    cache = REPO / "bench" / ".cache"
    path = args.file or cache / "models" / "Stable-diffusion" / "full-size-sd15.safetensors"
    if not path.exists():
        path = write_full_size_sd15(cache)
    flags = parse_flags(["--data-dir", str(cache), "--ckpt", str(path.name)])
    settings = Settings.from_flags(flags, REPO)
    settings.paths.ckpt_dir = path.parent
    engine = Engine(settings)
    queue = JobQueue()
    policy = settings.device_policy()
    params = GenerationParams(prompt="a photo of a cat", negative_prompt="", sampler_name="Euler",
                              scheduler="Automatic", steps=args.steps, width=args.size, height=args.size,
                              cfg_scale=7, seed=1, save_images=False)
    queue.run(lambda ctx: engine.txt2img(params.replace(steps=1), ctx))  # load + warm-up
    start = time.perf_counter()
    queue.run(lambda ctx: engine.txt2img(params, ctx))
    kiln = (time.perf_counter() - start) / args.steps
    queue.shutdown()
    engine.unload()

    config_dir = write_diffusers_config_dir(full_size_sd15_spec(), cache / "sd15-config")
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False,
                                                    torch_dtype=policy.torch_dtype())
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe = pipe.to(policy.device)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(policy.device).manual_seed(1)
    pipe("a photo of a cat", num_inference_steps=1, width=args.size, height=args.size, generator=generator)
    start = time.perf_counter()
    pipe("a photo of a cat", num_inference_steps=args.steps, width=args.size, height=args.size,
         guidance_scale=7, generator=generator)
    plain = (time.perf_counter() - start) / args.steps

    print(f"\ntxt2img {args.size}x{args.size}, {args.steps} steps, CFG 7, {policy.device} {policy.dtype}")
    print(f"| {'pipeline':<30} | {'s/it':>7} | {'it/s':>6} |")
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 8}|")
    print(f"| {'Kiln (whole job incl. decode)':<30} | {kiln:7.3f} | {1 / kiln:6.2f} |")
    print(f"| {'diffusers pipeline':<30} | {plain:7.3f} | {1 / plain:6.2f} |")
    print(f"| {'ratio Kiln / diffusers':<30} | {kiln / plain:7.2f} |        |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
