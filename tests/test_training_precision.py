"""Mixed precision (bf16, fp16 with a GradScaler), full_bf16, gradient checkpointing, xformers'
fallback and TensorBoard logs of the LoRA trainer, on the tiny fixture model (CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.training.data import DataOptions
from core.training.loop import LoopOptions, TrainState
from core.training.lora import Hooks, LoraJob, OutputOptions, train_lora
from core.training.network import NetworkSpec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "sd1"))


def _job(root: Path, epochs: int = 1, **loop) -> LoraJob:
    folder = root / "train" / "2_teal star"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for k in range(3):
            im = Image.new("RGB", (32, 32), (255, 255, 255))
            ImageDraw.Draw(im).ellipse([k * 2, k * 3, 20 + k, 24], fill=(0, 128, 128))
            im.save(folder / f"{k}.png")
            (folder / f"{k}.txt").write_text(f"teal star, shape {k}", encoding="utf-8")
    return LoraJob(train_data_dir=root / "train", output=OutputOptions(output_dir=root / "out", output_name="teal"),
                   loop=LoopOptions(train_batch_size=2, max_train_epochs=epochs, seed=7, **loop),
                   data=DataOptions(resolution=(32, 32), caption_extension=".txt"),
                   network=NetworkSpec(network_dim=2, network_alpha=1.0), learning_rate=1e-3)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def test_mixed_precision_trains_and_leaves_the_base_as_it_was(model, tmp_path):
    precision = "bf16"  # fp16 (with its GradScaler) is the resume test's
    before = _weights(model)
    losses = []
    files = train_lora(_job(tmp_path, mixed_precision=precision), model,
                       Hooks(on_step=lambda r: losses.append(r.loss)))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = _weights(model)
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    with safe_open(files[-1], "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == precision
    # The LoRA learned something (up weights start at zero).
    tensors = load_file(files[-1])
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if k.endswith("lora_up.weight"))


def test_fp16_resume_restores_the_loss_scale_and_ends_on_the_same_weights(model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    whole = load_file(train_lora(_job(a, 2, mixed_precision="fp16"), model)[-1])
    count = {"n": 0}
    train_lora(_job(b, 2, mixed_precision="fp16"), model,
               Hooks(on_step=lambda _r: count.__setitem__("n", count["n"] + 1), should_stop=lambda: count["n"] >= 4))
    state = TrainState.load(b / "out" / "teal-state.pt")
    assert state.global_step == 4 and "scale" in state.scaler
    job = _job(b, 2, mixed_precision="fp16")
    resumed = load_file(train_lora(dataclasses.replace(job, resume=b / "out" / "teal-state.pt"), model)[-1])
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_full_bf16_keeps_the_network_in_bf16(model, tmp_path):
    before = _weights(model)
    files = train_lora(_job(tmp_path, mixed_precision="bf16", full_precision=True), model)
    tensors = load_file(files[-1])
    assert {t.dtype for k, t in tensors.items() if k.endswith(".weight")} == {torch.bfloat16}  # saved as trained
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())


def test_gradient_checkpointing_gives_the_same_weights_and_is_switched_off_after(model, tmp_path):
    plain = load_file(train_lora(_job(tmp_path / "a"), model)[-1])
    checkpointed = load_file(train_lora(_job(tmp_path / "b", gradient_checkpointing=True), model)[-1])
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
    assert any(not torch.equal(t, torch.zeros_like(t)) for k, t in checkpointed.items() if "lora_up" in k)
    assert model.unet.is_gradient_checkpointing is False


def test_xformers_without_a_gpu_says_what_was_used(model, tmp_path):
    notes = []
    job = _job(tmp_path, xformers=True, cache_latents=False)
    job = dataclasses.replace(job, data=dataclasses.replace(job.data, color_aug=True))  # and color_aug runs
    train_lora(job, model, Hooks(on_note=notes.append))
    assert len(notes) == 1 and "xformers: needs a CUDA GPU" in notes[0] and "scaled-dot-product" in notes[0]


def test_logging_dir_writes_kohyas_tensorboard_scalars(model, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = dataclasses.replace(_job(tmp_path), logging_dir=tmp_path / "logs")
    train_lora(job, model)
    runs = list((tmp_path / "logs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("teal")
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/current", "loss/average", "lr/textencoder", "lr/unet"} <= set(tags)
    assert [e.step for e in events.Scalars("loss/current")] == [1, 2, 3]


def test_an_fp8_base_trains_upcast_and_the_run_says_so(tmp_path):
    from safetensors.torch import save_file

    from core.training.lora import base_precision_note

    path = write_tiny_checkpoint(tmp_path / "ckpt", "sd1")
    assert base_precision_note(path) is None
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    fp8 = {k: v.to(torch.float8_e4m3fn) if k.startswith("model.diffusion_model.") and v.is_floating_point() else v
           for k, v in tensors.items()}
    pruned = tmp_path / "pruned-fp8.safetensors"
    save_file(fp8, str(pruned), metadata)
    model = load_checkpoint(pruned)
    notes = []
    files = train_lora(_job(tmp_path, None, max_train_steps=1), model, Hooks(on_note=notes.append))
    assert files and any("F8_E4M3" in n and "pruned-fp8.safetensors" in n for n in notes)
