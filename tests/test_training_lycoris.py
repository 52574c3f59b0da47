"""LyCORIS (LoCon / LoHa / LoKr via lycoris-lora's modules) and kohya's dropouts in the trainer:
files in LyCORIS's key layout that Kiln's loader applies exactly as the training hooks did."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core.errors import KilnError
from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.networks.lora import NetworkManager, NetworkRequest, load_network
from core.training.config import config_from_dict
from core.training.from_config import lora_job, network_spec, unsupported
from core.training.lora import train_lora
from core.training.network import LoRAModule, LoRANetwork, NetworkSpec
from tests.test_training_lora import _dataset, _job

SUFFIXES = {"loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"),
            "lokr": ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "alpha"),
            "locon": ("lora_down.weight", "lora_up.weight", "alpha")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "sd1")


def _outputs(model, network=None):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, model.text_encoders[0].config.hidden_size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[49406] + [49407] * 76])
    with torch.no_grad():
        return (model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample,
                model.text_encoders[0](ids).last_hidden_state)


@pytest.mark.parametrize("algo", ["loha", "lokr", "locon"])
def test_lycoris_algos_train_to_files_kiln_applies_as_the_hooks_did(checkpoint, tmp_path, algo):
    model = load_checkpoint(checkpoint)
    _dataset(tmp_path)
    spec = NetworkSpec(network_dim=2, network_alpha=1.0, network_module="lycoris.kohya", algo=algo,
                       network_args=(("algo", algo),))
    job = _job(tmp_path)
    files = train_lora(dataclasses.replace(job, network=spec, loop=dataclasses.replace(job.loop, max_train_epochs=1)),
                       model)
    tensors = load_file(files[-1])
    assert {k.split(".", 1)[1] for k in tensors} <= set(SUFFIXES[algo])
    # lycoris's full preset: the ResNet convolutions are trained too, at conv_dim = network_dim.
    assert any("_resnets_0_conv1." in k for k in tensors) and any(k.startswith("lora_te_text_model_") for k in tensors)
    with safe_open(files[-1], "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"]) == {"algo": algo}

    trained = LoRANetwork(model.unet, model.text_encoders, "sd1", spec, model.spec.unet_config)
    trained.load_kohya_state_dict(tensors)
    trained.eval()
    base = _outputs(model)
    with trained.attached():
        runtime = _outputs(model)
    assert not torch.allclose(runtime[0], base[0])  # training moved the U-Net
    manager = NetworkManager(model.unet, model.text_encoders, "sd1", model.spec.unet_config)
    network = load_network(files[-1])
    match = manager.match(network)
    assert not match.unmatched_keys
    manager.apply([NetworkRequest(network, 1.0, 1.0)])
    merged = _outputs(model)
    manager.restore()
    assert torch.allclose(runtime[0], merged[0], atol=1e-4) and torch.allclose(runtime[1], merged[1], atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model), base))


def test_kohya_rank_and_module_dropout():
    torch.manual_seed(0)
    lora = LoRAModule("x", torch.nn.Linear(8, 8), 4, 4.0, rank_dropout=0.5)
    torch.nn.init.normal_(lora.lora_up.weight)
    x = torch.randn(3, 5, 8)
    lora.eval()
    full = lora.delta(x)
    lora.train()
    dropped = lora.delta(x)
    assert dropped.shape == full.shape and not torch.allclose(dropped, full)
    skipped = LoRAModule("y", torch.nn.Linear(8, 8), 4, 4.0, module_dropout=1.0)
    skipped.train()
    assert skipped.delta(x) == 0.0
    skipped.eval()
    assert torch.is_tensor(skipped.delta(x))  # dropout only while training


def _config(values: dict):
    config, unknown = config_from_dict(values)
    assert not unknown
    return config


def test_a_lycoris_config_runs_and_what_it_lacks_is_named(tmp_path):
    config = _config({"train_data_dir": str(tmp_path), "network_module": "lycoris.kohya",
                               "network_dim": 8, "network_alpha": 4,
                               "network_args": ["algo=lokr", "factor=4", "conv_dim=2", "rank_dropout=0.1",
                                                "module_dropout=0.05", "preset=full"]})
    assert unsupported(config) == []
    spec = network_spec(config)
    assert spec.is_lycoris and spec.algo == "lokr" and spec.conv_dim == 2 and dict(spec.lycoris_args) == {"factor": 4}
    assert spec.rank_dropout == 0.1 and spec.module_dropout == 0.05
    glora = _config({"train_data_dir": str(tmp_path), "network_module": "lycoris.kohya",
                              "network_args": ["algo=glora", "dora_wd=true"]})
    lacks = " ".join(unsupported(glora))
    assert "glora" in lacks and "dora_wd" in lacks
    with pytest.raises(KilnError, match="preset"):
        network_spec(_config({"train_data_dir": str(tmp_path), "network_module": "lycoris.kohya",
                                       "network_args": ["algo=loha", "preset=attn-only"]}))
    with pytest.raises(KilnError, match="not a number"):
        lora_job(_config({"train_data_dir": str(tmp_path), "network_args": ["rank_dropout=lots"]}),
                 default_output_dir=tmp_path)


def test_the_train_tabs_network_type_round_trips_through_a_config():
    from ui.train import UI_DEFAULTS, config_to_values, values_to_config

    values = dict(UI_DEFAULTS, train_data_dir="/data", network_type="LyCORIS/LoHa", conv_dim=4)
    config, unknown = values_to_config(values)
    assert not unknown and config.network_module == "lycoris.kohya"
    assert config.network_args == ["algo=loha", "conv_dim=4", "conv_alpha=4"]
    assert config_to_values(config)["network_type"] == "LyCORIS/LoHa"
    plain, _ = values_to_config(dict(UI_DEFAULTS, train_data_dir="/data"))
    assert plain.network_module == "networks.lora" and not plain.network_args
    assert config_to_values(plain)["network_type"] == "LoRA"
