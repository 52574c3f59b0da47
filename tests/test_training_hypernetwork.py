"""Hypernetworks: create in the WebUI's layout, read back by Kiln's reader, train on a tiny SD1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.errors import InvalidParameterError, KilnError
from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.networks import hypernetworks as hn
from core.training.hypernetwork import (
    HypernetworkSpec,
    HypernetworkTrainJob,
    create_hypernetwork,
    train_hypernetwork,
)
from core.training.ti_loop import TrainHooks
from tests.test_training_ti import dataset, options

WEBUI_KEYS = {"step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
              "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
              "last_layer_dropout", "optional_info"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "sd1"))


def _unet_out(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=g)
    ctx = torch.randn((1, 77, 32), generator=g)
    with torch.no_grad():
        return model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


def test_create_writes_the_webui_layout_and_kilns_reader_loads_it(tmp_path):
    spec = HypernetworkSpec(name="hn:1", enable_sizes=(32, 64), layer_structure=(1, 2, 2, 1),
                            activation_func="relu", weight_init="KaimingNormal", add_layer_norm=True,
                            use_dropout=True, dropout_structure=(0, 0.1, 0.2, 0))
    path = create_hypernetwork(tmp_path, spec, seed=1)
    assert path.name == "hn1.pt"
    data = torch.load(path, weights_only=True)
    assert set(k for k in data if isinstance(k, str)) == WEBUI_KEYS and sorted(k for k in data if isinstance(k, int)) == [32, 64]
    assert data["layer_structure"] == [1.0, 2.0, 2.0, 1.0] and data["activate_output"] is False
    assert data["dropout_structure"] == [0.0, 0.1, 0.2, 0.0] and data["last_layer_dropout"] is True
    k_state, v_state = data[32]
    # Linear, ReLU, LayerNorm, Dropout per hidden step; the last Linear without activation or dropout
    assert set(k_state) == {f"linear.{i}.{p}" for i in (0, 2, 4, 6, 8, 9) for p in ("weight", "bias")}
    assert k_state["linear.0.weight"].shape == (64, 32) and torch.all(k_state["linear.0.bias"] == 0)
    loaded = hn.load_hypernetwork(path)
    mlp = loaded.layers[32][0]
    assert torch.equal(mlp[0].weight, k_state["linear.0.weight"]) and isinstance(mlp[1], torch.nn.ReLU)
    assert loaded.step == 0 and loaded.name == "hn1"
    assert not torch.equal(data[32][0]["linear.0.weight"], data[32][1]["linear.0.weight"])
    with pytest.raises(KilnError, match="already exists"):
        create_hypernetwork(tmp_path, spec)
    create_hypernetwork(tmp_path, HypernetworkSpec(name="hn1", enable_sizes=(32,), overwrite_old=True))
    normal = torch.load(path, weights_only=True)[32][0]
    assert set(normal) == {"linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"}
    assert normal["linear.0.weight"].std() < 0.05


@pytest.mark.parametrize("bad, field", [
    (dict(layer_structure=(2, 1)), "layer_structure"), (dict(activation_func="nope"), "activation_func"),
    (dict(weight_init="Ones"), "weight_init"), (dict(use_dropout=True, dropout_structure=(0, 1, 0)), "dropout"),
    (dict(enable_sizes=()), "enable_sizes")])
def test_bad_settings_name_the_field(tmp_path, bad, field):
    with pytest.raises(InvalidParameterError, match=field):
        create_hypernetwork(tmp_path, HypernetworkSpec(name="x", **bad))


def test_training_changes_the_output_at_strength_1_not_0_and_leaves_the_model(model, tmp_path):
    dataset(tmp_path)
    path = create_hypernetwork(tmp_path / "hypernetworks", HypernetworkSpec(
        name="hx", enable_sizes=(32, 64), activation_func="relu"), seed=2)
    created = torch.load(path, weights_only=True)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    plain = _unet_out(model)
    steps = []
    job = HypernetworkTrainJob(path, options(tmp_path, learn_rate="0.01", template="hypernetwork.txt", steps=3),
                               sd_checkpoint="0123456789", sd_checkpoint_name="tiny")
    result = train_hypernetwork(model, job, TrainHooks(on_step=steps.append))
    assert [s.step for s in steps] == [1, 2, 3]
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in before.items())
    assert torch.equal(_unet_out(model), plain)  # hooks removed
    trained = torch.load(path, weights_only=True)
    assert trained["step"] == 3 and trained["sd_checkpoint"] == "0123456789"
    assert not torch.equal(trained[32][0]["linear.0.weight"], created[32][0]["linear.0.weight"])
    assert [p.name for p in result.copies] == ["hx-2.pt"] and result.copies[0].parent.name == "hypernetworks"
    assert (result.log_dir / "hypernetwork_loss.csv").is_file()
    network = hn.load_hypernetwork(path)
    hn.install(model.unet, [(network, 1.0)])
    try:
        at_one = _unet_out(model)
    finally:
        hn.uninstall(model.unet)
    hn.install(model.unet, [(network, 0.0)])
    try:
        at_zero = _unet_out(model)
    finally:
        hn.uninstall(model.unet)
    assert not torch.allclose(at_one, plain) and torch.allclose(at_zero, plain, atol=1e-6)


def test_stop_saves_the_hypernetwork(model, tmp_path):
    dataset(tmp_path)
    path = create_hypernetwork(tmp_path / "hypernetworks", HypernetworkSpec(name="hx", enable_sizes=(32,)))
    seen = []
    result = train_hypernetwork(model, HypernetworkTrainJob(path, options(tmp_path, steps=100000, save_every=0,
                                                                          template="hypernetwork.txt")),
                                TrainHooks(on_step=seen.append, should_stop=lambda: len(seen) >= 2))
    assert result.interrupted and torch.load(path, weights_only=True)["step"] == 2


def test_a_hypernetwork_for_other_widths_is_refused(model, tmp_path):
    dataset(tmp_path)
    path = create_hypernetwork(tmp_path, HypernetworkSpec(name="wide", enable_sizes=(1280,)))
    with pytest.raises(KilnError, match="module size"):
        train_hypernetwork(model, HypernetworkTrainJob(Path(path), options(tmp_path)))


def test_previews_see_the_saved_file_and_training_goes_on_after_them(model, tmp_path):
    dataset(tmp_path)
    path = create_hypernetwork(tmp_path / "hypernetworks", HypernetworkSpec(name="hx", enable_sizes=(32, 64)), seed=4)
    during = []

    def preview(params, saved):
        # off during the preview: the studio's own generation applies the saved file by its tag
        during.append((params.prompt.endswith("<hypernet:hx:1>"), torch.load(saved, weights_only=True)["step"],
                       any(type(p).__name__ == "HypernetworkAttnProcessor" for p in model.unet.attn_processors.values())))
        return None

    result = train_hypernetwork(model, HypernetworkTrainJob(path, options(tmp_path, steps=3, save_every=1,
                                                                          create_image_every=1, learn_rate="0.01",
                                                                          template="hypernetwork.txt")),
                                TrainHooks(preview=preview))
    assert during == [(True, 1, False), (True, 2, False), (True, 3, False)]
    second, third = (torch.load(p, weights_only=True)[32][0]["linear.0.weight"] for p in result.copies[1:])
    assert not torch.equal(second, third)  # the hooks came back: step 3 still learned


def test_pauses_come_each_epoch_with_the_hooks_off(model, tmp_path):
    dataset(tmp_path)  # 3 pictures, batch 1: an epoch is 3 steps
    path = create_hypernetwork(tmp_path / "hypernetworks", HypernetworkSpec(name="hx", enable_sizes=(32, 64)))
    seen, pauses = [], []
    hooks = TrainHooks(on_step=seen.append, pause=lambda: pauses.append(
        (len(seen), any(type(p).__name__ == "HypernetworkAttnProcessor" for p in model.unet.attn_processors.values()))))
    train_hypernetwork(model, HypernetworkTrainJob(path, options(tmp_path, steps=7, save_every=0,
                                                                 template="hypernetwork.txt")), hooks)
    assert pauses == [(3, False), (6, False)]
