"""Optimizers by kohya's names: each trains a tiny nn.Linear; kohya's argument rules; missing libraries."""

from __future__ import annotations

import sys

import pytest
import torch

from core.errors import KilnError
from core.training import optimizers
from core.training.optimizers import (
    ADAFACTOR_INITIAL_LR_KEY,
    build_optimizer,
    canonical_optimizer_name,
    guidance,
    parse_optimizer_args,
)


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.5], [2.0, 0.0]]) + 0.25
    return model, x, y


def _train(optimizer_type: str, lr: float, steps: int, args=None) -> list[float]:
    model, x, y = _problem()
    opt = build_optimizer(optimizer_type, model.parameters(), lr, args)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize(
    ("name", "lr", "steps", "args"),
    [
        ("AdamW", 0.05, 30, None),
        ("Lion", 0.01, 30, None),
        ("SGDNesterov", 0.05, 30, None),
        ("Adafactor", 1e-3, 30, None),  # relative_step: lr only seeds the scheduler
        ("Adafactor", 0.05, 30, ["relative_step=False", "scale_parameter=False"]),
        ("DAdaptation", 1.0, 100, None),  # d starts at 1e-6 and overshoots before it settles
        ("DAdaptAdam", 1.0, 40, None),
        ("DAdaptLion", 1.0, 40, None),
        ("DAdaptAdaGrad", 1.0, 40, ["d0=1e-3"]),
        ("DAdaptAdan", 1.0, 40, None),
        ("DAdaptSGD", 1.0, 40, None),
        ("Prodigy", 1.0, 40, None),
        ("RAdam", 0.05, 30, None),  # any torch.optim class, as kohya allows
    ],
)
def test_each_optimizer_lowers_the_loss(name, lr, steps, args):
    losses = _train(name, lr, steps, args)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.9, (name, losses[0], losses[-1])


def test_names_are_case_insensitive_and_empty_means_adamw():
    model, _, _ = _problem()
    assert isinstance(build_optimizer("adamw", model.parameters(), 1e-3), torch.optim.AdamW)
    assert isinstance(build_optimizer("", model.parameters(), 1e-3), torch.optim.AdamW)
    assert isinstance(build_optimizer(None, model.parameters(), 1e-3), torch.optim.AdamW)
    assert type(build_optimizer("LION", model.parameters(), 1e-3)).__name__ == "Lion"
    assert type(build_optimizer("prodigy", model.parameters(), 1.0)).__name__ == "Prodigy"
    assert type(build_optimizer("dadaptation", model.parameters(), 1.0)).__name__ == "DAdaptAdamPreprint"
    assert canonical_optimizer_name("sgdnesterov8bit") == "SGDNesterov8bit"


def test_optimizer_args_are_python_literals_and_reach_the_optimizer():
    assert parse_optimizer_args(["weight_decay=0.01", "betas=0.9,0.99", "decouple=True", "eps=None"]) == {
        "weight_decay": 0.01, "betas": (0.9, 0.99), "decouple": True, "eps": None}
    assert parse_optimizer_args({"weight_decay": 0.1}) == {"weight_decay": 0.1}
    assert parse_optimizer_args(["decouple=false", "use_bias_correction=true", "algo=lion"]) == {
        "decouple": False, "use_bias_correction": True, "algo": "lion"}
    assert parse_optimizer_args("weight_decay=0.01 betas=0.9,0.99") == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    model, _, _ = _problem()
    opt = build_optimizer("AdamW", model.parameters(), 1e-3, ["weight_decay=0.05", "betas=0.8,0.95"])
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert opt.param_groups[0]["betas"] == (0.8, 0.95)


@pytest.mark.parametrize("bad", [["weight_decay"], ["=0.1"], ["weight_decay="], ["betas=(0.9,"]])
def test_malformed_optimizer_args_name_the_entry(bad):
    with pytest.raises(KilnError, match="optimizer_args"):
        parse_optimizer_args(bad)


def test_an_argument_the_optimizer_lacks_is_named():
    model, _, _ = _problem()
    with pytest.raises(KilnError, match="frobnicate"):
        build_optimizer("AdamW", model.parameters(), 1e-3, ["frobnicate=1"])


def test_sgd_nesterov_defaults_momentum_like_kohya():
    model, _, _ = _problem()
    opt = build_optimizer("SGDNesterov", model.parameters(), 0.01)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True
    opt = build_optimizer("SGDNesterov", model.parameters(), 0.01, ["momentum=0.8"])
    assert opt.param_groups[0]["momentum"] == 0.8


def test_param_groups_keep_their_learning_rates():
    model, _, _ = _problem()
    groups = [{"params": [model.weight], "lr": 1e-4}, {"params": [model.bias], "lr": 1e-5}]
    opt = build_optimizer("AdamW", groups, 2e-6)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-5]


def test_adafactor_relative_step_rules():
    model, _, _ = _problem()
    groups = [{"params": [model.weight], "lr": 1e-4}, {"params": [model.bias], "lr": 1e-5}]
    opt = build_optimizer("Adafactor", groups, 3e-4)
    assert type(opt).__name__ == "Adafactor"
    # kohya: relative_step defaults to True, lr becomes None, per-group LRs are dropped
    assert all(g["relative_step"] and g["lr"] is None for g in opt.param_groups)
    assert all(g[ADAFACTOR_INITIAL_LR_KEY] == 3e-4 for g in opt.param_groups)
    assert groups[0]["lr"] == 1e-4  # the caller's groups are not modified
    opt = build_optimizer("Adafactor", model.parameters(), 3e-4, ["relative_step=False"])
    assert opt.param_groups[0]["relative_step"] is False and opt.param_groups[0]["lr"] == 3e-4
    # warmup_init needs relative_step: kohya turns it back on
    opt = build_optimizer("Adafactor", model.parameters(), 3e-4, ["relative_step=False", "warmup_init=True"])
    assert opt.param_groups[0]["relative_step"] is True


def test_missing_bitsandbytes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    model, _, _ = _problem()
    for name in ("AdamW8bit", "SGDNesterov8bit", "Lion8bit", "PagedAdamW8bit"):
        with pytest.raises(KilnError) as info:
            build_optimizer(name.lower(), model.parameters(), 1e-4)
        text = str(info.value)
        assert name in text and "bitsandbytes" in text and "pip install bitsandbytes" in text


def test_bitsandbytes_that_cannot_load_is_reported(monkeypatch):
    real = optimizers.importlib.import_module

    def failing(name, *a, **k):
        if name == "bitsandbytes":
            raise RuntimeError("CUDA Setup failed")
        return real(name, *a, **k)

    monkeypatch.setattr(optimizers.importlib, "import_module", failing)
    model, _, _ = _problem()
    with pytest.raises(KilnError, match="cannot run on this machine.*CUDA Setup failed"):
        build_optimizer("AdamW8bit", model.parameters(), 1e-4)


def test_bitsandbytes_with_cpu_parameters_says_gpu(monkeypatch):
    fake = type(sys)("bitsandbytes")
    fake.optim = type(sys)("bitsandbytes.optim")
    fake.optim.AdamW8bit = torch.optim.AdamW  # never constructed: CPU tensors are refused first
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    model, _, _ = _problem()
    with pytest.raises(KilnError, match="CUDA GPU"):
        build_optimizer("AdamW8bit", model.parameters(), 1e-4)


@pytest.mark.parametrize(("name", "module", "package"), [
    ("Lion", "lion_pytorch", "lion-pytorch"),
    ("Prodigy", "prodigyopt", "prodigyopt"),
    ("DAdaptAdam", "dadaptation", "dadaptation"),
])
def test_a_missing_optimizer_library_is_named_with_its_package(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)
    model, _, _ = _problem()
    with pytest.raises(KilnError) as info:
        build_optimizer(name, model.parameters(), 1.0)
    assert f"pip install {package}" in str(info.value) and "choose AdamW" in str(info.value)


def test_unknown_and_unsafe_optimizer_names():
    model, _, _ = _problem()
    with pytest.raises(KilnError, match="AdamW8bit"):  # the message lists the choices
        build_optimizer("AdamX", model.parameters(), 1e-3)
    with pytest.raises(KilnError, match="not an optimizer"):
        build_optimizer("os.system", model.parameters(), 1e-3)
    assert type(build_optimizer("torch.optim.RMSprop", model.parameters(), 1e-3)).__name__ == "RMSprop"


def test_no_parameters_is_a_clear_error():
    with pytest.raises(KilnError, match="no parameters"):
        build_optimizer("AdamW", [], 1e-3)


def test_guidance_follows_the_seeds_and_kohya():
    lion = guidance("Lion", 1e-4)
    assert any("1/3" in line for line in lion)
    assert any("3.3e-05" in line for line in lion)
    assert not any("AdamW-sized" in line for line in guidance("Lion", 3e-5))
    low = guidance("DAdaptation", 1e-4)
    assert any("1.0" in line and "too low" in line for line in low)
    assert not any("too low" in line for line in guidance("Prodigy", 1.0))
    assert any("only the first" in line for line in guidance("Prodigy", 1.0, unet_lr=1.0, text_encoder_lr=0.5))
    assert any("relative_step" in line for line in guidance("Adafactor", 1e-3))
    fixed = guidance("Adafactor", 1e-3, optimizer_args=["relative_step=False"], lr_scheduler="cosine",
                     max_grad_norm=1.0)
    assert any("constant_with_warmup" in line for line in fixed) and any("max_grad_norm" in line for line in fixed)
    assert not any("high" in line for line in guidance("AdamW", 1e-4))
    assert any("high" in line for line in guidance("AdamW", 1e-2))
    assert any("CUDA" in line for line in guidance("AdamW8bit", 1e-4))
