"""txt2img through the real loader, engine and job queue on the tiny fixture checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import parse_flags
from core.engine import Engine
from core.errors import InvalidParameterError, KilnError, ModelFileError
from core.generation.infotext import parse_generation_parameters, read_png_infotext
from core.generation.params import GenerationParams, HiresParams
from core.jobs import JobQueue
from core.sampling.samplers import SAMPLERS
from core.sampling.schedulers import SCHEDULERS
from core.settings import Settings
from core.shapes.checker import check_image
from tests.test_shapes_semantics import SHIPPED, images, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(fixture_models_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kiln-data")
    shutil.copytree(fixture_models_dir / "models", root / "models")
    shutil.copytree(fixture_models_dir / "embeddings", root / "embeddings")
    return root


@pytest.fixture(scope="module")
def engine(data_dir) -> Engine:
    flags = parse_flags(["--data-dir", str(data_dir), "--ckpt", "tiny-sd1.safetensors"])
    settings = Settings.from_flags(flags, REPO)
    settings.paths.builtin_checkpoint_dir = data_dir / "models" / "Stable-diffusion"  # keep the test hermetic
    return Engine(settings)


@pytest.fixture(scope="module")
def queue():
    q = JobQueue(preview_every=1)
    yield q
    q.shutdown()


def test_rescale_cfg_default_is_off_for_an_ordinary_model(engine, queue):
    assert engine.recommended_rescale_cfg() == 0.0  # header only: tiny-sd1 has no ztsnr key
    queue.run(lambda _ctx: engine.ensure_model(), timeout=300)
    assert engine.recommended_rescale_cfg() == 0.0


def generate(engine, queue, **kw):
    defaults = dict(prompt="a red circle", negative_prompt="", steps=3, width=32, height=32, seed=42,
                    sampler_name="Euler a", save_images=False)
    params = GenerationParams(**{**defaults, **kw})
    return queue.run(lambda ctx: engine.txt2img(params, ctx), timeout=300)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_image_and_batch_k_equals_seed_plus_k(engine, queue):
    a = generate(engine, queue, seed=7, batch_size=3)
    b = generate(engine, queue, seed=7, batch_size=3)
    assert [g.seed for g in a.images] == [7, 8, 9]
    for x, y in zip(a.images, b.images):
        assert np.array_equal(pixels(x.image), pixels(y.image))
    single = generate(engine, queue, seed=9)
    # Same noise and sampling; batched matmuls may differ in the last float bits, never visibly.
    assert np.abs(pixels(single.images[0].image) - pixels(a.images[2].image)).max() <= 2
    assert not np.array_equal(pixels(a.images[0].image), pixels(a.images[1].image))


def test_saved_png_carries_webui_infotext_that_parses_back(engine, queue, data_dir):
    res = generate(engine, queue, prompt="a blue square, 中文", negative_prompt="blurry", seed=123,
                   cfg_scale=6.5, save_images=True, sampler_name="DPM++ 2M", scheduler="Karras", clip_skip=2)
    path = Path(res.images[0].path)
    assert path.parent.parent == data_dir / "outputs" / "txt2img-images"
    assert path.name == "00000-123.png"  # the WebUI's default: [date] folder, samples_filename_pattern "[seed]"
    text = read_png_infotext(Image.open(path))
    assert text == res.images[0].infotext
    parsed = parse_generation_parameters(text)
    assert parsed["Prompt"] == "a blue square, 中文"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Steps"] == "3" or parsed["Steps"] == 3
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    assert float(parsed["CFG scale"]) == 6.5 and int(parsed["Seed"]) == 123
    assert int(parsed["Size-1"]) == 32 and int(parsed["Size-2"]) == 32
    assert parsed["Model"] == "tiny-sd1" and len(parsed["Model hash"]) == 10
    assert int(parsed["Clip skip"]) == 2
    # A second save never overwrites the first.
    again = generate(engine, queue, seed=123, save_images=True)
    assert Path(again.images[0].path).name == "00001-123.png"


def test_every_sampler_runs_three_steps_without_nan(engine, queue):
    for sampler in SAMPLERS:
        res = generate(engine, queue, sampler_name=sampler.name, steps=3, width=16, height=16)
        arr = pixels(res.images[0].image)
        assert arr.shape == (16, 16, 3), sampler.name
        assert np.isfinite(arr).all()


def test_every_schedule_type_runs(engine, queue):
    for scheduler in SCHEDULERS:
        res = generate(engine, queue, sampler_name="Euler", scheduler=scheduler.label, steps=3, width=16, height=16)
        assert res.images[0].infotext


def test_sdxl_and_sd2_v_generate(engine, queue):
    for name in ("tiny-sdxl.safetensors", "tiny-sd2-v.safetensors"):
        res = generate(engine, queue, checkpoint=name, steps=2, width=32, height=32)
        assert res.images[0].image.size == (32, 32)
        assert f"Model: {Path(name).stem}" in res.images[0].infotext


def test_hires_fix_latent_and_image_upscalers(engine, queue):
    for upscaler in ("Latent", "Latent (nearest-exact)", "Lanczos"):
        res = generate(engine, queue, hires=HiresParams(enabled=True, upscaler=upscaler, scale=2.0, steps=2,
                                                         denoising_strength=0.5))
        assert res.images[0].image.size == (64, 64)
        info = parse_generation_parameters(res.images[0].infotext)
        assert info["Hires upscaler"] == upscaler and float(info["Hires upscale"]) == 2.0


def test_prompt_editing_changes_the_image(engine, queue):
    a = generate(engine, queue, prompt="a red circle", steps=4)
    b = generate(engine, queue, prompt="[a red circle:a green square:0.5]", steps=4)
    c = generate(engine, queue, prompt="a green square", steps=4)
    pa, pb, pc = (pixels(r.images[0].image) for r in (a, b, c))
    assert not np.array_equal(pa, pb) and not np.array_equal(pb, pc)


def test_preview_and_progress_are_published(engine, queue):
    job = queue.submit(lambda ctx: engine.txt2img(GenerationParams(prompt="x", steps=4, width=16, height=16, seed=1,
                                                                   save_images=False), ctx))
    job.wait(120)
    snap = queue.progress()
    assert snap.total_steps == 4 and snap.step == 4
    assert snap.preview is not None


def test_interrupt_keeps_finished_images(engine, queue):
    calls = {"n": 0}

    def run(ctx):
        original = ctx.advance

        def advance(steps=1):
            calls["n"] += 1
            if calls["n"] == 4:  # during the second batch
                ctx.job.interrupt_event.set()
            original(steps)

        ctx.advance = advance
        return engine.txt2img(GenerationParams(prompt="x", steps=3, width=16, height=16, seed=1, batch_count=3,
                                               save_images=False), ctx)

    result = queue.run(run, timeout=120)
    assert result.interrupted
    # As the WebUI: the finished first batch, plus the second decoded from where it stopped; no third.
    assert [g.seed for g in result.images] == [1, 2]


@pytest.mark.parametrize("field,kw", [
    ("steps", {"steps": 0}),
    ("batch_size", {"batch_size": -1}),
    ("width", {"width": 100000}),
    ("sampler_name", {"sampler_name": "No Such Sampler"}),
])
def test_bad_parameters_are_refused_with_the_field_named(engine, queue, field, kw):
    with pytest.raises(InvalidParameterError) as err:
        generate(engine, queue, **kw)
    assert err.value.field == field
    assert generate(engine, queue).images  # the worker is still serving


def test_size_not_multiple_of_8_is_rounded_and_said(engine, queue):
    res = generate(engine, queue, width=36, height=30)
    assert res.images[0].image.size == (32, 24)
    assert "rounded" in res.images[0].infotext


def test_broken_prompt_text_is_cleaned_not_fatal(engine, queue):
    res = generate(engine, queue, prompt="caf\udce9 ((unbalanced [brackets")
    assert res.images and "invalid characters" in " ".join(res.warnings)


def test_bad_checkpoints_give_clear_errors_and_the_server_stays_up(engine, queue, data_dir):
    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    good = (ckpt_dir / "tiny-sd1.safetensors").read_bytes()
    (ckpt_dir / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Image.new("RGB", (1, 1))}, ckpt_dir / "pickled.ckpt")
    lora = data_dir / "models" / "Lora"
    lora.mkdir(exist_ok=True)
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)},
              ckpt_dir / "a-lora.safetensors")
    engine.refresh_models()
    for name, words in (("truncated.safetensors", "truncated"), ("pickled.ckpt", "unpickle"),
                        ("a-lora.safetensors", "LoRA"), ("missing.safetensors", "not found")):
        with pytest.raises(KilnError) as err:
            generate(engine, queue, checkpoint=name)
        assert words.lower() in err.value.message.lower(), err.value.message
        if name != "missing.safetensors":
            assert isinstance(err.value, ModelFileError) and name in err.value.message
    assert generate(engine, queue).images
    for name in ("truncated.safetensors", "pickled.ckpt", "a-lora.safetensors"):
        (ckpt_dir / name).unlink()
    engine.refresh_models()


def test_no_checkpoint_message_names_the_folder(tmp_path):
    flags = parse_flags(["--data-dir", str(tmp_path)])
    settings = Settings.from_flags(flags, REPO)
    settings.paths.builtin_checkpoint_dir = tmp_path / "none"
    engine = Engine(settings)
    q = JobQueue()
    try:
        with pytest.raises(KilnError) as err:
            q.run(lambda ctx: engine.txt2img(GenerationParams(prompt="x", steps=1), ctx), timeout=30)
        assert "Stable-diffusion" in err.value.message
    finally:
        q.shutdown()


def test_lora_tag_changes_the_image_and_removal_restores_it(engine, queue):
    base = generate(engine, queue, seed=3)
    with_lora = generate(engine, queue, seed=3, prompt="a red circle <lora:kiln_style_v1:1.0>")
    assert not np.array_equal(pixels(base.images[0].image), pixels(with_lora.images[0].image))
    info = parse_generation_parameters(with_lora.images[0].infotext)
    assert info["Lora hashes"].startswith("kiln_style_v1: ") and len(info["Lora hashes"].split(": ")[1]) == 12
    assert "<lora:kiln_style_v1:1.0>" in info["Prompt"]
    after = generate(engine, queue, seed=3)
    assert np.array_equal(pixels(base.images[0].image), pixels(after.images[0].image))


def test_lora_alias_lyco_and_several_at_once(engine, queue):
    res = generate(engine, queue, prompt="x <lyco:kiln_loha:0.5> <lora:kiln_locon:0.7:0.2> <lora:kiln_style:1>")
    hashes = parse_generation_parameters(res.images[0].infotext)["Lora hashes"]
    # kiln_style is the ss_output_name alias of kiln_style_v1.safetensors
    assert [part.split(":")[0] for part in hashes.split(", ")] == ["kiln_loha", "kiln_locon", "kiln_style"]


def test_bad_lora_tags_warn_and_generation_goes_on(engine, queue):
    res = generate(engine, queue, prompt="x <lora:no_such_lora:1> <lora:kiln_style_v1:abc>")
    text = " ".join(res.warnings)
    assert "no_such_lora" in text and "not found" in text
    assert "not a number" in text
    assert "Lora hashes" not in res.images[0].infotext  # truthful: nothing was applied


def test_embedding_and_hypernetwork_reach_the_infotext(engine, queue):
    base = generate(engine, queue, prompt="a photo", seed=4)
    ti = generate(engine, queue, prompt="a photo of (kiln_token:1.2)", seed=4)
    assert "TI hashes" in parse_generation_parameters(ti.images[0].infotext)
    assert "kiln_token: " in parse_generation_parameters(ti.images[0].infotext)["TI hashes"]
    hn = generate(engine, queue, prompt="a photo <hypernet:kiln_hypernet:0.8>", seed=4)
    info = parse_generation_parameters(hn.images[0].infotext)
    assert info["Hypernet"] == "kiln_hypernet" and float(info["Hypernet strength"]) == 0.8
    assert not np.array_equal(pixels(base.images[0].image), pixels(hn.images[0].image))
    again = generate(engine, queue, prompt="a photo", seed=4)  # hooks removed again
    assert np.array_equal(pixels(base.images[0].image), pixels(again.images[0].image))


# --- Rescale CFG on the shipped v-prediction, zero-terminal-SNR model ----------------------------


def clipped_share(image: Image.Image) -> float:
    """Share of channel values burnt to 0 or 255: the over-saturation CFG 7 causes on this model."""
    arr = np.asarray(image)
    return float(((arr == 0) | (arr == 255)).mean())


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped Shapes model behind a real engine and queue, built as tests/test_shapes_semantics.py does."""
    assert SHIPPED.is_file(), f"the shipped model is missing: {SHIPPED}"
    data = tmp_path_factory.mktemp("shapes-data")
    engine = Engine(Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", SHIPPED.name]), REPO))
    q = JobQueue()
    yield engine, q
    q.shutdown()


def test_rescale_cfg_tames_cfg_7_on_the_shipped_model_and_keeps_the_colours(shipped):
    prompt = "a yellow triangle on a black background"
    plain = run(shipped, prompt)  # 4 seeds, 64x64, CFG 7, Euler a
    rescaled = run(shipped, prompt, rescale_cfg=0.7)
    for a, b in zip(images(plain), images(rescaled)):
        assert pixels(b).std() < pixels(a).std()
    # Measured (seeds 11-14, 15 steps Euler a): burnt-out share 0.50 -> 0.26.
    before = np.mean([clipped_share(img) for img in images(plain)])
    after = np.mean([clipped_share(img) for img in images(rescaled)])
    assert after < 0.8 * before, (before, after)
    checks = [check_image(img) for img in images(rescaled)]
    assert sum(c.background == "black" for c in checks) >= 3
    assert sum(c.color == "yellow" for c in checks) >= 3
    assert "Rescale CFG" not in plain.images[0].infotext
    assert "Rescale CFG: 0.7" in rescaled.images[0].infotext
