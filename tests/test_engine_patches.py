"""The engine's promises to everything built on it: no job leaves the shared model modified, a
job runs with the options of its submit time, a trainer leases an unpatched model, and a
checkpoint that fails to load never takes generation down."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch

from core.cli import parse_flags
from core.engine import Engine
from core.errors import InvalidParameterError, KilnError
from core.generation.infotext import parse_generation_parameters
from core.generation.params import GenerationParams, HiresParams
from core.jobs import JobQueue
from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data_dir(fixture_models_dir, tmp_path) -> Path:
    shutil.copytree(fixture_models_dir / "models", tmp_path / "models")
    shutil.copytree(fixture_models_dir / "embeddings", tmp_path / "embeddings")
    return tmp_path


def make_engine(data_dir: Path, *extra: str) -> Engine:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data_dir), *extra]), REPO)
    settings.paths.builtin_checkpoint_dir = data_dir / "models" / "Stable-diffusion"  # hermetic
    return Engine(settings)


@pytest.fixture()
def engine(data_dir) -> Engine:
    return make_engine(data_dir, "--ckpt", "tiny-sd1.safetensors")


@pytest.fixture()
def queue():
    q = JobQueue(preview_every=1)
    yield q
    q.shutdown()


def weights(model) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in (("unet", model.unet), ("vae", model.vae), ("te", model.text_encoders[0])):
        out.update({f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return out


def params(**kw) -> GenerationParams:
    defaults = dict(prompt="a red circle", steps=3, width=32, height=32, seed=5, sampler_name="Euler a",
                    save_images=False)
    return GenerationParams(**{**defaults, **kw})


def assert_bitwise_base(model, base: dict[str, torch.Tensor]) -> None:
    now = weights(model)
    assert now.keys() == base.keys()
    changed = [k for k in base if not torch.equal(now[k], base[k])]
    assert not changed, changed[:5]
    assert model.unet.attn_processors == {k: v for k, v in model.unet.attn_processors.items()}
    assert not any(type(p).__name__ == "HypernetworkAttnProcessor" for p in model.unet.attn_processors.values())


def test_after_any_job_the_shared_model_is_the_base_bit_for_bit(engine, queue):
    model = queue.run(lambda _ctx: engine.ensure_model(), timeout=120)
    base = weights(model)
    patched = "a red circle <lora:kiln_style_v1:1> <lora:kiln_locon:0.7> <hypernet:kiln_hypernet:0.8>"
    vae = engine.run_options({"sd_vae": "tiny-vae.safetensors"})
    result = queue.run(lambda ctx: engine.txt2img(params(prompt=patched), ctx, vae), timeout=120)
    info = parse_generation_parameters(result.images[0].infotext)
    assert "Lora hashes" in info and info["Hypernet"] == "kiln_hypernet" and info["VAE"] == "tiny-vae.safetensors"
    assert_bitwise_base(model, base)
    assert engine.model is model and model.vae_path is None  # the external VAE never entered it

    # A job that fails after the patches went on (unknown hires upscaler, found at the second pass).
    bad = params(prompt=patched, hires=HiresParams(enabled=True, upscaler="No Such Upscaler", steps=1))
    with pytest.raises(InvalidParameterError):
        queue.run(lambda ctx: engine.txt2img(bad, ctx), timeout=120)
    assert_bitwise_base(model, base)

    # An interrupted job.
    def interrupted(ctx):
        original = ctx.advance

        def advance(steps=1):
            ctx.job.interrupt_event.set()
            original(steps)

        ctx.advance = advance
        return engine.txt2img(params(prompt=patched, batch_count=3), ctx)

    stopped = queue.run(interrupted, timeout=120)
    assert stopped.interrupted and len(stopped.images) == 1  # the first batch, decoded where it stopped
    assert_bitwise_base(model, base)


def test_same_lora_twice_gives_the_same_picture_and_no_tag_gives_the_base_one(engine, queue):
    lora = params(prompt="a red circle <lora:kiln_style_v1:1>")
    a = queue.run(lambda ctx: engine.txt2img(lora, ctx), timeout=120).images[0].image
    plain = queue.run(lambda ctx: engine.txt2img(params(), ctx), timeout=120).images[0].image
    b = queue.run(lambda ctx: engine.txt2img(lora, ctx), timeout=120).images[0].image
    assert a.tobytes() == b.tobytes() and a.tobytes() != plain.tobytes()


def test_a_queued_job_keeps_the_options_of_its_submit_time(engine, queue, data_dir):
    gate, started = threading.Event(), threading.Event()
    blocker = queue.submit(lambda _ctx: started.set() or gate.wait(30), description="blocker")
    started.wait(10)
    engine.settings.update(show_progress_every_n_steps=1)
    options = engine.run_options()
    job = queue.submit(lambda ctx: engine.txt2img(params(save_images=True), ctx, options), options=options)
    # Someone changes the settings while the job waits.
    engine.settings.update(CLIP_stop_at_last_layers=2, randn_source="CPU", eta_noise_seed_delta=31337,
                           outdir_txt2img_samples="outputs/changed", show_progress_every_n_steps=0)
    gate.set()
    blocker.wait(30)
    result = job.wait(120)
    text = result.images[0].infotext
    assert "Clip skip" not in text and "RNG" not in text and "ENSD" not in text
    assert Path(result.images[0].path).parent.parent == data_dir / "outputs" / "txt2img-images"
    assert job.progress.preview is not None  # the preview period of submit time (every step)
    later = queue.run(lambda ctx: engine.txt2img(params(), ctx), timeout=120)  # submitted after: new options
    info = parse_generation_parameters(later.images[0].infotext)
    assert int(info["Clip skip"]) == 2 and info["RNG"] == "CPU"


def test_override_settings_change_that_job_only(engine, queue):
    options = engine.run_options({"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny-sdxl.safetensors"})
    res = queue.run(lambda ctx: engine.txt2img(params(), ctx, options), timeout=120)
    info = parse_generation_parameters(res.images[0].infotext)
    assert info["Model"] == "tiny-sdxl" and int(info["Clip skip"]) == 2
    res = queue.run(lambda ctx: engine.txt2img(params(), ctx), timeout=120)
    info = parse_generation_parameters(res.images[0].infotext)
    assert info["Model"] == "tiny-sd1" and "Clip skip" not in res.images[0].infotext
    with pytest.raises(InvalidParameterError) as err:
        engine.run_options({"sd_model_checkpoint": "no-such.safetensors"})
    assert err.value.field == "override_settings.sd_model_checkpoint"
    with pytest.raises(InvalidParameterError) as err:
        engine.run_options({"sd_vae": "no-such-vae.pt"})
    assert err.value.field == "override_settings.sd_vae"


def test_a_frozen_lease_is_the_shared_model_and_a_changed_one_is_reloaded(engine, queue):
    model = queue.run(lambda _ctx: engine.ensure_model(), timeout=120)
    base = weights(model)

    def look(_ctx):
        with engine.lease() as leased:
            assert leased is model and not any(p.requires_grad for p in leased.unet.parameters())
        return engine.model

    assert queue.run(look, timeout=60) is model

    def scribble(_ctx):
        with engine.lease() as leased, torch.no_grad():
            leased.unet.conv_in.weight.add_(1.0)  # a careless trainer
        return engine.model

    assert queue.run(scribble, timeout=60) is None  # dropped, not kept modified
    fresh = queue.run(lambda _ctx: engine.ensure_model(), timeout=120)
    assert fresh is not model
    assert_bitwise_base(fresh, base)


def test_a_trainable_lease_hands_the_model_over_in_the_dtype_asked(engine, queue):
    model = queue.run(lambda _ctx: engine.ensure_model(), timeout=120)
    base = weights(model)

    def train(_ctx):
        with engine.lease(dtype=torch.float64, trainable=True) as leased:
            assert engine.model is None  # the engine no longer holds it
            assert next(leased.unet.parameters()).dtype == torch.float64
            assert all(p.requires_grad for p in leased.unet.parameters()) and leased.unet.training
            with torch.no_grad():
                leased.unet.conv_in.weight.mul_(0)
        return engine.txt2img(params(), _ctx)  # the next job loads the file again

    assert queue.run(train, timeout=120).images
    assert_bitwise_base(engine.model, base)


def test_a_broken_default_checkpoint_falls_back_and_says_why(data_dir, queue):
    ckpt = data_dir / "models" / "Stable-diffusion"
    good = (ckpt / "tiny-sd1.safetensors").read_bytes()
    (ckpt / "aaa-half-downloaded.safetensors").write_bytes(good[: len(good) // 3])
    engine = make_engine(data_dir, "--ckpt", "aaa-half-downloaded.safetensors")
    model = queue.run(lambda _ctx: engine.ensure_model(), timeout=120)  # the start-up preload
    assert model is not None and engine.loaded_checkpoint().name != "aaa-half-downloaded.safetensors"
    broken = engine.registry.find_checkpoint("aaa-half-downloaded.safetensors")
    assert "aaa-half-downloaded.safetensors" in engine.checkpoint_error(broken)
    assert "could not be loaded" in engine.fallback_note
    assert engine.selected_checkpoint() == engine.loaded_checkpoint()
    assert "aaa-half-downloaded.safetensors" in engine.checkpoint_titles()  # still listed
    options = engine.run_options()  # jobs submitted now use the model that works
    assert queue.run(lambda ctx: engine.txt2img(params(), ctx, options), timeout=120).images


def test_a_failed_switch_keeps_the_previous_model_loaded_and_selected(data_dir, queue):
    ckpt = data_dir / "models" / "Stable-diffusion"
    (ckpt / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    engine = make_engine(data_dir, "--ckpt", "tiny-sd1.safetensors")
    engine.refresh_models()
    queue.run(lambda _ctx: engine.ensure_model(), timeout=120)
    with pytest.raises(KilnError) as err:
        queue.run(lambda _ctx: engine.switch_checkpoint("broken.safetensors"), timeout=120)
    assert "broken.safetensors" in err.value.message
    assert engine.loaded_checkpoint().name == "tiny-sd1.safetensors"
    assert engine.selected_checkpoint().name == "tiny-sd1.safetensors"
    assert engine.settings.options.sd_model_checkpoint != "broken.safetensors"
    assert queue.run(lambda ctx: engine.txt2img(params(), ctx), timeout=120).images
