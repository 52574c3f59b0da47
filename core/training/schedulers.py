"""LR schedulers by sd-scripts' ``--lr_scheduler`` names, as kohya's ``get_scheduler_fix``.

The curves are transformers' (kohya imports ``TYPE_TO_SCHEDULER_FUNCTION`` from
``transformers.optimization``), so a kohya config gives the same LR at every step. Warmup is
steps (int, or float >= 1) or a ratio of the total steps (float < 1; "10%" also reads as 0.1),
like kohya's ``int_or_float``: ``int(lr_warmup_steps * max_train_steps)``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from core.errors import KilnError
from core.training.optimizers import ADAFACTOR_INITIAL_LR_KEY

SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "adafactor",
)
DEFAULT_SCHEDULER = "constant"


def warmup_steps(lr_warmup_steps: int | float | str | None, num_training_steps: int) -> int:
    """Warmup in steps: an int (or float >= 1) is steps, a float below 1 or "N%" is that share of the run."""

    value = lr_warmup_steps
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise KilnError(f"lr_warmup_steps: {lr_warmup_steps!r} is not a number of steps or a ratio",
                            hint="e.g. 100 (steps), 0.1 or 10% (of the steps)") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KilnError(f"lr_warmup_steps: {lr_warmup_steps!r} is not a number of steps or a ratio")
    if value < 0:
        raise KilnError(f"lr_warmup_steps: {lr_warmup_steps!r} is negative", hint="use 0 for no warmup")
    if isinstance(value, float) and value < 1:
        return int(value * num_training_steps)
    return int(value)


def parse_scheduler_args(lr_scheduler_args: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """kohya's ``--lr_scheduler_args "lr_end=1e-6"``: key=value, values as Python literals."""

    if lr_scheduler_args is None:
        return {}
    if isinstance(lr_scheduler_args, Mapping):
        return dict(lr_scheduler_args)
    parsed: dict[str, Any] = {}
    for entry in lr_scheduler_args:
        key, sep, raw = str(entry).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise KilnError(f"lr_scheduler_args: {entry!r} is not key=value", hint='e.g. "lr_end=1e-6"')
        try:
            parsed[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            raise KilnError(f"lr_scheduler_args: {key}={raw.strip()!r} is not a Python literal") from None
    return parsed


def _is_relative_step_adafactor(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer).__name__ == "Adafactor" and all(
        g.get("relative_step") for g in optimizer.param_groups)


def build_scheduler(
    lr_scheduler: str | None,
    optimizer: torch.optim.Optimizer,
    *,
    num_training_steps: int,
    lr_warmup_steps: int | float | str = 0,
    lr_scheduler_num_cycles: int = 1,
    lr_scheduler_power: float = 1.0,
    lr_scheduler_args: list[str] | dict | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler kohya builds; step it once per optimizer step (``num_training_steps`` of them).

    Adafactor in relative-step mode always gets AdafactorSchedule (kohya rewrites the scheduler to
    ``adafactor:<lr>``); the 'adafactor' scheduler with any other optimizer is an error, as in kohya.
    """

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, AdafactorSchedule, SchedulerType

    name = (lr_scheduler or DEFAULT_SCHEDULER).strip().lower()
    if name.startswith("adafactor:"):  # kohya's internal spelling, accepted for configs that saved it
        name = "adafactor"
    if num_training_steps is None or int(num_training_steps) < 1:
        raise KilnError(f"the run has {num_training_steps} training steps",
                        hint="set max_train_steps or max_train_epochs, and check the dataset is not empty")
    total = int(num_training_steps)
    warmup = warmup_steps(lr_warmup_steps, total)
    kwargs = parse_scheduler_args(lr_scheduler_args)

    if _is_relative_step_adafactor(optimizer) or name == "adafactor":
        if type(optimizer).__name__ != "Adafactor":
            raise KilnError("lr_scheduler 'adafactor' works only with optimizer_type Adafactor",
                            hint="choose another lr_scheduler, or optimizer_type Adafactor")
        _no_warmup(name if name == "adafactor" else "adafactor (relative_step Adafactor)", warmup)
        initial = optimizer.param_groups[0].get(ADAFACTOR_INITIAL_LR_KEY)
        if initial is None:
            initial = optimizer.param_groups[0].get("lr") or 0.0
        return AdafactorSchedule(optimizer, float(initial))

    if name not in SCHEDULERS:
        raise KilnError(f"lr_scheduler: {lr_scheduler!r} is not a scheduler Kiln knows",
                        hint="choose one of " + ", ".join(SCHEDULERS))
    kind = SchedulerType(name)
    fn = TYPE_TO_SCHEDULER_FUNCTION[kind]
    try:
        if kind == SchedulerType.CONSTANT:
            _no_warmup(name, warmup)
            return fn(optimizer, **kwargs)
        if kind == SchedulerType.CONSTANT_WITH_WARMUP:
            return fn(optimizer, num_warmup_steps=warmup, **kwargs)
        if kind == SchedulerType.COSINE_WITH_RESTARTS:
            return fn(optimizer, num_warmup_steps=warmup, num_training_steps=total,
                      num_cycles=int(lr_scheduler_num_cycles), **kwargs)
        if kind == SchedulerType.POLYNOMIAL:
            return fn(optimizer, num_warmup_steps=warmup, num_training_steps=total,
                      power=float(lr_scheduler_power), **kwargs)
        return fn(optimizer, num_warmup_steps=warmup, num_training_steps=total, **kwargs)
    except (TypeError, ValueError) as exc:
        raise KilnError(f"lr_scheduler {name}: {exc}", hint="check lr_scheduler_args and the warmup") from None


def _no_warmup(name: str, warmup: int) -> None:
    # kohya raises here too ("does not require num_warmup_steps"): a silent ignore would surprise.
    if warmup:
        raise KilnError(f"lr_scheduler {name} has no warmup but lr_warmup_steps is {warmup}",
                        hint="set lr_warmup_steps = 0, or use constant_with_warmup")


def lr_curve(
    lr_scheduler: str | None,
    *,
    learning_rate: float,
    num_training_steps: int,
    lr_warmup_steps: int | float | str = 0,
    lr_scheduler_num_cycles: int = 1,
    lr_scheduler_power: float = 1.0,
    lr_scheduler_args: list[str] | dict | None = None,
) -> list[float]:
    """The LR used at each of the ``num_training_steps`` optimizer steps (for the UI plot and tests).

    Built on a throwaway one-parameter optimizer, so it is exactly the curve training follows.
    'adafactor' depends on gradients, so its curve is the constant starting LR kohya logs.
    """

    param = torch.nn.Parameter(torch.zeros(1))
    name = (lr_scheduler or DEFAULT_SCHEDULER).strip().lower()
    if name.startswith("adafactor"):
        total = int(num_training_steps)
        if total < 1:
            raise KilnError(f"the run has {num_training_steps} training steps")
        _no_warmup("adafactor", warmup_steps(lr_warmup_steps, total))
        return [float(learning_rate)] * total
    optimizer = torch.optim.SGD([param], lr=float(learning_rate))
    scheduler = build_scheduler(
        name, optimizer, num_training_steps=num_training_steps, lr_warmup_steps=lr_warmup_steps,
        lr_scheduler_num_cycles=lr_scheduler_num_cycles, lr_scheduler_power=lr_scheduler_power,
        lr_scheduler_args=lr_scheduler_args)
    lrs: list[float] = []
    for _ in range(int(num_training_steps)):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return lrs


def warmup_cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup over ``warmup`` steps (step 0 already at peak/warmup), then a cosine decay to
    ``floor`` at ``total``: the built-in model's VAE schedule (kohya's cosine decays to 0)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
