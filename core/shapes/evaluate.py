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
    """Generation through Kiln's own sampling stack (``core.sampling``) with a LoadedModel:
    the default sampler unless ``sampler`` names another, CFG, the WebUI's seeded noise."""
    from core.generation.model_ops import decode, latent_channels, unet_fn, vae_downscale

    size = model.spec.native_size
    factor = vae_downscale(model)
    return sampling_generate_fn(
        unet_fn(model),
        lambda latent: decode(model, latent),
        model.text_encoders[0],
        model.tokenizers[0] if model.tokenizers else _shipped_tokenizer(),
        (latent_channels(model), size // factor, size // factor),
        prediction_type=model.spec.prediction_type,
        zero_terminal_snr=model.spec.zero_terminal_snr,
        sampler=sampler,
        scheduler=scheduler,
        steps=steps,
        cfg_scale=cfg_scale,
        rescale_cfg=rescale_cfg,
        negative_prompt=negative_prompt,
        batch_size=batch_size,
    )


def components_generate_fn(unet, vae, text_encoder, tokenizer, scaling_factor: float, **options) -> GenerateFn:
    """The same generation from bare diffusers/transformers parts (the recipe's training
    monitor, before a checkpoint file exists): a v-prediction, zero-terminal-SNR model."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(vae.config.sample_size)

    def model_fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return unet(x, t, encoder_hidden_states=context).sample.float()

    def decode_fn(latent: torch.Tensor) -> torch.Tensor:
        return (vae.decode(latent / scaling_factor).sample.float() + 1) / 2

    options = {"prediction_type": "v_prediction", "zero_terminal_snr": True, **options}
    shape = (int(unet.config.in_channels), size // factor, size // factor)
    return sampling_generate_fn(model_fn, decode_fn, text_encoder, tokenizer, shape, **options)


def sampling_generate_fn(
    model_fn: Callable[..., torch.Tensor],
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    text_encoder,
    tokenizer,
    latent_shape: tuple[int, int, int],
    *,
    prediction_type: str,
    zero_terminal_snr: bool,
    sampler: str | None = None,
    scheduler: str = "Automatic",
    steps: int = 20,
    cfg_scale: float = 7.0,
    rescale_cfg: float = 0.0,
    negative_prompt: str = "",
    batch_size: int = 16,
) -> GenerateFn:
    """``model_fn(x, t, context) -> raw prediction``; ``decode_fn(latents) -> images in [0, 1]``."""
    from core.sampling.cfg import CFGDenoiser, StepConditioning
    from core.sampling.plan import make_denoiser, noise_for, sampler_kwargs, sampler_sigmas, txt2img_start
    from core.sampling.rng import ImageRNG
    from core.sampling.samplers import DEFAULT_SAMPLER, find_sampler
    from core.sampling.schedule import NoiseSchedule

    info = find_sampler(sampler) if sampler else DEFAULT_SAMPLER
    schedule = NoiseSchedule.from_config(zero_terminal_snr=zero_terminal_snr, prediction_type=prediction_type)
    sigmas = sampler_sigmas(info, scheduler, steps, schedule)
    denoiser = make_denoiser(info, model_fn, schedule)
    factor = 64 // latent_shape[-1]

    def encode(texts: list[str]) -> torch.Tensor:
        ids = torch.tensor([token_ids(tokenizer, t) for t in texts], device=next(text_encoder.parameters()).device)
        return text_encoder(input_ids=ids).last_hidden_state.float()

    @torch.inference_mode()
    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        images: list[Image.Image] = []
        for start in range(0, len(prompts), batch_size):
            batch_prompts, batch_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
            n = len(batch_prompts)
            cond = encode(batch_prompts)
            uncond = encode([negative_prompt]).expand(n, -1, -1)
            step = StepConditioning(conds=[({"context": cond}, 1.0)], uncond={"context": uncond})
            rng = ImageRNG((n, *latent_shape), batch_seeds, latent_factor=factor)
            x = txt2img_start(info, rng.first(), sigmas)
            cfg = CFGDenoiser(denoiser, lambda _i, step=step: step, cfg_scale, sigmas=sigmas, rescale_cfg=rescale_cfg)
            latent = info.function(cfg, x, sigmas, noise_sampler=noise_for(info, rng, x, sigmas), **sampler_kwargs(info))
            pixels = decode_fn(latent)
            array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            images += [Image.fromarray(a) for a in array]
        return images

    return generate


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
    from core.engine import rescale_cfg_default
    from core.models.checkpoint import load_checkpoint

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
