"""Tag or caption every picture of a folder: ``a.png`` → ``a.txt`` beside it.

Modes (what happens to a caption that is already there): ``overwrite`` replaces it, ``append``
adds the new tags after the old ones (kohya's ``--append_tags``: tags already present are not
repeated), ``prepend`` puts the new ones first, ``skip`` leaves the picture alone. The
additional tags (a trigger word) lead every caption whatever the mode.

Before anything is rewritten the existing captions are copied to one backup folder
(``.kiln-caption-backups/<time>-tag/``); each write is atomic. Unreadable pictures are listed
with the reason and skipped; stopping keeps the captions written so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.dataset.captions import (
    DEFAULT_CAPTION_EXTENSION,
    backup_captions,
    caption_path,
    join_tags,
    read_caption,
    split_tags,
    write_caption,
)
from core.dataset.images import Skipped, iter_images, list_images
from core.dataset.taggers.common import Tagger, TagOptions, TagResult
from core.errors import KilnError

Mode = Literal["overwrite", "append", "prepend", "skip"]
MODES: tuple[str, ...] = ("overwrite", "append", "prepend", "skip")


@dataclass
class TagFolderOptions:
    mode: Mode = "overwrite"
    extension: str = DEFAULT_CAPTION_EXTENSION
    batch_size: int = 4
    recursive: bool = False
    tags: TagOptions = field(default_factory=TagOptions)


@dataclass(frozen=True)
class TagProgress:
    done: int  # pictures handled so far (tagged, skipped or unreadable)
    total: int
    image: Path | None
    result: TagResult | None  # the tags of ``image``; None when it was skipped or unreadable
    eta_seconds: float | None = None


@dataclass
class TagFolderReport:
    total: int = 0
    written: list[Path] = field(default_factory=list)  # caption files written
    kept: list[Path] = field(default_factory=list)  # pictures skipped because a caption existed (mode skip)
    broken: list[Skipped] = field(default_factory=list)
    backup: Path | None = None
    stopped: bool = False

    def summary(self) -> str:
        parts = [f"{len(self.written)} of {self.total} captions written"]
        if self.kept:
            parts.append(f"{len(self.kept)} kept (caption already there)")
        if self.broken:
            parts.append(f"{len(self.broken)} unreadable skipped")
        if self.backup is not None:
            parts.append(f"previous captions backed up to {self.backup}")
        if self.stopped:
            parts.append("stopped early")
        return "; ".join(parts)


def merge_caption(old: str, new: str, mode: Mode, lead: tuple[str, ...] = ()) -> str:
    """The caption to write for ``mode`` (see the module docstring); ``lead`` tags come first once."""
    if mode in ("overwrite", "skip") or not old.strip():
        merged = split_tags(new)
    else:
        old_tags, new_tags = split_tags(old), split_tags(new)
        first, second = (old_tags, new_tags) if mode == "append" else (new_tags, old_tags)
        merged = first + [t for t in second if t not in first]
    rest = [t for t in merged if t not in lead]
    out: list[str] = []
    for tag in [*lead, *rest]:
        if tag not in out:
            out.append(tag)
    return join_tags(out)


def tag_folder(folder: str | Path, tagger: Tagger, options: TagFolderOptions | None = None, *,
               on_progress: Callable[[TagProgress], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> TagFolderReport:
    """Tag the pictures of ``folder`` with ``tagger`` (see the module docstring)."""
    options = options or TagFolderOptions()
    if options.mode not in MODES:
        raise KilnError(f"unknown mode '{options.mode}'", hint=f"use one of {', '.join(MODES)}")
    if options.batch_size < 1:
        raise KilnError(f"batch size must be at least 1, not {options.batch_size}")
    folder = Path(folder)
    images = list_images(folder, recursive=options.recursive)
    if not images:
        raise KilnError("no pictures in this folder", path=folder,
                        hint="put .png / .jpg / .webp files here (sub-folders only with recursive)")
    report = TagFolderReport(total=len(images))
    captions = {img: caption_path(img, options.extension) for img in images}
    # a.jpg and a.png would share a.txt (kohya reads one caption per stem): tag the first, list the others.
    owner: dict[Path, Path] = {}
    shared: list[Path] = []
    for img in images:
        first = owner.setdefault(captions[img], img)
        if first != img:
            shared.append(img)
            report.broken.append(Skipped(img, f"shares {captions[img].name} with {first.name}; rename one of "
                                         "them so each picture has its own caption"))
    images = [img for img in images if img not in shared]
    todo = images
    if options.mode == "skip":
        # An empty caption file counts as no caption: there is nothing in it to keep.
        has = {img for img in images if read_caption(captions[img]).text.strip()}
        todo = [img for img in images if img not in has]
        report.kept = [img for img in images if img in has]
    else:
        report.backup = backup_captions(folder, [captions[img] for img in todo], label="tag")
    done = len(report.kept) + len(shared)
    started = time.monotonic()

    def progress(image: Path | None, result: TagResult | None) -> None:
        if on_progress is None:
            return
        handled = done - len(report.kept) - len(shared)
        elapsed = time.monotonic() - started
        left = report.total - done
        eta = elapsed / handled * left if handled else None
        on_progress(TagProgress(done, report.total, image, result, eta))

    progress(None, None)
    lead = options.tags.additional
    for start in range(0, len(todo), options.batch_size):
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        batch = todo[start:start + options.batch_size]
        loaded: list[tuple[Path, object]] = []
        for path, image, skipped in iter_images(batch):
            if skipped is not None:
                report.broken.append(skipped)
                done += 1
                progress(path, None)
            else:
                loaded.append((path, image))
        if not loaded:
            continue
        results = tagger.tag([im for _, im in loaded], options.tags)
        for (path, _im), result in zip(loaded, results):
            target = captions[path]
            old = read_caption(target).text if options.mode in ("append", "prepend") else ""
            write_caption(target, merge_caption(old, result.text, options.mode, lead))
            report.written.append(target)
            done += 1
            progress(path, result)
    return report
