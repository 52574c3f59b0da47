"""DreamBooth / fine-tuning on the tiny SD1 checkpoint: full weights trained through the LoRA loop,
checkpoints through Kiln's loader, class pictures generated once, and bad input named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from core.errors import KilnError
from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.training.dreambooth import prepare_dreambooth_data, train_dreambooth
from core.training.dreambooth_config import DreamBoothConfig, dreambooth_config_from_dict
from core.training.lora import Hooks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "sd1")


def _instances(root: Path, n: int = 2) -> Path:
    folder = root / "train" / "2_sks star"
    folder.mkdir(parents=True)
    for k in range(n):
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        ImageDraw.Draw(im).ellipse([k * 2, k * 3, 20 + k, 24], fill=(0, 128, 128))
        im.save(folder / f"{k}.png")
    return root / "train"


def _config(root: Path, **changes) -> DreamBoothConfig:
    values = dict(train_data_dir=str(root / "train"), output_name="sks", resolution="32,32", max_train_steps=3,
                  train_batch_size=2, learning_rate=1e-3, seed=5, save_precision="float")
    values.update(changes)
    return DreamBoothConfig(**values)


def _unet(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


def _te(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.text_encoders[0].state_dict().items()}


def _changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before)


def test_a_few_steps_train_the_unet_and_the_checkpoint_loads_with_them(tmp_path, checkpoint):
    _instances(tmp_path)
    model = load_checkpoint(checkpoint)
    unet0, te0 = _unet(model), _te(model)
    result = train_dreambooth(_config(tmp_path), model, tmp_path / "out")
    assert result.steps == 3 and result.files == [tmp_path / "out" / "sks.safetensors"]
    assert _changed(unet0, _unet(model)) > 10
    assert _changed(te0, _te(model)) == 0  # the text encoder is trained only when asked
    saved = load_checkpoint(result.files[0])
    for key, value in _unet(model).items():
        assert torch.equal(saved.unet.state_dict()[key], value), key
    with safe_open(result.files[0], "pt") as f:
        meta = f.metadata()
    assert meta["ss_output_name"] == "sks" and meta["ss_steps"] == "3" and meta["ss_learning_rate"] == "0.001"
    assert meta["ss_num_train_images"] == "4" and meta["ss_train_text_encoder"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert not any(p.requires_grad for p in model.unet.parameters())  # handed back frozen


def test_train_text_encoder_trains_it_at_its_own_rate_and_files_are_never_overwritten(tmp_path, checkpoint):
    _instances(tmp_path)
    model = load_checkpoint(checkpoint)
    te0 = _te(model)
    config = _config(tmp_path, train_text_encoder=True, learning_rate_te=5e-4, max_train_steps=4,
                     save_every_n_epochs=1, save_precision="fp16")
    result = train_dreambooth(config, model, tmp_path / "out")
    assert _changed(te0, _te(model)) > 5
    assert [p.name for p in result.files] == ["sks-000001.safetensors", "sks.safetensors"]
    with safe_open(result.files[-1], "pt") as f:
        assert f.get_tensor(next(k for k in f.keys() if k.startswith("model.diffusion_model."))).dtype == torch.float16
        assert f.metadata()["ss_learning_rate_te"] == "0.0005"
    saved = load_checkpoint(result.files[-1])
    key = next(iter(te0))
    assert torch.allclose(saved.text_encoders[0].state_dict()[key], _te(model)[key].half().float())
    with pytest.raises(KilnError, match="output_name"):
        train_dreambooth(config, load_checkpoint(checkpoint), tmp_path / "out")


def test_ema_is_what_gets_saved(tmp_path, checkpoint):
    _instances(tmp_path)
    model = load_checkpoint(checkpoint)
    result = train_dreambooth(_config(tmp_path, use_ema=True, ema_decay=0.5), model, tmp_path / "out")
    saved = load_checkpoint(result.files[0])
    trained = _unet(model)
    assert any(not torch.equal(saved.unet.state_dict()[k], trained[k]) for k in trained)
    assert safe_open(result.files[0], "pt").metadata()["ss_use_ema"] == "True"


def test_stop_keeps_what_it_has_and_8bit_adam_falls_back_on_the_cpu(tmp_path, checkpoint):
    _instances(tmp_path)
    steps, notes = [], []
    hooks = Hooks(on_step=lambda r: steps.append(r.global_step), should_stop=lambda: len(steps) >= 2,
                  on_note=notes.append)
    model = load_checkpoint(checkpoint)
    config = _config(tmp_path, max_train_steps=50, use_8bit_adam=True, gradient_checkpointing=True)
    result = train_dreambooth(config, model, tmp_path / "out", hooks)
    assert result.steps == 2 and result.total_steps == 50 and result.files[-1].is_file()
    assert safe_open(result.files[-1], "pt").metadata()["ss_steps"] == "2"
    assert any(n.startswith("use_8bit_adam:") and "AdamW (32-bit) was used" in n for n in notes)
    assert not model.unet.is_gradient_checkpointing  # switched on for the run only


def test_bad_input_names_the_field(tmp_path):
    (tmp_path / "train" / "2_sks star").mkdir(parents=True)
    with pytest.raises(KilnError, match="train_data_dir: no instance images"):
        prepare_dreambooth_data(_config(tmp_path))
    with pytest.raises(KilnError, match="train_data_dir"):
        dreambooth_config_from_dict({"train_data_dir": ""})
    with pytest.raises(KilnError, match="optimizer_type"):
        dreambooth_config_from_dict({"train_data_dir": str(tmp_path), "optimizer_type": "Adamish"})
    with pytest.raises(KilnError, match="learning_rate"):
        dreambooth_config_from_dict({"train_data_dir": str(tmp_path), "learning_rate": "fast"})
    config, unknown = dreambooth_config_from_dict({"model_arguments": {"train_data_dir": str(tmp_path)},
                                                   "optimizer_arguments": {"learning_rate": 3e-6}, "bogus": 1})
    assert config.learning_rate == 3e-6 and unknown == ["bogus"]


def _engine(root: Path):
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings

    write_tiny_checkpoint(root / "data", "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(root / "data")]), root / "data")
    return Engine(settings), JobQueue()


def test_queue_job_generates_class_images_once_and_leaves_the_shared_model_alone(tmp_path):
    from core.training.jobs import dreambooth_job

    engine, queue = _engine(tmp_path)
    _instances(tmp_path)
    reg = tmp_path / "reg" / "1_star"
    reg.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(reg / "mine.png")
    try:
        shared = queue.run(lambda ctx: engine.ensure_model(), "load", "user:ann", timeout=120)
        before = _unet(shared)
        config = _config(tmp_path, reg_data_dir=str(tmp_path / "reg"), num_class_images=3, class_infer_steps=2,
                         prior_loss_weight=0.5)
        job = queue.submit(dreambooth_job(engine, config), "DreamBooth sks", "user:ann", kind="train")
        files = job.wait(300)
        assert files == [str(engine.settings.paths.ckpt_dir / "sks.safetensors")]
        cached = sorted(p.name for p in reg.glob("kiln_class_*.png"))
        assert len(cached) == 2 and (reg / "mine.png").is_file()
        notes = [a.label for a in job.artifacts if a.kind == "note"]
        assert any("2 generated, 3 in the reg folders" in n for n in notes)
        assert safe_open(files[0], "pt").metadata()["ss_num_reg_images"] == "3"
        # The engine lent a copy; the model it now gives generation is the file's, untrained.
        after = queue.run(lambda ctx: engine.ensure_model(shared.path.name), "load", "user:ann", timeout=120)
        assert _changed(before, _unet(after)) == 0
        again = queue.submit(dreambooth_job(engine, _config(tmp_path, reg_data_dir=str(tmp_path / "reg"),
                                                            num_class_images=3, output_name="sks2"),
                                                shared.path.name),
                             "DreamBooth sks2", "user:ann", kind="train")
        again.wait(300)
        assert safe_open(engine.settings.paths.ckpt_dir / "sks2.safetensors", "pt").metadata()["ss_sd_model_name"] \
            == shared.path.name  # the base that was named
        assert sorted(p.name for p in reg.glob("kiln_class_*.png")) == cached
        assert not any(a.kind == "note" and "generated" in a.label for a in again.artifacts)
    finally:
        queue.shutdown()


# ---- LoRA extraction -------------------------------------------------------------------------


def _tuned(checkpoint: Path, *, te_scale: float = 0.05):
    """The base with a random difference on every layer an extracted LoRA covers (3×3 convs too)."""
    from core.training.extract_lora import lora_layers

    model = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _name, (layer, is_te) in lora_layers(model, conv=True).items():
            scale = te_scale if is_te else 0.05
            layer.weight += scale * torch.randn(layer.weight.shape, generator=generator)
    return model


def _applied(checkpoint: Path, lora: Path, weight: float):
    from core.networks.lora import NetworkManager, NetworkRequest, load_network

    model = load_checkpoint(checkpoint)
    manager = NetworkManager(model.unet, model.text_encoders, "sd1", model.spec.unet_config)
    report = manager.apply([NetworkRequest(load_network(lora), weight, weight)])
    assert not report.warnings
    return model


def _weights(model, names) -> dict[str, torch.Tensor]:
    from core.training.extract_lora import lora_layers

    layers = lora_layers(model, conv=True)
    return {n: layers[n][0].weight.detach().clone() for n in names}


def test_full_rank_extraction_reproduces_the_tuned_weights_through_kilns_loader(tmp_path, checkpoint):
    from core.training.extract_lora import extract_lora, lora_layers

    tuned = _tuned(checkpoint)
    path = tmp_path / "full.safetensors"
    result = extract_lora(checkpoint, tuned, rank=4096, conv_rank=4096, clamp_quantile=1.0, save_to=path)
    assert result.te_modules > 0 and result.unet_modules > 0
    keys = set(result.tensors)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert any(k.endswith(".alpha") for k in keys) and any("resnets" in k for k in keys)
    names = list(lora_layers(tuned, conv=True))
    applied, target = _weights(_applied(checkpoint, path, 1.0), names), _weights(tuned, names)
    for name in names:
        assert torch.allclose(applied[name], target[name], atol=1e-5), name
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4096"
    assert meta["ss_network_alpha"] == "4096.0" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_args"] == '{"conv_dim": "4096", "conv_alpha": "4096.0"}'
    assert meta["sshs_model_hash"] and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    # weight 0: the base, bit for bit
    base = load_checkpoint(checkpoint)
    zero = _applied(checkpoint, path, 0.0)
    for part, other in ((zero.unet, base.unet), (zero.text_encoders[0], base.text_encoders[0])):
        theirs = other.state_dict()
        for key, tensor in part.state_dict().items():
            assert torch.equal(tensor, theirs[key]), key


def test_low_rank_extraction_is_bounded_by_the_best_svd_approximation(tmp_path, checkpoint):
    from core.training.extract_lora import extract_lora, lora_layers

    rank, tuned, base = 2, _tuned(checkpoint), load_checkpoint(checkpoint)
    path = tmp_path / "low.safetensors"
    result = extract_lora(base, tuned, rank=rank, clamp_quantile=0.99, save_to=path, save_precision="fp16")
    assert result.tensors[next(k for k in result.tensors if k.endswith("lora_up.weight"))].dtype == torch.float16
    names = [n for n in lora_layers(tuned, conv=False)]
    applied, target, original = (_weights(m, names) for m in (_applied(checkpoint, path, 1.0), tuned, base))
    for name in names:
        diff = (target[name] - original[name]).flatten(1)
        u, s, vh = torch.linalg.svd(diff, full_matrices=False)
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        best_error = torch.linalg.norm(diff - best)
        error = torch.linalg.norm((target[name] - applied[name]).flatten(1))
        # Eckart–Young: no rank-2 matrix does better; the quantile clamp and fp16 cost a little more
        assert best_error * 0.999 <= error <= best_error * 1.05 + 1e-3, name
        assert error < torch.linalg.norm(diff)  # the LoRA moves toward the tuned weights


def test_an_unchanged_text_encoder_is_left_out_and_the_cli_writes_the_file(tmp_path, checkpoint):
    from core.models.checkpoint import save_checkpoint
    from core.training.__main__ import main

    tuned = _tuned(checkpoint, te_scale=0.0)
    save_checkpoint(tuned, tmp_path / "tuned.safetensors")
    out = tmp_path / "cli.safetensors"
    argv = ["extract-lora", "--model_org", str(checkpoint), "--model_tuned", str(tmp_path / "tuned.safetensors"),
            "--save_to", str(out), "--dim", "3", "--conv_dim", "2"]
    assert main(argv) == 0
    with safe_open(out, "pt") as f:
        keys = list(f.keys())
        assert not any(k.startswith("lora_te_") for k in keys) and f.metadata()["ss_text_encoder_extracted"] == "False"
        conv = next(k for k in keys if "resnets_0_conv1.lora_down" in k)
        assert f.get_tensor(conv).shape[0] == 2 and f.get_tensor(conv).shape[2:] == (3, 3)
    assert main(argv) == 1  # never over a file that is there


def test_dreambooth_job_extracts_a_lora_after_training(tmp_path):
    from core.networks.lora import load_network
    from core.training.jobs import dreambooth_job

    engine, queue = _engine(tmp_path)
    _instances(tmp_path)
    try:
        config = _config(tmp_path, train_text_encoder=True, extract_lora=True, extract_lora_dim=2,
                         extract_conv_dim=2, output_name="sksx")
        files = queue.submit(dreambooth_job(engine, config), "DreamBooth sksx", "user:ann", kind="train").wait(300)
        lora = Path(files[-1])
        assert lora == engine.settings.paths.lora_dir / "sksx.safetensors"
        net = load_network(lora)
        assert net.key_count > 0 and net.metadata["ss_network_dim"] == "2"
    finally:
        queue.shutdown()


def test_the_tab_form_becomes_a_config_and_counts_class_images(tmp_path):
    from ui.train_db import FIELDS, class_count_text, config_to_values, values_to_config

    _instances(tmp_path)
    reg = tmp_path / "reg" / "1_star"
    reg.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(reg / "a.png")
    values = {"train_data_dir": str(tmp_path / "train"), "reg_data_dir": str(tmp_path / "reg"),
              "num_class_images": 4.0, "learning_rate": "3e-6", "learning_rate_te": "", "max_train_epochs": 0,
              "train_batch_size": 3.0, "extract_conv_dim": 0, "prior_loss_weight": 1.0, "output_name": "dog"}
    config, unknown = values_to_config(values)
    assert unknown == [] and config.learning_rate == 3e-6 and config.max_train_epochs is None
    assert config.train_batch_size == 3 and config.extract_conv_dim is None and config.learning_rate_te is None
    assert class_count_text(values) == "1 class images in the folders, 3 to generate with the base model."
    assert set(config_to_values(config)) == set(FIELDS)
    assert "optimizer_type" in class_count_text({**values, "optimizer_type": "Adamish"})
    assert not (tmp_path / "reg2").exists() and "class_prompt" in class_count_text(
        {**values, "reg_data_dir": str(tmp_path / "reg2")})
    assert not (tmp_path / "reg2").exists()  # counting makes nothing on disk


def test_a_dreambooth_toml_trains_headless(tmp_path, capsys):
    from core.training.__main__ import main
    from core.training.dreambooth_config import save_dreambooth_config

    write_tiny_checkpoint(tmp_path / "data", "sd1")
    _instances(tmp_path)
    config = _config(tmp_path, pretrained_model_name_or_path="tiny-sd1.safetensors", output_name="cli-db",
                     max_train_steps=2)
    toml = save_dreambooth_config(config, tmp_path / "db.toml")
    assert "learning_rate = 0.001" in toml.read_text(encoding="utf-8")
    assert main(["dreambooth", str(toml), "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [str(tmp_path / "data" / "models" / "Stable-diffusion" / "cli-db.safetensors")]
    assert load_checkpoint(out[0]).spec.family == "sd1"
