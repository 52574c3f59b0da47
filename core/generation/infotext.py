"""The WebUI's infotext: the ``parameters`` text stored in images, written and parsed.

Layout, key order, quoting and parsing follow AUTOMATIC1111 v1.10.1 (``processing.create_infotext``,
``infotext_utils.parse_generation_parameters``, ``infotext_versions``, ``images.read_info_from_image``)
so that images move between Kiln and the WebUI (PNG Info, "Send to txt2img", the REST API)
without losing a setting.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from packaging import version
from PIL import Image, PngImagePlugin

from core.errors import InvalidParameterError
from core.prompts.parser import uses_emphasis

# Keys the WebUI writes at fixed places, in this order; every other key follows in the order the
# caller inserted it (hires fix, Lora hashes, TI hashes, Emphasis, extensions), then these last.
FIXED_KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

PNG_TEXT_KEY = "parameters"
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286
_TIFF_LONG = 4
_TIFF_UNDEFINED = 7

# --- writing -------------------------------------------------------------------------------


def quote(value: object) -> object:
    """A value with ``,``, ``:`` or a newline is written as a JSON string; others unchanged."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo :func:`quote`: a ``"..."`` value goes through JSON, falling back to the raw text."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _as_text_value(value: object) -> object:
    """``(512, 768)`` sizes are written ``512x768`` like the WebUI's ``f"{w}x{h}"``."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return value


def _drop_defaults(params: dict[str, object]) -> None:
    """The WebUI leaves these out when they hold their default, so parsing restores them."""
    clip_skip = params.get("Clip skip")
    if clip_skip is not None and int(float(str(clip_skip))) <= 1:
        params["Clip skip"] = None
    strength = params.get("Variation seed strength")
    if strength is None or float(str(strength)) == 0:
        params["Variation seed"] = None
        params["Variation seed strength"] = None
    if params.get("RNG") == "GPU":
        params["RNG"] = None
    for key in ("Token merging ratio", "Token merging ratio hr"):
        value = params.get(key)
        if value is not None and float(str(value)) == 0:
            params[key] = None


def order_parameters(params: Mapping[str, object]) -> dict[str, object]:
    """The WebUI's key order: fixed keys, then the rest as given, then Version and User."""
    ordered: dict[str, object] = {key: params[key] for key in FIXED_KEY_ORDER if key in params}
    for key, value in params.items():
        if key not in ordered and key not in TRAILING_KEYS:
            ordered[key] = value
    for key in TRAILING_KEYS:
        if key in params:
            ordered[key] = params[key]
    return ordered


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The text the WebUI stores under ``parameters``.

    ``params`` maps infotext keys to values; ``None`` values are left out, ``Clip skip`` ≤ 1,
    ``RNG: GPU`` and a zero variation strength are left out as the WebUI does, and a value equal
    to its key is written as the bare key.
    """
    ordered = order_parameters(params)
    _drop_defaults(ordered)
    fields = []
    for key, value in ordered.items():
        if value is None:
            continue
        value = _as_text_value(value)
        fields.append(key if key == value else f"{key}: {quote(value)}")
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(fields)}".strip()


def format_name_hashes(hashes: Iterable[tuple[str, str]]) -> str:
    """``Lora hashes`` / ``TI hashes`` value: ``"name: hash, name2: hash2"``; ``:`` and ``,``
    are removed from names so the value parses back."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {digest}" for name, digest in hashes)


def parse_name_hashes(value: str) -> dict[str, str]:
    """Inverse of :func:`format_name_hashes` (the WebUI's Lora/TI hash lookup on paste)."""
    result = {}
    for part in value.split(","):
        name, sep, digest = part.partition(":")
        if sep:
            result[name.strip()] = digest.strip()
    return result


# --- parsing -------------------------------------------------------------------------------

# The WebUI's pattern for one "Key: value" pair of the last line. ``findall`` with it is quadratic
# on a long run of key characters not followed by a colon (every start inside the run rescans it:
# a 64 KiB line took 48 s), so Kiln parses with _PARAM below; tests check both give the same pairs.
WEBUI_PARAM_PATTERN = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'

# The same pairs in linear time. A key can only end at a colon and runs of key characters never
# span the comma that ends a pair, so the first key after any point is the first word character
# of a whole run. Each match is either a pair, or the text up to the next pair skipped in one go
# (runs whole, never restarting inside one; groups empty). Possessive quantifiers never give back
# what could not have matched anyway: the quoted value ends at its first unescaped quote.
_PARAM = re.compile(
    r"""
      [ \-/]*+ (\w[\w \-/]++) :                          # key: a word character, then key characters
      \s*+ ( "(?!")[^\\"]*+(?:\\.[^\\"]*+)*+"(?=,|$)    # value: a JSON string ending the pair,
            | [^,]*+ ) (?:,|$)                         #   or everything up to the next comma
    | \W*+ (?: (?!\w[\w \-/]++:) \w[\w \-/]*+ \W*+ )*+     # or: skip to the next key
    """,
    re.X,
)
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")

# An infotext longer than this is refused by the parser. The WebUI has no limit, but its infotexts
# are a few kilobytes (tens with long prompts and many extensions); 1 MiB is also the most PIL
# reads from one compressed PNG text chunk (PngImagePlugin.MAX_TEXT_CHUNK).
MAX_INFOTEXT_CHARS = 1 << 20


class InfotextTooLarge(InvalidParameterError):
    """An infotext (or an image's text chunks) too large to read; the API answers 422."""


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """``(key, value)`` for each ``Key: value`` in a line, as ``re.findall`` with the WebUI's
    pattern gives them (values still quoted), in time linear in the line's length."""
    if ":" not in line:
        return []
    return [pair for pair in _PARAM.findall(line) if pair[0]]


def old_hires_fix_first_pass_dimensions(width: int, height: int) -> tuple[int, int]:
    """The pre-1.0 automatic first-pass size: about 512×512 pixels, multiples of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix_params(res: dict[str, object]) -> None:
    """Infotexts with ``First pass size`` describe the final size in ``Size``: convert."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    first_w, first_h = int(first_w), int(first_h)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if first_w == 0 or first_h == 0:
        first_w, first_h = old_hires_fix_first_pass_dimensions(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


_V160 = version.parse("1.6.0")
_V170_TSNR = version.parse("v1.7.0-225")
_V180 = version.parse("1.8.0")


def _parse_version(text: object) -> version.Version | None:
    """``v1.7.0-225-gabc1234`` → 1.7.0.post225, as ``infotext_versions.parse_version``."""
    if not isinstance(text, str):
        return None
    match = re.match(r"([^-]+-[^-]+)-.*", text)
    if match:
        text = match.group(1)
    try:
        return version.parse(text)
    except version.InvalidVersion:
        return None


def _backcompat(res: dict[str, object]) -> None:
    """Old WebUI versions imply settings that newer versions changed (``infotext_versions``)."""
    parsed = _parse_version(res.get("Version"))
    if parsed is None:
        return
    if parsed < _V160 and "[" in str(res.get("Prompt", "")):
        res["Old prompt editing timelines"] = True
    if parsed < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if parsed < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if parsed < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_LATE_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


_NEGATIVE_LINE = re.compile(r"^[^\S\n]*+Negative prompt:[^\S\n]*+", re.M)


def _split_prompt_lines(lines: list[str]) -> tuple[str, str]:
    """(prompt, negative prompt): each line stripped; from the first line starting with
    ``Negative prompt:`` on, lines are the negative prompt, that prefix removed from any of them.
    (C-level string operations: a text of millions of lines takes milliseconds.)"""
    stripped = list(map(str.strip, lines))
    joined = "\n".join(stripped)
    first = _NEGATIVE_LINE.search(joined)
    if first is None:
        return joined, ""
    at = joined.count("\n", 0, first.start())
    negative = _NEGATIVE_LINE.sub("", "\n".join(stripped[at:]))
    return "\n".join(stripped[:at]), negative


# parse_emphasis costs a Python step per token and, for each closing bracket, one per entry
# since its opening: quadratic in nesting ("(a" × 10 000 takes seconds). Past these bounds the
# paste check below answers from the brackets alone.
_EMPHASIS_MAX_TOKENS = 100_000
_EMPHASIS_MAX_STEPS = 2_000_000


def _uses_emphasis(text: str) -> bool:
    """:func:`uses_emphasis`, bounded in time: without an opening bracket no weight changes; a
    text too large or too nested to check counts as using emphasis (it has brackets)."""
    opens = text.count("(") + text.count("[")
    if opens == 0:
        return False
    tokens = 2 * sum(text.count(ch) for ch in "\\()[]:") + 1
    if tokens > _EMPHASIS_MAX_TOKENS or opens * tokens > _EMPHASIS_MAX_STEPS:
        return True
    return uses_emphasis(text)


def _split_old_sampler_names(res: dict[str, object]) -> None:
    """``Sampler: DPM++ 2M Karras`` (before 1.9) → ``Sampler: DPM++ 2M``, ``Schedule type: Karras``;
    the same for ``Hires sampler``. Names without a schedule on them stay as written."""
    from core.sampling.samplers import split_sampler_name  # the sampler table (imports torch)

    for sampler_key, schedule_key, same in (("Sampler", "Schedule type", None),
                                            ("Hires sampler", "Hires schedule type", "Use same sampler")):
        written = res.get(sampler_key)
        if not isinstance(written, str) or written == same:
            continue
        name, schedule = split_sampler_name(written, None, convert_automatic=False)
        if schedule != "Automatic":
            res[sampler_key], res[schedule_key] = name, schedule


def parse_generation_parameters(text: str, skip_fields: Iterable[str] = (), *,
                                max_chars: int | None = MAX_INFOTEXT_CHARS, styles: Any = None,
                                infotext_styles: str = "Apply if any") -> dict[str, object]:
    """The WebUI's ``parse_generation_parameters``: infotext → ``{key: value}``.

    Values are strings as written (``Size`` becomes ``Size-1``/``Size-2``); keys the infotext
    leaves out get the WebUI's defaults (``Clip skip`` "1", ``RNG`` "GPU", ``Schedule type``
    "Automatic", ``Hires sampler`` "Use same sampler", ...). Old combined sampler names are split
    into sampler and schedule type. With ``styles`` (a :class:`core.styles.StyleDatabase`), the
    styles found in the prompts are taken out of them and listed as ``Styles array``, as the
    WebUI's ``infotext_styles`` option says (``"Ignore"``, ``"Apply"``, ``"Discard"``, ``"Apply if any"``).

    Time is linear in the text's length; a text longer than ``max_chars`` (None: no limit) raises
    :class:`InfotextTooLarge`.
    """
    if max_chars is not None and len(text) > max_chars:
        raise InfotextTooLarge(
            "infotext", f"{len(text):,} characters, more than the {max_chars:,} Kiln reads",
            hint="a WebUI infotext is a few kilobytes; this one was not parsed")
    *lines, last_line = text.strip().split("\n")
    pairs = parameter_pairs(last_line)
    if len(pairs) < 3:
        lines.append(last_line)
        pairs = []
    prompt, negative_prompt = _split_prompt_lines(lines)

    res: dict[str, object] = {}
    for key, value in pairs:
        if not value:
            continue  # the WebUI fails on an empty value and skips the key
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = _IMAGE_SIZE.match(value) if isinstance(value, str) else None
        if size is not None:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    if styles is not None:
        from core.styles import extract_pasted_styles

        extract_pasted_styles(res, styles, infotext_styles)
        prompt, negative_prompt = str(res["Prompt"]), str(res["Negative prompt"])
    res.setdefault("Clip skip", "1")
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"], res["Hires resize-2"] = 0, 0
    for key, default in _DEFAULTS:
        res.setdefault(key, default)
    _restore_old_hires_fix_params(res)
    for key, default in _LATE_DEFAULTS:
        res.setdefault(key, default)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False

    # Pasting an infotext from before the emphasis setting existed must restore "Original".
    if "Emphasis" not in res and (_uses_emphasis(prompt) or _uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    _split_old_sampler_names(res)
    _backcompat(res)
    for key in skip_fields:
        res.pop(key, None)
    return res


# --- image files ---------------------------------------------------------------------------


def _decode_user_comment(data: bytes | str) -> str:
    """EXIF UserComment: an 8-byte charset prefix then the text (piexif's ``UserComment.load``)."""
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\x00":
        # piexif writes UTF-16 big-endian; some tools write little-endian. Pick the reading
        # that yields more ordinary characters.
        big = body.decode("utf_16_be", errors="replace")
        little = body.decode("utf_16_le", errors="replace")

        def plain_score(s: str) -> int:
            return sum(ch.isprintable() or ch in "\n\t" for ch in s) - 4 * s.count("\ufffd")

        return big if plain_score(big) >= plain_score(little) else little
    if prefix == b"JIS\x00\x00\x00\x00\x00":
        return body.decode("shift_jis", errors="replace")
    if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return body.decode("utf8", errors="ignore")
    return data.decode("utf8", errors="ignore")


def read_png_infotext(source: str | Path | Image.Image | bytes) -> str | None:
    """The generation parameters stored in an image, or None.

    PNG: the ``parameters`` text chunk. JPEG/WEBP/AVIF: EXIF UserComment (it wins when present,
    as in the WebUI). GIF: the comment.
    """
    if isinstance(source, Image.Image):
        return _infotext_of(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            return _infotext_of(image)
    except ValueError as exc:
        problem = text_chunk_problem(exc)
        if problem is None:
            raise
        raise InfotextTooLarge("image", problem) from None


def text_chunk_problem(exc: BaseException) -> str | None:
    """What to tell the user when PIL refused to open an image because of its text chunks
    (its defence against decompression bombs: one compressed chunk over 1 MiB, or over 64 MiB
    of text in all); None for any other error."""
    text = str(exc)
    if "MAX_TEXT_CHUNK" not in text and "MAX_TEXT_MEMORY" not in text:
        return None
    return (f"its text chunks are too large to read (more than {PngImagePlugin.MAX_TEXT_CHUNK >> 20} MiB "
            f"in one compressed chunk or {PngImagePlugin.MAX_TEXT_MEMORY >> 20} MiB in all); "
            "a WebUI image holds a few kilobytes of text")


def _infotext_of(image: Image.Image) -> str | None:
    info = image.info or {}
    text = info.get(PNG_TEXT_KEY)
    if "exif" in info:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
        decoded = _decode_user_comment(comment) if comment else ""
        if decoded:
            text = decoded
    elif "comment" in info:
        comment = info["comment"]
        text = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    if text is not None and not isinstance(text, str):
        text = str(text)
    return text


def png_info_with_parameters(text: str, extra: Mapping[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """PNG text chunks: ``parameters`` (tEXt when latin-1, else iTXt) plus any extra chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (extra or {}).items():
        info.add_text(key, str(value))
    info.add_text(PNG_TEXT_KEY, text)
    return info


def exif_with_parameters(text: str) -> bytes:
    """EXIF bytes for JPEG/WEBP/AVIF ``save(exif=...)`` holding the text as the WebUI writes it with
    ``piexif.helper.UserComment.dump(text, encoding="unicode")``: ``b"UNICODE\\0"`` then UTF-16
    big-endian (piexif's fixed byte order), as an UNDEFINED (type 7) value.

    Written by hand, big-endian TIFF as piexif does: Pillow stores a ``bytes`` UserComment as
    BYTE (type 1), which piexif hands back as a tuple of numbers that the WebUI cannot decode."""
    comment = b"UNICODE\x00" + text.encode("utf_16_be", errors="replace")
    exif_ifd_at = 8 + 2 + 12 + 4  # after the header and IFD0 (one entry, next-IFD offset)
    value_at = exif_ifd_at + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", _EXIF_IFD, _TIFF_LONG, 1, exif_ifd_at) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", _EXIF_USER_COMMENT, _TIFF_UNDEFINED, len(comment), value_at)
    tiff += struct.pack(">I", 0) + comment
    return b"Exif\x00\x00" + tiff


__all__ = [
    "FIXED_KEY_ORDER",
    "MAX_INFOTEXT_CHARS",
    "PNG_TEXT_KEY",
    "WEBUI_PARAM_PATTERN",
    "InfotextTooLarge",
    "create_infotext",
    "exif_with_parameters",
    "format_name_hashes",
    "order_parameters",
    "parse_generation_parameters",
    "parameter_pairs",
    "parse_name_hashes",
    "png_info_with_parameters",
    "quote",
    "read_png_infotext",
    "text_chunk_problem",
    "unquote",
]
