"""Optimizers by sd-scripts' ``--optimizer_type`` names, with kohya's argument rules.

A kohya config names its optimizer (``AdamW8bit``, ``Lion``, ``DAdaptation`` ...) and passes
``--optimizer_args "weight_decay=0.01" "betas=0.9,0.99"``; both carry over unchanged. The
optional libraries (bitsandbytes, lion-pytorch, dadaptation, prodigyopt) are imported only when
chosen, and a missing one is a KilnError naming the pip package to install.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from core.errors import KilnError

# Lower-case kohya name -> spelling shown to users. Matching is case-insensitive, as kohya's.
OPTIMIZER_TYPES: dict[str, str] = {
    name.lower(): name
    for name in (
        "AdamW",
        "AdamW8bit",
        "PagedAdamW8bit",
        "Lion",
        "Lion8bit",
        "SGDNesterov",
        "SGDNesterov8bit",
        "Adafactor",
        "DAdaptation",
        "DAdaptAdamPreprint",
        "DAdaptAdam",
        "DAdaptLion",
        "DAdaptAdaGrad",
        "DAdaptAdan",
        "DAdaptAdanIP",
        "DAdaptSGD",
        "Prodigy",
    )
}
DEFAULT_OPTIMIZER = "AdamW"

# Modules a dotted ``optimizer_type`` (kohya's escape hatch, e.g. "torch.optim.RAdam") may come from.
# A config can be loaded from the web UI, so arbitrary imports are not allowed.
_DOTTED_MODULES = ("torch.optim", "bitsandbytes.optim", "lion_pytorch", "prodigyopt", "dadaptation",
                   "transformers.optimization")

# Param-group key carrying the requested LR for Adafactor's relative-step mode, where the
# optimizer itself has lr=None; build_scheduler reads it for AdafactorSchedule (kohya passes it
# through args.lr_scheduler = "adafactor:<lr>").
ADAFACTOR_INITIAL_LR_KEY = "kiln_initial_lr"

_EIGHT_BIT_CLASSES = {
    "adamw8bit": "AdamW8bit",
    "pagedadamw8bit": "PagedAdamW8bit",
    "lion8bit": "Lion8bit",
    "sgdnesterov8bit": "SGD8bit",
}
_DADAPT_CLASSES = {
    "dadaptation": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "dadaptadampreprint": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "dadaptadam": ("dadaptation", "DAdaptAdam"),
    "dadaptlion": ("dadaptation", "DAdaptLion"),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad"),
    "dadaptadan": ("dadaptation", "DAdaptAdan"),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP"),
    "dadaptsgd": ("dadaptation", "DAdaptSGD"),
}


def canonical_optimizer_name(optimizer_type: str | None) -> str:
    """kohya's spelling of ``optimizer_type`` ("" or None means AdamW); dotted names pass through."""

    if not optimizer_type:
        return DEFAULT_OPTIMIZER
    name = str(optimizer_type).strip()
    return OPTIMIZER_TYPES.get(name.lower(), name)


def parse_optimizer_args(optimizer_args: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["weight_decay=0.01", "betas=0.9,0.99"]`` -> ``{"weight_decay": 0.01, "betas": (0.9, 0.99)}``.

    Values are Python literals as in kohya (``ast.literal_eval``: commas make tuples, True/False,
    None). A bare word that is not a literal is kept as a string so ``algo=loha``-style values
    read naturally; a malformed entry names itself.
    """

    if optimizer_args is None:
        return {}
    if isinstance(optimizer_args, Mapping):
        return dict(optimizer_args)
    if isinstance(optimizer_args, str):
        optimizer_args = optimizer_args.split()
    parsed: dict[str, Any] = {}
    for entry in optimizer_args:
        text = str(entry).strip()
        if not text:
            continue
        key, sep, raw = text.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not key.isidentifier():
            raise KilnError(f"optimizer_args: {text!r} is not key=value",
                            hint='write each argument as key=value, e.g. "weight_decay=0.01" "betas=0.9,0.99"')
        parsed[key] = _literal(raw, key)
    return parsed


def _literal(raw: str, key: str) -> Any:
    if raw == "":
        raise KilnError(f"optimizer_args: {key}= has no value", hint="e.g. weight_decay=0.01")
    # TOML habits: true/false/none in lower case mean the Python literals (a string "false" would be truthy).
    lowered = {"true": True, "false": False, "none": None}
    if raw.lower() in lowered:
        return lowered[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if raw.replace("_", "").replace("-", "").isalnum():
            return raw  # a bare word such as a mode name
        raise KilnError(f"optimizer_args: {key}={raw!r} is not a Python literal",
                        hint="numbers, True/False, None, 'text', or comma-separated tuples like 0.9,0.99") from None


def _param_groups_lrs(params_or_groups: list) -> list[float | None]:
    return [g.get("lr") for g in params_or_groups if isinstance(g, dict)]


def _as_list(params_or_groups) -> list:
    items = list(params_or_groups)
    if not items:
        raise KilnError("the optimizer got no parameters to train",
                        hint="check network_train_unet_only / network_train_text_encoder_only and the network module")
    return items


def _missing(optimizer: str, package: str, extra: str | None, why: str = "is not installed") -> KilnError:
    hint = f"pip install {package}"
    if extra:
        hint += f" (or pip install -e .[{extra}])"
    hint += " — or choose AdamW"
    return KilnError(f"optimizer_type {optimizer} needs the Python package '{package}', which {why}", hint=hint)


def build_optimizer(
    optimizer_type: str | None,
    params_or_groups,
    learning_rate: float,
    optimizer_args: list[str] | dict | None = None,
) -> torch.optim.Optimizer:
    """The optimizer kohya's ``get_optimizer`` would build for these settings.

    ``params_or_groups`` is an iterable of tensors or of param-group dicts (``{"params": [...],
    "lr": unet_lr}``). ``learning_rate`` is the default LR for groups without their own.
    """

    name = canonical_optimizer_name(optimizer_type)
    key = name.lower()
    kwargs = parse_optimizer_args(optimizer_args)
    params = _as_list(params_or_groups)
    lr = float(learning_rate)

    if key == "adamw":
        return _construct(name, torch.optim.AdamW, params, lr, kwargs)
    if key == "sgdnesterov":
        # kohya: Nesterov requires momentum; it supplies 0.9 when the user gave none.
        kwargs.setdefault("momentum", 0.9)
        kwargs["nesterov"] = True
        return _construct(name, torch.optim.SGD, params, lr, kwargs)
    if key == "lion":
        try:
            lion_pytorch = importlib.import_module("lion_pytorch")
        except ImportError:
            raise _missing(name, "lion-pytorch", None) from None
        return _construct(name, lion_pytorch.Lion, params, lr, kwargs)
    if key in _EIGHT_BIT_CLASSES:
        return _build_8bit(name, key, params, lr, kwargs)
    if key in _DADAPT_CLASSES:
        module_name, class_name = _DADAPT_CLASSES[key]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise _missing(name, "dadaptation", None) from None
        return _construct(name, getattr(module, class_name), params, lr, kwargs)
    if key == "prodigy":
        try:
            prodigyopt = importlib.import_module("prodigyopt")
        except ImportError:
            raise _missing(name, "prodigyopt", None) from None
        return _construct(name, prodigyopt.Prodigy, params, lr, kwargs)
    if key == "adafactor":
        return _build_adafactor(name, params, lr, kwargs)
    return _build_other(name, params, lr, kwargs)


def _construct(name: str, cls, params: list, lr: float | None, kwargs: dict) -> torch.optim.Optimizer:
    try:
        return cls(params, lr=lr, **kwargs)
    except TypeError as exc:
        raise KilnError(f"optimizer_args for {name}: {exc}",
                        hint=f"remove or rename the argument; {cls.__module__}.{cls.__name__} does not take it") from None
    except ValueError as exc:
        raise KilnError(f"{name}: {exc}", hint="check learning_rate and optimizer_args") from None


def _build_8bit(name: str, key: str, params: list, lr: float, kwargs: dict) -> torch.optim.Optimizer:
    try:
        bnb = importlib.import_module("bitsandbytes")
    except ImportError:
        raise _missing(name, "bitsandbytes", None) from None
    except Exception as exc:  # bitsandbytes raises RuntimeError/OSError when its native library cannot load
        raise _missing(name, "bitsandbytes", None, why=f"cannot run on this machine ({exc})") from None
    class_name = _EIGHT_BIT_CLASSES[key]
    cls = getattr(getattr(bnb, "optim", None), class_name, None)
    if cls is None:
        raise KilnError(f"optimizer_type {name}: the installed bitsandbytes has no {class_name}",
                        hint="pip install -U bitsandbytes (0.39 or later)")
    if key == "sgdnesterov8bit":
        kwargs.setdefault("momentum", 0.9)
        kwargs["nesterov"] = True
    if any(_on_cpu(p) for p in _tensors(params)):
        # The 8-bit optimizer states are CUDA kernels: with CPU tensors bitsandbytes fails only at
        # the first step (or silently falls back, depending on its version), so say it up front.
        raise _missing(name, "bitsandbytes", None, why="needs a CUDA GPU and the parameters are on the CPU")
    return _construct(name, cls, params, lr, kwargs)


def _tensors(params: list) -> Iterable[torch.Tensor]:
    for item in params:
        if isinstance(item, dict):
            yield from item["params"]
        else:
            yield item


def _on_cpu(tensor: torch.Tensor) -> bool:
    return getattr(tensor, "device", torch.device("cpu")).type == "cpu"


def adafactor_relative_step(optimizer_args: list[str] | dict | None) -> bool:
    """Whether Adafactor runs in relative-step mode (kohya's default, also forced by warmup_init)."""

    kwargs = parse_optimizer_args(optimizer_args)
    return bool(kwargs.get("relative_step", True)) or bool(kwargs.get("warmup_init", False))


def _build_adafactor(name: str, params: list, lr: float, kwargs: dict) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    # kohya's rules: relative_step defaults to True; warmup_init forces it; in that mode the given
    # LR only seeds the 'adafactor' scheduler, and per-group LRs (unet_lr, text_encoder_lr) are dropped.
    kwargs["relative_step"] = adafactor_relative_step(kwargs)
    if kwargs["relative_step"]:
        params = [{k: v for k, v in g.items() if k != "lr"} if isinstance(g, dict) else g for g in params]
        optimizer = _construct(name, Adafactor, params, None, kwargs)
        for group in optimizer.param_groups:
            group[ADAFACTOR_INITIAL_LR_KEY] = lr
        return optimizer
    return _construct(name, Adafactor, params, lr, kwargs)


def _build_other(name: str, params: list, lr: float, kwargs: dict) -> torch.optim.Optimizer:
    """kohya accepts any torch.optim class name, or module.Class; Kiln limits modules to known ones."""

    if "." in name:
        module_name, _, class_name = name.rpartition(".")
        if not any(module_name == m or module_name.startswith(m + ".") for m in _DOTTED_MODULES):
            raise _unknown(name)
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise _unknown(name) from None
    else:
        module, class_name = torch.optim, name
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise _unknown(name)
    return _construct(name, cls, params, lr, kwargs)


def _unknown(name: str) -> KilnError:
    return KilnError(f"optimizer_type: {name!r} is not an optimizer Kiln knows",
                     hint="choose one of " + ", ".join(OPTIMIZER_TYPES.values())
                     + ", or a torch.optim class name such as RAdam")


def is_adaptive(optimizer_type: str | None) -> bool:
    """D-Adaptation and Prodigy find their own step size; their learning_rate is a multiplier (1.0)."""

    key = canonical_optimizer_name(optimizer_type).lower()
    return key.startswith("dadapt") or key == "prodigy"


def guidance(
    optimizer_type: str | None,
    learning_rate: float | None,
    *,
    unet_lr: float | None = None,
    text_encoder_lr: float | list[float] | None = None,
    optimizer_args: list[str] | dict | None = None,
    lr_scheduler: str | None = None,
    max_grad_norm: float | None = None,
) -> list[str]:
    """Advice shown beside the optimizer fields: the seeds' rules of thumb and kohya's warnings."""

    name = canonical_optimizer_name(optimizer_type)
    key = name.lower()
    lr = learning_rate
    notes: list[str] = []
    if key in ("lion", "lion8bit"):  # seed 004: Lion overfits more easily, LR about 1/3
        notes.append("Lion overfits more easily than AdamW: use about 1/3 of the AdamW learning rate.")
        if lr is not None and lr >= 1e-4:
            notes.append(f"learning_rate {lr:g} is an AdamW-sized rate; for Lion try about {lr / 3:.2g}.")
    if is_adaptive(name):
        notes.append(f"{name} adapts its own step size: set learning_rate (and unet_lr / text_encoder_lr) to 1.0.")
        effective = unet_lr if unet_lr is not None else lr
        if effective is not None and effective <= 0.1:
            notes.append(f"learning rate {effective:g} is too low for {name}; kohya recommends about 1.0.")
        te = text_encoder_lr[0] if isinstance(text_encoder_lr, list) and text_encoder_lr else text_encoder_lr
        lrs = {v for v in (unet_lr, te) if v}  # 0 freezes a part: not a second rate
        if len(lrs) > 1:
            notes.append(f"{name} uses only the first learning rate when U-Net and Text Encoder rates differ.")
    if key == "adafactor":
        if adafactor_relative_step(optimizer_args):
            notes.append("Adafactor with relative_step=True (default) sets its own step size: learning_rate is only "
                         "the starting value, the 'adafactor' scheduler is used, unet_lr/text_encoder_lr are ignored.")
        else:
            if lr_scheduler not in (None, "constant_with_warmup"):
                notes.append("Adafactor with relative_step=False: constant_with_warmup is the recommended scheduler.")
            if max_grad_norm not in (None, 0, 0.0):
                notes.append("Adafactor with relative_step=False: consider max_grad_norm = 0 (no gradient clipping).")
    if key.endswith("8bit"):
        notes.append(f"{name} needs bitsandbytes and a CUDA GPU; it saves memory compared with the 32-bit version.")
    if key in ("adamw", "adamw8bit"):
        notes.append("LoRA with AdamW: U-Net learning rate 1e-4 to 1.5e-4, Text Encoder 1e-5 are typical.")
        if lr is not None and lr > 1e-3:
            notes.append(f"learning_rate {lr:g} is high for AdamW; LoRA usually trains at 1e-4.")
    return notes
