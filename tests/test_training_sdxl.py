"""LoRA training on an SDXL base (tiny fixture, real loaders): both text encoders and the pooled
output condition each step as generation does, size/crop conditioning per bucket, kohya's
``lora_te1_``/``lora_te2_`` keys and metadata, unet-only runs, bit-exact resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.prompts.conditioning import PromptEncoder
from core.training.data import DataOptions
from core.training.loop import LoopOptions, TrainState, encode_captions_sdxl, sdxl_size_conditioning
from core.training.lora import Hooks, train_lora
from core.training.network import LoRANetwork, NetworkSpec
from tests.test_training_lora import _dataset, _job, _state


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("sdxl"), "sdxl"))


def test_captions_condition_as_the_generation_path_does(model):
    captions = ["teal star, shape 1", "a red circle on a blue background"]
    context, pooled = encode_captions_sdxl(model.text_encoders, model.tokenizers, captions, LoopOptions())
    generation = PromptEncoder(model.tokenizers, model.text_encoders, "sdxl").encode(captions)
    widths = [te.config.hidden_size for te in model.text_encoders]
    assert context.shape == (2, 77, sum(widths)) and pooled.shape == generation.pooled.shape
    assert torch.allclose(context, generation.context, atol=1e-5)
    assert torch.allclose(pooled, generation.pooled, atol=1e-5)
    # 150 tokens: two windows of each encoder; the pooled vector is the first window's.
    long, long_pooled = encode_captions_sdxl(model.text_encoders, model.tokenizers, captions,
                                             LoopOptions(max_token_length=150))
    assert long.shape == (2, 154, sum(widths)) and torch.allclose(long_pooled, pooled, atol=1e-6)


def test_size_conditioning_reads_the_picture_the_crop_and_the_bucket(tmp_path):
    from core.dataset.kohya_folders import scan_dataset
    from core.training.data import TrainingData

    folder = tmp_path / "train" / "1_wide"
    folder.mkdir(parents=True)
    Image.new("RGB", (96, 64), (10, 20, 30)).save(folder / "a.png")
    data = TrainingData(scan_dataset(tmp_path / "train"), DataOptions(resolution=(64, 64)), seed=0)
    item = data.items[0]
    assert item.size == (96, 64) and item.bucket == (64, 64) and item.resized == (96, 64)
    top_left = data.crop_top_left(item)
    assert top_left == (0, 16)  # the centre crop of 96 wide starts 16 in
    assert sdxl_size_conditioning([item], [top_left]).tolist() == [[64, 96, 0, 16, 64, 64]]


def test_sdxl_lora_writes_kohya_keys_and_loads_in_kiln(model, tmp_path):
    before = _state(model)
    _dataset(tmp_path)
    steps = []
    files = train_lora(_job(tmp_path), model, Hooks(on_step=steps.append))
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(s.loss)) for s in steps)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())  # the base is never written
    tensors = load_file(files[-1])
    prefixes = {k.split("_", 2)[1] if k.startswith("lora_te") else "unet" for k in tensors}
    assert {"te1", "te2", "unet"} <= {p.split("_")[0] for p in prefixes}
    assert any(k.startswith("lora_te1_text_model_") for k in tensors)
    assert any(k.startswith("lora_te2_text_model_") for k in tensors)
    with safe_open(files[-1], "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    from core.networks.lora import NetworkManager, NetworkRequest, load_network

    manager = NetworkManager(model.unet, model.text_encoders, "sdxl", model.spec.unet_config)
    network = load_network(files[-1])
    match = manager.match(network)
    assert not match.unmatched_keys and match.matched_keys == len(tensors)
    trained = LoRANetwork(model.unet, model.text_encoders, "sdxl", NetworkSpec(network_dim=2, network_alpha=1.0),
                          model.spec.unet_config)
    trained.load_kohya_state_dict(tensors)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context, pooled = encode_captions_sdxl(model.text_encoders, model.tokenizers, ["teal star"], LoopOptions())
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}

    def unet() -> torch.Tensor:
        with torch.no_grad():
            return model.unet(x, torch.tensor([500]), encoder_hidden_states=context,
                              added_cond_kwargs=added).sample
    base = unet()
    with trained.attached():
        runtime = unet()
    manager.apply([NetworkRequest(network, 1.0, 1.0)])
    merged = unet()
    manager.restore()
    assert (runtime - base).abs().max() > 1e-4 and torch.allclose(runtime, merged, atol=1e-5)
    assert torch.equal(unet(), base)


def test_unet_only_is_kohyas_usual_sdxl_run(model, tmp_path):
    _dataset(tmp_path)
    job = _job(tmp_path)
    job = dataclasses.replace(job, network=dataclasses.replace(job.network, train_text_encoder=False))
    tensors = load_file(train_lora(job, model)[-1])
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)


def test_resume_on_sdxl_ends_on_the_same_weights(model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _dataset(a)
    _dataset(b)
    whole = load_file(train_lora(_job(a), model)[-1])
    done = {"n": 0}

    def count(_report) -> None:
        done["n"] += 1
    train_lora(_job(b), model, Hooks(on_step=count, should_stop=lambda: done["n"] >= 4))
    state = b / "out" / "teal-state.pt"
    assert TrainState.load(state).global_step == 4
    resumed = load_file(train_lora(_job(b, resume=state), model)[-1])
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_clip_skip_on_sdxl_is_reported_not_silently_used(model, tmp_path):
    _dataset(tmp_path)
    notes = []
    train_lora(_job(tmp_path, loop={"clip_skip": 2}), model, Hooks(on_note=notes.append))
    assert any("clip_skip" in n and "penultimate" in n for n in notes)


