"""What every tagger and captioner shares: the options, the result, and the tag formatting.

The formatting follows the tools users come from: kohya's ``tag_images_by_wd14_tagger.py``
(underscores to spaces except for short kaomoji, ``--always_first_tags``, ``--undesired_tags``,
rating tags off by default), the wd14-tagger extension (kaomoji list, brackets escaped as the
WebUI's ``re_special``, sort by confidence or alphabetically) and the WebUI's DeepBooru
(``deepbooru_use_spaces``, ``deepbooru_escape``, ``deepbooru_sort_alpha``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

SortOrder = Literal["confidence", "alphabetical", "model"]

# The wd14-tagger extension's list; kohya instead keeps every tag of 3 characters or fewer
# ("o_o", "^_^"). Both rules apply, so longer kaomoji such as "<o>_<o>" stay intact too.
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
    "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})
# The WebUI's modules/deepbooru.py re_special: a backslash and round brackets are escaped so a
# tag like "fate_(series)" is not read as attention weighting when the caption becomes a prompt.
_SPECIAL = re.compile(r"([\\()])")


@dataclass
class CaptionOptions:
    """Text generation of BLIP / GIT (kohya's make_captions.py / make_captions_by_git.py options)."""

    num_beams: int = 1  # > 1: beam search (kohya's --num_beams); 1 with nucleus off: greedy
    nucleus: bool = False  # sample with top_p instead of beam search (kohya's --use_nucleus_sampling...)
    top_p: float = 0.9
    min_length: int = 5
    max_length: int = 75
    repetition_penalty: float = 1.0


@dataclass
class TagOptions:
    """How model scores become a caption. Defaults: kohya's script (0.35, ratings off)."""

    general_threshold: float = 0.35  # WD14 general tags; DeepBooru's one threshold
    character_threshold: float = 0.85  # WD14 character tags (SmilingWolf's own demo default)
    general_mcut: bool = False  # WD14: threshold from the largest gap in the sorted scores (MCut)
    character_mcut: bool = False  # WD14: MCut for characters, never below 0.15 (as SmilingWolf's demo)
    include_ratings: bool = False  # put the best rating tag (general / sensitive / ...) first
    character_first: bool = False  # kohya's --character_tags_first
    replace_underscore: bool = True  # "long_hair" → "long hair"; kaomoji like "^_^" kept
    escape_brackets: bool = False  # "(" → "\(" (the WebUI's escape; off: kohya writes tags raw)
    exclude: tuple[str, ...] = ()  # tags never written (either spelling: "long hair" or "long_hair")
    max_tags: int = 0  # 0: no limit; counts model tags, not the additional ones
    sort: SortOrder = "confidence"
    additional: tuple[str, ...] = ()  # put first in every caption, e.g. a trigger word
    caption: CaptionOptions = field(default_factory=CaptionOptions)


@dataclass
class TagResult:
    """One image's tags with their scores (best first unless sorted otherwise), or a caption."""

    tags: list[tuple[str, float]] = field(default_factory=list)
    ratings: dict[str, float] = field(default_factory=dict)
    caption: str | None = None  # BLIP / GIT sentence (with additional tags before it)

    @property
    def text(self) -> str:
        """What goes into the caption file."""
        if self.caption is not None:
            return self.caption
        return ", ".join(tag for tag, _ in self.tags)

    def scores(self) -> dict[str, float]:
        """Tag → score, for a gr.Label or the tagger API (ratings not included)."""
        return {tag: float(score) for tag, score in self.tags}


class Tagger(Protocol):
    name: str
    kind: str  # "wd14" | "deepbooru" | "blip" | "git"

    def tag(self, images: Sequence[Image.Image], options: TagOptions | None = None) -> list[TagResult]: ...

    def close(self) -> None: ...


def parse_tag_list(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a, b ,, c"`` (or a list) → ``("a", "b", "c")``: the exclude / additional fields of the UI and CLI."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(t.strip() for t in items if t and t.strip())


def is_kaomoji(tag: str) -> bool:
    return tag in KAOMOJI or len(tag) <= 3


def format_tag(tag: str, *, replace_underscore: bool, escape_brackets: bool) -> str:
    if replace_underscore and not is_kaomoji(tag):
        tag = tag.replace("_", " ")
    if escape_brackets:
        tag = _SPECIAL.sub(r"\\\1", tag)
    return tag


def _spellings(tag: str) -> set[str]:
    tag = tag.strip()
    return {tag, tag.replace(" ", "_"), tag.replace("_", " ")}


def finish_tags(scored: list[tuple[str, float]], options: TagOptions, *,
                lead: Sequence[tuple[str, float]] = ()) -> list[tuple[str, float]]:
    """Raw model tags with scores → the caption's tags: excluded ones dropped, sorted, capped,
    formatted, ``lead`` (rating / characters first) then the additional tags put in front.

    ``scored`` is in the model's order; duplicates after formatting are dropped (first wins)."""
    excluded: set[str] = set()
    for tag in options.exclude:
        excluded |= _spellings(tag)
    kept = [(t, s) for t, s in scored if t not in excluded and t.replace("_", " ") not in excluded]
    if options.sort == "confidence":
        kept.sort(key=lambda ts: -ts[1])  # stable: equal scores keep the model's order
    elif options.sort == "alphabetical":
        kept.sort(key=lambda ts: ts[0])
    lead = [(t, s) for t, s in lead if t not in excluded]
    if options.max_tags > 0:
        kept = kept[: max(options.max_tags - len(lead), 0)]
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    # Additional tags are the user's own words: written as typed, never formatted or excluded.
    # Their score is 1.0: they are certain, and the UI's label shows them on top.
    for tag in options.additional:
        if tag and tag not in seen:
            out.append((tag, 1.0))
            seen.add(tag)
    for tag, score in [*lead, *kept]:
        shown = format_tag(tag, replace_underscore=options.replace_underscore,
                           escape_brackets=options.escape_brackets)
        if shown not in seen:
            out.append((shown, float(score)))
            seen.add(shown)
    return out


def with_additional(caption: str, options: TagOptions) -> str:
    """A captioner's sentence with the additional tags (trigger word) in front: ``"shengcai, a man ..."``."""
    lead = [t for t in options.additional if t]
    return ", ".join([*lead, caption]) if lead else caption
