"""A LoRA training run from start to files: dataset → checks → network → loop → kohya files.

``LoraJob`` holds everything a run needs as explicit parts (the data, network, loop and output
options); ``train_lora(job, model, hooks)`` runs it on a leased model and writes
``<output_name>-000001.safetensors`` every ``save_every_n_epochs`` epochs and
``<output_name>.safetensors`` at the end (or at "stop and save"), each with kohya's metadata,
atomically, never over a file that was there before the run. ``save_state`` keeps a state
beside them to resume from.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.dataset.checks import CheckOptions, blocking, check_layout
from core.dataset.kohya_folders import scan_dataset
from core.errors import KilnError
from core.fileio import remove_stale_temp_files
from core.networks.kohya import save_lora, training_metadata
from core.training.data import DataOptions, TrainingData
from core.training.loop import LoopOptions, LoraTrainer, StepReport, TrainState
from core.training.network import LoRANetwork, NetworkSpec

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}


@dataclass(frozen=True)
class OutputOptions:
    output_dir: Path
    output_name: str = "last"  # kohya's default name
    save_every_n_epochs: int | None = None
    save_every_n_steps: int | None = None  # also <name>-step00000100.safetensors every N steps
    save_last_n_epochs: int | None = None  # keep only the newest N epoch files this run wrote
    save_precision: str | None = None  # None: as trained (float32 here)
    save_state: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class LoraJob:
    train_data_dir: Path
    output: OutputOptions
    reg_data_dir: Path | None = None
    data: DataOptions = field(default_factory=DataOptions)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    loop: LoopOptions = field(default_factory=LoopOptions)
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer_type: str = "AdamW"
    lr_scheduler: str = "constant"
    resume: Path | None = None
    network_weights: Path | None = None  # kohya: start from the weights of an existing LoRA file
    ignore_check_errors: bool = False
    training_comment: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)  # ss_* values the config layer adds
    # Built from the config (optimizer_args, warmup, cycles...); None: optimizer_type / lr_scheduler plain.
    make_optimizer: Callable[[list[dict]], Any] | None = field(default=None, compare=False)
    make_scheduler: Callable[[Any, int], Any] | None = field(default=None, compare=False)
    sample_prompts: tuple[Any, ...] = ()  # core.training.samples.SamplePrompt
    sample_every_n_epochs: int | None = None
    sample_sampler: str = "ddim"  # kohya's name (core.training.samples.KOHYA_SAMPLERS)
    logging_dir: Path | None = None  # kohya's TensorBoard logs (loss/current, loss/average, lr/...)
    layout: Any = None  # a DatasetLayout given whole (kohya's --dataset_config); None: scan train_data_dir


@dataclass
class Hooks:
    """How a run talks to the queue: progress, stop requests, pause points, new files."""

    on_step: Callable[[StepReport], None] | None = None
    should_stop: Callable[[], bool] | None = None
    pause: Callable[[], None] | None = None
    on_file: Callable[[Path, int], None] | None = None  # each saved LoRA, with its epoch
    # Pictures for sample prompts, made while the LoRA is attached (the queue job passes the engine's txt2img).
    sample: Callable[[list[Any]], list[Any]] | None = None
    on_sample: Callable[[Path, int], None] | None = None
    on_note: Callable[[str], None] | None = None  # what the run did differently from what was asked


def _optimizer_factory(job: LoraJob):
    if job.make_optimizer is not None:
        return job.make_optimizer
    from core.training.optimizers import build_optimizer

    return lambda groups: build_optimizer(job.optimizer_type, groups, job.learning_rate)


def _scheduler_factory(job: LoraJob):
    if job.make_scheduler is not None:
        return job.make_scheduler
    from core.training.schedulers import build_scheduler

    return lambda optimizer, total: build_scheduler(job.lr_scheduler, optimizer, num_training_steps=total)


def output_paths(output: OutputOptions, epochs: int) -> list[Path]:
    names = [f"{output.output_name}-{e:06d}.safetensors" for e in range(1, epochs + 1)
             if output.save_every_n_epochs and e % output.save_every_n_epochs == 0 and e < epochs]
    return [output.output_dir / n for n in names] + [output.output_dir / f"{output.output_name}.safetensors"]


def prepare_data(job: LoraJob) -> TrainingData:
    """The dataset, after the checks of core/dataset/checks.py: an error stops the run with its
    message unless ``ignore_check_errors``."""
    layout = job.layout if job.layout is not None else scan_dataset(job.train_data_dir, job.reg_data_dir)
    return checked_data(layout, job.data, seed=job.loop.seed, ignore_check_errors=job.ignore_check_errors)


def checked_data(layout: Any, options: DataOptions, *, seed: int, ignore_check_errors: bool) -> TrainingData:
    """``layout`` as training data once the dataset checks pass (shared with DreamBooth)."""
    problems = check_layout(layout, CheckOptions(resolution=options.resolution,
                                                 caption_extension=options.caption_extension,
                                                 check_near_duplicates=False))
    errors = blocking(problems)
    if errors and not ignore_check_errors:
        lines = "; ".join(p.line() for p in errors[:5])
        raise KilnError(f"the dataset check found {len(errors)} errors: {lines}",
                        hint="fix them (python -m core.dataset check), or tick 'train anyway' to override")
    return TrainingData(layout, options, seed=seed)


def run_metadata(job: LoraJob, model: Any, data: TrainingData, trainer: LoraTrainer, started: float,
                 session_id: int) -> dict[str, str]:
    spec, loop = model.spec, job.loop
    optimizer = type(trainer.optimizer)
    values = dict(
        training_comment=job.training_comment, seed=loop.seed, lowram=False, sd_scripts_commit_hash="kiln",
        learning_rate=job.learning_rate, text_encoder_lr=job.text_encoder_lr, unet_lr=job.unet_lr,
        optimizer=f"{optimizer.__module__}.{optimizer.__name__}", max_grad_norm=loop.max_grad_norm,
        lr_scheduler=job.lr_scheduler, lr_warmup_steps=0,
        num_train_images=data.num_train_images, num_validation_images=0, num_reg_images=data.num_reg_images,
        num_batches_per_epoch=data.batches_per_epoch(loop.train_batch_size),
        num_epochs=-(-trainer.total // trainer.steps_per_epoch), max_train_steps=trainer.total,
        gradient_checkpointing=loop.gradient_checkpointing, gradient_accumulation_steps=loop.gradient_accumulation_steps,
        network_dropout=job.network.network_dropout or None, mixed_precision=loop.mixed_precision,
        full_fp16=loop.full_precision and loop.mixed_precision == "fp16",
        fp8_base=False, fp8_base_unet=False, clip_skip=loop.clip_skip if loop.clip_skip > 1 else None,
        max_token_length=loop.max_token_length if loop.max_token_length != 75 else None,
        cache_latents=loop.cache_latents, noise_offset=loop.noise_offset or None,
        noise_offset_random_strength=False, multires_noise_iterations=loop.multires_noise_iterations, multires_noise_discount=loop.multires_noise_discount,
        adaptive_noise_scale=None, zero_terminal_snr=spec.zero_terminal_snr, ip_noise_gamma=None,
        ip_noise_gamma_random_strength=False, min_snr_gamma=loop.min_snr_gamma, debiased_estimation=False,
        scale_weight_norms=None, prior_loss_weight=loop.prior_loss_weight, loss_type="l2",
        huber_schedule="snr", huber_scale=1.0, huber_c=0.1,
        caption_dropout_rate=job.data.captions.caption_dropout_rate,
        caption_dropout_every_n_epochs=job.data.captions.caption_dropout_every_n_epochs,
        caption_tag_dropout_rate=job.data.captions.caption_tag_dropout_rate,
        face_crop_aug_range=",".join(f"{v:g}" for v in job.data.face_crop_aug_range)
        if job.data.face_crop_aug_range else None,
        validation_seed=None, validation_split=0.0, max_validation_steps=None, validate_every_n_epochs=None,
        validate_every_n_steps=None, resize_interpolation=None,
        # legacy train_data_dir mode
        batch_size_per_device=loop.train_batch_size,
        total_batch_size=loop.train_batch_size * loop.gradient_accumulation_steps,
        resolution=tuple(job.data.resolution), color_aug=job.data.color_aug, flip_aug=job.data.flip_aug,
        random_crop=job.data.random_crop, shuffle_caption=job.data.captions.shuffle_caption,
        enable_bucket=job.data.enable_bucket, bucket_no_upscale=job.data.bucket_no_upscale,
        min_bucket_reso=job.data.min_bucket_reso if job.data.enable_bucket else None,
        max_bucket_reso=job.data.max_bucket_reso if job.data.enable_bucket else None,
        keep_tokens=job.data.captions.keep_tokens, dataset_dirs=data.dataset_dirs(),
        reg_dataset_dirs=data.dataset_dirs(reg=True), tag_frequency=data.tag_frequency(),
        bucket_info=data.bucket_info(),
        sd_model_name=model.path.name if getattr(model, "path", None) else None,
    )
    values.update(job.extra_metadata)
    # kohya stores network_args as the strings of the "key=value" list it was given.
    network_args = dict(job.network.network_args) or (
        {"conv_dim": job.network.conv_dim, "conv_alpha": job.network.conv_alpha} if job.network.conv_dim else None)
    return training_metadata(output_name=job.output.output_name, family=spec.family,
                             network_dim=job.network.network_dim, network_alpha=float(job.network.network_alpha),
                             network_module=job.network.network_module, network_args=network_args, v_prediction=spec.prediction_type == "v_prediction",
                             session_id=session_id, training_started_at=started, **values)


def modelspec(model: Any, job: LoraJob, started: float) -> dict[str, str]:
    """The ``modelspec.*`` keys kohya adds (sai_model_spec 1.0.1 layout)."""
    family = model.spec.family
    arch = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}
    w, h = job.data.resolution
    meta = {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": f"{arch[family]}/lora",
            "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
            "modelspec.implementation_version": "kiln", "modelspec.title": job.output.output_name,
            "modelspec.resolution": f"{w}x{h}", "modelspec.prediction_type":
                "v" if model.spec.prediction_type == "v_prediction" else "epsilon",
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))}
    if job.loop.clip_skip > 1:
        meta["modelspec.encoder_layer"] = str(job.loop.clip_skip)
    return meta


def tensorboard_writer(folder: Path, output_name: str, started: float):
    """kohya's log folder: ``<logging_dir>/<output_name><YYYYmmddHHMMSS>`` (its log_prefix + time)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise KilnError("logging_dir needs TensorBoard, which is not installed",
                        hint="pip install tensorboard (or KILN_EXTRAS=tensorboard ./launch.sh), or clear logging_dir "
                             "(the loss is also written to <output_name>.loss.csv)") from None
    return SummaryWriter(str(Path(folder) / f"{output_name}{time.strftime('%Y%m%d%H%M%S', time.localtime(started))}"))


def learning_rate_names(optimizer: Any) -> list[tuple[str, float]]:
    """kohya's lr/ scalar names per parameter group: "textencoder", "unet"."""
    names = {"text_encoder": "textencoder", "unet": "unet"}
    return [(names.get(g.get("name"), f"group{i}"), g["lr"]) for i, g in enumerate(optimizer.param_groups)]


FP8_DTYPES = ("F8_E4M3", "F8_E5M2")


def base_precision_note(path: Path | None) -> str | None:
    """A note when the base file stores its U-Net in fp8 (a pruned inference file): Kiln loads it
    upcast and trains, but the LoRA then learns against the rounded weights."""
    if path is None or Path(path).suffix.lower() != ".safetensors":
        return None
    import json
    import struct

    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    dtypes = {v.get("dtype") for k, v in header.items() if k.startswith("model.diffusion_model.") and isinstance(v, dict)}
    found = sorted(d for d in dtypes if d in FP8_DTYPES)
    if not found:
        return None
    return (f"the base checkpoint {Path(path).name} stores its U-Net in {found[0]} (an fp8 file pruned for "
            "generation): Kiln trains on it upcast to float32, but the LoRA learns against the rounded weights; "
            "train on the full fp16 / fp32 checkpoint for a LoRA that fits the real model")


def train_lora(job: LoraJob, model: Any, hooks: Hooks | None = None) -> list[Path]:
    """Train on the leased ``model`` (frozen, never written); returns the files written."""
    import random as _random

    hooks = hooks or Hooks()
    data = prepare_data(job)
    # The LoRA's initial weights come from ``seed`` (kohya seeds before building the network),
    # drawn in a forked RNG so the server's global generator is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.loop.seed)
        network = LoRANetwork(model.unet, model.text_encoders, model.spec.family, job.network,
                              model.spec.unet_config)
    if job.network_weights is not None:
        from safetensors.torch import load_file

        try:
            network.load_kohya_state_dict(load_file(job.network_weights))
        except (OSError, RuntimeError) as exc:
            raise KilnError(f"cannot read the LoRA to continue from ({exc})", path=job.network_weights) from exc
    network.to(next(model.unet.parameters()).device)
    loop = job.loop
    if job.data.random_pixels and loop.cache_latents:
        raise KilnError("cache_latents cannot be used with random_crop, color_aug or a face_crop_aug_range "
                        "(the pixels change every epoch)", hint="turn one of them off, as kohya requires")
    trainer = LoraTrainer(model, network, data, loop, _optimizer_factory(job), _scheduler_factory(job),
                          (job.unet_lr, job.text_encoder_lr, job.learning_rate))
    epochs = -(-trainer.total // trainer.steps_per_epoch)
    out = job.output
    out.output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out.output_dir, f"{out.output_name}*")  # left by a run killed mid-save
    state_path = out.output_dir / f"{out.output_name}-state.pt"
    if job.resume is not None:
        trainer.restore(TrainState.load(job.resume))
    elif not out.overwrite:
        existing = [p for p in output_paths(out, epochs) if p.exists()]
        if existing:
            raise KilnError("a file of this output_name is already there; nothing was trained", path=existing[0],
                            hint="choose another output_name, or allow overwriting")
    started, session_id = time.time(), _random.randint(0, 2**32)
    base_meta = {**run_metadata(job, model, data, trainer, started, session_id), **modelspec(model, job, started)}
    save_dtype = SAVE_DTYPES.get(out.save_precision)
    written: list[Path] = []
    board = tensorboard_writer(job.logging_dir, out.output_name, started) if job.logging_dir else None
    log_path = out.output_dir / f"{out.output_name}.loss.csv"
    log = open(log_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in finally)
    writer = csv.writer(log)
    if log.tell() == 0:
        writer.writerow(["step", "epoch", "loss", "average_loss", "lr"])

    def save(path: Path, epoch: int, steps: int) -> None:
        meta = {**base_meta, "ss_training_finished_at": str(time.time()), "ss_steps": str(steps),
                "ss_epoch": str(epoch)}
        save_lora(path, network.kohya_state_dict(save_dtype), meta)
        written.append(path)
        if hooks.on_file is not None:
            hooks.on_file(path, epoch)

    def on_step(report: StepReport) -> None:
        writer.writerow([report.global_step, report.epoch, f"{report.loss:.6f}", f"{report.average_loss:.6f}",
                         f"{report.lr:.8g}"])
        if board is not None:
            board.add_scalar("loss/current", report.loss, report.global_step)
            board.add_scalar("loss/average", report.average_loss, report.global_step)
            for name, lr in learning_rate_names(trainer.optimizer):
                board.add_scalar(f"lr/{name}", lr, report.global_step)
        n = out.save_every_n_steps
        if n and report.global_step % n == 0 and report.global_step < report.total_steps:
            # kohya's step files; ss_epoch is 0-based inside an epoch there
            save(out.output_dir / f"{out.output_name}-step{report.global_step:08d}.safetensors", report.epoch - 1,
                 report.global_step)
        if hooks.on_step is not None:
            hooks.on_step(report)

    def make_samples(epoch: int) -> None:
        if not (job.sample_prompts and job.sample_every_n_epochs and hooks.sample is not None):
            return
        if epoch % job.sample_every_n_epochs and epoch != epochs:
            return
        folder = out.output_dir / "sample"
        folder.mkdir(parents=True, exist_ok=True)
        with network.attached(), torch.no_grad():
            images = hooks.sample(list(job.sample_prompts))
        stamp = time.strftime("%Y%m%d%H%M%S")
        for i, image in enumerate(images):
            path = folder / f"{out.output_name}_e{epoch:06d}_{i:02d}_{stamp}.png"  # kohya's sample names
            image.save(path)
            if hooks.on_sample is not None:
                hooks.on_sample(path, epoch)

    def on_epoch_end(epoch: int, steps: int) -> None:
        log.flush()
        make_samples(epoch)
        if out.save_every_n_epochs and epoch % out.save_every_n_epochs == 0 and epoch < epochs:
            save(out.output_dir / f"{out.output_name}-{epoch:06d}.safetensors", epoch, steps)
            if out.save_last_n_epochs:  # kohya: the file save_last_n_epochs saves back goes
                old = epoch - out.save_every_n_epochs * out.save_last_n_epochs
                stale = out.output_dir / f"{out.output_name}-{old:06d}.safetensors"
                if old > 0 and stale in written:  # only a file this run wrote, never one that was there
                    stale.unlink(missing_ok=True)
                    written.remove(stale)
            if out.save_state:
                trainer.snapshot().save(state_path)

    try:
        final = trainer.run(on_step=on_step, on_epoch_end=on_epoch_end, should_stop=hooks.should_stop,
                            pause=hooks.pause)
    finally:
        log.close()
        if board is not None:
            board.close()
    precision = base_precision_note(getattr(model, "path", None))
    for note in ([precision] if precision else []) + trainer.notes:
        if hooks.on_note is not None:
            hooks.on_note(note)
    finished = final.global_step >= trainer.total
    epoch_done = final.epoch - 1 if final.step_in_epoch == 0 else final.epoch
    save(out.output_dir / f"{out.output_name}.safetensors", epoch_done, final.global_step)
    if out.save_state or not finished:
        final.save(state_path)  # "stop and save" can continue from here
    return written
