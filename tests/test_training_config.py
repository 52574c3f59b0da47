"""Training config: sd-scripts' names and defaults, TOML load/save, kohya examples, messages naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.errors import KilnError
from core.training.advice import build_optimizer_for, build_scheduler_for, config_guidance, network_kind
from core.training.config import (
    TrainConfig,
    config_from_dict,
    load_config,
    parse_resolution,
    tomllib,  # stdlib on 3.11+, tomli on 3.10
    unknown_key_messages,
)
from core.training.config_toml import config_help, config_to_toml, save_config
from core.training.dataset_config import dataset_config_from_dict, load_dataset_config

# What kohya_ss's GUI (bmaltais) writes to config_lora-*.toml and passes to train_network.py --config_file.
KOHYA_SS_TOML = r"""
bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
cache_latents_to_disk = true
caption_extension = ".txt"
clip_skip = 2
dynamo_backend = "no"
enable_bucket = true
gradient_accumulation_steps = 1
huber_c = 0.1
huber_schedule = "snr"
learning_rate = 0.0001
logging_dir = "D:/lora/log"
loss_type = "l2"
lr_scheduler = "cosine_with_restarts"
lr_scheduler_args = []
lr_scheduler_num_cycles = 3
lr_scheduler_power = 1
lr_warmup_steps = 0.05
max_bucket_reso = 2048
max_data_loader_n_workers = 0
max_grad_norm = 1
max_timestep = 1000
max_token_length = 225
max_train_epochs = 10
max_train_steps = 1600
min_bucket_reso = 256
mixed_precision = "fp16"
multires_noise_discount = 0.3
network_alpha = 16
network_args = [ "conv_dim=8", "conv_alpha=1",]
network_dim = 32
network_module = "networks.lora"
noise_offset = 0.05
noise_offset_type = "Original"
optimizer_args = [ "weight_decay=0.01", "betas=0.9,0.99",]
optimizer_type = "AdamW8bit"
output_dir = "D:/lora/model"
output_name = "sls_girl"
pretrained_model_name_or_path = "D:/sd/models/Stable-diffusion/anything-v4.5.safetensors"
prior_loss_weight = 1
reg_data_dir = ""
resolution = "512,768"
sample_every_n_epochs = 1
sample_prompts = "D:/lora/model/prompt.txt"
sample_sampler = "euler_a"
save_every_n_epochs = 2
save_model_as = "safetensors"
save_precision = "fp16"
seed = 1337
shuffle_caption = true
keep_tokens = 1
text_encoder_lr = 5e-5
train_batch_size = 2
train_data_dir = 'D:\lora\img'
unet_lr = 0.0001
vae = ""
xformers = true
"""

# lora-scripts (Akegarasu) style: sections whose keys kohya merges.
LORA_SCRIPTS_TOML = """
[model_arguments]
v2 = false
v_parameterization = false
pretrained_model_name_or_path = "./sd-models/model.ckpt"

[dataset_arguments]
train_data_dir = "./train/aki"
reg_data_dir = ""
resolution = "512,512"
prior_loss_weight = 1

[additional_network_arguments]
network_dim = 32
network_alpha = 16
network_train_unet_only = false
network_train_text_encoder_only = false
network_module = "networks.lora"
network_args = []

[optimizer_arguments]
optimizer_type = "Lion"
lr_scheduler = "cosine_with_restarts"
lr_warmup_steps = 0
learning_rate = 3e-5
unet_lr = 3e-5
text_encoder_lr = 1e-5
lr_scheduler_num_cycles = 1

[training_arguments]
train_batch_size = 1
noise_offset = 0.0
keep_tokens = 0
min_bucket_reso = 256
max_bucket_reso = 1024
caption_extension = ".txt"
max_token_length = 225
seed = 1337
xformers = true
lowram = false
max_train_epochs = 10
max_data_loader_n_workers = 8
persistent_data_loader_workers = true
save_precision = "fp16"
mixed_precision = "fp16"
logging_dir = "./logs"
log_prefix = "aki"
cache_latents = true
save_every_n_epochs = 2

[sample_prompt_arguments]
sample_sampler = "euler_a"
sample_every_n_epochs = 5

[saving_arguments]
save_model_as = "safetensors"
output_dir = "./output"
output_name = "aki"
"""

# sd-scripts docs/config_README-en.md, the first example.
DATASET_TOML = r"""
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1

# This is a DreamBooth-style dataset
[[datasets]]
resolution = 512
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = 'C:\hoge'
  class_tokens = 'hoge girl'
  # This subset uses keep_tokens = 2 (the value of the parent datasets)

  [[datasets.subsets]]
  image_dir = 'C:\fuga'
  class_tokens = 'fuga boy'
  keep_tokens = 3

  [[datasets.subsets]]
  is_reg = true
  image_dir = 'C:\reg'
  class_tokens = 'human'
  keep_tokens = 1

# This is a fine-tuning dataset
[[datasets]]
resolution = [768, 768]
batch_size = 2

  [[datasets.subsets]]
  image_dir = 'C:\piyo'
  metadata_file = 'C:\piyo\piyo_md.json'
  # This subset uses keep_tokens = 1 (the value of [general])
"""


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_kohyas():
    c = TrainConfig()
    assert c.learning_rate == 2e-6 and c.max_train_steps == 1600 and c.max_train_epochs is None
    assert c.caption_extension == ".caption" and c.network_alpha == 1.0 and c.network_dim is None
    assert c.effective_network_dim() == 4 and c.effective_output_name() == "last"
    assert c.save_model_as == "safetensors" and c.mixed_precision == "no" and c.lr_scheduler == "constant"
    assert (c.min_bucket_reso, c.max_bucket_reso, c.bucket_reso_steps) == (256, 1024, 64)
    assert c.multires_noise_discount == 0.3 and c.max_grad_norm == 1.0 and c.prior_loss_weight == 1.0
    assert c.max_data_loader_n_workers == 8 and c.sample_sampler == "ddim" and c.train_batch_size == 1


def test_kohya_ss_gui_config_loads(tmp_path):
    config, unknown = load_config(_write(tmp_path, KOHYA_SS_TOML))
    assert config.optimizer_type == "AdamW8bit"
    assert config.optimizer_args == ["weight_decay=0.01", "betas=0.9,0.99"]
    assert config.network_args == ["conv_dim=8", "conv_alpha=1"]
    assert (config.network_dim, config.network_alpha) == (32, 16.0)
    assert config.lr_warmup_steps == 0.05 and config.lr_scheduler_num_cycles == 3
    assert config.text_encoder_lr == 5e-5 and config.unet_lr == 1e-4
    assert config.train_data_dir == "D:\\lora\\img" and config.reg_data_dir is None and config.vae is None
    assert config.resolution == "512,768" and parse_resolution(config.resolution) == (512, 768)
    assert config.max_token_length == 225 and config.clip_skip == 2 and config.xformers is True
    assert config.max_train_epochs == 10 and config.save_every_n_epochs == 2
    assert sorted(unknown) == ["dynamo_backend", "huber_c", "huber_schedule", "loss_type", "noise_offset_type"]
    messages = unknown_key_messages(unknown, tmp_path / "config.toml")
    by_key = {m.split(":")[0]: m for m in messages}
    assert "no effect" in by_key["huber_c"] and "no effect" in by_key["loss_type"]
    assert "NOT applied" in by_key["dynamo_backend"]  # "no" differs from kohya's default "inductor"
    assert "not an option Kiln or sd-scripts knows" in by_key["noise_offset_type"]


def test_lora_scripts_sections_merge(tmp_path):
    config, unknown = load_config(_write(tmp_path, LORA_SCRIPTS_TOML))
    assert unknown == []
    assert config.pretrained_model_name_or_path == "./sd-models/model.ckpt"
    assert config.optimizer_type == "Lion" and config.learning_rate == 3e-5
    assert config.output_name == "aki" and config.save_model_as == "safetensors"
    assert config.sample_every_n_epochs == 5 and config.persistent_data_loader_workers is True
    assert config.network_args == [] and config.prior_loss_weight == 1.0


def test_round_trip_keeps_every_value(tmp_path):
    config = TrainConfig(
        pretrained_model_name_or_path="C:\\models\\base \"v1\".safetensors", train_data_dir="/data/角色",
        output_dir="/out", output_name="角色_lora", network_module="networks.lora", network_dim=16,
        network_alpha=8.0, network_args=["conv_dim=4", "algo=loha"], learning_rate=1e-4, unet_lr=1e-4,
        text_encoder_lr=[1e-5, 2e-5], optimizer_type="Prodigy", optimizer_args=["d_coef=2", "betas=0.9,0.99"],
        lr_scheduler="cosine", lr_warmup_steps=0.1, max_train_epochs=3, resolution="512,640",
        enable_bucket=True, flip_aug=True, noise_offset=0.05, min_snr_gamma=5.0, seed=42,
        mixed_precision="bf16", full_bf16=True, save_every_n_epochs=1, caption_extension=".txt",
        keep_tokens_separator="|||", training_comment="line one\nline \\two\t\"quoted\"",
    )
    path = tmp_path / "saved.toml"
    save_config(config, path)
    loaded, unknown = load_config(path)
    assert unknown == []
    assert loaded == config
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert "v2" not in data and "cache_latents" not in data  # defaults left out
    assert data["flip_aug"] is True and data["learning_rate"] == 1e-4 and data["max_train_steps"] == 1600
    assert [p.name for p in tmp_path.iterdir()] == ["saved.toml"]  # atomic: no temp file left


def test_saved_config_has_the_essentials_even_at_default(tmp_path):
    path = save_config(TrainConfig(), tmp_path / "d.toml")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for key in ("learning_rate", "optimizer_type", "lr_scheduler", "train_batch_size", "max_train_steps",
                "network_alpha", "mixed_precision", "save_model_as", "caption_extension"):
        assert key in data
    assert data["optimizer_type"] == "AdamW"
    assert "network_dim" not in data  # unset: TOML has no null, kohya's default applies on reload
    assert load_config(path)[0] == TrainConfig()


@pytest.mark.parametrize(("toml", "message"), [
    ('learning_rate = "abc"', "learning_rate: 'abc' is not a number"),
    ("network_dim = 3.5", "network_dim: 3.5 is not a whole number"),
    ('mixed_precision = "fp32"', "mixed_precision: 'fp32' is not one of no, fp16, bf16"),
    ('shuffle_caption = "yes"', "shuffle_caption: 'yes' is not true or false"),
    ("optimizer_args = 5", "optimizer_args: 5 is not a list"),
    ("network_args = [1, 2]", "network_args[0]: 1 is not text"),
    ('resolution = "512x512"', "resolution: '512x512'"),
    ("output_dir = 3", "output_dir: 3 is not text"),
    ('lr_scheduler = "cosine_annealing"', "lr_scheduler: 'cosine_annealing' is not one of"),
    ("lr_warmup_steps = 2.5", "lr_warmup_steps: 2.5"),
    ("train_batch_size = 0", "train_batch_size: 0 must be 1 or more"),
    ("caption_dropout_rate = 1.5", "caption_dropout_rate: 1.5 must be between 0 and 1"),
    ("learning_rate = nan", "learning_rate: nan is not a finite number"),
    ('full_fp16 = true\nmixed_precision = "bf16"', "full_fp16 needs mixed_precision"),
    ("network_train_unet_only = true\nnetwork_train_text_encoder_only = true", "both true"),
])
def test_bad_values_name_the_key(tmp_path, toml, message):
    path = _write(tmp_path, toml)
    with pytest.raises(KilnError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_lenient_spellings_kohya_accepts():
    config, unknown = config_from_dict({
        "learning_rate": "1e-4", "max_train_epochs": 10.0, "mixed_precision": "FP16", "resolution": [768, 512],
        "lr_warmup_steps": "10%", "optimizer_args": "weight_decay=0.1 betas=0.9,0.99", "caption_extention": ".txt",
        "optimizer_type": "", "lr_scheduler": "adafactor:0.001", "max_token_length": 75,
    })
    assert config_from_dict({"lr_scheduler": "Cosine"})[0].lr_scheduler == "cosine"  # as seed 001 spells it
    assert unknown == []
    assert config.learning_rate == 1e-4 and config.max_train_epochs == 10 and config.mixed_precision == "fp16"
    assert config.resolution == "768,512" and config.lr_warmup_steps == 0.1
    assert config.optimizer_args == ["weight_decay=0.1", "betas=0.9,0.99"]
    assert config.caption_extension == ".txt" and config.optimizer_type == "AdamW"
    assert config.lr_scheduler == "adafactor"


def test_legacy_optimizer_switches():
    assert config_from_dict({"use_8bit_adam": True})[0].optimizer_type == "AdamW8bit"
    assert config_from_dict({"use_lion_optimizer": True})[0].optimizer_type == "Lion"
    assert config_from_dict({"use_8bit_adam": False})[0].optimizer_type == "AdamW"
    with pytest.raises(KilnError, match="use_8bit_adam and optimizer_type"):
        config_from_dict({"use_8bit_adam": True, "optimizer_type": "Lion"})


def test_typo_is_suggested_and_nested_tables_are_reported():
    config, unknown = config_from_dict({"learning_rat": 1e-4, "training": {"seed": 3, "deep": {"x": 1}}})
    assert config.seed == 3
    assert unknown == ["training.deep", "learning_rat"]
    assert "did you mean learning_rate" in unknown_key_messages(["learning_rat"])[0]


def test_base_config_is_kept_and_not_mutated():
    base = TrainConfig(seed=7, learning_rate=1e-4)
    config, _ = config_from_dict({"seed": 8}, base=base)
    assert (config.seed, config.learning_rate) == (8, 1e-4)
    assert base.seed == 7


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(KilnError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = _write(tmp_path, 'train_data_dir = "C:\\lora\\img"')  # \l is not a TOML escape
    with pytest.raises(KilnError, match="not valid TOML") as info:
        load_config(bad)
    assert "single quotes" in str(info.value)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('output_name = "caf\xe9"'.encode("latin-1"))
    with pytest.raises(KilnError, match="not UTF-8"):
        load_config(latin)
    bom = tmp_path / "bom.toml"
    bom.write_bytes('output_name = "x"'.encode("utf-8-sig"))
    assert load_config(bom)[0].output_name == "x"


def test_config_help_lists_every_key_with_type_and_default():
    text = config_help()
    for f in dataclasses.fields(TrainConfig):
        assert f"  {f.name} (" in text
    assert "learning_rate (float, default 2e-06)" in text
    assert "caption_extension (str, default \".caption\")" in text
    assert "network_dim (int | None, default unset)" in text


def test_config_to_toml_is_valid_toml_for_awkward_values():
    config = TrainConfig(output_name='a "b" \\ c\u0001', noise_offset=1e-20, network_args=[])
    data = tomllib.loads(config_to_toml(config))
    assert data["output_name"] == 'a "b" \\ c\u0001' and data["noise_offset"] == 1e-20


# ---------------------------------------------------------------- --dataset_config

def test_kohya_docs_dataset_config_inherits_general_dataset_subset(tmp_path):
    spec = load_dataset_config(_write(tmp_path, DATASET_TOML, "dataset.toml"))
    assert spec.unknown == []
    db, ft = spec.datasets
    assert db.resolution == (512, 512) and db.batch_size == 4 and not db.is_finetuning
    hoge, fuga, reg = db.subsets
    assert (hoge.image_dir, hoge.class_tokens, hoge.keep_tokens) == ("C:\\hoge", "hoge girl", 2)
    assert fuga.keep_tokens == 3 and reg.keep_tokens == 1 and reg.is_reg and not hoge.is_reg
    assert all(s.shuffle_caption and s.caption_extension == ".txt" for s in db.subsets)
    assert hoge.num_repeats == 1  # SubsetSpec default
    assert ft.resolution == (768, 768) and ft.batch_size == 2 and ft.is_finetuning
    assert ft.subsets[0].keep_tokens == 1 and ft.subsets[0].metadata_file == "C:\\piyo\\piyo_md.json"


def test_dataset_config_second_docs_example():
    data = tomllib.loads("""
[general]
flip_aug = true
color_aug = false
resolution = [1024, 1024]

[[datasets]]
batch_size = 6
enable_bucket = true
bucket_no_upscale = true
caption_extension = ".txt"
keep_tokens_separator= "|||"
shuffle_caption = true
caption_tag_dropout_rate = 0.1
secondary_separator = ";;;"
enable_wildcard = true

  [[datasets.subsets]]
  image_dir = "/path/to/image_dir"
  num_repeats = 10
  face_crop_aug_range = [2.0, 4.0]
  caption_prefix = "1girl, hatsune miku, vocaloid |||"
  caption_suffix = ", anime screencap ||| masterpiece, rating: general"
""")
    (ds,) = dataset_config_from_dict(data).datasets
    assert ds.resolution == (1024, 1024) and ds.batch_size == 6 and ds.enable_bucket and ds.bucket_no_upscale
    (sub,) = ds.subsets
    assert sub.flip_aug and not sub.color_aug and sub.num_repeats == 10
    assert sub.keep_tokens_separator == "|||" and sub.secondary_separator == ";;;" and sub.enable_wildcard
    assert sub.caption_tag_dropout_rate == 0.1 and sub.face_crop_aug_range == (2.0, 4.0)
    assert sub.caption_prefix.startswith("1girl") and sub.caption_suffix.endswith("general")


def test_training_config_is_the_last_fallback():
    config = TrainConfig(train_batch_size=3, caption_extension=".txt", resolution="640,512",
                         prior_loss_weight=0.5, flip_aug=True, enable_bucket=True)
    data = {"datasets": [{"subsets": [{"image_dir": "a", "flip_aug": False}], "enable_bucket": False}]}
    (ds,) = dataset_config_from_dict(data, config=config).datasets
    assert ds.batch_size == 3 and ds.resolution == (640, 512) and ds.prior_loss_weight == 0.5
    assert ds.enable_bucket is False  # the dataset's own value beats the training config
    assert ds.subsets[0].caption_extension == ".txt" and ds.subsets[0].flip_aug is False
    without = dataset_config_from_dict(data).datasets[0]
    assert without.batch_size == 1 and without.resolution is None and without.subsets[0].caption_extension == ".caption"


def test_dataset_config_unknown_keys_listed_with_their_place():
    data = {"general": {"image_dir": "x", "colour_aug": True},
            "datasets": [{"foo": 1, "subsets": [{"image_dir": "a", "bar": 2}]}], "extra": {}}
    spec = dataset_config_from_dict(data)
    assert sorted(spec.unknown) == ["datasets[0].foo", "datasets[0].subsets[0].bar", "extra",
                                    "general.colour_aug", "general.image_dir"]


@pytest.mark.parametrize(("data", "message"), [
    ({"datasets": [{"subsets": [{"image_dir": "a", "num_repeats": "ten"}]}]},
     "datasets[0].subsets[0].num_repeats: 'ten' is not a whole number"),
    ({"datasets": [{"subsets": [{"class_tokens": "sls"}]}]}, "datasets[0].subsets[0]: image_dir is missing"),
    ({"datasets": [{"batch_size": "four", "subsets": [{"image_dir": "a"}]}]},
     "datasets[0].batch_size: 'four' is not a whole number"),
    ({"datasets": [{"resolution": [512, 512, 3], "subsets": [{"image_dir": "a"}]}]}, "datasets[0].resolution"),
    ({"datasets": [{"subsets": [{"image_dir": "a"}, {"image_dir": "b", "metadata_file": "m.json"}]}]},
     "cannot be mixed"),
    ({"datasets": []}, "no [[datasets]]"),
    ({"datasets": [{"subsets": []}]}, "datasets[0] has no [[datasets.subsets]]"),
    ({"general": {"shuffle_caption": 1}, "datasets": [{"subsets": [{"image_dir": "a"}]}]},
     "general.shuffle_caption: 1 is not true or false"),
])
def test_dataset_config_bad_values_name_the_place(data, message):
    with pytest.raises(KilnError) as info:
        dataset_config_from_dict(data)
    assert message in str(info.value)


def test_dataset_config_file_errors_name_the_file(tmp_path):
    path = _write(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 'x'\nimage_dir = 'a'\n", "ds.toml")
    with pytest.raises(KilnError) as info:
        load_dataset_config(path)
    assert str(path) in str(info.value) and "num_repeats" in str(info.value)


# ---------------------------------------------------------------- helpers for the loop and the UI

def test_learning_rates_follow_kohya():
    assert TrainConfig(learning_rate=1e-4).learning_rates() == (None, None, 1e-4)
    c = TrainConfig(learning_rate=1e-4, unet_lr=2e-4, text_encoder_lr=[1e-5, 2e-5])
    assert c.learning_rates() == (2e-4, 1e-5, 1e-4)
    assert TrainConfig(unet_lr=2e-4, network_train_unet_only=True).learning_rates()[:2] == (2e-4, 0.0)
    assert TrainConfig(text_encoder_lr=1e-5, network_train_text_encoder_only=True).learning_rates()[:2] == (0.0, 1e-5)


def test_optimizer_and_scheduler_from_a_config():
    import torch

    config, _ = config_from_dict({"optimizer_type": "SGDNesterov", "learning_rate": 0.1,
                                  "optimizer_args": ["momentum=0.5"], "lr_scheduler": "linear",
                                  "lr_warmup_steps": 0.2})
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer_for(config, [{"params": list(model.parameters()), "lr": 0.1}])
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[0]["nesterov"]
    sched = build_scheduler_for(config, opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.0, 0.05, 0.1]) and lrs[-1] == pytest.approx(0.0125)


def test_config_guidance_rank_limits_and_optimizer_advice():
    assert network_kind(TrainConfig(network_module="networks.lora")) == "lora"
    assert network_kind(TrainConfig(network_args=["conv_dim=4", "conv_alpha=1"])) == "locon"
    assert network_kind(TrainConfig(network_module="lycoris.kohya", network_args=["algo=loha"])) == "loha"
    assert any("above the usual limit for lora (64)" in n for n in config_guidance(TrainConfig(network_dim=128)))
    assert not any("limit" in n for n in config_guidance(TrainConfig(network_dim=64)))
    loha = TrainConfig(network_module="lycoris.kohya", network_args=["algo='loha'"], network_dim=48)
    assert any("loha (32)" in n for n in config_guidance(loha))
    assert any("locon (12)" in n for n in config_guidance(TrainConfig(network_args=["conv_dim=8"], network_dim=16)))
    prodigy = TrainConfig(optimizer_type="Prodigy", learning_rate=1.0, network_train_unet_only=True)
    notes = config_guidance(prodigy)
    assert any("1.0" in n for n in notes) and not any("too low" in n or "only the first" in n for n in notes)
    assert any("1/3" in n for n in config_guidance(TrainConfig(optimizer_type="Lion", learning_rate=1e-4)))
    both = TrainConfig(dataset_config="ds.toml", train_data_dir="img")
    assert any("train_data_dir and reg_data_dir are ignored" in n for n in config_guidance(both))
