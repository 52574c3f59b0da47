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


def test_stop_keeps_what_it_has(tmp_path, checkpoint):
    _instances(tmp_path)
    steps = []
    hooks = Hooks(on_step=lambda r: steps.append(r.global_step), should_stop=lambda: len(steps) >= 2)
    result = train_dreambooth(_config(tmp_path, max_train_steps=50), load_checkpoint(checkpoint), tmp_path / "out",
                              hooks)
    assert result.steps == 2 and result.total_steps == 50 and result.files[-1].is_file()
    assert safe_open(result.files[-1], "pt").metadata()["ss_steps"] == "2"


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
