"""LR schedulers by kohya's names: the curves, warmup as steps or ratio, kohya's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import KilnError
from core.training.optimizers import build_optimizer
from core.training.schedulers import build_scheduler, lr_curve, warmup_steps


def test_seed_001_warmup_ratio_reaches_the_lr_at_ten_percent():
    # "LR 0.1, warmup ratio 0.1: during the first 10% of the steps the LR rises, then stays at 0.1"
    curve = lr_curve("constant_with_warmup", learning_rate=0.1, num_training_steps=100, lr_warmup_steps=0.1)
    assert len(curve) == 100
    assert all(lr < 0.1 for lr in curve[:10])
    assert curve[5] == pytest.approx(0.05)
    assert all(lr == pytest.approx(0.1) for lr in curve[10:])
    assert all(a < b for a, b in zip(curve[:10], curve[1:11]))


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), (0.1, 10), (0.05, 5), (10, 10), ("10%", 10), ("25", 25), (1.0, 1), (None, 0)])
def test_warmup_steps_or_ratio(value, expected):
    assert warmup_steps(value, 100) == expected


@pytest.mark.parametrize("bad", [-1, "abc", True])
def test_bad_warmup_is_named(bad):
    with pytest.raises(KilnError, match="lr_warmup_steps"):
        warmup_steps(bad, 100)


def test_constant():
    assert lr_curve("constant", learning_rate=3e-4, num_training_steps=5) == [3e-4] * 5
    assert lr_curve(None, learning_rate=3e-4, num_training_steps=2) == [3e-4] * 2


def test_constant_refuses_warmup_like_kohya():
    with pytest.raises(KilnError, match="lr_warmup_steps"):
        lr_curve("constant", learning_rate=1.0, num_training_steps=10, lr_warmup_steps=2)


def test_linear_with_warmup():
    curve = lr_curve("linear", learning_rate=1.0, num_training_steps=10, lr_warmup_steps=2)
    assert curve == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_cosine():
    n = 20
    curve = lr_curve("cosine", learning_rate=2.0, num_training_steps=n)
    assert curve == pytest.approx([2.0 * 0.5 * (1 + math.cos(math.pi * k / n)) for k in range(n)])
    assert curve[10] == pytest.approx(1.0)


def test_cosine_with_restarts_num_cycles():
    curve = lr_curve("cosine_with_restarts", learning_rate=1.0, num_training_steps=20, lr_scheduler_num_cycles=2)
    assert curve[0] == pytest.approx(1.0) and curve[10] == pytest.approx(1.0)  # the restart
    assert curve[5] == pytest.approx(0.5) and curve[15] == pytest.approx(0.5)
    assert curve[9] < 0.05 and curve[19] < 0.05
    one = lr_curve("cosine_with_restarts", learning_rate=1.0, num_training_steps=20, lr_scheduler_num_cycles=1)
    assert one == pytest.approx(lr_curve("cosine", learning_rate=1.0, num_training_steps=20))


def test_polynomial_power():
    n = 10
    curve = lr_curve("polynomial", learning_rate=1.0, num_training_steps=n, lr_scheduler_power=2.0)
    lr_end = 1e-7  # transformers' default end LR
    assert curve == pytest.approx([(1 - lr_end) * (1 - k / n) ** 2 + lr_end for k in range(n)])
    linear = lr_curve("polynomial", learning_rate=1.0, num_training_steps=n, lr_scheduler_power=1.0)
    assert linear[5] == pytest.approx(0.5, abs=1e-6)


def test_scheduler_args_reach_the_schedule():
    curve = lr_curve("polynomial", learning_rate=1.0, num_training_steps=10, lr_scheduler_args=["lr_end=0.5"])
    assert curve[5] == pytest.approx(0.75)
    with pytest.raises(KilnError, match="lr_scheduler_args"):
        lr_curve("polynomial", learning_rate=1.0, num_training_steps=10, lr_scheduler_args=["lr_end"])


def test_adafactor_scheduler_follows_the_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer("Adafactor", model.parameters(), 1e-3)
    # kohya: relative-step Adafactor always gets the adafactor schedule, whatever was chosen
    for name in ("adafactor", "cosine"):
        sched = build_scheduler(name, opt, num_training_steps=10)
        assert type(sched).__name__ == "AdafactorSchedule"
        assert sched.get_last_lr()[0] == pytest.approx(1e-3)
    x = torch.randn(8, 4)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] != pytest.approx(1e-3)  # now Adafactor's own relative step
    assert lr_curve("adafactor", learning_rate=1e-3, num_training_steps=3) == [1e-3] * 3


def test_adafactor_scheduler_needs_adafactor():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer("AdamW", model.parameters(), 1e-3)
    with pytest.raises(KilnError, match="only with optimizer_type Adafactor"):
        build_scheduler("adafactor", opt, num_training_steps=10)


def test_unknown_scheduler_and_empty_run():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(KilnError, match="cosine_with_restarts"):
        build_scheduler("cosine_annealing", opt, num_training_steps=10)
    with pytest.raises(KilnError, match="training steps"):
        build_scheduler("linear", opt, num_training_steps=0)


def test_scheduler_state_resumes_mid_run():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, build_scheduler("cosine", opt, num_training_steps=10, lr_warmup_steps=2)

    opt, sched = make()
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
