"""DreamBooth / fine-tuning: the LoRA loop training the model's own U-Net (and text encoder) weights.

The step is the LoRA trainer's (core/training/loop.py ``LoraTrainer``: the same data, objective,
prior-preservation weights, optimizer and scheduler); only what it trains differs. ``FullWeights``
stands where a LoRANetwork stands: its "targets" are the U-Net and, with ``train_text_encoder``,
the text encoders, its parameter groups their weights at ``learning_rate`` / ``learning_rate_te``.

The run takes the model from the engine with ``lease(trainable=True)``: the engine hands it over
and loads the checkpoint afresh for the next job, so no picture of anyone else is ever made with
half-trained weights, and the shared model is as it was. The result is a single-file LDM
checkpoint (core.models.checkpoint.save_checkpoint, the merger's save) in models/Stable-diffusion:
``<output_name>-000001.safetensors`` every ``save_every_n_epochs`` epochs and
``<output_name>.safetensors`` at the end or on Stop, never over a file that was there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.dataset.caption_rules import CaptionRules
from core.dataset.kohya_folders import scan_dataset
from core.errors import KilnError
from core.networks.kohya import base_model_version, ss_values
from core.training.data import DataOptions, TrainingData
from core.training.dreambooth_config import DreamBoothConfig, check_dreambooth_config
from core.training.ema import Ema
from core.training.loop import LoopOptions, LoraTrainer, StepReport
from core.training.lora import SAVE_DTYPES, Hooks, checked_data


class FullWeights:
    """The model's own modules in the place of a LoRA network (the interface LoraTrainer uses)."""

    def __init__(self, model: Any, *, train_text_encoder: bool):
        self.model = model
        self.targets = [(model.unet, model.unet, False)]
        if train_text_encoder:
            self.targets += [(te, te, True) for te in model.text_encoders]
        trained = {id(m) for m, _, _ in self.targets}
        for part in [model.unet, model.vae, *model.text_encoders]:
            # Only the trained parts keep gradients (and train mode): the frozen ones cost no memory.
            part.requires_grad_(id(part) in trained)
            part.train(id(part) in trained)

    def attached(self):
        return nullcontext(self)  # the weights are the model's: nothing to hook in or out

    def to(self, *args: Any, **kwargs: Any) -> FullWeights:
        return self  # full_fp16 is not offered: the lease's dtype is the training dtype

    def param_groups(self, unet_lr: float | None, text_encoder_lr: float | None, default_lr: float) -> list[dict]:
        groups = []
        for is_te, lr in ((True, text_encoder_lr), (False, unet_lr)):
            params = [p for module, _, te in self.targets if te == is_te for p in module.parameters()]
            lr = default_lr if lr is None else lr
            if params and lr != 0:
                groups.append({"params": params, "lr": lr, "name": "text_encoder" if is_te else "unet"})
        if not groups:
            raise KilnError("learning_rate: nothing to train (the learning rates are 0)")
        return groups

    def state_dict(self) -> dict[str, torch.Tensor]:
        # The trained weights live in the model and are saved as a checkpoint; a second copy in
        # every TrainState would double the memory of a run for a resume DreamBooth does not offer.
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


@dataclass
class DreamBoothResult:
    files: list[Path]
    steps: int
    total_steps: int
    lora_files: list[Path]


def data_options(config: DreamBoothConfig) -> DataOptions:
    return DataOptions(resolution=config.resolution_pair(), enable_bucket=config.enable_bucket,
                       caption_extension=config.caption_extension, flip_aug=config.flip_aug,
                       captions=CaptionRules(shuffle_caption=config.shuffle_caption, keep_tokens=config.keep_tokens))


def loop_options(config: DreamBoothConfig) -> LoopOptions:
    return LoopOptions(train_batch_size=config.train_batch_size, max_train_epochs=config.max_train_epochs,
                       max_train_steps=config.max_train_steps,
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       max_grad_norm=config.max_grad_norm, noise_offset=config.noise_offset,
                       min_snr_gamma=config.min_snr_gamma, prior_loss_weight=config.prior_loss_weight,
                       clip_skip=config.clip_skip, seed=config.seed, cache_latents=config.cache_latents,
                       flip_aug=config.flip_aug, mixed_precision=config.mixed_precision,
                       gradient_checkpointing=config.gradient_checkpointing, xformers=config.xformers)


def prepare_dreambooth_data(config: DreamBoothConfig) -> TrainingData:
    """The instance (and class) pictures; no instance picture at all is an error naming train_data_dir."""
    check_dreambooth_config(config)
    train_dir = Path(config.train_data_dir)
    if not train_dir.is_dir():
        raise KilnError("train_data_dir: the instance folder does not exist", path=train_dir)
    layout = scan_dataset(train_dir, config.reg_data_dir or None)
    if not any(c.images for c in layout.concepts):
        raise KilnError("train_data_dir: no instance images (kohya reads <repeats>_<name>/ folders of pictures)",
                        path=train_dir, hint="put the pictures in e.g. 20_sks dog/ inside this folder")
    return checked_data(layout, data_options(config), seed=config.seed,
                        ignore_check_errors=config.ignore_check_errors)


def _optimizer_factory(config: DreamBoothConfig, notes: list[str]) -> Callable[[list[dict]], Any]:
    from core.training.optimizers import build_optimizer

    def make(groups: list[dict]) -> Any:
        name = config.effective_optimizer()
        try:
            return build_optimizer(name, groups, config.learning_rate, config.optimizer_args)
        except KilnError as exc:
            if not config.use_8bit_adam or name != "AdamW8bit":
                raise
            # use_8bit_adam means "where available": plain AdamW, said in the notes
            notes.append(f"use_8bit_adam: {exc.message}; AdamW (32-bit) was used")
            return build_optimizer("AdamW", groups, config.learning_rate, config.optimizer_args)
    return make


def _scheduler_factory(config: DreamBoothConfig) -> Callable[[Any, int], Any]:
    from core.training.schedulers import build_scheduler

    return lambda optimizer, total: build_scheduler(config.lr_scheduler, optimizer, num_training_steps=total,
                                                    lr_warmup_steps=config.lr_warmup_steps)


def output_paths(config: DreamBoothConfig, output_dir: Path, epochs: int) -> list[Path]:
    n = config.save_every_n_epochs
    names = [f"{config.output_name}-{e:06d}.safetensors" for e in range(1, epochs) if n and e % n == 0]
    return [output_dir / name for name in names] + [output_dir / f"{config.output_name}.safetensors"]


def training_metadata(config: DreamBoothConfig, model: Any, data: TrainingData, trainer: LoraTrainer,
                      started: float) -> dict[str, str]:
    """``ss_*`` keys by kohya's names (as train_db.py's arguments) and the modelspec of a checkpoint."""
    spec = model.spec
    optimizer = type(trainer.optimizer)
    w, h = config.resolution_pair()
    meta = ss_values(
        training_started_at=started, output_name=config.output_name, training_type="dreambooth"
        if data.num_reg_images else "fine_tune", base_model_version=base_model_version(
            spec.family, spec.prediction_type == "v_prediction"), v2=spec.family == "sd2",
        sd_model_name=model.path.name if getattr(model, "path", None) else None,
        learning_rate=config.learning_rate, learning_rate_te=config.learning_rate_te
        if config.learning_rate_te is not None else config.learning_rate,
        train_text_encoder=config.train_text_encoder, optimizer=f"{optimizer.__module__}.{optimizer.__name__}",
        lr_scheduler=config.lr_scheduler, max_train_steps=trainer.total, train_batch_size=config.train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, mixed_precision=config.mixed_precision,
        gradient_checkpointing=config.gradient_checkpointing, prior_loss_weight=config.prior_loss_weight,
        num_train_images=data.num_train_images, num_reg_images=data.num_reg_images, resolution=(w, h),
        seed=config.seed, clip_skip=config.clip_skip if config.clip_skip > 1 else None,
        noise_offset=config.noise_offset or None, min_snr_gamma=config.min_snr_gamma, use_ema=config.use_ema,
        dataset_dirs=data.dataset_dirs(), reg_dataset_dirs=data.dataset_dirs(reg=True),
        training_comment=config.training_comment, sd_scripts_commit_hash="kiln")
    arch = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2", "sdxl": "stable-diffusion-xl-v1-base"}
    meta.update({"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": arch.get(spec.family, spec.family),
                 "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
                 "modelspec.title": config.output_name, "modelspec.resolution": f"{w}x{h}",
                 "modelspec.prediction_type": "v" if spec.prediction_type == "v_prediction" else "epsilon",
                 "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))})
    return {k: v for k, v in meta.items() if v != "None"}


@contextmanager
def swapped_in(unet: torch.nn.Module, ema: Ema | None) -> Iterator[None]:
    """The EMA weights in the U-Net while a file is written, the trained ones back after."""
    if ema is None:
        yield
        return
    current = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(ema.shadow)
    try:
        yield
    finally:
        unet.load_state_dict(current)


def train_dreambooth(config: DreamBoothConfig, model: Any, output_dir: Path, hooks: Hooks | None = None,
                     *, data: TrainingData | None = None) -> DreamBoothResult:
    """Train ``model`` (a leased, trainable LoadedModel: written in place) and save checkpoints."""
    from core.models.checkpoint import save_checkpoint

    hooks = hooks or Hooks()
    data = data if data is not None else prepare_dreambooth_data(config)
    if model.spec.family not in ("sd1", "sd2", "sdxl"):
        raise KilnError(f"pretrained_model_name_or_path: DreamBooth supports SD1, SD2 and SDXL, not {model.spec.family}")
    notes: list[str] = []
    weights = FullWeights(model, train_text_encoder=config.train_text_encoder)
    te_lr = (config.learning_rate_te if config.learning_rate_te is not None else config.learning_rate) \
        if config.train_text_encoder else None
    trainer = LoraTrainer(model, weights, data, loop_options(config), _optimizer_factory(config, notes),
                          _scheduler_factory(config), (config.learning_rate, te_lr, config.learning_rate))
    epochs = -(-trainer.total // trainer.steps_per_epoch)
    output_dir.mkdir(parents=True, exist_ok=True)
    existing = [p for p in output_paths(config, output_dir, epochs) if p.exists()]
    if existing:
        raise KilnError("output_name: a checkpoint of this name is already there; nothing was trained",
                        path=existing[0], hint="choose another output_name")
    ema = Ema(model.unet, config.ema_decay) if config.use_ema else None
    # The base file's own training keys would describe another run: the new file carries this one's.
    model.metadata = {k: v for k, v in model.metadata.items() if not k.startswith(("ss_", "sshs_", "modelspec."))}
    started = time.time()
    base_meta = training_metadata(config, model, data, trainer, started)
    written: list[Path] = []

    def save(path: Path, epoch: int, steps: int) -> None:
        meta = {**base_meta, **ss_values(epoch=epoch, steps=steps, training_finished_at=time.time())}
        with swapped_in(model.unet, ema), torch.no_grad():
            save_checkpoint(model, path, metadata=meta, dtype=SAVE_DTYPES.get(config.save_precision))
        written.append(path)
        if hooks.on_file is not None:
            hooks.on_file(path, epoch)

    def on_step(report: StepReport) -> None:
        if ema is not None:
            ema.update(model.unet)
        if hooks.on_step is not None:
            hooks.on_step(report)

    def on_epoch_end(epoch: int, steps: int) -> None:
        n = config.save_every_n_epochs
        if n and epoch % n == 0 and epoch < epochs:
            save(output_dir / f"{config.output_name}-{epoch:06d}.safetensors", epoch, steps)

    # No pause points: the trainer holds its own copy of the model, and a generation job between
    # epochs would load a second one next to it.
    final = trainer.run(on_step=on_step, on_epoch_end=on_epoch_end, should_stop=hooks.should_stop)
    for note in trainer.notes + notes:
        if hooks.on_note is not None:
            hooks.on_note(note)
    epoch_done = final.epoch - 1 if final.step_in_epoch == 0 else final.epoch
    save(output_dir / f"{config.output_name}.safetensors", epoch_done, final.global_step)  # Stop keeps it too
    for part in [model.unet, model.vae, *model.text_encoders]:
        part.eval()
        part.requires_grad_(False)
    return DreamBoothResult(written, final.global_step, trainer.total, [])
