"""The one-pipeline refactor, measured: txt2img before/after, LoRA changes between jobs, img2img vs diffusers.

    .venv/bin/python bench/bench_pipeline.py [--before e46c408] [--steps 20] [--repeats 5] [--threads 2]

1. txt2img it/s of the built-in Shapes model (64x64, Euler, CFG 7), Kiln before the refactor
   (the given commit, checked out in a temporary git worktree) against Kiln now, in the same
   run: each side runs in its own subprocess, alternating, so machine load hits both alike.
2. A LoRA weight change between two jobs on the tiny SD1 fixture: job time with
   <lora:kiln_style_v1:0.5>, then 1.0, against the same job without a LoRA; the merge time per
   job, and whether the checkpoint stayed loaded (it must: a weight change is a re-merge).
3. img2img (denoising 0.6, Euler, 20 steps) on the built-in model: Kiln's job against diffusers'
   StableDiffusionImg2ImgPipeline built on the same modules, per sampler step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"
PROMPT = "a yellow triangle on a black background"

WORKER = r"""
import json, sys, time, tempfile
from pathlib import Path
import torch
repo = Path(sys.argv[1]); steps = int(sys.argv[2]); repeats = int(sys.argv[3]); torch.set_num_threads(int(sys.argv[4]))
sys.path.insert(0, str(repo))
from core.cli import parse_flags
from core.engine import Engine
from core.generation.params import GenerationParams
from core.jobs import JobQueue
from core.settings import Settings
data = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
engine = Engine(Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", "kiln-shapes-v1.safetensors"]), repo))
queue = JobQueue()
params = GenerationParams(prompt=sys.argv[5], steps=steps, width=64, height=64, seed=1, cfg_scale=7,
                          sampler_name="Euler", save_images=False)
queue.run(lambda ctx: engine.txt2img(params, ctx))  # load + warm-up
times = []
for i in range(repeats):
    start = time.perf_counter()
    queue.run(lambda ctx: engine.txt2img(params.replace(seed=i), ctx))
    times.append(time.perf_counter() - start)
queue.shutdown()
print(json.dumps(times))
"""


def refactor_rows(before: str, steps: int, repeats: int, threads: int) -> list[str]:
    tree = Path(tempfile.mkdtemp(prefix="kiln-before-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), before], check=True,
                   capture_output=True)
    try:
        results: dict[str, list[float]] = {"before": [], "now": []}
        for _round in range(2):  # alternate so both sides see the same machine load
            for name, root in (("before", tree), ("now", REPO)):
                out = subprocess.run([sys.executable, "-c", WORKER, str(root), str(steps), str(repeats), str(threads), PROMPT],
                                     check=True, capture_output=True, text=True, cwd=str(root))
                results[name] += json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    old, new = statistics.median(results["before"]), statistics.median(results["now"])
    return [f"| txt2img 64², {steps} steps (median of {len(results['now'])}) | {steps / new:6.1f} it/s "
            f"({new:.3f} s) | before {before}: {steps / old:6.1f} it/s ({old:.3f} s) | {new / old:5.2f}× |"]


def lora_rows(threads: int) -> list[str]:
    import torch

    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.params import GenerationParams
    from core.jobs import JobQueue
    from core.models.fixtures import build_fixture_models
    from core.settings import Settings

    torch.set_num_threads(threads)
    data = Path(tempfile.mkdtemp(prefix="kiln-bench-lora-"))
    build_fixture_models(data)
    engine = Engine(Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", "tiny-sd1.safetensors"]),
                                        REPO))
    queue = JobQueue()
    params = GenerationParams(prompt="a red circle", steps=10, width=64, height=64, seed=1, sampler_name="Euler",
                              save_images=False)

    def job(prompt: str) -> tuple[float, float]:
        start = time.perf_counter()
        queue.run(lambda ctx: engine.txt2img(params.replace(prompt=prompt), ctx))
        return time.perf_counter() - start, engine.extras.last_apply_seconds

    job(params.prompt)
    model = engine.model
    plain = statistics.median(job(params.prompt)[0] for _ in range(5))
    rows = []
    for weight in ("0.5", "1.0", "0.5", "1.0"):
        seconds, merge = job(f"a red circle <lora:kiln_style_v1:{weight}>")
        rows.append((seconds, merge))
    queue.shutdown()
    same = engine.model is model
    seconds = statistics.median(r[0] for r in rows)
    merge = statistics.median(r[1] for r in rows)
    return [f"| LoRA weight changed between jobs (tiny SD1, 10 steps) | {seconds:.3f} s a job, merge "
            f"{merge * 1000:.1f} ms, checkpoint reloaded: {'no' if same else 'YES'} | same job without LoRA "
            f"{plain:.3f} s | {seconds / plain:5.2f}× |"]


def img2img_rows(steps: int, repeats: int, threads: int) -> list[str]:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
    from PIL import Image, ImageDraw

    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.img2img import Img2ImgParams
    from core.jobs import JobQueue
    from core.settings import Settings

    torch.set_num_threads(threads)
    init = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(init).ellipse((14, 14, 50, 50), fill=(220, 30, 30))
    data = Path(tempfile.mkdtemp(prefix="kiln-bench-i2i-"))
    engine = Engine(Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", MODEL.name]), REPO))
    queue = JobQueue()
    params = Img2ImgParams(prompt=PROMPT, init_images=[init], denoising_strength=0.6, steps=steps, width=64,
                           height=64, seed=1, cfg_scale=7, sampler_name="Euler", save_images=False)
    queue.run(lambda ctx: engine.img2img(params, ctx))
    kiln_steps = int(0.6 * steps) + 1
    kiln = []
    for i in range(repeats):
        start = time.perf_counter()
        queue.run(lambda ctx, i=i: engine.img2img(params.replace(seed=i), ctx))
        kiln.append((time.perf_counter() - start) / kiln_steps)
    queue.shutdown()

    model = engine.model
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing")
    pipe = StableDiffusionImg2ImgPipeline(vae=model.vae, text_encoder=model.text_encoders[0],
                                          tokenizer=model.tokenizers[0], unet=model.unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.config.scaling_factor = model.spec.vae_scaling_factor
    plain_steps = int(0.6 * steps)
    pipe(PROMPT, image=init, strength=0.6, num_inference_steps=steps, guidance_scale=7)
    plain = []
    for i in range(repeats):
        generator = torch.Generator().manual_seed(i)
        start = time.perf_counter()
        pipe(PROMPT, image=init, strength=0.6, num_inference_steps=steps, guidance_scale=7, generator=generator)
        plain.append((time.perf_counter() - start) / plain_steps)
    k, p = statistics.median(kiln), statistics.median(plain)
    return [f"| img2img 64², denoising 0.6 ({kiln_steps} Kiln / {plain_steps} diffusers steps) | {k * 1000:.1f} ms/step "
            f"| diffusers img2img pipeline {p * 1000:.1f} ms/step | {k / p:5.2f}× |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="e46c408", help="the commit before the refactor")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [*refactor_rows(args.before, args.steps, args.repeats, args.threads), *lora_rows(args.threads),
            *img2img_rows(args.steps, args.repeats, args.threads)]
    print("\n| measured | Kiln | compared with | ratio |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
