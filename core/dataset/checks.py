"""Checks of a kohya dataset before training: the mistakes the seeds warn about, found by content.

- the same picture in train and reg (seed 001: "同一张图片不允许在训练集和正则化中同时出现"),
  by file hash and by perceptual hash, not by name;
- ``a.jpg`` and ``a.png`` in one folder, which share ``a.txt`` (seed 002: "避免文件名重复");
- near-duplicates inside the train set (seed 004: "不要类似差分图"), by perceptual hash;
- pictures smaller than the training resolution (they are upscaled: blur);
- missing, empty, multi-line and non-UTF-8 captions (kohya reads UTF-8 and the first line only;
  the file is reported, never rewritten);
- folders kohya skips (no repeats prefix), empty folders, pictures kohya does not read (gif, tif),
  unreadable pictures, unbalanced repeats, a reg class no train folder uses.

Each finding is a ``Problem`` with a severity: an "error" stops training unless the user
overrides it, a "warning" is shown and training goes on.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.dataset.captions import caption_path, read_caption
from core.dataset.images import UnreadableImage, open_image
from core.dataset.kohya_folders import Concept, DatasetLayout, scan_dataset

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    code: str  # stable name for tests and the UI: "train-reg-duplicate", "shared-caption", ...
    severity: str  # ERROR or WARNING
    message: str
    paths: tuple[Path, ...] = ()

    def line(self) -> str:
        where = f"{self.paths[0]}: " if self.paths else ""
        return f"{self.severity}: {where}{self.message}"


@dataclass(frozen=True)
class CheckOptions:
    resolution: tuple[int, int] = (512, 512)  # kohya's --resolution (W, H)
    caption_extension: str = ".txt"
    near_duplicate_distance: int = 6  # of 64 perceptual-hash bits; 0 = only pixel-identical pictures
    check_near_duplicates: bool = True
    unbalanced_ratio: float = 4.0  # a concept shown this many times more than another per epoch


@dataclass(frozen=True)
class PictureFacts:
    path: Path
    size: tuple[int, int]
    sha256: str
    phash: int  # 64-bit DCT hash (imagehash.phash), as an int


Progress = Callable[[int, int, Path], None]


def picture_facts(path: Path) -> PictureFacts:
    """Size, file hash and perceptual hash of one picture; UnreadableImage if it cannot be read."""
    import imagehash

    image = open_image(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    bits = imagehash.phash(image).hash.flatten()  # 8×8 DCT signs of the 32×32 grey picture
    return PictureFacts(path, image.size, digest, int.from_bytes(np.packbits(bits).tobytes(), "big"))


def _pairs_within(hashes: np.ndarray, limit: int) -> list[tuple[int, int, int]]:
    """Index pairs (i < j) whose hashes differ in at most ``limit`` bits, and the distance.

    Vectorised row by row: 10,000 pictures are 50 million comparisons, about a second."""
    pairs: list[tuple[int, int, int]] = []
    for i in range(len(hashes) - 1):
        distance = np.bitwise_count(hashes[i + 1:] ^ hashes[i])
        for offset in np.nonzero(distance <= limit)[0]:
            pairs.append((i, i + 1 + int(offset), int(distance[offset])))
    return pairs


def _pairs_between(a: np.ndarray, b: np.ndarray, limit: int) -> list[tuple[int, int, int]]:
    pairs: list[tuple[int, int, int]] = []
    if not len(b):
        return pairs
    for i in range(len(a)):
        distance = np.bitwise_count(b ^ a[i])
        for j in np.nonzero(distance <= limit)[0]:
            pairs.append((i, int(j), int(distance[j])))
    return pairs


def _caption_problems(concept: Concept, options: CheckOptions) -> list[Problem]:
    problems: list[Problem] = []
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for image in concept.images:
        by_stem[image.stem].append(image)
    for images in by_stem.values():
        if len(images) > 1:
            shared = caption_path(images[0], options.caption_extension)
            problems.append(Problem(
                "shared-caption", ERROR,
                f"{', '.join(p.name for p in images)} share one caption file {shared.name}: kohya gives both "
                "the same caption and they overwrite each other's cached latents; rename one of them",
                tuple(images)))
    if concept.is_reg:
        return problems  # reg pictures are captioned by their class tokens; captions are optional
    for image in concept.images:
        caption = read_caption(caption_path(image, options.caption_extension))
        if not caption.exists:
            fallback = concept.name.class_tokens or "(nothing: the folder name has no class tokens)"
            problems.append(Problem("missing-caption", WARNING,
                                    f"no {options.caption_extension} caption; kohya trains it with the folder's "
                                    f"class tokens: {fallback}", (image,)))
        elif not caption.utf8:
            problems.append(Problem("caption-not-utf8", ERROR,
                                    f"the caption is not UTF-8 (read as {caption.encoding}); kohya reads UTF-8 and "
                                    "stops on it. Open it and save it as UTF-8 (Kiln's tag editor does, on save)",
                                    (caption.path,)))
        elif not caption.text.strip():
            problems.append(Problem("empty-caption", WARNING,
                                    "the caption file is empty: the picture trains with no words", (caption.path,)))
        elif "\n" in caption.text.strip():
            problems.append(Problem("multiline-caption", WARNING,
                                    "the caption has several lines; kohya uses only the first one "
                                    "(unless enable_wildcard is on)", (caption.path,)))
    return problems


def check_layout(layout: DatasetLayout, options: CheckOptions | None = None, *,
                 progress: Progress | None = None) -> list[Problem]:
    """Every problem found in ``layout``, errors first (see the module docstring)."""
    options = options or CheckOptions()
    problems: list[Problem] = []
    if not layout.concepts:
        problems.append(Problem("no-concepts", ERROR,
                                "no training folders: kohya reads sub-folders named <repeats>_<name> <class>, "
                                "e.g. train/10_sls 1girl/", (layout.train_dir,)))
    for ignored in layout.ignored:
        problems.append(Problem("ignored-folder", WARNING, ignored.reason, (ignored.path,)))
    concepts = [*layout.concepts, *layout.reg_concepts]
    for concept in concepts:
        if not concept.images:
            problems.append(Problem("empty-folder", ERROR if not concept.is_reg else WARNING,
                                    "no pictures kohya can read in this folder", (concept.path,)))
        for unused in concept.unused_images:
            why = "in a sub-folder" if unused.parent != concept.path else f"{unused.suffix} files"
            problems.append(Problem("unused-picture", WARNING, f"kohya does not read it ({why})", (unused,)))
        problems += _caption_problems(concept, options)

    facts: dict[Path, PictureFacts] = {}
    everything = [image for c in concepts for image in c.images]
    for done, image in enumerate(everything, 1):
        try:
            facts[image] = picture_facts(image)
        except UnreadableImage as exc:
            problems.append(Problem("unreadable", ERROR, exc.problem, (image,)))
        if progress is not None:
            progress(done, len(everything), image)

    width, height = options.resolution
    for concept in layout.concepts:
        for image in concept.images:
            fact = facts.get(image)
            if fact and fact.size[0] * fact.size[1] < width * height and (fact.size[0] < width or fact.size[1] < height):
                problems.append(Problem("small-picture", WARNING,
                                        f"{fact.size[0]}×{fact.size[1]} is smaller than the training resolution "
                                        f"{width}×{height}: it is upscaled and trains blurry", (image,)))

    train = [facts[i] for c in layout.concepts for i in c.images if i in facts]
    reg = [facts[i] for c in layout.reg_concepts for i in c.images if i in facts]
    problems += _duplicate_problems(train, reg, options)
    problems += _balance_problems(layout, options)
    order = {ERROR: 0, WARNING: 1}
    return sorted(problems, key=lambda p: order[p.severity])


def _duplicate_problems(train: list[PictureFacts], reg: list[PictureFacts], options: CheckOptions) -> list[Problem]:
    problems: list[Problem] = []
    limit = options.near_duplicate_distance if options.check_near_duplicates else 0
    reg_by_hash = {f.sha256: f for f in reg}
    flagged: set[tuple[Path, Path]] = set()
    for f in train:
        twin = reg_by_hash.get(f.sha256)
        if twin is not None:
            flagged.add((f.path, twin.path))
            problems.append(Problem("train-reg-duplicate", ERROR,
                                    f"the same file is also a regularisation picture ({twin.path}); a picture must "
                                    "not be in both (seed 001's rule): remove it from the reg folder",
                                    (f.path, twin.path)))
    train_hashes = np.array([f.phash for f in train], dtype=np.uint64)
    reg_hashes = np.array([f.phash for f in reg], dtype=np.uint64)
    for i, j, distance in _pairs_between(train_hashes, reg_hashes, limit):
        if (train[i].path, reg[j].path) in flagged:
            continue
        problems.append(Problem("train-reg-duplicate", ERROR,
                                f"the same picture is also a regularisation picture ({reg[j].path}, perceptual "
                                f"distance {distance}); remove it from the reg folder", (train[i].path, reg[j].path)))
    for i, j, distance in _pairs_within(train_hashes, limit):
        a, b = train[i], train[j]
        if a.sha256 == b.sha256:
            problems.append(Problem("duplicate", WARNING,
                                    f"the same file as {b.path}: it trains twice as often", (a.path, b.path)))
        else:
            problems.append(Problem("near-duplicate", WARNING,
                                    f"nearly the same picture as {b.path} (perceptual distance {distance} of 64): "
                                    "variants of one picture make the model copy it (seed 004: 不要类似差分图)",
                                    (a.path, b.path)))
    return problems


def _balance_problems(layout: DatasetLayout, options: CheckOptions) -> list[Problem]:
    problems: list[Problem] = []
    shown = [c for c in layout.concepts if c.images]
    if len(shown) > 1:
        low = min(shown, key=lambda c: c.weighted_count)
        high = max(shown, key=lambda c: c.weighted_count)
        if high.weighted_count > options.unbalanced_ratio * low.weighted_count:
            problems.append(Problem(
                "unbalanced-repeats", WARNING,
                f"{high.path.name} is shown {high.weighted_count} times an epoch ({len(high.images)} × "
                f"{high.repeats}), {low.path.name} only {low.weighted_count} ({len(low.images)} × {low.repeats}): "
                f"raise the repeats of {low.path.name} or lower those of {high.path.name}",
                (high.path, low.path)))
    classes = {c.name.class_word or c.name.class_tokens for c in layout.concepts}
    for reg in layout.reg_concepts:
        if reg.name.class_tokens and reg.name.class_tokens not in classes:
            problems.append(Problem(
                "reg-class-unused", WARNING,
                f"no training folder has the class {reg.name.class_tokens!r}: reg pictures should be of the "
                f"training folders' class ({', '.join(sorted(c for c in classes if c)) or 'none given'})",
                (reg.path,)))
    return problems


def check_dataset(train_dir: str | Path, reg_dir: str | Path | None = None, options: CheckOptions | None = None,
                  *, progress: Progress | None = None) -> tuple[DatasetLayout, list[Problem]]:
    layout = scan_dataset(train_dir, reg_dir)
    return layout, check_layout(layout, options, progress=progress)


def blocking(problems: list[Problem]) -> list[Problem]:
    """The problems that stop training unless the user overrides them."""
    return [p for p in problems if p.severity == ERROR]
