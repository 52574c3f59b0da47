"""What a TrainConfig turns into: its optimizer and scheduler, its network kind, and the seeds'
advice for it (rank limits per kind, the optimizer's learning-rate rules)."""

from __future__ import annotations

import torch

from core.training.config import TrainConfig
from core.training.optimizers import build_optimizer, guidance
from core.training.schedulers import build_scheduler


def build_optimizer_for(config: TrainConfig, params_or_groups) -> torch.optim.Optimizer:
    """``build_optimizer`` with this config's optimizer_type, learning_rate and optimizer_args."""

    return build_optimizer(config.optimizer_type, params_or_groups, config.learning_rate, config.optimizer_args)


def build_scheduler_for(config: TrainConfig, optimizer: torch.optim.Optimizer, num_training_steps: int):
    """``build_scheduler`` with this config's lr_scheduler, warmup, cycles, power and args."""

    return build_scheduler(
        config.lr_scheduler, optimizer, num_training_steps=num_training_steps,
        lr_warmup_steps=config.lr_warmup_steps, lr_scheduler_num_cycles=config.lr_scheduler_num_cycles,
        lr_scheduler_power=config.lr_scheduler_power, lr_scheduler_args=config.lr_scheduler_args)


# Seed 001: "LoRA rank at most 64, LoHa at most 32, LoCon at most 12".
RANK_ADVICE = {"lora": 64, "loha": 32, "locon": 12}


def network_kind(config: TrainConfig) -> str:
    """lora, locon, loha, lokr ... from network_module and network_args (algo=, conv_dim=)."""

    args = {}
    for entry in config.network_args or []:
        key, _, value = entry.partition("=")
        args[key.strip()] = value.strip().strip("'\"")
    module = (config.network_module or "networks.lora").lower()
    if "lycoris" in module:
        return args.get("algo", "lora").lower()
    return "locon" if "conv_dim" in args else "lora"


def config_guidance(config: TrainConfig) -> list[str]:
    """The seeds' advice for this config: rank limits per network kind, then the optimizer's."""

    notes = []
    if config.dataset_config and (config.train_data_dir or config.reg_data_dir):
        notes.append("dataset_config is set, so train_data_dir and reg_data_dir are ignored (as in kohya).")
    kind = network_kind(config)
    limit = RANK_ADVICE.get(kind)
    dim = config.effective_network_dim()
    if limit is not None and dim > limit:
        notes.append(f"network_dim {dim} is above the usual limit for {kind} ({limit}): larger ranks mostly "
                     "add size and overfitting; simple concepts need much less.")
    unet_lr, te_lr, _ = config.learning_rates()
    notes += guidance(config.optimizer_type, config.learning_rate, unet_lr=unet_lr, text_encoder_lr=te_lr,
                      optimizer_args=config.optimizer_args, lr_scheduler=config.lr_scheduler,
                      max_grad_norm=config.max_grad_norm)
    return notes
