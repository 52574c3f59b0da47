"""The LoRA training loop: kohya's objective over a leased, frozen base model, resumable bit-exactly.

One step (as train_network.py): the batch's latents (VAE, cached per picture and flip), the
captions through kohya's caption rules and the text encoder (``clip_skip``), noise (+
``noise_offset``), a uniform timestep, the noisy latents on the model's own schedule (the one
generation uses, zero-terminal-SNR included), the U-Net's prediction against ε or v (the
model's prediction type), per-sample MSE × the prior loss weight of reg pictures ×
min-SNR-γ weights, gradient accumulation, ``max_grad_norm`` clipping, optimizer and scheduler.

Everything random comes from two generators seeded by ``seed`` (torch for noise and timesteps,
Python for captions and crops); their states, the step and epoch, the network, optimizer and
scheduler are what ``TrainState`` saves, so a run resumed from a state ends on exactly the
weights of an uninterrupted run (batches are a pure function of seed and epoch).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.dataset.caption_rules import process_caption
from core.errors import KilnError
from core.fileio import atomic_save_with
from core.sampling.schedule import NoiseSchedule
from core.training.data import Item, TrainingData
from core.training.network import LoRANetwork
from core.training.objective import min_snr_weights, noised, per_sample_mse, prediction_target

CHUNK = 75  # tokens of one CLIP window without BOS/EOS


@dataclass(frozen=True)
class LoopOptions:
    """The loop's numbers, by kohya's names."""

    train_batch_size: int = 1
    max_train_epochs: int | None = None
    max_train_steps: int = 1600  # kohya's default; max_train_epochs wins when given
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    noise_offset: float = 0.0
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    min_snr_gamma: float | None = None
    prior_loss_weight: float = 1.0
    clip_skip: int = 1
    max_token_length: int = 75
    seed: int = 0
    cache_latents: bool = True
    cache_latents_to_disk: bool = False  # kohya's <image>.npz beside each picture, reused across runs
    flip_aug: bool = False
    mixed_precision: str = "no"  # no | fp16 | bf16: forward passes under autocast (fp16: a GradScaler)
    full_precision: bool = False  # kohya's full_fp16 / full_bf16: the network's weights in that dtype too
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)
    xformers: bool = False  # xformers attention where it is installed (CUDA); PyTorch SDPA otherwise


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 1  # the epoch in progress (1-based)
    step_in_epoch: int = 0  # optimizer steps already done inside it
    torch_rng: torch.Tensor | None = None
    python_rng: Any = None
    network: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)  # fp16's loss scale (empty without mixed precision fp16)

    def save(self, path: str | Path) -> Path:
        """Atomic: a kill -9 mid-save leaves the previous state whole."""
        data = {k: getattr(self, k) for k in ("global_step", "epoch", "step_in_epoch", "torch_rng", "python_rng",
                                              "network", "optimizer", "scheduler", "scaler")}
        return atomic_save_with(path, lambda tmp: torch.save(data, tmp))

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as exc:
            raise KilnError(f"cannot read the training state ({exc})", path=path,
                            hint="point resume at a state file Kiln saved (save_state)") from exc
        return cls(**data)


@dataclass(frozen=True)
class StepReport:
    global_step: int
    total_steps: int
    epoch: int
    loss: float
    average_loss: float
    lr: float


def total_steps(data: TrainingData, options: LoopOptions) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps), kohya's arithmetic."""
    per_epoch = math.ceil(data.batches_per_epoch(options.train_batch_size) / options.gradient_accumulation_steps)
    if options.max_train_epochs:
        return per_epoch, per_epoch * options.max_train_epochs
    return per_epoch, options.max_train_steps


def input_ids(tokenizer, caption: str, max_token_length: int) -> torch.Tensor:
    """kohya's ids for one caption: ``max_token_length`` tokens (75/150/225) as 77-token windows
    (BOS, 75 tokens, EOS; padding with the tokenizer's pad token after the first EOS)."""
    ids = tokenizer(caption, add_special_tokens=False, truncation=False)["input_ids"][:max_token_length]
    windows = max(1, max_token_length // CHUNK)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = []
    for w in range(windows):
        piece = ids[w * CHUNK:(w + 1) * CHUNK]
        ended = len(ids) < (w + 1) * CHUNK
        row = [bos, *piece]
        if ended or len(piece) == CHUNK:
            row.append(eos)
        row += [pad] * (CHUNK + 2 - len(row))
        out.append(row[:CHUNK + 2])
    return torch.tensor(out)


def encode_captions(text_encoder, tokenizer, captions: list[str], options: LoopOptions) -> torch.Tensor:
    """(batch, 77 × windows, width) hidden states, ``clip_skip`` counted as the WebUI and kohya do."""
    ids = torch.stack([input_ids(tokenizer, c, options.max_token_length) for c in captions])
    batch, windows, length = ids.shape
    flat = ids.reshape(batch * windows, length).to(text_encoder.device)
    if options.clip_skip > 1:
        out = text_encoder(flat, output_hidden_states=True)
        hidden = text_encoder.text_model.final_layer_norm(out.hidden_states[-options.clip_skip])
    else:
        hidden = text_encoder(flat).last_hidden_state
    return hidden.reshape(batch, windows * length, hidden.shape[-1])


def encode_captions_sdxl(text_encoders: list, tokenizers: list, captions: list[str],
                         options: LoopOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL as kohya's sdxl_train_network: each encoder's penultimate hidden states (no final layer
    norm; ``clip_skip`` does not apply, kohya warns the same), concatenated to (batch, 77 × windows,
    768 + 1280), and the second encoder's projected pooled output of the first window."""
    hidden, pooled = [], None
    for index, (encoder, tokenizer) in enumerate(zip(text_encoders, tokenizers)):
        ids = torch.stack([input_ids(tokenizer, c, options.max_token_length) for c in captions])
        batch, windows, length = ids.shape
        out = encoder(ids.reshape(batch * windows, length).to(encoder.device), output_hidden_states=True)
        states = out.hidden_states[-2]
        hidden.append(states.reshape(batch, windows * length, states.shape[-1]))
        if index == 1:
            pooled = out.text_embeds.reshape(batch, windows, -1)[:, 0]
    return torch.cat(hidden, dim=-1), pooled


def sdxl_size_conditioning(items: list[Item], crops: list[tuple[int, int]]) -> torch.Tensor:
    """(batch, 6) ``time_ids``: original (h, w), crop top-left (top, left), target (h, w) — the
    picture's own size, where its bucket crop starts, the bucket (kohya's get_size_embeddings)."""
    rows = [[item.size[1], item.size[0], top, left, item.bucket[1], item.bucket[0]]
            for item, (top, left) in zip(items, crops)]
    return torch.tensor(rows, dtype=torch.float32)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, rng: random.Random,
                  generator: torch.Generator) -> torch.Tensor:
    """kohya's multires ("pyramid") noise: coarser noise upsampled and added with ``discount**i``,
    then renormalised to unit std."""
    b, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    for i in range(iterations):
        r = rng.random() * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        coarse = torch.randn((b, c, hn, wn), generator=generator).to(noise.device, noise.dtype)
        noise = noise + upsample(coarse) * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _allow_fp16_gradients(scaler: torch.amp.GradScaler) -> None:
    """full_fp16 keeps fp16 gradients, which GradScaler refuses to unscale; kohya patches
    accelerate the same way (train_util.patch_accelerator_for_fp16_training)."""
    unscale = scaler._unscale_grads_

    def allow(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = allow


@contextmanager
def model_switches(model: Any, options: LoopOptions, notes: list[str], *, trains_te: bool) -> Iterator[None]:
    """gradient_checkpointing and xformers on the leased base model for one run, undone after it
    (the shared model must come back as it was lent)."""
    unet = model.unet
    changed: list[Callable[[], None]] = []
    try:
        if options.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            changed.append(unet.disable_gradient_checkpointing)
            for text_encoder in model.text_encoders if trains_te else []:
                if hasattr(text_encoder, "gradient_checkpointing_enable"):
                    text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    changed.append(text_encoder.gradient_checkpointing_disable)
        if options.xformers:
            reason = _xformers_unavailable(unet)
            if reason is None:
                unet.enable_xformers_memory_efficient_attention()
                changed.append(unet.disable_xformers_memory_efficient_attention)
            else:
                notes.append(f"xformers: {reason}; PyTorch's scaled-dot-product attention was used (the same "
                             "results, about the same speed and memory)")
        yield
    finally:
        for undo in reversed(changed):
            undo()


def _xformers_unavailable(unet: Any) -> str | None:
    if next(unet.parameters()).device.type != "cuda":
        return "needs a CUDA GPU"
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return "not installed (pip install xformers)"
    return None


class LoraTrainer:
    """The loop over ``data`` for ``network`` on the leased ``model`` (a core.models LoadedModel)."""

    def __init__(self, model: Any, network: LoRANetwork, data: TrainingData, options: LoopOptions,
                 make_optimizer: Callable[[list[dict]], torch.optim.Optimizer],
                 make_scheduler: Callable[[torch.optim.Optimizer, int], Any],
                 learning_rates: tuple[float | None, float | None, float]):
        self.model, self.network, self.data, self.options = model, network, data, options
        if options.max_token_length not in (75, 150, 225):
            raise KilnError(f"max_token_length must be 75, 150 or 225, not {options.max_token_length}")
        spec = model.spec
        self.schedule = NoiseSchedule.from_config(zero_terminal_snr=spec.zero_terminal_snr,
                                                  prediction_type=spec.prediction_type)
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()
        self.prediction = spec.prediction_type
        self.sdxl = spec.family == "sdxl"
        if spec.family not in ("sd1", "sd2", "sdxl"):
            raise KilnError(f"LoRA training supports SD1, SD2 and SDXL base models, not {spec.family}",
                            hint="select an SD1.x, SD2.x or SDXL base checkpoint")
        if self.sdxl and options.clip_skip > 1:
            self.notes_at_start = ["clip_skip: SDXL trains on the penultimate layer of both text encoders, as "
                                   f"kohya's sdxl_train_network; clip_skip {options.clip_skip} was not used"]
        else:
            self.notes_at_start = []
        self.steps_per_epoch, self.total = total_steps(data, options)
        self.state = TrainState(torch_rng=None, python_rng=None)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.rng = random.Random(options.seed)
        self.latent_cache: dict[tuple[Path, bool], torch.Tensor] = {}
        self.losses: list[float] = []
        self.device = next(model.unet.parameters()).device
        self.dtype = next(model.unet.parameters()).dtype
        if options.mixed_precision not in PRECISIONS:
            raise KilnError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, not {options.mixed_precision!r}")
        self.autocast_dtype = PRECISIONS[options.mixed_precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=options.mixed_precision == "fp16")
        if options.full_precision and self.autocast_dtype is not None:
            network.to(self.autocast_dtype)
            if options.mixed_precision == "fp16":
                _allow_fp16_gradients(self.scaler)
        self.notes: list[str] = list(self.notes_at_start)  # what the run did differently from what was asked, and why
        # The optimizer holds the network's parameters as they are now (full_fp16/bf16: cast).
        self.optimizer = make_optimizer(network.param_groups(*learning_rates))
        self.scheduler = make_scheduler(self.optimizer, self.total)

    # ---- state

    def snapshot(self) -> TrainState:
        return TrainState(self.state.global_step, self.state.epoch, self.state.step_in_epoch,
                          self.generator.get_state(), self.rng.getstate(),
                          {k: v.detach().clone() for k, v in self.network.state_dict().items()},
                          self.optimizer.state_dict(), self.scheduler.state_dict(),
                          self.scaler.state_dict() if self.scaler.is_enabled() else {})

    def restore(self, state: TrainState) -> None:
        self.network.load_state_dict(state.network)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if state.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.scaler)
        self.generator.set_state(state.torch_rng)
        self.rng.setstate(state.python_rng)
        self.state = TrainState(state.global_step, state.epoch, state.step_in_epoch)

    # ---- pieces of a step

    def _disk_cache(self, item: Item, flip: bool) -> tuple[Path, str, dict]:
        """kohya's ``<stem>.npz`` beside the picture; Kiln also stores what the latent was made from
        (the file's size and mtime, the bucket) and recomputes when any of it changed."""
        stat = item.path.stat()
        source = f"{stat.st_size}:{stat.st_mtime_ns}:{item.bucket[0]}x{item.bucket[1]}"
        path = item.path.with_suffix(".npz")
        key = "latents_flipped" if flip else "latents"
        try:
            with np.load(path) as data:
                return path, key, dict(data) if str(data.get("kiln_source", "")) == source else {"kiln_source": source}
        except (OSError, ValueError):
            return path, key, {"kiln_source": source}

    def latents(self, item: Item, flip: bool) -> torch.Tensor:
        key = (item.path, flip)
        cached = self.latent_cache.get(key) if self.options.cache_latents else None
        if cached is not None:
            return cached
        disk = self._disk_cache(item, flip) if self.options.cache_latents_to_disk else None
        if disk is not None and disk[1] in disk[2]:
            latent = torch.from_numpy(disk[2][disk[1]]).to(self.device, self.dtype)
            self.latent_cache[key] = latent
            return latent
        pixels = self.data.pixels(item, self.rng, flip=flip).unsqueeze(0).to(self.device, self.dtype)
        with torch.no_grad():
            # The distribution's mean: a cached latent must not depend on the order pictures are met.
            latent = self.model.vae.encode(pixels).latent_dist.mean * self.model.spec.vae_scaling_factor
        latent = latent[0]
        if self.options.cache_latents:
            self.latent_cache[key] = latent
        if disk is not None:
            path, name, data = disk
            data = {**data, name: latent.float().cpu().numpy(), "original_size": np.array(item.size),
                    "kiln_source": np.array(data["kiln_source"])}

            def write(tmp: str) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, **data)
            atomic_save_with(path, write)
        return latent

    def loss(self, batch: list[Item], epoch: int) -> torch.Tensor:
        options = self.options
        flips = [options.flip_aug and self.rng.random() < 0.5 for _ in batch]
        latents = torch.stack([self.latents(item, flip) for item, flip in zip(batch, flips)])
        captions = [process_caption(item.caption, self.data.options.captions, self.rng, epoch) for item in batch]
        trains_te = any(te for _, _, te in self.network.targets)
        added = None
        with torch.set_grad_enabled(trains_te), self._autocast():
            if self.sdxl:
                context, pooled = encode_captions_sdxl(self.model.text_encoders, self.model.tokenizers, captions,
                                                       options)
                time_ids = sdxl_size_conditioning(batch, [self.data.crop_top_left(item) for item in batch])
                added = {"text_embeds": pooled.to(self.dtype), "time_ids": time_ids.to(self.device, self.dtype)}
            else:
                context = encode_captions(self.model.text_encoders[0], self.model.tokenizers[0], captions, options)
            context = context.to(self.dtype)
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device, self.dtype)
        if options.multires_noise_iterations:
            noise = pyramid_noise(noise, options.multires_noise_iterations, options.multires_noise_discount,
                                  self.rng, self.generator)
        elif options.noise_offset:  # kohya: multires noise takes the place of the offset
            noise = noise + options.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                               generator=self.generator).to(self.device, self.dtype)
        timesteps = torch.randint(0, len(self.alphas_cumprod), (latents.shape[0],), generator=self.generator)
        abar = self.alphas_cumprod[timesteps].to(self.device, self.dtype).view(-1, 1, 1, 1)
        noisy = noised(latents, noise, abar)
        target = prediction_target(latents, noise, abar, self.prediction)
        with self._autocast():
            prediction = self.model.unet(noisy, timesteps.to(self.device), encoder_hidden_states=context,
                                         added_cond_kwargs=added).sample
        loss = per_sample_mse(prediction, target)
        weights = torch.tensor([options.prior_loss_weight if item.is_reg else 1.0 for item in batch])
        if options.min_snr_gamma:
            weights = weights * min_snr_weights(abar, options.min_snr_gamma, self.prediction).cpu()
        return (loss * weights.to(loss.device)).mean()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    # ---- the loop

    def run(self, *, on_step: Callable[[StepReport], None] | None = None,
            on_epoch_end: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            pause: Callable[[], None] | None = None) -> TrainState:
        """Train until the last step (or ``should_stop``); returns the state to save. The base
        model's attention and checkpointing switches are set for the run and put back after it."""
        with model_switches(self.model, self.options, self.notes,
                            trains_te=any(te for _, _, te in self.network.targets)):
            return self._run(on_step, on_epoch_end, should_stop, pause)

    def _run(self, on_step, on_epoch_end, should_stop, pause) -> TrainState:
        options, state = self.options, self.state
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        while state.global_step < self.total:
            batches = self.data.epoch_batches(state.epoch, options.train_batch_size)
            accumulation = options.gradient_accumulation_steps
            start = state.step_in_epoch * accumulation
            for index in range(start, len(batches), accumulation):
                group = batches[index:index + accumulation]
                self.optimizer.zero_grad(set_to_none=True)
                with self.network.attached():
                    step_loss = 0.0
                    for batch in group:
                        loss = self.loss(batch, state.epoch) / len(group)
                        if not torch.isfinite(loss):
                            raise KilnError(f"the loss became {loss.item()} at step {state.global_step + 1}: training "
                                            "stopped, the last saved file is kept",
                                            hint="lower the learning rate, or use mixed_precision bf16 instead of fp16")
                        self.scaler.scale(loss).backward()
                        step_loss += float(loss.detach())
                if options.max_grad_norm:
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients (no-op without fp16)
                    torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
                self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
                self.scaler.update()
                self.scheduler.step()
                state.global_step += 1
                state.step_in_epoch += 1
                self.losses.append(step_loss)
                if on_step is not None:
                    window = self.losses[-self.steps_per_epoch:]
                    on_step(StepReport(state.global_step, self.total, state.epoch, step_loss,
                                       sum(window) / len(window), self.optimizer.param_groups[0]["lr"]))
                if state.global_step >= self.total or (should_stop is not None and should_stop()):
                    break
            finished_epoch = state.step_in_epoch >= self.steps_per_epoch
            if finished_epoch:
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, state.global_step)
                state.epoch += 1
                state.step_in_epoch = 0
            if should_stop is not None and should_stop():
                break
            if pause is not None and finished_epoch:
                pause()  # the network is detached here: others' jobs see the plain base model
        return self.snapshot()
