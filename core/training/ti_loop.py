"""The loop the WebUI's embedding and hypernetwork trainers share, over a leased, frozen model.

One optimizer step: ``gradient_step`` batches of the dataset (core/training/ti_data.py), each
prompt through Kiln's prompt encoder (the WebUI's chunking, emphasis, clip skip, embeddings),
noise, a uniform timestep, the U-Net's prediction against ε (or v for v-prediction models),
plain MSE (the LDM ``l_simple`` loss the WebUI's ``sd_model.forward`` returns), AdamW, the
schedule-text learning rate, optional gradient clipping (value or norm, its own schedule text).
Only the target's own tensors get gradients. Every ``save_every`` steps a copy goes into the log
folder (``<log>/<date>/<name>/embeddings/<name>-<step>.pt``), every ``create_image_every`` steps
a preview picture into ``images/``; at the end, on Stop or Interrupt the target is saved into
its own file, so nothing trained is lost. The loss is logged to a CSV as the WebUI does.
"""

from __future__ import annotations

import csv
import datetime
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from core.errors import KilnError
from core.fileio import atomic_save_with, unique_path
from core.sampling.schedule import NoiseSchedule
from core.training.learn_schedule import LearnRateScheduler
from core.training.objective import noised, prediction_target
from core.training.ti_data import DataOptions, PersonalizedData

CLIP_GRAD_MODES = ("disabled", "value", "norm")


@dataclass(frozen=True)
class PreviewOptions:
    """The preview picture: the WebUI's "Read parameters (prompt, etc...) from txt2img tab" values,
    or, when ``from_txt2img`` is off, the last training prompt at 20 steps and the training size."""

    from_txt2img: bool = False
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "Euler a"
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512


@dataclass(frozen=True)
class TrainOptions:
    """The WebUI's train_embedding / train_hypernetwork fields (its defaults, seed 003's max steps)."""

    data: DataOptions
    learn_rate: str = "0.005"
    steps: int = 100000
    gradient_step: int = 1
    log_directory: Path | None = None
    save_every: int = 500
    create_image_every: int = 500
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    save_image_with_stored_embedding: bool = False  # embeddings: also image_embeddings/<name>-<step>.png
    clip_skip: int | None = None  # None: 1 (the job passes the studio's Clip skip setting)
    seed: int | None = None  # None: a new one each run, as the WebUI


@dataclass(frozen=True)
class StepInfo:
    step: int
    total_steps: int
    initial_step: int
    loss: float
    learn_rate: float
    epoch: int
    epoch_step: int
    steps_per_epoch: int
    prompt: str


@dataclass
class TrainHooks:
    on_step: Callable[[StepInfo], None] | None = None
    should_stop: Callable[[], bool] | None = None
    # (generation parameters, the file the target was just saved to) → a picture, or None
    preview: Callable[[PreviewOptions, Path], Any] | None = None
    on_file: Callable[[Path, int], None] | None = None  # a saved copy and its step
    on_image: Callable[[Path, int, Any], None] | None = None
    # At the end of each epoch, with the target off the model: others' short queued jobs run then.
    pause: Callable[[], Any] | None = None


@dataclass(frozen=True)
class TrainResult:
    path: Path  # the target's own file, saved at the end
    step: int
    interrupted: bool
    log_dir: Path | None
    copies: tuple[Path, ...] = ()
    images: tuple[Path, ...] = ()


class Trainable(Protocol):
    """What the loop trains: an embedding's vectors or a hypernetwork's MLPs."""

    name: str
    step: int
    weight_decay: float
    log_kind: str  # "embeddings" | "hypernetworks": the log subfolder
    loss_csv: str
    fixed_text: bool

    def parameters(self) -> list[torch.Tensor]: ...

    def attached(self, model: Any) -> Any: ...  # a context manager: the target acts in the model

    def detached(self, model: Any) -> Any: ...  # a context manager: off while a preview is generated

    def encode(self, model: Any, prompts: list[str], clip_skip: int) -> torch.Tensor: ...

    def save(self, path: Path, name: str | None = None) -> Path: ...

    def preview_prompt(self, prompt: str) -> str: ...


def check_options(options: TrainOptions) -> None:
    """The WebUI's ``validate_train_inputs``, with messages that say what to change."""
    checks = [
        (options.data.batch_size > 0, "batch size must be positive"),
        (options.gradient_step > 0, "gradient accumulation steps must be positive"),
        (options.steps > 0, "max steps must be positive"),
        (options.save_every >= 0, "save every N steps must be positive or 0"),
        (options.create_image_every >= 0, "preview every N steps must be positive or 0"),
        (options.clip_grad_mode in CLIP_GRAD_MODES, f"gradient clipping must be one of {CLIP_GRAD_MODES}"),
        (0.0 <= options.data.tag_drop_out < 1.0, "tag dropout must be between 0 and 1"),
        (options.data.width % 8 == 0 and options.data.height % 8 == 0, "width and height must be multiples of 8"),
        (str(options.learn_rate).strip() != "", "learning rate is empty"),
        (not (options.save_every or options.create_image_every) or options.log_directory is not None,
         "log directory is empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise KilnError(message)


def _clipper(mode: str) -> Callable | None:
    return {"value": torch.nn.utils.clip_grad_value_, "norm": torch.nn.utils.clip_grad_norm_}.get(mode)


@contextmanager
def _no_grad_model(model: Any) -> Iterator[None]:
    """The model stays frozen and in eval mode (no dropout): only the target's tensors may collect
    gradients. Both are put back as they were."""
    parts = [model.unet, model.vae, *model.text_encoders]
    flags = [[p.requires_grad for p in part.parameters()] for part in parts]
    modes = [part.training for part in parts]
    for part in parts:
        part.requires_grad_(False)
        part.eval()
    try:
        yield
    finally:
        for part, part_flags, mode in zip(parts, flags, modes):
            part.train(mode)
            for p, flag in zip(part.parameters(), part_flags):
                p.requires_grad_(flag)


def objective(model: Any, target: Trainable, latents: torch.Tensor, prompts: list[str], schedule: NoiseSchedule,
              generator: torch.Generator, clip_skip: int) -> torch.Tensor:
    device, dtype = next(model.unet.parameters()).device, next(model.unet.parameters()).dtype
    latents = latents.to(device, dtype)
    context = target.encode(model, prompts, clip_skip).to(device, dtype)
    noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
    alphas = schedule.alphas_cumprod.float()
    timesteps = torch.randint(0, len(alphas), (latents.shape[0],), generator=generator)
    abar = alphas[timesteps].to(device, dtype).view(-1, 1, 1, 1)
    noisy = noised(latents, noise, abar)
    wanted = prediction_target(latents, noise, abar, schedule.prediction_type)
    prediction = model.unet(noisy, timesteps.to(device), encoder_hidden_states=context).sample
    return torch.nn.functional.mse_loss(prediction.float(), wanted.float())


def check_model(model: Any, what: str) -> None:
    family = model.spec.family
    if family not in ("sd1", "sd2"):
        raise KilnError(f"{what} training needs an SD1 or SD2 checkpoint; the loaded one is {family}",
                        hint="select an SD1.x / SD2.x model in the checkpoint box (kohya's trainers cover SDXL)")
    if getattr(model.unet.config, "in_channels", 4) != 4:
        raise KilnError(f"{what} training on an inpainting checkpoint is not supported",
                        hint="select the matching non-inpainting model")


def log_folder(options: TrainOptions, name: str) -> Path | None:
    if options.log_directory is None:
        return None
    return Path(options.log_directory) / datetime.date.today().strftime("%Y-%m-%d") / name


def _save_image(image: Any, folder: Path, stem: str, chunks: dict[str, str] | None = None) -> Path:
    from PIL import PngImagePlugin

    path = unique_path(folder, stem, ".png")
    info = PngImagePlugin.PngInfo()
    parameters = getattr(image, "info", {}).get("parameters")
    if parameters:
        info.add_text("parameters", parameters)
    for key, value in (chunks or {}).items():
        info.add_text(key, value)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_save_with(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def run_training(model: Any, target: Trainable, options: TrainOptions, final_path: Path, hooks: TrainHooks,
                 *, data_dir: Path | None = None) -> TrainResult:
    """Train ``target`` on the leased ``model`` until ``options.steps`` (or Stop); save into ``final_path``."""
    check_options(options)
    initial = target.step
    if initial >= options.steps:
        raise KilnError(f"{target.name} has already been trained to step {initial}, beyond max steps {options.steps}",
                        hint="raise max steps to train further")
    scheduler = LearnRateScheduler.from_text(options.learn_rate, options.steps, initial)
    clip = _clipper(options.clip_grad_mode)
    clip_scheduler = LearnRateScheduler.from_text(options.clip_grad_value, options.steps, initial) if clip else None
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    spec = model.spec
    schedule = NoiseSchedule.from_config(zero_terminal_snr=spec.zero_terminal_snr, prediction_type=spec.prediction_type)
    data = PersonalizedData.build(options.data, target.name, model.vae, spec.vae_scaling_factor, generator, rng,
                                  data_dir, fixed_text=target.fixed_text)
    steps_per_epoch = data.steps_per_epoch(options.gradient_step)
    params = target.parameters()
    optimizer = torch.optim.AdamW(params, lr=scheduler.learn_rate, weight_decay=target.weight_decay)
    log_dir = log_folder(options, target.name)
    copies: list[Path] = []
    images: list[Path] = []
    batches = data.batches(generator, rng, spec.vae_scaling_factor)
    interrupted = False
    stop = hooks.should_stop or (lambda: False)
    with _no_grad_model(model), target.attached(model):
        while target.step < options.steps:
            scheduler.apply(optimizer, target.step)
            if scheduler.finished:
                break
            if stop():
                interrupted = True
                break
            if clip_scheduler is not None:
                clip_scheduler.step(target.step)
            optimizer.zero_grad(set_to_none=True)
            loss_step, prompts = 0.0, []
            for _ in range(options.gradient_step):
                latents, prompts = next(batches)
                loss = objective(model, target, latents, prompts, schedule, generator, options.clip_skip or 1)
                loss = loss / options.gradient_step
                if not torch.isfinite(loss):
                    raise KilnError(f"the loss became {loss.item()} at step {target.step + 1}: training stopped; "
                                    "the last saved copy is kept", hint="lower the learning rate")
                loss.backward()
                loss_step += float(loss.detach())
            if clip is not None:
                clip(params, clip_scheduler.learn_rate)
            optimizer.step()
            target.step += 1
            step = target.step
            if log_dir is not None:
                _write_loss(log_dir / target.loss_csv, step, steps_per_epoch, loss_step, scheduler.learn_rate)
            # The WebUI counts these with ``steps_done = embedding.step + 1``, so its "-500" file holds
            # step 499; here a copy's name is the step it holds.
            if log_dir is not None and options.save_every and step % options.save_every == 0:
                folder = log_dir / target.log_kind
                folder.mkdir(parents=True, exist_ok=True)
                copy = unique_path(folder, f"{target.name}-{step}", ".pt")
                target.save(copy, name=copy.stem)
                copies.append(copy)
                if hooks.on_file is not None:
                    hooks.on_file(copy, step)
            if (log_dir is not None and options.create_image_every and step % options.create_image_every == 0
                    and hooks.preview is not None):
                images += _preview(model, target, options, prompts, final_path, log_dir, step, hooks)
            if hooks.on_step is not None:
                hooks.on_step(StepInfo(step, options.steps, initial, loss_step, scheduler.learn_rate,
                                       step // steps_per_epoch, step % steps_per_epoch, steps_per_epoch,
                                       prompts[0] if prompts else ""))
            if hooks.pause is not None and step % steps_per_epoch == 0 and step < options.steps:
                with target.detached(model):
                    hooks.pause()
    target.save(final_path)
    return TrainResult(final_path, target.step, interrupted, log_dir, tuple(copies), tuple(images))


def _preview(model: Any, target: Trainable, options: TrainOptions, prompts: list[str], final_path: Path,
             log_dir: Path, step: int, hooks: TrainHooks) -> list[Path]:
    """Save the target into its file (the generator reads it from there), make the picture with it."""
    if options.preview.from_txt2img:
        params = options.preview
    else:
        params = PreviewOptions(prompt=prompts[0] if prompts else target.name, steps=20,
                                width=options.data.width, height=options.data.height)
    params = PreviewOptions(**{**params.__dict__, "prompt": target.preview_prompt(params.prompt)})
    target.save(final_path)
    with target.detached(model):
        image = hooks.preview(params, final_path)
    if image is None:
        return []
    path = _save_image(image, log_dir / "images", f"{target.name}-{step}")
    saved = [path]
    stored = getattr(target, "stored_embedding_chunk", None)
    if options.save_image_with_stored_embedding and stored is not None:
        # The WebUI's "Save images with embedding in PNG chunks": the picture carries the
        # embedding (an ``sd-ti-embedding`` text chunk), so the PNG itself is an embedding file.
        saved.append(_save_image(image, log_dir / "image_embeddings", f"{target.name}-{step}",
                                 {"sd-ti-embedding": stored()}))
    if hooks.on_image is not None:
        hooks.on_image(path, step, image)
    return saved


def _write_loss(path: Path, step: int, steps_per_epoch: int, loss: float, learn_rate: float) -> None:
    """The WebUI's ``write_loss`` columns (step, epoch, epoch_step, loss, learn_rate), one row a step."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])
        writer.writerow([step, step // steps_per_epoch, step % steps_per_epoch + 1, f"{loss:.7f}", learn_rate])
