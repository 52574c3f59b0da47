"""A kohya ``TrainConfig`` (TOML, the Train tab) → the ``LoraJob`` Kiln runs, and what it lacks.

Every key kohya's config may set is either used, or listed by ``unsupported`` with its value
(a run with such a key stops unless the user accepts to train without it): a kohya config runs
unchanged where Kiln has the option and is never silently trained differently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.dataset.caption_rules import CaptionRules
from core.errors import KilnError
from core.training.advice import build_optimizer_for, build_scheduler_for, network_kind
from core.training.config import (
    TrainConfig,
    parse_face_crop_aug_range,
    parse_resolution,
)
from core.training.data import DataOptions
from core.training.loop import LoopOptions
from core.training.lora import LoraJob, OutputOptions
from core.training.lycoris_net import MODULE_ARGS, parse_module_args
from core.training.network import NetworkSpec
from core.training.samples import read_sample_prompts

# Keys that only tune kohya's own machinery and change nothing in what is trained.
NO_EFFECT = {"max_data_loader_n_workers", "persistent_data_loader_workers", "lowram", "highvram", "vae_batch_size",
             "sdpa", "mem_eff_attn", "save_model_as", "log_prefix", "output_config", "config_file"}
# Keys the trainer reads (directly or through the pieces below).
USED = {
    "pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "resolution", "enable_bucket",
    "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "cache_latents",
    "caption_extension", "caption_separator", "shuffle_caption", "keep_tokens", "keep_tokens_separator",
    "caption_prefix", "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate", "flip_aug", "random_crop", "color_aug", "face_crop_aug_range", "prior_loss_weight", "network_module", "network_dim",
    "network_alpha", "network_dropout", "network_args", "network_train_unet_only", "network_train_text_encoder_only",
    "training_comment", "learning_rate", "unet_lr", "text_encoder_lr", "optimizer_type", "optimizer_args",
    "max_grad_norm", "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power",
    "lr_scheduler_args", "output_dir", "output_name", "save_precision", "save_every_n_epochs", "save_state",
    "resume", "train_batch_size", "max_train_steps", "max_train_epochs", "gradient_accumulation_steps", "seed",
    "clip_skip", "max_token_length", "noise_offset", "min_snr_gamma", "v2", "v_parameterization",
    "zero_terminal_snr", "mixed_precision", "sample_prompts", "sample_every_n_epochs", "sample_sampler",
    "multires_noise_iterations", "multires_noise_discount", "network_weights", "cache_latents_to_disk",
    "save_every_n_steps", "save_last_n_epochs", "full_fp16", "full_bf16", "gradient_checkpointing", "xformers",
    "logging_dir", "dataset_config",
}


def unsupported(config: TrainConfig) -> list[str]:
    """``key = value`` for each key set away from kohya's default that this trainer does not do yet."""
    defaults = TrainConfig()
    out = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name in USED or f.name in NO_EFFECT or value == getattr(defaults, f.name):
            continue
        out.append(f"{f.name} = {value!r}")
    module = (config.network_module or "networks.lora").lower()
    if module not in ("networks.lora", "lycoris.kohya"):
        out.append(f"network_module = {config.network_module!r} (Kiln trains networks.lora and lycoris.kohya)")
    elif network_kind(config) not in ("lora", "locon", "loha", "lokr"):
        out.append(f"network_args algo={network_kind(config)} (Kiln trains LyCORIS locon, loha and lokr)")
    known = NETWORK_ARGS | (set(MODULE_ARGS) | LYCORIS_ONLY_ARGS if module == "lycoris.kohya" else KILN_LORA_ARGS)
    extra_args = [a for a in config.network_args or [] if a.split("=")[0].strip() not in known]
    if extra_args:
        out.append(f"network_args = {extra_args!r}")
    return out


# network_args both networks.lora and lycoris.kohya read; the numbers among them.
NETWORK_ARGS = {"conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "algo"}
# Kiln trains DoRA with its own LoRA modules (networks.lora); with lycoris.kohya it is listed as missing.
KILN_LORA_ARGS = {"dora_wd"}
NUMBER_ARGS = ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout")
# lycoris.kohya arguments with no effect on LoCon/LoHa/LoKr beyond what the modules get.
LYCORIS_ONLY_ARGS = {"preset", "disable_conv_cp", "use_conv_cp", "use_cp", "dropout"}


def network_arg_pairs(config: TrainConfig) -> dict[str, str]:
    pairs = {}
    for entry in config.network_args or []:
        key, _, value = entry.partition("=")
        pairs[key.strip()] = value.strip().strip("'\"")
    return pairs


def _network_args(config: TrainConfig) -> dict[str, float]:
    args = {}
    for key, value in network_arg_pairs(config).items():
        if key in NUMBER_ARGS:
            try:
                args[key] = float(value)
            except ValueError:
                raise KilnError(f"network_args: {key}={value!r} is not a number", hint="e.g. conv_dim=4") from None
    return args


def network_spec(config: TrainConfig) -> NetworkSpec:
    """The network a config asks for: kohya's LoRA / LoCon, or a LyCORIS algo with its arguments."""
    net_args = _network_args(config)
    pairs = network_arg_pairs(config)
    lycoris = (config.network_module or "").lower() == "lycoris.kohya"
    if lycoris and pairs.get("preset", "full") != "full":
        raise KilnError(f"LyCORIS preset {pairs['preset']!r}: Kiln trains the 'full' preset",
                        hint="remove preset from network_args")
    dropout = (config.network_dropout or float(pairs.get("dropout", 0) or 0)) if lycoris else config.network_dropout
    dora = pairs.get("dora_wd", "false").lower() in ("1", "true", "yes")
    if dora and lycoris:
        raise KilnError("network_args dora_wd=True with lycoris.kohya: Kiln trains DoRA with its own LoRA modules",
                        hint="use network_module networks.lora with network_args dora_wd=True (kohya's targets, "
                             "conv_dim for LoCon); the file has LyCORIS's dora_scale keys")
    return NetworkSpec(network_dim=config.effective_network_dim(), network_alpha=config.network_alpha,
                       conv_dim=int(net_args["conv_dim"]) if "conv_dim" in net_args else None,
                       conv_alpha=net_args.get("conv_alpha"), network_dropout=dropout or 0.0,
                       rank_dropout=net_args.get("rank_dropout", 0.0),
                       module_dropout=net_args.get("module_dropout", 0.0),
                       train_unet=not config.network_train_text_encoder_only,
                       train_text_encoder=not config.network_train_unet_only,
                       network_module="lycoris.kohya" if lycoris else "networks.lora",
                       algo=network_kind(config) if lycoris else "lora",
                       lycoris_args=tuple(sorted(parse_module_args(pairs).items())) if lycoris else (),
                       network_args=tuple(pairs.items()), dora_wd=dora)


def model_mismatches(config: TrainConfig, spec) -> list[str]:
    """Seed 001: an SD2 base wants v2 and v_parameterization. Kiln reads both from the model
    itself; a config that says otherwise is named, so the user knows which one was used."""
    notes = []
    is_v = spec.prediction_type == "v_prediction"
    if spec.family == "sd2" and not config.v2:
        notes.append("the base model is SD2: kohya needs v2 = true (Kiln detected it and uses it)")
    if is_v and not config.v_parameterization:
        notes.append("the base model predicts v: kohya needs v_parameterization = true (Kiln uses v)")
    if config.v_parameterization and not is_v:
        notes.append("v_parameterization is set but the base model predicts ε: Kiln trains ε, as the model does")
    if config.zero_terminal_snr and not spec.zero_terminal_snr:
        notes.append("zero_terminal_snr is set but the base model's schedule is not zero-terminal: Kiln trains on "
                     "the model's own schedule")
    return notes


def lora_job(config: TrainConfig, *, default_output_dir: Path, allow_unsupported: bool = False,
             ignore_check_errors: bool = False) -> LoraJob:
    if config.dataset_config:
        return _dataset_config_job(config, default_output_dir=default_output_dir,
                                   allow_unsupported=allow_unsupported, ignore_check_errors=ignore_check_errors)
    if not config.train_data_dir:
        raise KilnError("train_data_dir is not set", hint="the folder holding the 10_name class folders")
    problems = unsupported(config)
    if problems and not allow_unsupported:
        raise KilnError("this config sets options Kiln's trainer does not have yet: " + "; ".join(problems),
                        hint="remove them, or choose to train without them")
    resolution = parse_resolution(config.resolution) or (512, 512)
    unet_lr, te_lr, lr = config.learning_rates()
    captions = CaptionRules(
        shuffle_caption=config.shuffle_caption, keep_tokens=config.keep_tokens,
        keep_tokens_separator=config.keep_tokens_separator, caption_separator=config.caption_separator,
        caption_prefix=config.caption_prefix or "", caption_suffix=config.caption_suffix or "",
        caption_dropout_rate=config.caption_dropout_rate,
        caption_dropout_every_n_epochs=config.caption_dropout_every_n_epochs,
        caption_tag_dropout_rate=config.caption_tag_dropout_rate)
    data = DataOptions(resolution=resolution, enable_bucket=config.enable_bucket,
                       min_bucket_reso=config.min_bucket_reso, max_bucket_reso=config.max_bucket_reso,
                       bucket_reso_steps=config.bucket_reso_steps, bucket_no_upscale=config.bucket_no_upscale,
                       caption_extension=config.caption_extension, flip_aug=config.flip_aug,
                       random_crop=config.random_crop, color_aug=config.color_aug,
                       face_crop_aug_range=parse_face_crop_aug_range(config.face_crop_aug_range), captions=captions)
    network = network_spec(config)
    loop = LoopOptions(train_batch_size=config.train_batch_size, max_train_epochs=config.max_train_epochs,
                       max_train_steps=config.max_train_steps,
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       max_grad_norm=config.max_grad_norm, noise_offset=config.noise_offset or 0.0,
                       multires_noise_iterations=config.multires_noise_iterations,
                       multires_noise_discount=config.multires_noise_discount,
                       min_snr_gamma=config.min_snr_gamma, prior_loss_weight=config.prior_loss_weight,
                       clip_skip=config.clip_skip or 1, max_token_length=config.max_token_length or 75,
                       seed=config.seed if config.seed is not None else 42, cache_latents=not data.random_pixels,
                       cache_latents_to_disk=config.cache_latents_to_disk and not data.random_pixels,
                       flip_aug=config.flip_aug, mixed_precision=config.mixed_precision or "no",
                       full_precision=bool(config.full_fp16 or config.full_bf16),
                       gradient_checkpointing=config.gradient_checkpointing, xformers=config.xformers)
    output = OutputOptions(output_dir=Path(config.output_dir) if config.output_dir else default_output_dir,
                           output_name=config.effective_output_name(),
                           save_every_n_epochs=config.save_every_n_epochs, save_precision=config.save_precision,
                           save_every_n_steps=config.save_every_n_steps, save_last_n_epochs=config.save_last_n_epochs,
                           save_state=config.save_state)
    return LoraJob(train_data_dir=Path(config.train_data_dir),
                   reg_data_dir=Path(config.reg_data_dir) if config.reg_data_dir else None, output=output,
                   data=data, network=network, loop=loop, learning_rate=lr, unet_lr=unet_lr, text_encoder_lr=te_lr,
                   optimizer_type=config.optimizer_type, lr_scheduler=config.lr_scheduler,
                   resume=Path(config.resume) if config.resume else None,
                   network_weights=Path(config.network_weights) if config.network_weights else None, ignore_check_errors=ignore_check_errors,
                   training_comment=config.training_comment,
                   sample_prompts=tuple(read_sample_prompts(config.sample_prompts)) if config.sample_prompts else (),
                   sample_every_n_epochs=config.sample_every_n_epochs, sample_sampler=config.sample_sampler,
                   logging_dir=Path(config.logging_dir) if config.logging_dir else None,
                   make_optimizer=lambda groups: build_optimizer_for(config, groups),
                   make_scheduler=lambda optimizer, total: build_scheduler_for(config, optimizer, total),
                   extra_metadata={"lr_warmup_steps": config.lr_warmup_steps,
                                   "max_token_length": config.max_token_length})


def _dataset_config_job(config: TrainConfig, *, default_output_dir: Path, allow_unsupported: bool,
                        ignore_check_errors: bool) -> LoraJob:
    """kohya's --dataset_config run: the subsets are the concepts; the dataset's resolution,
    buckets and batch and the subsets' caption / augmentation options replace the config's."""
    from core.training.dataset_config import load_dataset_config
    from core.training.dataset_run import caption_rules, dataset_run

    run = dataset_run(load_dataset_config(config.dataset_config, config=config), config.dataset_config)
    problems = unsupported(config) + list(run.problems)
    if problems and not allow_unsupported:
        raise KilnError("this config sets options Kiln's trainer does not have yet: " + "; ".join(problems),
                        hint="remove them, or choose to train without them")
    ds, sub = run.dataset, run.subset
    resolution = ds.resolution or parse_resolution(config.resolution) or (512, 512)
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    values.update(train_data_dir=str(run.layout.train_dir), reg_data_dir=None, dataset_config=None,
                  resolution=f"{resolution[0]},{resolution[1]}", enable_bucket=ds.enable_bucket,
                  min_bucket_reso=ds.min_bucket_reso, max_bucket_reso=ds.max_bucket_reso,
                  bucket_reso_steps=ds.bucket_reso_steps, bucket_no_upscale=ds.bucket_no_upscale,
                  train_batch_size=ds.batch_size, caption_extension=sub.caption_extension, flip_aug=sub.flip_aug,
                  color_aug=sub.color_aug, random_crop=sub.random_crop,
                  face_crop_aug_range=(",".join(f"{v:g}" for v in sub.face_crop_aug_range)
                                       if sub.face_crop_aug_range else None))
    job = lora_job(TrainConfig(**values), default_output_dir=default_output_dir, allow_unsupported=True,
                   ignore_check_errors=ignore_check_errors)
    data = dataclasses.replace(job.data, captions=caption_rules(sub))
    return dataclasses.replace(job, data=data, layout=run.layout, reg_data_dir=None)
