"""A kohya --dataset_config runs: its subsets are the concepts, its dataset options the data's;
what one run cannot express is listed before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from safetensors import safe_open

from core.errors import KilnError
from core.training.config import config_from_dict
from core.training.from_config import lora_job


def _pictures(folder: Path, n: int, caption: str | None) -> Path:
    folder.mkdir(parents=True)
    for k in range(n):
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        if caption:
            ImageDraw.Draw(im).ellipse([k * 2, 4, 20 + k, 24], fill=(0, 128, 128))
        else:  # regularisation pictures: other pictures (the checks refuse a picture in both)
            ImageDraw.Draw(im).rectangle([4, k * 3, 24, 20 + k], fill=(200, 40, 40))
        im.save(folder / f"{k}.png")
        if caption:
            (folder / f"{k}.txt").write_text(f"{caption}, pose {k}", encoding="utf-8")
    return folder


def _config(tmp_path: Path, body: str, **extra):
    toml = tmp_path / "dataset.toml"
    toml.write_text(body, encoding="utf-8")
    raw = {"dataset_config": str(toml), "pretrained_model_name_or_path": "x.safetensors",
           "output_dir": str(tmp_path / "out"), "output_name": "teal", "network_dim": 2, "network_alpha": 1,
           "max_train_epochs": 1, "seed": 7, **extra}
    return config_from_dict(raw)[0]


def _body(train: Path, reg: Path, *, keep_tokens: str = "", more: str = "") -> str:
    return f"""
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 32
batch_size = 2

  [[datasets.subsets]]
  image_dir = '{train}'
  num_repeats = 2
  class_tokens = 'teal star'
  {keep_tokens}

  [[datasets.subsets]]
  image_dir = '{reg}'
  is_reg = true
  num_repeats = 1
  class_tokens = 'star'
{more}
"""


def test_subsets_become_the_concepts_and_the_dataset_options_the_data(tmp_path):
    train = _pictures(tmp_path / "img" / "teal", 3, "teal star")
    reg = _pictures(tmp_path / "img" / "reg", 2, None)
    job = lora_job(_config(tmp_path, _body(train, reg)), default_output_dir=tmp_path)
    assert [c.path for c in job.layout.concepts] == [train] and [c.path for c in job.layout.reg_concepts] == [reg]
    assert job.layout.concepts[0].repeats == 2 and job.layout.reg_concepts[0].name.class_tokens == "star"
    assert job.loop.train_batch_size == 2 and job.data.resolution == (32, 32)
    assert job.data.caption_extension == ".txt"
    assert job.data.captions.shuffle_caption and job.data.captions.keep_tokens == 1


def test_what_one_run_cannot_express_is_listed(tmp_path):
    train = _pictures(tmp_path / "img" / "teal", 1, "teal")
    reg = _pictures(tmp_path / "img" / "reg", 1, None)
    differing = _config(tmp_path, _body(train, reg, keep_tokens="keep_tokens = 2"))
    with pytest.raises(KilnError, match=r"keep_tokens differs between subsets \(2, 1\)"):
        lora_job(differing, default_output_dir=tmp_path)
    second = f"""
[[datasets]]
resolution = 64
  [[datasets.subsets]]
  image_dir = '{train}'
"""
    two = _config(tmp_path, _body(train, reg, more=second))
    with pytest.raises(KilnError, match=r"2 \[\[datasets\]\]"):
        lora_job(two, default_output_dir=tmp_path)
    job = lora_job(two, default_output_dir=tmp_path, allow_unsupported=True)  # the user chose to go on
    assert job.data.resolution == (32, 32)
    missing = _config(tmp_path, _body(tmp_path / "nowhere", reg))
    with pytest.raises(KilnError, match="image_dir is not a folder"):
        lora_job(missing, default_output_dir=tmp_path)


def test_a_dataset_config_trains_with_kohyas_metadata(tmp_path):
    from core.models.checkpoint import load_checkpoint
    from core.models.fixtures import write_tiny_checkpoint
    from core.training.lora import train_lora

    train = _pictures(tmp_path / "img" / "teal", 3, "teal star")
    reg = _pictures(tmp_path / "img" / "reg", 2, None)
    job = lora_job(_config(tmp_path, _body(train, reg)), default_output_dir=tmp_path)
    model = load_checkpoint(write_tiny_checkpoint(tmp_path / "ckpt", "sd1"))
    files = train_lora(job, model)
    with safe_open(files[-1], "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_train_images"] == "6" and meta["ss_num_reg_images"] == "2"
    assert '"teal": {"n_repeats": 2, "img_count": 3}' in meta["ss_dataset_dirs"]
    assert meta["ss_num_batches_per_epoch"] == "6"  # 6 train + 6 balanced reg pictures, batch 2
