"""What a caption becomes when kohya feeds it to the text encoder, and a preview of a few epochs.

``process_caption`` follows sd-scripts' ``BaseDataset.process_caption`` step by step (the
trainer of [4/8] uses this same function): whole-caption dropout (``caption_dropout_rate``,
every ``caption_dropout_every_n_epochs``-th epoch, epochs counted from 1), the first line only
(all lines a random choice with ``enable_wildcard``, plus ``{a|b}`` wildcards), fixed tags
(``keep_tokens`` or the part before ``keep_tokens_separator``, and after a second separator a
fixed suffix), the rest shuffled (``shuffle_caption``) and dropped tag by tag
(``caption_tag_dropout_rate``), then ``caption_prefix`` / ``caption_suffix`` and the secondary
separator.

``preview_caption`` shows what a few epochs would feed and warns where kohya's rules bite: a
``keep_tokens`` boundary inside a bracketed tag (kohya splits on every comma), and a caption
longer than ``max_token_length`` (the tail is cut).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from core.dataset.captions import split_tags


@dataclass(frozen=True)
class CaptionRules:
    """kohya's caption options, by their names."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    secondary_separator: str = ""
    caption_prefix: str = ""
    caption_suffix: str = ""
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    enable_wildcard: bool = False


def _wildcards(caption: str, rng: random.Random) -> str:
    left, right = "⦅", "⦆"
    while left in caption or right in caption:
        left += "⦅"
        right += "⦆"
    caption = caption.replace("{{", left).replace("}}", right)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(left, "{").replace(right, "}")


def _pieces(text: str, separator: str) -> list[str]:
    return [t.strip() for t in text.split(separator) if t.strip()]


def process_caption(caption: str, rules: CaptionRules, rng: random.Random, epoch: int = 1) -> str:
    """The text kohya's trainer encodes for ``caption`` in ``epoch`` (1-based), drawing from ``rng``."""
    dropped = rules.caption_dropout_rate > 0 and rng.random() < rules.caption_dropout_rate
    dropped = dropped or (rules.caption_dropout_every_n_epochs > 0 and epoch % rules.caption_dropout_every_n_epochs == 0)
    if dropped:
        return ""
    if rules.enable_wildcard:
        if "\n" in caption:
            caption = rng.choice(caption.split("\n"))
        caption = _wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]
    if rules.shuffle_caption or rules.caption_tag_dropout_rate > 0:
        sep = rules.caption_separator
        fixed, flex, suffix = [], [], []
        if rules.keep_tokens_separator and rules.keep_tokens_separator in caption:
            fixed_part, flex_part = caption.split(rules.keep_tokens_separator, 1)
            if rules.keep_tokens_separator in flex_part:
                flex_part, suffix_part = flex_part.split(rules.keep_tokens_separator, 1)
                suffix = _pieces(suffix_part, sep)
            fixed, flex = _pieces(fixed_part, sep), _pieces(flex_part, sep)
        else:
            tokens = [t.strip() for t in caption.strip().split(sep)]
            flex = tokens[:]
            if rules.keep_tokens > 0:
                fixed, flex = flex[:rules.keep_tokens], tokens[rules.keep_tokens:]
        if rules.shuffle_caption:
            rng.shuffle(flex)
        if rules.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= rules.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + suffix)
    if rules.caption_prefix:
        caption = rules.caption_prefix + " " + caption
    if rules.caption_suffix:
        caption = caption + " " + rules.caption_suffix
    if rules.secondary_separator:
        caption = caption.replace(rules.secondary_separator, rules.caption_separator)
    return caption


@dataclass(frozen=True)
class CaptionPreview:
    epochs: tuple[str, ...]  # what each epoch feeds, epoch 1 first
    fixed: tuple[str, ...]  # the tags that never move or drop
    warnings: tuple[str, ...] = field(default=())


TokenCounter = Callable[[str], int]


def preview_caption(caption: str, rules: CaptionRules, *, epochs: int = 3, seed: int = 0,
                    max_token_length: int = 75, count_tokens: TokenCounter | None = None) -> CaptionPreview:
    """``epochs`` samples of ``process_caption`` (seeded, so the preview is stable) and warnings."""
    rng = random.Random(seed)
    samples = tuple(process_caption(caption, rules, rng, epoch) for epoch in range(1, epochs + 1))
    first_line = caption.split("\n")[0]
    warnings: list[str] = []
    naive = [t.strip() for t in first_line.split(rules.caption_separator)]
    if rules.keep_tokens_separator and rules.keep_tokens_separator in first_line:
        fixed = tuple(_pieces(first_line.split(rules.keep_tokens_separator, 1)[0], rules.caption_separator))
    else:
        fixed = tuple(naive[:rules.keep_tokens]) if rules.keep_tokens > 0 else ()
        if 0 < rules.keep_tokens < len(naive):
            kept = rules.caption_separator.join(naive[:rules.keep_tokens])
            if kept.count("(") > kept.count(")") or kept.count("[") > kept.count("]"):
                whole = next((t for t in split_tags(first_line) if t.startswith(naive[rules.keep_tokens - 1])), "")
                warnings.append(f"keep_tokens={rules.keep_tokens} ends inside the tag {whole!r}: kohya splits on every "
                                f"'{rules.caption_separator}', so it keeps {naive[rules.keep_tokens - 1]!r} and moves "
                                "the rest; change keep_tokens or write the tag without a comma")
        if rules.keep_tokens > len([t for t in naive if t]):
            warnings.append(f"keep_tokens={rules.keep_tokens} is more than the caption's {len(naive)} tags: "
                            "nothing is shuffled or dropped")
    if rules.shuffle_caption and any(
            rules.caption_separator in tag for tag in split_tags(first_line) if tag not in fixed):
        torn = next(tag for tag in split_tags(first_line) if rules.caption_separator in tag)
        warnings.append(f"{torn!r} has a '{rules.caption_separator}' inside: shuffle_caption tears it into pieces")
    if count_tokens is not None:
        worst = max((first_line, *samples), key=count_tokens)
        tokens = count_tokens(worst)
        if tokens > max_token_length:
            cut = _first_cut_tag(worst, max_token_length, count_tokens)
            warnings.append(f"{tokens} tokens: more than max_token_length {max_token_length}; the text encoder does not "
                            f"see the end, from {cut!r} on (raise max_token_length to 150 or 225, or remove tags)")
    return CaptionPreview(samples, fixed, tuple(warnings))


def _first_cut_tag(caption: str, limit: int, count_tokens: TokenCounter) -> str:
    tags = [t.strip() for t in caption.split(",")]
    for i in range(1, len(tags) + 1):
        if count_tokens(", ".join(tags[:i])) > limit:
            return tags[i - 1]
    return tags[-1]
