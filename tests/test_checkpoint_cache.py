"""sd_checkpoints_limit: checkpoints switched away from stay loaded (their own weights), a switch
back reads no file, the oldest goes first, a changed file is read again, unload frees all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from core.cli import parse_flags
from core.engine import Engine
from core.jobs import JobQueue
from core.settings import Settings
from tests.test_engine_patches import assert_bitwise_base, params, weights

A, B, C = "tiny-sd1.safetensors", "tiny-sd2-v.safetensors", "tiny-sdxl.safetensors"


@pytest.fixture()
def engine(fixture_models_dir, tmp_path) -> Engine:
    shutil.copytree(fixture_models_dir / "models", tmp_path / "models")
    shutil.copytree(fixture_models_dir / "embeddings", tmp_path / "embeddings")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), "--ckpt", A]), tmp_path)
    settings.paths.builtin_checkpoint_dir = tmp_path / "models" / "Stable-diffusion"
    return Engine(settings)


@pytest.fixture()
def queue():
    q = JobQueue()
    yield q
    q.shutdown()


def load(engine: Engine, queue: JobQueue, name: str):
    return queue.run(lambda _ctx: engine.ensure_model(name), timeout=120)


def count_reads(monkeypatch) -> list[Path]:
    import core.models.checkpoint as checkpoint

    reads: list[Path] = []
    real = checkpoint.load_checkpoint

    def counting(path, *args, **kwargs):
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counting)  # the real loader, counted
    return reads


def test_a_switch_back_within_the_limit_reads_no_file_and_has_the_files_weights(engine, queue, monkeypatch):
    engine.settings.options.sd_checkpoints_limit = 2
    reads = count_reads(monkeypatch)
    a = load(engine, queue, A)
    base = weights(a)
    # A job with a LoRA on A just before the switch: what is kept must be A's own weights.
    queue.run(lambda ctx: engine.txt2img(params(prompt="a red circle <lora:kiln_style_v1:1>"), ctx), timeout=120)
    load(engine, queue, B)
    assert [p.name for p in engine.slots[0].kept.paths()] == [A]
    again = load(engine, queue, A)
    assert [p.name for p in reads] == [A, B]
    assert again.unet is a.unet and again.text_encoders[0] is a.text_encoders[0]  # the same modules, kept
    assert_bitwise_base(again, base)
    assert [p.name for p in engine.slots[0].kept.paths()] == [B]


def test_the_oldest_kept_goes_first_and_limit_one_keeps_none(engine, queue, monkeypatch):
    engine.settings.options.sd_checkpoints_limit = 2
    reads = count_reads(monkeypatch)
    load(engine, queue, A)
    load(engine, queue, B)
    load(engine, queue, C)  # keeps B, drops A
    assert [p.name for p in engine.slots[0].kept.paths()] == [B]
    load(engine, queue, A)
    assert [p.name for p in reads] == [A, B, C, A]
    engine.settings.options.sd_checkpoints_limit = 1
    load(engine, queue, B)  # B was kept, but the limit is 1 now: everything kept is freed
    assert len(engine.slots[0].kept) == 0 and [p.name for p in reads][-1] == B


def test_a_file_changed_on_disk_is_read_again(engine, queue, monkeypatch):
    engine.settings.options.sd_checkpoints_limit = 3
    reads = count_reads(monkeypatch)
    a = load(engine, queue, A)
    load(engine, queue, B)
    path = engine.registry.find_checkpoint(A).path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))  # a new copy of the file, say
    fresh = load(engine, queue, A)
    assert fresh.unet is not a.unet and [p.name for p in reads] == [A, B, A]


def test_unload_frees_the_kept_models_too(engine, queue):
    engine.settings.options.sd_checkpoints_limit = 3
    load(engine, queue, A)
    load(engine, queue, B)
    assert len(engine.slots[0].kept) == 1
    queue.run(lambda _ctx: engine.unload_all(), timeout=60)
    assert len(engine.slots[0].kept) == 0 and engine.slots[0].model is None


def test_the_limit_is_a_checked_setting(engine):
    from core.errors import InvalidParameterError

    assert engine.settings.check_user_changes({"sd_checkpoints_limit": 4}) == {"sd_checkpoints_limit": 4}
    with pytest.raises(InvalidParameterError):
        engine.settings.check_user_changes({"sd_checkpoints_limit": 11})


def test_selected_vae_overrides_per_model_preferences(engine, queue):
    """The WebUI's sd_vae_overrides_per_model_preferences: on (default) the chosen VAE wins; off,
    a VAE beside the checkpoint wins over the choice."""
    vae_dir = engine.paths.vae_dir
    [chosen] = [p for p in vae_dir.iterdir() if p.suffix == ".safetensors"]
    ckpt = engine.registry.find_checkpoint(A).path
    near = ckpt.with_name(ckpt.stem + ".vae.safetensors")
    shutil.copyfile(chosen, near)
    engine.refresh_models()
    load(engine, queue, A)
    assert engine.vae_file("Automatic") == near
    assert engine.vae_file(chosen.name) == chosen
    assert engine.vae_file(chosen.name, overrides_per_model=False) == near
    assert engine.vae_file("None", overrides_per_model=False) == near
    assert engine.vae_file("None") is None
    options = engine.run_options({"sd_vae": chosen.name, "sd_vae_overrides_per_model_preferences": False})
    assert options.sd_vae_overrides_per_model_preferences is False
    result = queue.run(lambda ctx: engine.txt2img(params(), ctx, options), timeout=120)
    assert f"VAE: {near.name}" in result.images[0].infotext
