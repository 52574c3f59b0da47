"""kohya's dataset folders: ``train/<repeats>_<name> <class>/`` and ``reg/<repeats>_<class>/``.

The rules are kohya's (sd-scripts ``config_util.generate_dreambooth_subsets_config_by_subdirs``):
a sub-folder name is split on ``_``; the first piece must be an integer ≥ 1 (the repeats),
otherwise kohya ignores the folder without training on it; the rest, joined again with ``_``, is
the class tokens, which become the caption of every image without a caption file. The kohya GUI
reads the class tokens as "<instance> <class>": ``10_sls 1girl`` is sls, a 1girl, ten times.

Steps are counted as kohya counts them: images × repeats per folder, regularisation images
balanced to the same number, ``ceil(n / batch)`` batches per epoch (one bucket), and
``ceil(batches / gradient_accumulation)`` optimiser steps per epoch.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.dataset.captions import caption_path
from core.dataset.images import list_images
from core.errors import KilnError

# kohya's own list (train_util.IMAGE_EXTENSIONS); Kiln reads more (gif, tif), kohya skips those.
KOHYA_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif", ".jxl")


@dataclass(frozen=True)
class FolderName:
    repeats: int
    class_tokens: str  # everything after the first "_": "sls 1girl"

    @property
    def instance(self) -> str:
        """The identifier ("sls" of ``10_sls 1girl``); the whole class tokens when no space."""
        return self.class_tokens.split(" ", 1)[0] if self.class_tokens else ""

    @property
    def class_word(self) -> str:
        """The class ("1girl" of ``10_sls 1girl``); empty when the name has no space."""
        parts = self.class_tokens.split(" ", 1)
        return parts[1].strip() if len(parts) == 2 else ""


def parse_folder_name(name: str) -> FolderName | None:
    """``"10_sls 1girl"`` → FolderName(10, "sls 1girl"); None where kohya ignores the folder."""
    pieces = name.split("_")
    try:
        repeats = int(pieces[0])
    except ValueError:
        return None
    if repeats < 1:
        return None
    return FolderName(repeats, "_".join(pieces[1:]))


def folder_name(repeats: int, instance: str, class_word: str = "") -> str:
    """The kohya folder name for a concept: ``folder_name(10, "sls", "1girl")`` → ``10_sls 1girl``."""
    if repeats < 1:
        raise KilnError(f"repeats must be 1 or more, not {repeats}")
    tokens = " ".join(part.strip() for part in (instance, class_word) if part.strip())
    if not tokens:
        raise KilnError("a concept folder needs a name or a class (e.g. sls, 1girl)")
    if any(ch in tokens for ch in '/\\:*?"<>|\0'):
        raise KilnError(f"{tokens!r} cannot be a folder name", hint='leave out / \\ : * ? " < > |')
    return f"{repeats}_{tokens}"


@dataclass(frozen=True)
class Concept:
    """One ``<repeats>_<class tokens>`` folder and the pictures kohya trains from it."""

    path: Path
    name: FolderName
    images: tuple[Path, ...]
    is_reg: bool = False
    unused_images: tuple[Path, ...] = ()  # pictures kohya does not pick up (gif, tif, sub-folders)

    @property
    def repeats(self) -> int:
        return self.name.repeats

    @property
    def weighted_count(self) -> int:
        """Images × repeats: what one epoch shows of this folder."""
        return len(self.images) * self.repeats


@dataclass(frozen=True)
class IgnoredFolder:
    path: Path
    reason: str


@dataclass(frozen=True)
class DatasetLayout:
    train_dir: Path
    reg_dir: Path | None
    concepts: tuple[Concept, ...]
    reg_concepts: tuple[Concept, ...] = ()
    ignored: tuple[IgnoredFolder, ...] = field(default=())

    @property
    def train_images(self) -> int:
        """kohya's ``num_train_images``: images × repeats over the train folders."""
        return sum(c.weighted_count for c in self.concepts)

    @property
    def reg_images(self) -> int:
        """kohya's ``num_reg_images`` (images × repeats, before balancing)."""
        return sum(c.weighted_count for c in self.reg_concepts)


def _scan_concepts(root: Path, *, is_reg: bool) -> tuple[list[Concept], list[IgnoredFolder]]:
    if not root.exists():
        raise KilnError("folder not found", path=root, hint="give the folder that holds the 10_name folders")
    if not root.is_dir():
        raise KilnError("is a file, not a folder", path=root)
    concepts: list[Concept] = []
    ignored: list[IgnoredFolder] = []
    for sub in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name.lower()):
        parsed = parse_folder_name(sub.name)
        if parsed is None:
            example = "1_1girl" if is_reg else "10_sls 1girl"
            ignored.append(IgnoredFolder(sub, f"kohya skips it: the name must start with the repeats and "
                                              f"an underscore (e.g. {example})"))
            continue
        pictures = list_images(sub)
        used = tuple(p for p in pictures if p.suffix.lower() in KOHYA_IMAGE_EXTENSIONS)
        unused = tuple(p for p in pictures if p.suffix.lower() not in KOHYA_IMAGE_EXTENSIONS)
        nested = tuple(p for p in list_images(sub, recursive=True) if p.parent != sub)
        concepts.append(Concept(sub, parsed, used, is_reg, unused + nested))
    return concepts, ignored


def scan_dataset(train_dir: str | Path, reg_dir: str | Path | None = None) -> DatasetLayout:
    """The concept folders under ``train_dir`` (the folder given to kohya as ``train_data_dir``).

    Seed 002's habit is handled: a ``train_dir`` that is itself a ``10_ron`` folder (no concept
    folders inside, pictures directly in it) is read as its parent holding that one folder."""
    train = Path(train_dir)
    concepts, ignored = _scan_concepts(train, is_reg=False)
    if not concepts and parse_folder_name(train.name) and list_images(train):
        concepts, ignored = _scan_concepts(train.parent, is_reg=False)
        concepts = [c for c in concepts if c.path == train]
        ignored = []
        train = train.parent
    reg_concepts: list[Concept] = []
    reg = Path(reg_dir) if reg_dir else None
    if reg is not None:
        reg_concepts, reg_ignored = _scan_concepts(reg, is_reg=True)
        ignored += reg_ignored
    # A "reg" folder inside the train folder is a common layout (seed 002): kohya ignores it
    # there (no repeats prefix), which is right, so it is not reported as a mistake.
    ignored = [i for i in ignored if not (reg is not None and i.path.resolve() == reg.resolve())]
    return DatasetLayout(train, reg, tuple(concepts), tuple(reg_concepts), tuple(ignored))


@dataclass(frozen=True)
class StepPlan:
    """The arithmetic behind ``ss_max_train_steps``, as the seeds spell it out."""

    train_images: int  # images × repeats
    reg_images: int  # reg images used (balanced to train_images), 0 without reg
    batch_size: int
    epochs: int
    gradient_accumulation: int
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    def explain(self, image_count: int | None = None, repeats: int | None = None) -> str:
        """``110 images × 100 repeats ÷ batch 2 × 1 epoch = 5500 steps`` (one concept), or the
        totals for several concepts; reg images and accumulation are named when they count."""
        if image_count is not None and repeats is not None:
            head = f"{image_count} images × {repeats} repeats"
        else:
            head = f"{self.train_images} images × repeats"
        if self.reg_images:
            head = f"({head} + {self.reg_images} reg images)"
        text = f"{head} ÷ batch {self.batch_size}"
        if self.gradient_accumulation > 1:
            text += f" ÷ accumulation {self.gradient_accumulation}"
        epochs = "epoch" if self.epochs == 1 else "epochs"
        return f"{text} × {self.epochs} {epochs} = {self.total_steps} steps"


def plan_steps(train_images: int, *, batch_size: int = 1, epochs: int = 1, gradient_accumulation: int = 1,
               with_reg: bool = False) -> StepPlan:
    """kohya's step count for ``train_images`` (images × repeats) on one bucket."""
    if batch_size < 1 or epochs < 1 or gradient_accumulation < 1:
        raise KilnError("batch size, epochs and gradient accumulation must be 1 or more")
    reg = train_images if with_reg else 0
    batches = math.ceil((train_images + reg) / batch_size)
    steps = math.ceil(batches / gradient_accumulation)
    return StepPlan(train_images, reg, batch_size, epochs, gradient_accumulation, batches, steps, steps * epochs)


def plan_layout(layout: DatasetLayout, *, batch_size: int = 1, epochs: int = 1,
                gradient_accumulation: int = 1) -> StepPlan:
    return plan_steps(layout.train_images, batch_size=batch_size, epochs=epochs,
                      gradient_accumulation=gradient_accumulation, with_reg=bool(layout.reg_concepts))


def suggest_repeats(image_count: int, target_steps: int, *, batch_size: int = 1, epochs: int = 1,
                    with_reg: bool = False) -> int:
    """The repeats that bring ``image_count`` pictures nearest to ``target_steps`` (at least 1)."""
    if image_count < 1:
        raise KilnError("the folder has no pictures to repeat")
    per_repeat = image_count * (2 if with_reg else 1) * epochs / batch_size
    return max(1, round(target_steps / per_repeat))


@dataclass(frozen=True)
class LayoutResult:
    folder: Path
    copied: int
    already_there: int


def lay_out_concept(source: str | Path, target_root: str | Path, *, repeats: int, instance: str,
                    class_word: str = "", caption_extension: str = ".txt") -> LayoutResult:
    """Copy the pictures of ``source`` (and their same-stem captions) into
    ``<target_root>/<repeats>_<instance> <class>/``. Originals stay where they are; a file already
    there with the same bytes is left alone, a different one under the same name stops the copy
    before anything is written (nothing is overwritten)."""
    source = Path(source)
    images = list_images(source)
    if not images:
        raise KilnError("no pictures in this folder", path=source,
                        hint=f"put .png / .jpg files in it (kohya reads {', '.join(KOHYA_IMAGE_EXTENSIONS)})")
    target = Path(target_root) / folder_name(repeats, instance, class_word)
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise KilnError("the kohya folder would be inside the source folder", path=target,
                        hint="choose a training folder outside the pictures' folder")
    files = [p for image in images for p in (image, caption_path(image, caption_extension)) if p.is_file()]
    plan: list[tuple[Path, Path]] = []
    already = 0
    for src in files:
        dest = target / src.name
        if dest.exists():
            if dest.read_bytes() != src.read_bytes():
                raise KilnError("a different file of this name is already in the kohya folder; nothing was copied",
                                path=dest, hint="rename one of them or choose another folder")
            already += 1
            continue
        plan.append((src, dest))
    target.mkdir(parents=True, exist_ok=True)
    for src, dest in plan:
        temp = dest.with_name(f".{dest.name}.kiln-tmp")
        try:
            shutil.copy2(src, temp)
            temp.replace(dest)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise KilnError(f"copy failed ({exc.strerror}); the files copied so far are complete",
                            path=dest, hint="free some disk space and run it again: it continues") from exc
    return LayoutResult(target, len(plan), already)
