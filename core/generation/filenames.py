"""The WebUI's file and folder name patterns (``modules/images.py`` FilenameGenerator).

``samples_filename_pattern`` and ``directories_filename_pattern`` hold text with ``[tags]``:
``[seed]``, ``[prompt_words]``, ``[model_name]``, ``[datetime<%Y%m%d>]``, ``[prompt_hash<8>]``,
``[hasprompt<cat|no cat><dog>]``... A tag is replaced by its value made filename-safe; a tag that
has no value here (``[batch_number]`` in a batch of one) is dropped with the text just before it;
an unknown tag stays as written, brackets included — all as in the WebUI.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image

MAX_FILENAME_PART_LENGTH = 128  # the WebUI's --filenames-max-length default
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
_INVALID_CHARS = '#<>:"/\\|?*\n\r\t'
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$")


class _Skip:
    """A tag with nothing to say here: it and the text before it are left out."""


SKIP = _Skip()


def sanitize_filename_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """The WebUI's rule: spaces → ``_`` (when asked), ``#<>:"/\\|?*`` and line breaks → ``_``, no
    leading space, at most 128 characters, no trailing space or dot."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(ch): "_" for ch in _INVALID_CHARS})
    return text.lstrip(" ")[:MAX_FILENAME_PART_LENGTH].rstrip(" .")


@dataclass(frozen=True)
class NameContext:
    """What the tags of one picture read (the WebUI reads them from its processing object)."""

    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: Sequence[str] = ()
    style_prompts: Sequence[str] = ()  # the styles' prompt texts, for [prompt_no_styles]
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    model_name: str | None = None
    model_hash: str | None = None
    vae_name: str | None = None  # the VAE file name, None when the checkpoint's own VAE is used
    denoising_strength: float | None = None
    clip_skip: int = 1
    batch_size: int = 1
    batch_index: int = 0
    iteration: int = 0
    batch_count: int = 1
    all_seeds: Sequence[int] = ()
    user: str | None = None
    job_timestamp: str = ""
    now: datetime = field(default_factory=datetime.now)


def _prompt_words(c: NameContext, max_words: int) -> str | None:
    words = [w for w in _NON_LETTERS.split(c.prompt or "") if w] or ["empty"]
    return sanitize_filename_part(" ".join(words[:max_words]), replace_spaces=False)


def _datetime(c: NameContext, *args: str) -> str | None:
    time_format = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
    moment = c.now
    if len(args) > 1:
        try:
            from zoneinfo import ZoneInfo

            moment = moment.astimezone(ZoneInfo(args[1]))
        except (KeyError, ValueError, OSError):
            pass  # an unknown time zone: local time, as the WebUI does
    try:
        text = moment.strftime(time_format)
    except (ValueError, TypeError):
        text = moment.strftime(DEFAULT_TIME_FORMAT)
    return sanitize_filename_part(text, replace_spaces=False)


def _string_hash(text: str, *args: str) -> str:
    length = int(args[0]) if args and args[0] != "" else 8
    return hashlib.sha256(text.encode()).hexdigest()[0:length]


def _hasprompt(c: NameContext, *args: str) -> str | None:
    lower = (c.prompt or "").lower()
    result = ""
    for arg in args:
        if arg == "":
            continue
        division = arg.split("|")
        expected = division[0].lower()
        default = division[1] if len(division) > 1 else ""
        if lower.find(expected) >= 0:
            result += expected
        elif default:
            result += default
    return sanitize_filename_part(result)


def _prompt_no_styles(c: NameContext) -> str | None:
    text = c.prompt
    for style in c.style_prompts:
        if not style:
            continue
        for part in style.split("{prompt}"):
            text = text.replace(part, "").replace(", ,", ",").strip().strip(",")
        text = text.replace(style, "").strip().strip(",").strip()
    return sanitize_filename_part(text, replace_spaces=False)


def _vae_filename(c: NameContext) -> str:
    if not c.vae_name:
        return "NoneType"  # the WebUI's text when no separate VAE is loaded
    parts = c.vae_name.replace("\\", "/").rsplit("/", 1)[-1].split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]


def _sampler_scheduler(c: NameContext) -> str | None:
    if c.sampler is None:
        return None
    name = c.sampler if c.scheduler in (None, "", "Automatic") else f"{c.sampler} {c.scheduler}"
    return sanitize_filename_part(name, replace_spaces=False)


def _image_hash(image: Image.Image | None, *args: str) -> str | None:
    if image is None:
        return None
    length = int(args[0]) if args and args[0] != "" else None
    return hashlib.sha256(image.tobytes()).hexdigest()[0:length]


def _replacements(max_words: int) -> dict[str, Callable[..., Any]]:
    """tag → value(context, image, *args); None keeps the tag as written, SKIP drops it."""
    one = lambda c: c.batch_size == 1  # noqa: E731
    return {
        "seed": lambda c, im: c.seed if c.seed is not None else "",
        "seed_first": lambda c, im: c.seed if one(c) else (c.all_seeds[0] if c.all_seeds else c.seed),
        "seed_last": lambda c, im: SKIP if one(c) else (c.all_seeds[-1] if c.all_seeds else c.seed),
        "steps": lambda c, im: c.steps,
        "cfg": lambda c, im: c.cfg_scale,
        "width": lambda c, im: im.width if im is not None else None,
        "height": lambda c, im: im.height if im is not None else None,
        "styles": lambda c, im: sanitize_filename_part(", ".join(s for s in c.styles if s != "None") or "None",
                                                       replace_spaces=False),
        "sampler": lambda c, im: sanitize_filename_part(c.sampler, replace_spaces=False),
        "sampler_scheduler": lambda c, im: _sampler_scheduler(c),
        "scheduler": lambda c, im: sanitize_filename_part(c.scheduler, replace_spaces=False),
        "model_hash": lambda c, im: c.model_hash,
        "model_name": lambda c, im: sanitize_filename_part(c.model_name, replace_spaces=False),
        "date": lambda c, im: c.now.strftime("%Y-%m-%d"),
        "datetime": lambda c, im, *args: _datetime(c, *args),
        "job_timestamp": lambda c, im: c.job_timestamp or c.now.strftime(DEFAULT_TIME_FORMAT),
        "prompt_hash": lambda c, im, *args: _string_hash(c.prompt, *args),
        "negative_prompt_hash": lambda c, im, *args: _string_hash(c.negative_prompt, *args),
        "full_prompt_hash": lambda c, im, *args: _string_hash(f"{c.prompt} {c.negative_prompt}", *args),
        "prompt": lambda c, im: sanitize_filename_part(c.prompt),
        "prompt_no_styles": lambda c, im: _prompt_no_styles(c),
        "prompt_spaces": lambda c, im: sanitize_filename_part(c.prompt, replace_spaces=False),
        "prompt_words": lambda c, im: _prompt_words(c, max_words),
        "batch_number": lambda c, im: SKIP if one(c) else c.batch_index + 1,
        "batch_size": lambda c, im: c.batch_size,
        "generation_number": lambda c, im: SKIP if c.batch_count == 1 and one(c)
        else c.iteration * c.batch_size + c.batch_index + 1,
        "hasprompt": lambda c, im, *args: _hasprompt(c, *args),
        "clip_skip": lambda c, im: c.clip_skip,
        "denoising": lambda c, im: c.denoising_strength if c.denoising_strength else SKIP,
        "user": lambda c, im: c.user,
        "vae_filename": lambda c, im: _vae_filename(c),
        "none": lambda c, im: "",
        "image_hash": lambda c, im, *args: _image_hash(im, *args),
    }


TAGS = tuple(_replacements(8))


def apply_pattern(pattern: str, context: NameContext, image: Image.Image | None = None, *,
                  max_prompt_words: int = 8) -> str:
    """The pattern with its tags replaced, as the WebUI's ``FilenameGenerator.apply``."""
    replacements = _replacements(max_prompt_words)
    result = ""
    for match in _PATTERN.finditer(pattern):
        text, tag = match.groups()
        if tag is None:
            result += text
            continue
        args: list[str] = []
        name = tag
        while (arg := _PATTERN_ARG.match(name)) is not None:
            name, value = arg.groups()
            args.insert(0, value)
        fn = replacements.get(name.lower())
        if fn is not None:
            try:
                value = fn(context, image, *args)
            except (ValueError, TypeError, IndexError):
                value = None  # a bad argument ([prompt_hash<x>]): the tag stays as written
            if value is SKIP:
                continue
            if value is not None:
                result += text + str(value)
                continue
        result += f"{text}[{tag}]"
    return result
