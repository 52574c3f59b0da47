"""Output formats and the WebUI's file name patterns (core/generation/saving.py, filenames.py)."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime
from pathlib import Path

import numpy as np
import piexif
import piexif.helper
import pytest
from PIL import Image

from core.generation.filenames import NameContext, apply_pattern, sanitize_filename_part
from core.generation.infotext import exif_with_parameters, read_png_infotext
from core.generation.saving import SaveOptions, encode_image, next_sequence_number, save_image
from core.settings import SAMPLE_FORMATS, Options, checked_option

INFOTEXT = "a cat, 猫\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x64"
NOW = datetime(2026, 12, 4, 9, 8, 7)


def picture(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 4 if mode == "RGBA" else 3), dtype=np.uint8), mode)


def webui_reads(data: bytes) -> str:
    """What the WebUI's read_info_from_image gets: piexif over the image's EXIF, UserComment.load."""
    with Image.open(io.BytesIO(data)) as im:
        exif = piexif.load(im.info["exif"])
    return piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment])


# --- EXIF UserComment ---------------------------------------------------------------------------
def test_exif_user_comment_is_what_piexif_writes():
    ours = exif_with_parameters(INFOTEXT)
    theirs = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(INFOTEXT,
                                                                                                encoding="unicode")}})
    parsed = piexif.load(ours)["Exif"][piexif.ExifIFD.UserComment]
    assert parsed == piexif.load(theirs)["Exif"][piexif.ExifIFD.UserComment]
    assert parsed.startswith(b"UNICODE\x00") and piexif.helper.UserComment.load(parsed) == INFOTEXT


@pytest.mark.parametrize("fmt", [f for f in SAMPLE_FORMATS if f != "png"])
def test_every_exif_format_is_read_by_piexif_and_by_kiln(fmt):
    data, ext, notes = encode_image(picture("RGBA"), fmt, INFOTEXT, SaveOptions())
    assert ext == fmt and notes == []
    assert webui_reads(data) == INFOTEXT and read_png_infotext(data) == INFOTEXT


def test_png_keeps_the_parameters_chunk_and_enable_pnginfo_turns_it_off():
    data, _, _ = encode_image(picture(), "png", INFOTEXT, SaveOptions())
    assert Image.open(io.BytesIO(data)).info["parameters"] == INFOTEXT
    for fmt in ("png", "jpg", "webp"):
        bare, _, _ = encode_image(picture(), fmt, INFOTEXT, SaveOptions(enable_pnginfo=False))
        assert read_png_infotext(bare) is None


def test_jpeg_quality_and_webp_lossless():
    small, _, _ = encode_image(picture(), "jpg", None, SaveOptions(jpeg_quality=10))
    large, _, _ = encode_image(picture(), "jpg", None, SaveOptions(jpeg_quality=95))
    assert len(small) < len(large)
    lossless, _, _ = encode_image(picture(), "webp", None, SaveOptions(webp_lossless=True))
    lossy, _, _ = encode_image(picture(), "webp", None, SaveOptions(webp_lossless=False))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(lossless))), np.asarray(picture()))
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(lossy))), np.asarray(picture()))


def test_too_large_for_the_format_saves_png_and_says_so():
    data, ext, notes = encode_image(Image.new("RGB", (16384, 1)), "webp", INFOTEXT, SaveOptions())
    assert ext == "png" and "16383" in notes[0] and data.startswith(b"\x89PNG")


def test_an_infotext_too_long_for_jpeg_exif_goes_to_the_txt(tmp_path):
    long_text = "x" * 40_000
    saved = save_image(picture(), tmp_path, NameContext(seed=1), long_text, SaveOptions(samples_format="jpg"))
    assert saved.path.suffix == ".jpg" and saved.notes and saved.txt_path.read_text() == long_text + "\n"


# --- names --------------------------------------------------------------------------------------
CTX = NameContext(seed=42, prompt="a (cute) cat, on a mat: sitting", negative_prompt="dog", styles=("Frame",),
                  style_prompts=("photo of {prompt}",), steps=20, cfg_scale=7.0, sampler="DPM++ 2M",
                  scheduler="Karras", model_name="sub/tiny-sd1", model_hash="0123456789", now=NOW,
                  batch_size=2, batch_index=1, iteration=1, batch_count=3, all_seeds=(42, 43))


@pytest.mark.parametrize("pattern, expected", [
    ("[seed]", "42"),
    ("[seed]-[prompt_spaces]", "42-a (cute) cat, on a mat_ sitting"),
    ("[prompt]", "a_(cute)_cat,_on_a_mat__sitting"),
    ("[prompt_words]", "a cute cat on a mat sitting"),
    ("[model_name]", "sub_tiny-sd1"),
    ("[model_hash]", "0123456789"),
    ("[datetime<%Y%m%d>]", "20261204"),
    ("[datetime]", "20261204090807"),
    ("[date]", "2026-12-04"),
    ("[steps]-[cfg]-[sampler]-[scheduler]-[sampler_scheduler]", "20-7.0-DPM++ 2M-Karras-DPM++ 2M Karras"),
    ("[styles]", "Frame"),
    ("[seed_first]-[seed_last]", "42-43"),
    ("[batch_number]-[generation_number]", "2-4"),
    ("[prompt_hash<4>]", hashlib.sha256(b"a (cute) cat, on a mat: sitting").hexdigest()[:4]),
    ("[hasprompt<cat|nocat><dog|nodog>]", "catnodog"),
    ("x-[denoising]-y", "-y"),  # nothing to say: the tag and the text before it are dropped
    ("[seed]-[denoising]", "42"),
    ("[vae_filename]", "NoneType"),
    ("[no such tag]-[seed]", "[no such tag]-42"),
    ("[none]", ""),
    ("[clip_skip]", "1"),
])
def test_filename_tags_like_the_webui(pattern, expected):
    assert apply_pattern(pattern, CTX) == expected


def test_single_image_batches_drop_the_batch_tags():
    one = NameContext(seed=5, prompt="")
    assert apply_pattern("[seed]-[seed_last]-[batch_number]", one) == "5"
    assert apply_pattern("[prompt_words]", one) == "empty"
    assert apply_pattern("[prompt_words]", NameContext(prompt=" ".join(f"w{i}" for i in range(20))),
                         max_prompt_words=3) == "w0 w1 w2"


def test_sanitize_like_the_webui():
    assert sanitize_filename_part(' a:b/c?d#e "f". ') == '_a_b_c_d_e__f_._'  # spaces first, then the rest
    assert sanitize_filename_part(" name. . ", replace_spaces=False) == "name"
    assert sanitize_filename_part(" a:b ", replace_spaces=False) == "a_b"
    assert len(sanitize_filename_part("x" * 300)) == 128


def test_default_names_are_the_webuis(tmp_path):
    ctx = NameContext(seed=42, prompt="a cat", now=NOW)
    first = save_image(picture(), tmp_path, ctx, INFOTEXT, SaveOptions())
    second = save_image(picture(), tmp_path, ctx, INFOTEXT, SaveOptions())
    day = tmp_path / "2026-12-04"
    assert (first.path, second.path) == (day / "00000-42.png", day / "00001-42.png")
    flat = save_image(picture(), tmp_path, ctx, INFOTEXT, SaveOptions(save_to_dirs=False))
    assert flat.path == tmp_path / "00000-42-a cat.png"


def test_patterns_numbering_and_txt(tmp_path):
    opts = SaveOptions(samples_format="webp", samples_filename_pattern="[model_name]-[seed]",
                       directories_filename_pattern="[date]/[prompt_words]", save_images_add_number=False,
                       save_txt=True)
    ctx = NameContext(seed=7, prompt="red fox", model_name="tiny", now=NOW)
    a = save_image(picture(), tmp_path, ctx, INFOTEXT, opts)
    b = save_image(picture(), tmp_path, ctx, INFOTEXT, opts)
    assert a.path == tmp_path / "2026-12-04" / "red fox" / "tiny-7.webp"
    assert b.path.name == "tiny-7-1.webp"  # never over the first
    assert a.txt_path == a.path.with_suffix(".txt") and a.txt_path.read_text(encoding="utf-8") == INFOTEXT + "\n"
    assert webui_reads(a.path.read_bytes()) == INFOTEXT


def test_sequence_numbers_follow_the_webui(tmp_path):
    for name in ("00007-1.png", "00003.png", "xyz_grid-0012-5.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "2026-12-04").mkdir()  # a [date] folder is not a picture numbered 2026 (the WebUI counts it)
    assert next_sequence_number(tmp_path) == 8
    assert next_sequence_number(tmp_path, "xyz_grid") == 13
    grid = save_image(picture(), tmp_path, NameContext(seed=5, now=NOW), None,
                      SaveOptions(grid_save_to_dirs=False, grid_format="jpg"), basename="xyz_grid", grid=True)
    assert grid.path.name == "xyz_grid-0013-5.jpg"


# --- the options ---------------------------------------------------------------------------------
def test_webui_defaults():
    o = Options()
    assert (o.samples_format, o.jpeg_quality, o.webp_lossless, o.enable_pnginfo, o.save_txt) == \
        ("png", 80, False, True, False)
    assert (o.samples_filename_pattern, o.save_to_dirs, o.directories_filename_pattern) == ("", True, "[date]")
    assert (o.grid_save, o.grid_format, o.save_images_add_number, o.directories_max_prompt_words) == \
        (True, "png", True, 8)


@pytest.mark.parametrize("key, value, words", [
    ("samples_format", "gif", "not one of"),
    ("jpeg_quality", 0, "outside"),
    ("directories_filename_pattern", "../[date]", "leave the output folder"),
    ("directories_filename_pattern", "/tmp/[date]", "leave the output folder"),
    ("samples_filename_pattern", "[date]/[seed]", "cannot hold folders"),
])
def test_bad_values_are_refused(key, value, words):
    with pytest.raises(ValueError, match=words):
        checked_option(key, value)


def test_avif_is_refused_with_a_reason_where_pillow_lacks_it(monkeypatch):
    import core.settings as settings

    monkeypatch.setattr(settings, "AVIF_AVAILABLE", False)
    with pytest.raises(ValueError, match="no AVIF encoder"):
        checked_option("samples_format", "avif")
    assert checked_option("samples_format", "JPG") == "jpg"


def test_api_options_refuse_and_jobs_save_in_the_format(model_api):
    client, engine = model_api
    r = client.post("/sdapi/v1/options", json={"directories_filename_pattern": "../../x"})
    assert r.status_code == 422 and r.json()["field"] == "directories_filename_pattern"
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a red fox", "steps": 1, "width": 64, "height": 64, "seed": 9, "save_images": True,
        "override_settings": {"samples_format": "jpg", "samples_filename_pattern": "[seed]-[prompt_words]",
                              "save_txt": True}})
    assert r.status_code == 200, r.text
    day = Path(engine.paths.resolve_output("outputs/txt2img-images")) / datetime.now().strftime("%Y-%m-%d")
    saved = sorted(day.glob("*-9-a red fox.jpg"))
    assert saved, sorted(p.name for p in day.iterdir())
    text = webui_reads(saved[-1].read_bytes())
    assert text.startswith("a red fox\nSteps: 1") and saved[-1].with_suffix(".txt").read_text().startswith(text)


def test_api_images_come_in_samples_format_as_the_webui_sends_them(model_api):
    import base64

    client, _engine = model_api
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a red fox", "steps": 1, "width": 64, "height": 64, "seed": 2,
        "override_settings": {"samples_format": "webp", "jpeg_quality": 90}})
    assert r.status_code == 200, r.text
    data = base64.b64decode(r.json()["images"][0])
    assert Image.open(io.BytesIO(data)).format == "WEBP"
    assert webui_reads(data).startswith("a red fox\nSteps: 1")


def test_img2img_batch_keeps_the_input_names_in_samples_format(tmp_path):
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.models.fixtures import write_tiny_checkpoint
    from core.settings import Settings
    from tests.test_ui_build import _defaults, _img2img_tab
    from ui.img2img import generate_updates

    write_tiny_checkpoint(tmp_path, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    settings.options.samples_format, settings.options.save_txt = "webp", True
    engine = Engine(settings)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    picture().save(folder / "fox [1].png")
    tab = _img2img_tab(engine)
    values = dict(_defaults(tab), prompt="a fox", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
                  denoising_strength=0.5)
    batch = {"input_dir": str(folder), "output_dir": str(out), "mask_dir": "", "use_png_info": False,
             "png_info_fields": []}
    queue = JobQueue()
    try:
        list(generate_updates(tab, engine, queue, values, "batch", {}, batch))
    finally:
        queue.shutdown()
    assert sorted(p.name for p in out.iterdir()) == ["fox [1].txt", "fox [1].webp"]  # no tag read in the name
    assert webui_reads((out / "fox [1].webp").read_bytes()).startswith("a fox\nSteps: 2")


def test_job_timestamp_is_one_for_the_whole_job(model_api, tmp_path):
    import re

    client, engine = model_api
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "ts", "steps": 1, "width": 64, "height": 64, "seed": 31, "batch_size": 2, "save_images": True,
        "override_settings": {"samples_filename_pattern": "[job_timestamp]-[seed]", "save_to_dirs": False,
                              "save_images_add_number": False}})
    assert r.status_code == 200, r.text
    root = Path(engine.paths.resolve_output("outputs/txt2img-images"))
    names = sorted(p.name for p in root.glob("*-3[12].png"))
    stamps = {re.match(r"(\d{14})-3[12]\.png$", n).group(1) for n in names}
    assert len(names) == 2 and len(stamps) == 1, names


def test_datetime_takes_a_time_zone_and_image_hash_a_length():
    from datetime import timezone

    c = NameContext(now=datetime(2026, 12, 4, 9, 8, 7, tzinfo=timezone.utc), prompt="a cat")
    assert apply_pattern("[datetime<%Y%m%d_%H%M%S><Asia/Tokyo>]", c) == "20261204_180807"
    assert apply_pattern("[datetime<%H><No/Such_Zone>]", c) == "09"  # unknown zone: local time, as the WebUI
    im = Image.new("RGB", (2, 2))
    assert apply_pattern("[image_hash<6>]", c, im) == hashlib.sha256(im.tobytes()).hexdigest()[:6]
