"""Time to one 64×64 picture from the built-in Shapes model, 20 steps, on this machine's device.

    python bench/bench_shapes_speed.py [--steps 20] [--repeats 5]

Prints the cold numbers a newcomer sees after ./launch.sh (checkpoint load, first image) and the
warm per-image time with it/s, for Kiln's txt2img path and for the same U-Net/VAE/text encoder
driven by a plain diffusers loop (EulerDiscreteScheduler, trailing spacing, v-prediction).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"
PROMPT = "a yellow triangle on a black background"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import tempfile

    import torch

    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.params import GenerationParams
    from core.jobs import JobQueue
    from core.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", MODEL.name]), REPO)
    engine = Engine(settings)
    queue = JobQueue()
    params = GenerationParams(prompt=PROMPT, steps=args.steps, width=64, height=64, seed=1, cfg_scale=7,
                              sampler_name="Euler", scheduler="Automatic", save_images=False)
    start = time.perf_counter()
    queue.run(lambda ctx: engine.ensure_model())
    load = time.perf_counter() - start
    start = time.perf_counter()
    queue.run(lambda ctx: engine.txt2img(params, ctx))
    first = time.perf_counter() - start
    warm = []
    for i in range(args.repeats):
        start = time.perf_counter()
        queue.run(lambda ctx, i=i: engine.txt2img(params.replace(seed=i), ctx))
        warm.append(time.perf_counter() - start)
    kiln = statistics.median(warm)
    model = engine.model
    queue.shutdown()

    # The same modules in a plain diffusers loop: the floor for this work.
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing")
    tok, te, unet, vae = model.tokenizers[0], model.text_encoders[0], model.unet, model.vae
    scale = model.spec.vae_scaling_factor

    @torch.inference_mode()
    def plain(seed: int) -> None:
        ids = tok([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = te(ids).last_hidden_state
        scheduler.set_timesteps(args.steps)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 4, 16, 16, generator=g) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            xin = scheduler.scale_model_input(torch.cat([x, x]), t)
            cond, uncond = unet(xin, t, encoder_hidden_states=context).sample.chunk(2)
            x = scheduler.step(uncond + 7 * (cond - uncond), t, x).prev_sample
        vae.decode(x / scale)

    plain(0)
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        plain(i)
        times.append(time.perf_counter() - start)
    floor = statistics.median(times)

    device = str(next(unet.parameters()).device)
    print(f"\nkiln-shapes-v1, 64x64, {args.steps} steps, Euler, CFG 7, {device}, torch threads {torch.get_num_threads()}")
    print(f"| {'measure':<44} | {'seconds':>8} | {'it/s':>6} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 8}|")
    print(f"| {'checkpoint load (cold)':<44} | {load:8.2f} |        |")
    print(f"| {'first image after load (incl. warm-up)':<44} | {first:8.2f} |        |")
    print(f"| {'Kiln txt2img, one image (median)':<44} | {kiln:8.3f} | {args.steps / kiln:6.1f} |")
    print(f"| {'plain diffusers loop, same modules (median)':<44} | {floor:8.3f} | {args.steps / floor:6.1f} |")
    print(f"| {'ratio Kiln / plain loop':<44} | {kiln / floor:8.2f} |        |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
