"""Does the built-in model draw what the prompt says? Generate, read back, count.

    python -m core.shapes.evaluate models/Stable-diffusion/kiln-shapes-v1.safetensors \
        --grid docs/shapes-grid.png

64 fixed prompts (every held-out combination included) with fixed seeds, 20 steps of Kiln's
default sampler at 64x64, read back by the checker: background / shape colour / shape class
accuracy, overall and on the held-out combinations alone. The generation is injectable
(``generate_fn(prompts, seeds) -> images``) so the same evaluation can run through the full
txt2img path, an API, or a training preview.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from core.fileio import atomic_save_with
from core.shapes import checker, world

GenerateFn = Callable[[list[str], list[int]], list[Image.Image]]

EVAL_SEED = 20260
EVAL_COUNT = 64
QUALITY_BAR = {"background": 0.95, "color": 0.90, "shape": 0.70}


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    seed: int
    expected: checker.Expected
    held_out: bool


@dataclass
class EvalReport:
    overall: dict[str, float]
    held_out: dict[str, float]
    prompts: list[EvalPrompt]
    results: list[checker.CheckResult]
    images: list[Image.Image] = field(repr=False)

    def meets_bar(self) -> bool:
        return all(self.overall[key] >= bar for key, bar in QUALITY_BAR.items())

    def summary(self) -> dict:
        return {
            "overall": {k: round(v, 3) for k, v in self.overall.items()},
            "held_out": {k: round(v, 3) for k, v in self.held_out.items()},
            "count": len(self.prompts),
            "held_out_count": sum(p.held_out for p in self.prompts),
            "bar": QUALITY_BAR,
            "meets_bar": self.meets_bar(),
        }


def eval_prompts(count: int = EVAL_COUNT, seed: int = EVAL_SEED) -> list[EvalPrompt]:
    """Every held-out combination twice, the rest drawn from the training combinations."""
    rng = random.Random(seed)
    held = sorted(world.HELD_OUT)
    combos = (held * 2)[:count]
    train = world.combinations("train")
    combos += rng.sample(train, count - len(combos))
    rng.shuffle(combos)
    return [
        EvalPrompt(
            prompt=world.caption_for(color, shape, background),
            seed=seed + index,
            expected=checker.Expected(color=color, shape=shape, background=background),
            held_out=(color, shape, background) in world.HELD_OUT,
        )
        for index, (color, shape, background) in enumerate(combos)
    ]


def evaluate(generate_fn: GenerateFn, prompts: Sequence[EvalPrompt] | None = None) -> EvalReport:
    prompts = list(prompts if prompts is not None else eval_prompts())
    images = generate_fn([p.prompt for p in prompts], [p.seed for p in prompts])
    results = [checker.check_image(img) for img in images]
    expected = [p.expected for p in prompts]
    held = [i for i, p in enumerate(prompts) if p.held_out]
    return EvalReport(
        overall=checker.score(results, expected),
        held_out=checker.score([results[i] for i in held], [expected[i] for i in held]),
        prompts=prompts,
        results=results,
        images=images,
    )


# ----------------------------------------------------------------------------- generation


def token_ids(tokenizer, text: str, length: int = 77) -> list[int]:
    """SD1's 77-token chunk: BOS, the prompt's tokens, EOS padding."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: length - 2]
    return [bos, *ids] + [eos] * (length - 1 - len(ids))


def sampler_generate_fn(
    model,
    *,
    sampler: str | None = None,
    scheduler: str = "Automatic",
    steps: int = 20,
    cfg_scale: float = 7.0,
    rescale_cfg: float = 0.0,
    negative_prompt: str = "",
    batch_size: int = 16,
) -> GenerateFn:
    """Generation through Kiln's one pipeline (``core.generation.pipeline``) with a LoadedModel:
    the default sampler unless ``sampler`` names another, CFG, the WebUI's seeded noise, one
    prompt per picture in each batch."""
    from core.generation import pipeline
    from core.generation.cond_schedule import ConditioningCache, build_schedule
    from core.generation.model_ops import latent_channels, vae_downscale
    from core.prompts.conditioning import PromptEncoder
    from core.sampling.rng import ImageRNG
    from core.sampling.samplers import DEFAULT_SAMPLER
    from core.sampling.schedule import NoiseSchedule

    info = pipeline.resolve_sampler(sampler) if sampler else DEFAULT_SAMPLER
    label = pipeline.resolve_scheduler(scheduler, info)
    size = model.spec.native_size
    factor = vae_downscale(model)
    shape = (latent_channels(model), size // factor, size // factor)
    schedule = NoiseSchedule.from_config(zero_terminal_snr=model.spec.zero_terminal_snr,
                                         prediction_type=model.spec.prediction_type)
    tokenizers = model.tokenizers or [_shipped_tokenizer()]
    cache = ConditioningCache(PromptEncoder(tokenizers, model.text_encoders, model.spec.family), clip_skip=1)

    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        images: list[Image.Image] = []
        uncond = build_schedule(cache, negative_prompt, steps, split_and=False)
        for start in range(0, len(prompts), batch_size):
            batch_prompts, batch_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
            sp = pipeline.SamplingPass(
                sampler=info, scheduler=label, steps=steps, cfg_scale=cfg_scale, rescale_cfg=rescale_cfg,
                cond=[build_schedule(cache, p, steps, split_and=True) for p in batch_prompts], uncond=uncond,
                empty_context=cache.get("").context)
            rng = ImageRNG(shape, batch_seeds, latent_factor=factor, device=model.device)
            out = pipeline.denoise(model, sp, schedule, rng, rng.first(), size=(size, size))
            images += pipeline.decode(model, out.latents)
        return images

    return generate


def components_generate_fn(unet, vae, text_encoder, tokenizer, scaling_factor: float, **options) -> GenerateFn:
    """The same generation from bare diffusers/transformers parts (the recipe's training
    monitor, before a checkpoint file exists): a v-prediction, zero-terminal-SNR model."""
    from core.models.checkpoint import LoadedModel
    from core.shapes.recipe import model_spec_from_parts

    spec = model_spec_from_parts(unet, vae, text_encoder, scaling_factor)
    device = next(unet.parameters()).device
    model = LoadedModel(spec=spec, unet=unet, vae=vae, text_encoders=[text_encoder], tokenizers=[tokenizer],
                        dtype=next(unet.parameters()).dtype, device=device)
    return sampler_generate_fn(model, **options)


def _shipped_tokenizer():
    from transformers import CLIPTokenizer

    from core.models.checkpoint import TOKENIZER_DIR

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


# ----------------------------------------------------------------------------- grid


def grid_image(images: Sequence[Image.Image], captions: Sequence[str], columns: int = 8, scale: int = 2,
               marks: Sequence[bool] | None = None) -> Image.Image:
    """Pictures in a grid, each with its prompt underneath; ``marks`` (True: the checker read
    the prompt back) draws a green or red bar beside the caption."""
    cell = images[0].width * scale
    text_h = 26
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index, (image, caption) in enumerate(zip(images, captions)):
        x, y = (index % columns) * cell, (index // columns) * (cell + text_h)
        canvas.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        words = caption.removeprefix("a ").replace(" background", "").split(" on a ")
        draw.text((x + 6, y + cell + 1), words[0], fill=(0, 0, 0))
        if len(words) > 1:
            draw.text((x + 6, y + cell + 13), "on " + words[1], fill=(90, 90, 90))
        if marks is not None:
            colour = (30, 160, 60) if marks[index] else (210, 40, 40)
            draw.rectangle((x, y + cell + 2, x + 3, y + cell + text_h - 3), fill=colour)
    return canvas


def save_grid(report: EvalReport, path: str | Path) -> Path:
    marks = [
        (r.background, r.color, r.shape) == (p.expected.background, p.expected.color, p.expected.shape)
        for r, p in zip(report.results, report.prompts)
    ]
    grid = grid_image(report.images, [p.prompt for p in report.prompts], marks=marks)
    return atomic_save_with(path, lambda tmp: grid.save(tmp, format="PNG"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.shapes.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a Shapes-world checkpoint (.safetensors)")
    parser.add_argument("--grid", type=Path, default=None, help="write the 8x8 grid PNG here")
    parser.add_argument("--sampler", default=None, help="sampler name (default: Kiln's default sampler)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--rescale-cfg", type=float, default=None,
                        help="Rescale CFG (phi, 0..1; 0 = off); default: the txt2img slider's default for "
                             "this model (0.7 for zero-terminal-SNR models such as the built-in one)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from core.models.checkpoint import load_checkpoint
    from core.models.header_facts import rescale_cfg_default

    model = load_checkpoint(args.model)
    rescale_cfg = args.rescale_cfg
    if rescale_cfg is None:
        rescale_cfg = rescale_cfg_default(model.spec.zero_terminal_snr)
    generate = sampler_generate_fn(model, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                                   rescale_cfg=rescale_cfg)
    report = evaluate(generate)
    if args.grid:
        save_grid(report, args.grid)
    settings = {"sampler": args.sampler or "default", "steps": args.steps, "cfg_scale": args.cfg_scale,
                "rescale_cfg": rescale_cfg}
    print(json.dumps({"settings": settings, **report.summary()}, indent=2))
    return 0 if report.meets_bar() else 1


if __name__ == "__main__":
    sys.exit(main())
