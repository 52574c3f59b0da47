"""Infotext parsing on hostile input: linear time (10 MB texts), the WebUI's results, size caps,
PNG text-chunk bombs."""

from __future__ import annotations

import io
import random
import re
import struct
import time
import zlib

import pytest
from PIL import Image

from core.generation import infotext
from core.generation.infotext import (
    MAX_INFOTEXT_CHARS,
    WEBUI_PARAM_PATTERN,
    InfotextTooLarge,
    parameter_pairs,
    parse_generation_parameters,
    read_png_infotext,
)
from core.prompts.parser import uses_emphasis

WEBUI_PARAM = re.compile(WEBUI_PARAM_PATTERN)
ALPHABET = list("abZ1_  ::,,\"\"\\-/\tx.\n\r") + ["é", "一", "\u3000"]


def _random_lines(seed: int, count: int, longest: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, longest))) for _ in range(count)]


def test_pairs_are_the_webuis_on_random_lines():
    for line in _random_lines(1, 30_000, 30):
        assert parameter_pairs(line) == WEBUI_PARAM.findall(line), repr(line)


def test_pairs_are_the_webuis_on_infotext_like_lines():
    rng = random.Random(2)
    parts = ["Steps: 20", "Sampler: DPM++ 2M", 'Lora hashes: "a: 1, b: 2"', 'Bad: "open, ', "Size: 512x768",
             'Q: "es\\"c"', "Model: v1-5/x", "Empty: ", "bare", 'Two: "a" b', "a - b: c", " : x", "-k: v",
             "Key:value", '"q": 1', "Hires upscaler: Latent (nearest)", "中文键: 值"]
    for _ in range(5_000):
        line = ", ".join(rng.choice(parts) for _ in range(rng.randint(1, 8)))
        assert parameter_pairs(line) == WEBUI_PARAM.findall(line), repr(line)


def _split_reference(lines: list[str]) -> tuple[str, str]:
    """The WebUI's loop (Kiln's before it was made C-level)."""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines)


def test_prompt_lines_split_as_the_webui():
    rng = random.Random(3)
    pieces = ["Negative prompt:", "  Negative prompt: x ", "Negative prompt:Negative prompt: y", "a", " b\t",
              "\r", "", "c, d", "\u3000e", "Negative prompt"]
    for _ in range(3_000):
        lines = [rng.choice(pieces) for _ in range(rng.randint(0, 6))]
        assert infotext._split_prompt_lines(lines) == _split_reference(lines), lines


M = 10_000_000
SHAPES = {
    "no colon": "a" * M,
    "many commas": "a, " * (M // 3),
    "many quotes": '"' * M,
    "unbalanced quotes": 'Steps: 20, Sampler: "Euler, Seed: "' + "a," * (M // 2),
    "escaped quotes": 'Steps: 1, Seed: 2, Big: "' + '\\"' * (M // 2),
    "many newlines": "a\n" * (M // 2),
    "many colons": "a:" * (M // 2),
    "many pairs": "p\n" + "Key: v, " * (M // 8),
    "nested brackets": "(a" * (M // 2) + "\nSteps: 1, Seed: 2, Size: 8x8",
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_ten_megabytes_parse_in_linear_time(shape):
    text = SHAPES[shape]
    parse_generation_parameters("p\nSteps: 1, Sampler: Euler, Seed: 2")  # imports the sampler table first
    start = time.perf_counter()
    res = parse_generation_parameters(text, max_chars=None)
    elapsed = time.perf_counter() - start
    print(f"{shape}: {len(text) / 1e6:.0f} MB in {elapsed:.2f} s")
    assert elapsed < 6.0  # linear: ~0.1-1 s for 10 MB; the old pattern took 48-83 s for 64 KB
    assert isinstance(res["Prompt"], str)


def test_the_reported_64_kib_line_and_the_cap():
    parse_generation_parameters("p\nSteps: 1, Sampler: Euler, Seed: 2")
    start = time.perf_counter()
    res = parse_generation_parameters("a" * 65536)
    assert time.perf_counter() - start < 0.5
    assert res["Prompt"] == "a" * 65536
    at_cap = "x" * (MAX_INFOTEXT_CHARS - 30) + "\nSteps: 1, Seed: 2, Size: 8x8"
    assert parse_generation_parameters(at_cap[:MAX_INFOTEXT_CHARS])["Steps"] == "1"
    with pytest.raises(InfotextTooLarge) as raised:
        parse_generation_parameters("x" * (MAX_INFOTEXT_CHARS + 1))
    assert raised.value.field == "infotext"
    assert f"{MAX_INFOTEXT_CHARS + 1:,} characters" in str(raised.value)


@pytest.mark.parametrize("prompt", [
    "", "plain, text", "(a)", "[a]", "(a:1)", "(a:1.0) b", "a BREAK b", "(BREAK)", "\\(a\\)", "((a)) [b]",
    "(a:1.1)[b:1.1]", "[(a)]", "(unclosed", "x:1.2)", "(a:0.5)(b:2)", "(a[b)c]",
])
def test_bounded_emphasis_check_agrees_on_ordinary_prompts(prompt):
    assert infotext._uses_emphasis(prompt) == uses_emphasis(prompt)


def test_emphasis_check_on_a_deeply_nested_prompt_is_bounded():
    start = time.perf_counter()
    assert infotext._uses_emphasis("(a" * 500_000)
    assert not infotext._uses_emphasis("a:" * 500_000)
    assert time.perf_counter() - start < 0.5


# --- PNG text chunks --------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with(chunks: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = buffer.getvalue()
    at = data.index(b"IDAT") - 4
    return data[:at] + b"".join(chunks) + data[at:]


BOMB = zlib.compress(b"a" * 200_000_000, 9)  # 200 MB of text in ~200 KB


@pytest.mark.parametrize("chunks", [
    [_chunk(b"zTXt", b"parameters\x00\x00" + BOMB)],
    [_chunk(b"iTXt", b"parameters\x00\x01\x00\x00\x00" + BOMB)],
    [_chunk(b"tEXt", b"k%d\x00" % i + b"a" * 10_000_000) for i in range(7)],  # 70 MB in all
], ids=["zTXt bomb", "iTXt bomb", "70 MB of tEXt"])
def test_text_chunk_bombs_give_a_clear_error_at_once(chunks):
    data = _png_with(chunks)
    start = time.perf_counter()
    with pytest.raises(InfotextTooLarge) as raised:
        read_png_infotext(data)
    assert time.perf_counter() - start < 6.0
    assert raised.value.field == "image" and "text chunks are too large" in str(raised.value)


def test_a_large_but_allowed_chunk_reads_whole():
    text = "p, " * 300_000 + "\nSteps: 1, Seed: 2, Size: 8x8"
    data = _png_with([_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(text.encode(), 9))])
    assert read_png_infotext(data) == text
    assert parse_generation_parameters(text)["Seed"] == "2"


def test_png_info_tab_shows_the_reason_for_a_bomb_or_a_broken_file(tmp_path):
    from ui.pnginfo import image_outputs

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with([_chunk(b"zTXt", b"parameters\x00\x00" + BOMB)]))
    text, _table, parsed = image_outputs(str(bomb))
    assert "text chunks are too large" in text and parsed == {}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    text, _table, parsed = image_outputs(str(broken))
    assert text.startswith("This file is not an image Kiln can read.") and parsed == {}
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert image_outputs(str(plain))[0] == "This image has no generation parameters."
