"""DoRA training (network_args dora_wd=True): a trained magnitude per input column, saved as
LyCORIS's ``dora_scale``; the runtime network (multiplier 1 by input scaling, other multipliers
by the explicit difference) equals what Kiln's loader merges, and the base is never written."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from core.errors import KilnError
from core.models.checkpoint import load_checkpoint
from core.training.lora import Hooks, train_lora
from core.training.network import LoRANetwork, NetworkSpec
from tests.test_training_lora import _dataset, _job, _state, checkpoint  # noqa: F401 (fixture)

DORA = NetworkSpec(network_dim=2, network_alpha=1.0, dora_wd=True, conv_dim=2, conv_alpha=1.0)


def _outputs(model, network=None):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, model.text_encoders[0].config.hidden_size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[49406] + [49407] * 76])
    with torch.no_grad():
        if network is None:
            return model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample, \
                model.text_encoders[0](ids).last_hidden_state
        with network.attached():
            return model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample, \
                model.text_encoders[0](ids).last_hidden_state


def test_a_fresh_dora_network_is_the_base_exactly(checkpoint):  # noqa: F811
    model = load_checkpoint(checkpoint)
    net = LoRANetwork(model.unet, model.text_encoders, "sd1", DORA, model.spec.unet_config)
    base_unet, base_te = _outputs(model)
    unet, te = _outputs(model, net)
    assert torch.allclose(unet, base_unet, atol=1e-5) and torch.allclose(te, base_te, atol=1e-5)
    names = {n for n, _ in net.named_parameters()}
    assert any(n.endswith("dora_scale") for n in names)
    assert not any("base" in n for n in names)  # the base weights are not the network's parameters


def test_dora_trains_saves_dora_scale_and_loads_as_trained(checkpoint, tmp_path):  # noqa: F811
    model = load_checkpoint(checkpoint)
    before = _state(model)
    _dataset(tmp_path)
    job = dataclasses.replace(_job(tmp_path), network=DORA)
    files = train_lora(job, model, Hooks())
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base model is never written
    tensors = load_file(files[-1])
    scales = {k: v for k, v in tensors.items() if k.endswith(".dora_scale")}
    assert scales and all(v.shape[0] == 1 for v in scales.values())  # [1, in, ...]: the WebUI's layout
    trained = LoRANetwork(model.unet, model.text_encoders, "sd1", DORA, model.spec.unet_config)
    trained.load_kohya_state_dict(tensors)
    fresh = LoRANetwork(model.unet, model.text_encoders, "sd1", DORA, model.spec.unet_config)
    fresh_scales = {f"{m.lora_name}.dora_scale": m.dora_scale.detach() for m, _, _ in fresh.targets}
    assert any(not torch.allclose(scales[k].float(), fresh_scales[k]) for k in scales)  # the magnitude learned

    from core.networks.lora import NetworkManager, NetworkRequest, load_network

    manager = NetworkManager(model.unet, model.text_encoders, "sd1", model.spec.unet_config)
    network = load_network(files[-1])
    match = manager.match(network)
    assert not match.unmatched_keys and match.matched_keys == len(tensors)
    for weight in (1.0, 0.5):
        trained.set_multiplier(weight)
        runtime = _outputs(model, trained)
        manager.apply([NetworkRequest(network, weight, weight)])
        merged = _outputs(model)
        manager.restore()
        for r, m in zip(runtime, merged):
            assert torch.allclose(r, m, atol=1e-4), (weight, (r - m).abs().max())


def test_dora_with_lycoris_is_refused_with_what_to_use(tmp_path):
    from core.training.config import TrainConfig
    from core.training.from_config import network_spec, unsupported

    config = TrainConfig(network_args=["dora_wd=True", "conv_dim=4"])
    assert unsupported(config) == []  # trained, not listed as missing
    spec = network_spec(config)
    assert spec.dora_wd and spec.conv_dim == 4
    with pytest.raises(KilnError) as caught:
        network_spec(TrainConfig(network_module="lycoris.kohya", network_args=["algo=locon", "dora_wd=True"]))
    assert "networks.lora" in caught.value.hint


def test_the_train_tab_offers_dora_and_reads_it_back():
    from core.training.from_config import network_spec
    from ui.train import UI_DEFAULTS, config_to_values, values_to_config

    config, unknown = values_to_config(dict(UI_DEFAULTS, train_data_dir="/data", network_type="DoRA", conv_dim=4))
    assert not unknown and config.network_module == "networks.lora"
    assert "dora_wd=True" in config.network_args and network_spec(config).dora_wd
    assert config_to_values(config)["network_type"] == "DoRA" and config_to_values(config)["conv_dim"] == 4
