"""config.json options (WebUI keys, tolerant load, atomic save) and the device policy from flags."""

from __future__ import annotations

import json
import os
import stat

import pytest

from core.cli import parse_flags
from core.errors import KilnError
from core.paths import KilnPaths
from core.settings import (
    DevicePolicy,
    Options,
    Settings,
    derive_device_policy,
    load_options,
)


def make_settings(tmp_path, argv=()) -> Settings:
    flags = parse_flags(list(argv))
    return Settings.load(flags, KilnPaths.from_flags(flags, tmp_path))


def test_webui_defaults():
    o = Options()
    assert o.sd_vae == "Automatic" and o.CLIP_stop_at_last_layers == 1
    assert o.randn_source == "GPU" and o.eta_ancestral == 1.0 and o.eta_noise_seed_delta == 0
    assert o.show_progress_every_n_steps == 10 and o.live_previews_enable is True
    assert o.samples_save is True and o.samples_format == "png" and o.save_images_add_number is True
    assert o.outdir_txt2img_samples == "outputs/txt2img-images"


def test_missing_config_gives_defaults(tmp_path):
    s = make_settings(tmp_path)
    assert s.options == Options() and s.warnings == []
    assert not (tmp_path / "config.json").exists()


def test_save_then_load_round_trip(tmp_path):
    s = make_settings(tmp_path)
    s.options.CLIP_stop_at_last_layers = 2
    s.options.randn_source = "CPU"
    s.options.sd_model_checkpoint = "kiln-shapes-v1.safetensors [0123456789]"
    path = s.save()
    assert path == tmp_path / "config.json"
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk["CLIP_stop_at_last_layers"] == 2 and on_disk["randn_source"] == "CPU"
    assert "extra" not in on_disk  # the container for foreign keys is not itself a key
    again = make_settings(tmp_path)
    assert again.options == s.options and again.warnings == []


def test_partial_config_fills_in_defaults(tmp_path):
    (tmp_path / "config.json").write_text('{"CLIP_stop_at_last_layers": 2}', encoding="utf-8")
    s = make_settings(tmp_path)
    assert s.options.CLIP_stop_at_last_layers == 2
    assert s.options.sd_vae == "Automatic" and s.warnings == []


def test_unknown_keys_are_preserved(tmp_path):
    webui_config = {
        "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "quicksettings_list": ["sd_model_checkpoint", "sd_vae"],
        "some_extension_option": {"nested": [1, 2]},
        "eta_noise_seed_delta": 31337,
    }
    (tmp_path / "config.json").write_text(json.dumps(webui_config), encoding="utf-8")
    s = make_settings(tmp_path)
    assert s.options.eta_noise_seed_delta == 31337
    assert s.options.sd_model_checkpoint == webui_config["sd_model_checkpoint"]
    s.options.sd_vae = "None"
    s.save()
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["quicksettings_list"] == ["sd_model_checkpoint", "sd_vae"]
    assert saved["some_extension_option"] == {"nested": [1, 2]}
    assert saved["sd_vae"] == "None" and saved["eta_noise_seed_delta"] == 31337


def test_keys_written_by_another_program_meanwhile_survive_save(tmp_path):
    s = make_settings(tmp_path)
    s.save()
    data = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    data["written_later"] = True
    (tmp_path / "config.json").write_text(json.dumps(data), encoding="utf-8")
    s.options.samples_format = "webp"
    s.save()
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["written_later"] is True and saved["samples_format"] == "webp"


@pytest.mark.parametrize("bad", ['{"sd_vae": "Automatic", ', "\x00\x01garbage", "[1, 2, 3]", "null"])
def test_corrupt_config_is_kept_as_bak_and_defaults_used(tmp_path, bad):
    config = tmp_path / "config.json"
    config.write_text(bad, encoding="utf-8")
    s = make_settings(tmp_path)
    assert s.options == Options()
    assert len(s.warnings) == 1
    warning = s.warnings[0]
    assert "config.json" in warning and "default settings" in warning
    backup = tmp_path / "config.json.bak"
    assert backup.read_text(encoding="utf-8") == bad and str(backup) in warning
    s.save()  # the next save replaces the bad file with a good one
    assert json.loads(config.read_text(encoding="utf-8"))["sd_vae"] == "Automatic"
    assert backup.read_text(encoding="utf-8") == bad


def test_second_corrupt_config_does_not_overwrite_first_backup(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{first", encoding="utf-8")
    load_options(config)
    config.write_text("{second", encoding="utf-8")
    _, warnings = load_options(config)
    assert (tmp_path / "config.json.bak").read_text() == "{first"
    assert (tmp_path / "config.json-1.bak").read_text() == "{second"
    assert "config.json-1.bak" in warnings[0]


def test_bad_values_fall_back_per_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "CLIP_stop_at_last_layers": "two",
        "randn_source": "TPU",
        "samples_save": "yes",
        "eta_ancestral": 0.5,
        "show_progress_every_n_steps": -5,
        "eta_noise_seed_delta": 2.0,
        "s_noise": True,
    }), encoding="utf-8")
    s = make_settings(tmp_path)
    o = s.options
    assert o.CLIP_stop_at_last_layers == 1 and o.randn_source == "GPU" and o.samples_save is True
    assert o.show_progress_every_n_steps == 10 and o.s_noise == 1.0
    assert o.eta_ancestral == 0.5  # good values in the same file are kept
    assert o.eta_noise_seed_delta == 2 and isinstance(o.eta_noise_seed_delta, int)
    joined = "\n".join(s.warnings)
    for key in ["CLIP_stop_at_last_layers", "randn_source", "samples_save", "show_progress_every_n_steps", "s_noise"]:
        assert key in joined
    assert len(s.warnings) == 5
    assert not (tmp_path / "config.json.bak").exists()  # a readable file is not "corrupt"


def test_save_is_atomic_when_writing_fails(tmp_path):
    s = make_settings(tmp_path)
    s.options.CLIP_stop_at_last_layers = 3
    s.save()
    before = (tmp_path / "config.json").read_text(encoding="utf-8")
    s.options.extra["unserialisable"] = object()
    with pytest.raises(TypeError):
        s.save()
    assert (tmp_path / "config.json").read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp file left


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_warns(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{}", encoding="utf-8")
    config.chmod(0)
    try:
        options, warnings = load_options(config)
    finally:
        config.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert options == Options() and "unreadable" in warnings[0]


def test_update_validates_and_keeps_unknown_keys(tmp_path):
    s = make_settings(tmp_path)
    rejected = s.update(CLIP_stop_at_last_layers=2, randn_source="bogus", sd_vae="my.vae.pt", custom_key=5)
    assert rejected == ["randn_source"]
    assert s.options.CLIP_stop_at_last_layers == 2 and s.options.randn_source == "GPU"
    assert s.options.sd_vae == "my.vae.pt" and s.options.extra["custom_key"] == 5


def test_startup_checkpoint_prefers_the_flag(tmp_path):
    s = make_settings(tmp_path)
    s.options.sd_model_checkpoint = "saved.safetensors"
    assert s.startup_checkpoint() == "saved.safetensors"
    s2 = make_settings(tmp_path, ["--ckpt", "flag.safetensors"])
    s2.options.sd_model_checkpoint = "saved.safetensors"
    assert s2.startup_checkpoint() == "flag.safetensors"


def test_flag_warnings_reach_settings(tmp_path):
    s = make_settings(tmp_path, ["--use-cpu", "gfpgan"])
    assert any("gfpgan" in w for w in s.warnings)


def test_from_flags_uses_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_text('{"randn_source": "NV"}', encoding="utf-8")
    s = Settings.from_flags(parse_flags(["--data-dir", str(data)]), tmp_path / "repo")
    assert s.options.randn_source == "NV" and s.paths.config_path == data / "config.json"


# ---- device policy -------------------------------------------------------------------------

def policy(argv=(), cuda=1, mps=False, xformers=False) -> DevicePolicy:
    return derive_device_policy(parse_flags(list(argv)), cuda_device_count=cuda,
                                mps_available=mps, xformers_available=xformers)


def test_cpu_only_machine_runs_fp32_sdpa():
    p = policy(cuda=0)
    assert (p.device, p.dtype, p.vae_dtype, p.attention, p.offload) == ("cpu", "float32", "float32", "sdpa", "none")
    assert not p.autocast and p.warnings == ()


def test_cuda_defaults_to_fp16_with_autocast():
    p = policy()
    assert (p.device, p.dtype, p.vae_dtype, p.attention, p.offload) == ("cuda:0", "float16", "float16", "sdpa", "none")
    assert p.autocast


def test_precision_flags():
    assert policy(["--no-half"]).dtype == "float32"
    assert policy(["--no-half"]).vae_dtype == "float32"
    p = policy(["--precision", "full"])
    assert (p.dtype, p.vae_dtype, p.autocast) == ("float32", "float32", False)
    p = policy(["--precision", "half"])
    assert (p.dtype, p.autocast) == ("float16", False)
    p = policy(["--no-half-vae"])
    assert (p.dtype, p.vae_dtype) == ("float16", "float32")


def test_device_id_and_its_bounds():
    assert policy(["--device-id", "1"], cuda=2).device == "cuda:1"
    with pytest.raises(KilnError, match="--device-id 2: this machine has 2 CUDA device"):
        policy(["--device-id", "2"], cuda=2)
    p = policy(["--device-id", "1"], cuda=0)
    assert p.device == "cpu" and "--device-id 1 ignored" in p.warnings[0]
    with pytest.raises(KilnError):  # checked even when the model itself runs on the CPU
        policy(["--device-id", "3", "--use-cpu", "sd"], cuda=1)


def test_use_cpu_moves_modules():
    p = policy(["--use-cpu", "all"])
    assert p.device == "cpu" and p.dtype == "float32"
    assert p.device_for("sd") == "cpu" and p.device_for("interrogate") == "cpu"
    p = policy(["--use-cpu", "interrogate"])
    assert p.device == "cuda:0" and p.device_for("sd") == "cuda:0" and p.device_for("interrogate") == "cpu"
    p = policy(["--use-cpu", "sd"])
    assert p.device == "cpu" and p.dtype == "float32" and p.device_for("sd") == "cpu"
    assert p.device_for("interrogate") == "cuda:0"  # only the named module moves
    p = policy(["--use-cpu", "esrgan"])
    assert p.device == "cuda:0" and p.device_for("esrgan") == "cpu" and p.device_for("sd") == "cuda:0"


def test_xformers_only_when_usable():
    assert policy(["--xformers"], xformers=True).attention == "xformers"
    assert policy(["--xformers", "--opt-sdp-attention"], xformers=True).attention == "xformers"
    p = policy(["--xformers"], xformers=False)
    assert p.attention == "sdpa" and "not installed" in p.warnings[0]
    p = policy(["--xformers"], cuda=0, xformers=True)
    assert p.attention == "sdpa" and "needs a CUDA GPU" in p.warnings[0]
    assert policy(["--opt-sdp-attention"]).attention == "sdpa"


def test_offload_modes():
    assert policy(["--medvram"]).offload == "medvram"
    assert policy(["--lowvram"]).offload == "lowvram"
    assert policy(["--lowvram", "--medvram"]).offload == "lowvram"
    p = policy(["--medvram"], cuda=0)
    assert p.offload == "none" and "--medvram ignored" in p.warnings[0]


def test_mps_keeps_vae_fp32():
    p = policy(cuda=0, mps=True)
    assert (p.device, p.dtype, p.vae_dtype, p.autocast) == ("mps", "float16", "float32", False)


def test_device_policy_on_this_machine(tmp_path):
    import torch

    s = make_settings(tmp_path, ["--use-cpu", "all"])
    p = s.device_policy()
    assert p.device == "cpu" and p.torch_dtype() is torch.float32 and p.torch_vae_dtype() is torch.float32
    half = policy(["--no-half-vae"])
    assert half.torch_dtype() is torch.float16 and half.torch_vae_dtype() is torch.float32
    if not torch.cuda.is_available():
        assert make_settings(tmp_path).device_policy().device in ("cpu", "mps")
