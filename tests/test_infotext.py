"""Infotext: the WebUI's layout and key order, quoting, parsing defaults, image round trips."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from core.generation.infotext import (
    create_infotext,
    exif_with_parameters,
    format_name_hashes,
    old_hires_fix_first_pass_dimensions,
    parse_generation_parameters,
    parse_name_hashes,
    png_info_with_parameters,
    quote,
    read_png_infotext,
    unquote,
)

WEBUI_DOCSTRING_INFOTEXT = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
    "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, "
    "poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)


def test_layout_and_fixed_order_with_extras_in_insertion_order():
    params = {
        # given deliberately out of order: the WebUI's fixed order wins, extras keep theirs
        "Version": "v1.10.1",
        "Hires upscale": 2,
        "Seed": 1,
        "Steps": 20,
        "Denoising strength": 0.7,
        "Lora hashes": "foo: 0123456789ab",
        "Size": (512, 768),
        "Sampler": "Euler a",
        "Schedule type": "Karras",
        "CFG scale": 7,
        "Model hash": "0123456789",
        "Model": "name",
        "Hires steps": 10,
        "Hires upscaler": "Latent",
        "Face restoration": None,
        "Clip skip": 2,
        "RNG": "CPU",
        "TI hashes": "emb: abcdef012345",
    }
    text = create_infotext("a cat", "blurry", params)
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, "
        "Model hash: 0123456789, Model: name, Denoising strength: 0.7, Clip skip: 2, RNG: CPU, "
        'Hires upscale: 2, Lora hashes: "foo: 0123456789ab", Hires steps: 10, Hires upscaler: Latent, '
        'TI hashes: "emb: abcdef012345", Version: v1.10.1'
    )


def test_defaults_are_left_out_and_empty_negative_has_no_line():
    text = create_infotext(
        "p",
        "",
        {
            "Steps": 4,
            "Sampler": "Euler",
            "Seed": 3,
            "Clip skip": 1,
            "RNG": "GPU",
            "Variation seed": 99,
            "Variation seed strength": 0,
            "Token merging ratio": 0,
            "Tiling": None,
        },
    )
    assert text == "p\nSteps: 4, Sampler: Euler, Seed: 3"
    with_variation = create_infotext(
        "p", "", {"Seed": 3, "Variation seed": 99, "Variation seed strength": 0.25}
    )
    assert with_variation == "p\nSeed: 3, Variation seed: 99, Variation seed strength: 0.25"


def test_key_equal_to_value_is_written_bare():
    assert create_infotext("p", "", {"Steps": 1, "Foo": "Foo"}) == "p\nSteps: 1, Foo"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("中文, 提示", '"中文, 提示"'),
        (7, 7),
    ],
)
def test_quote(value, written):
    assert quote(value) == written
    assert unquote(str(written)) == str(value)


def test_unquote_invalid_json_keeps_text():
    assert unquote('"not \\x valid"') == '"not \\x valid"'
    assert unquote("") == ""


def test_parse_webui_docstring_example():
    res = parse_generation_parameters(WEBUI_DOCSTRING_INFOTEXT)
    assert res["Prompt"].startswith("girl with an artist's beret")
    assert res["Negative prompt"].endswith("messy drawing")
    assert res["Steps"] == "20"
    assert res["Sampler"] == "Euler a"
    assert res["CFG scale"] == "7"
    assert res["Seed"] == "965400086"
    assert (res["Size-1"], res["Size-2"]) == ("512", "512")
    assert "Size" not in res
    assert res["Model hash"] == "45dee52b"
    # defaults for keys the infotext leaves out
    assert res["Clip skip"] == "1"
    assert res["RNG"] == "GPU"
    assert res["Schedule type"] == "Automatic"
    assert res["Hires sampler"] == "Use same sampler"
    assert res["Hires schedule type"] == "Use same scheduler"
    assert res["Hires checkpoint"] == "Use same checkpoint"
    assert res["Hires prompt"] == "" and res["Hires negative prompt"] == ""
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (0, 0)
    assert res["Mask mode"] == "Inpaint masked"
    assert res["Masked area padding"] == 32
    assert res["FP8 weight"] == "Disable"
    assert "Cache FP16 weight for LoRA" not in res
    # the prompt uses emphasis and the infotext predates the setting
    assert res["Emphasis"] == "Original"


PROMPTS = [
    ("a cat, sitting: on a mat", "blurry, (bad hands:1.2)"),
    ("line one\nline two, with comma\nline three", "neg line\nsecond neg"),
    ('quotes "inside", and \\ backslash', ""),
    ("一只猫，坐在垫子上, 高清", "模糊"),
    ("[cat:dog:0.5] AND (sky:1.3) <lora:foo:0.8>", "[ugly|bad]"),
]


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_round_trip_every_key(prompt, negative):
    params = {
        "Steps": 28,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 6.5,
        "Seed": 1234567890,
        "Size": "832x1216",
        "Model hash": "0123456789",
        "Model": "model, v2: final",
        "VAE hash": "abcdef0123",
        "VAE": "sdxl_vae.safetensors",
        "Variation seed": 42,
        "Variation seed strength": 0.3,
        "Seed resize from": "512x512",
        "Denoising strength": 0.45,
        "Clip skip": 2,
        "RNG": "CPU",
        "Hires upscale": 1.5,
        "Hires steps": 12,
        "Hires upscaler": "R-ESRGAN 4x+",
        "Hires prompt": "hires, text\nwith newline",
        "Lora hashes": format_name_hashes([("foo", "0123456789ab"), ("b:a,r", "ba9876543210")]),
        "TI hashes": format_name_hashes([("emb", "abcdef012345")]),
        "Emphasis": "No norm",
        "Extension note": 'he said "x: y"',
        "Version": "v1.10.1",
    }
    text = create_infotext(prompt, negative, params)
    res = parse_generation_parameters(text)
    assert res["Prompt"] == prompt
    assert res["Negative prompt"] == negative
    for key, value in params.items():
        if key in ("Size", "Seed resize from"):
            width, height = str(value).split("x")
            assert (res[f"{key}-1"], res[f"{key}-2"]) == (width, height)
        else:
            assert res[key] == str(value), key
    assert parse_name_hashes(res["Lora hashes"]) == {"foo": "0123456789ab", "bar": "ba9876543210"}


def test_last_line_needs_three_parameters():
    res = parse_generation_parameters("a prompt\nSteps: 20, Seed: 1")
    assert res["Prompt"] == "a prompt\nSteps: 20, Seed: 1"
    assert "Steps" not in res
    res = parse_generation_parameters("just a prompt")
    assert res["Prompt"] == "just a prompt" and res["Negative prompt"] == ""


def test_negative_prompt_takes_following_lines_and_lines_are_stripped():
    res = parse_generation_parameters(
        "  p1  \np2\nNegative prompt:   n1 \n n2\nSteps: 1, Sampler: Euler, Seed: 5, Empty: , Clip skip: 3"
    )
    assert res["Prompt"] == "p1\np2"
    assert res["Negative prompt"] == "n1\nn2"
    assert res["Clip skip"] == "3"
    assert "Empty" not in res


@pytest.mark.parametrize(
    ("written", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("Euler a", "Euler a", "Automatic"),
        ("DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun", "Automatic"),
        ("DDIM", "DDIM", "Automatic"),
        ("Euler SGMUniform", "Euler", "SGM Uniform"),
    ],
)
def test_old_sampler_names_are_split(written, sampler, schedule):
    res = parse_generation_parameters(f"p\nSteps: 20, Sampler: {written}, CFG scale: 7, Seed: 1")
    assert (res["Sampler"], res["Schedule type"]) == (sampler, schedule)


def test_hires_sampler_split_and_automatic_conversion():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Seed: 1, Hires sampler: DPM++ 2M Karras")
    assert (res["Hires sampler"], res["Hires schedule type"]) == ("DPM++ 2M", "Karras")
    # parsing keeps what was written; the paste-time conversion (a sampler's own default scheduler
    # shows as Automatic) is split_sampler_name's, tested in test_sampling_samplers.py
    res = parse_generation_parameters("p\nSteps: 20, Sampler: k_lms_ka, Seed: 1, Hires sampler: Use same sampler")
    assert (res["Sampler"], res["Schedule type"], res["Hires sampler"]) == ("LMS", "Karras", "Use same sampler")
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler a, Schedule type: Karras, Seed: 1")
    assert (res["Sampler"], res["Schedule type"]) == ("Euler a", "Karras")
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler Dy Karras, Seed: 1")  # an extension's sampler
    assert (res["Sampler"], res["Schedule type"]) == ("Euler Dy", "Karras")


def test_old_hires_fix_first_pass_size():
    res = parse_generation_parameters("p\nSteps: 20, Seed: 1, Size: 1024x768, First pass size: 0x0")
    assert (res["Size-1"], res["Size-2"]) == old_hires_fix_first_pass_dimensions(1024, 768) == (640, 448)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 768)


def test_hypernet_key_becomes_prompt_tag():
    res = parse_generation_parameters("p\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet strength: 0.5")
    assert res["Prompt"] == "p<hypernet:anime:0.5>"


def test_version_backcompat_flags():
    old = parse_generation_parameters("a [b:c:0.5]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.1")
    assert old["Old prompt editing timelines"] is True
    assert old["Pad conds v0"] is True
    assert old["Downcast alphas_cumprod"] is True
    git = parse_generation_parameters("p\nSteps: 20, Seed: 1, Version: v1.7.0-226-g1234567")
    assert "Downcast alphas_cumprod" not in git
    new = parse_generation_parameters("a [b:c:0.5]\nSteps: 20, Seed: 1, Version: v1.10.1")
    assert not any(key in new for key in ("Old prompt editing timelines", "Downcast alphas_cumprod"))
    kiln = parse_generation_parameters("p\nSteps: 20, Seed: 1, Version: kiln 0.1")
    assert "Downcast alphas_cumprod" not in kiln


def test_skip_fields():
    res = parse_generation_parameters("p\nSteps: 20, Seed: 1, Sampler: Euler", skip_fields=["Seed"])
    assert "Seed" not in res and res["Steps"] == "20"


TEXT = 'a cat, "quoted"\n一只猫 (best:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 7'


def test_png_text_chunk_round_trip(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_info_with_parameters(TEXT))
    assert read_png_infotext(path) == TEXT
    assert read_png_infotext(path.read_bytes()) == TEXT
    latin = tmp_path / "latin.png"
    Image.new("RGB", (8, 8)).save(latin, pnginfo=png_info_with_parameters("plain text"))
    assert read_png_infotext(str(latin)) == "plain text"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_round_trip(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, fmt, exif=exif_with_parameters(TEXT))
    assert read_png_infotext(buffer.getvalue()) == TEXT


def test_user_comment_little_endian_and_ascii():
    for payload in (b"UNICODE\x00" + TEXT.encode("utf_16_le"), b"ASCII\x00\x00\x00" + b"plain, text"):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = payload
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "JPEG", exif=exif.tobytes())
        expected = TEXT if payload.startswith(b"UNICODE") else "plain, text"
        assert read_png_infotext(buffer.getvalue()) == expected


def test_image_without_parameters():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    assert read_png_infotext(buffer.getvalue()) is None


def test_gif_comment():
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, "GIF", comment=TEXT.encode("utf8"))
    assert read_png_infotext(buffer.getvalue()) == TEXT


def test_rescale_cfg_key_round_trips_to_the_txt2img_field():
    from core.api.paste import fields_from_infotext

    text = create_infotext("p", "", {"Steps": 20, "Sampler": "Euler", "CFG scale": 7, "Seed": 1, "Size": "64x64",
                                     "Rescale CFG": 0.7, "Version": "kiln-0.1.0"})
    assert text == "p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Rescale CFG: 0.7, Version: kiln-0.1.0"
    parsed = parse_generation_parameters(text)
    assert parsed["Rescale CFG"] == "0.7" and fields_from_infotext(parsed)["rescale_cfg"] == 0.7
    # Forge leaves the key out when the slider is 0: pasting such a text turns Rescale CFG off.
    without = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1")
    assert fields_from_infotext(without)["rescale_cfg"] == 0.0
