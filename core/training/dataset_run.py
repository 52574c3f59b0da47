"""A kohya ``--dataset_config`` as the dataset of a run: its subsets become the run's concepts.

Each DreamBooth-style ``[[datasets.subsets]]`` (``image_dir``, ``num_repeats``, ``class_tokens``,
``is_reg``) is one concept, exactly as a ``<repeats>_<class tokens>`` folder would be (captions
from ``caption_extension`` files, else the class tokens; kohya's image extensions; no
sub-folders). The dataset's resolution, buckets and batch size, and the subsets' caption and
augmentation options (after kohya's subset → dataset → general → config fallbacks) become the
run's DataOptions. What Kiln's single data pipeline cannot express is listed, never dropped:
more than one ``[[datasets]]``, fine-tuning subsets (``metadata_file``), a caption or
augmentation option that differs between subsets, and subset options Kiln does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from core.dataset.caption_rules import CaptionRules
from core.dataset.images import list_images
from core.dataset.kohya_folders import KOHYA_IMAGE_EXTENSIONS, Concept, DatasetLayout, FolderName
from core.errors import KilnError
from core.training.dataset_config import DatasetConfig, DatasetSpec, SubsetSpec

# Subset options Kiln applies once for the whole run (they must agree between subsets).
SHARED_SUBSET_OPTIONS = ("caption_extension", "caption_separator", "caption_prefix", "caption_suffix",
                         "shuffle_caption", "keep_tokens", "keep_tokens_separator", "flip_aug", "color_aug",
                         "random_crop", "face_crop_aug_range", "caption_dropout_rate",
                         "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "secondary_separator",
                         "enable_wildcard")
# Subset options Kiln does not have: any value but kohya's default is listed.
UNSUPPORTED_SUBSET_OPTIONS = ("token_warmup_min", "token_warmup_step", "alpha_mask", "metadata_file")


@dataclass(frozen=True)
class DatasetRun:
    """What a dataset config gives the run: its concepts, its data options' values, its batch."""

    layout: DatasetLayout
    dataset: DatasetSpec
    subset: SubsetSpec  # the shared caption / augmentation values (the first subset's)
    problems: tuple[str, ...]  # what Kiln would not apply, for ``unsupported``


def dataset_run(spec: DatasetConfig, source: str | Path = "dataset_config") -> DatasetRun:
    problems = [f"{source}: {key} (not a key kohya's dataset config has)" for key in spec.unknown]
    if len(spec.datasets) > 1:
        problems.append(f"{source}: {len(spec.datasets)} [[datasets]] (Kiln trains one dataset per run; "
                        "put the subsets under one [[datasets]] with one resolution)")
    dataset = spec.datasets[0]
    if dataset.network_multiplier != 1.0:
        problems.append(f"{source}: datasets[0].network_multiplier = {dataset.network_multiplier}")
    defaults = SubsetSpec()
    subsets = dataset.subsets
    for name in UNSUPPORTED_SUBSET_OPTIONS:
        values = {getattr(s, name) for s in subsets if getattr(s, name) != getattr(defaults, name)}
        if values:
            problems.append(f"{source}: subsets {name} = {sorted(map(str, values))[0]!r}")
    for name in SHARED_SUBSET_OPTIONS:
        values = [getattr(s, name) for s in subsets]
        if any(v != values[0] for v in values):
            shown = ", ".join(repr(v) for v in dict.fromkeys(values))
            problems.append(f"{source}: {name} differs between subsets ({shown}); Kiln applies one value to "
                            "every subset of a run")
    concepts, reg = [], []
    for i, subset in enumerate(subsets):
        if subset.metadata_file:
            continue  # listed above (fine-tuning metadata is not read)
        (reg if subset.is_reg else concepts).append(_concept(subset, f"{source}: datasets[0].subsets[{i}]"))
    if not concepts:
        raise KilnError(f"{source}: no training subset (every subset is is_reg = true, or none has image_dir)",
                        hint="add a [[datasets.subsets]] with image_dir = 'folder' and num_repeats")
    train_dir = concepts[0].path.parent
    reg_dir = reg[0].path.parent if reg else None
    layout = DatasetLayout(train_dir, reg_dir, tuple(concepts), tuple(reg))
    return DatasetRun(layout, dataset, subsets[0], tuple(problems))


def _concept(subset: SubsetSpec, where: str) -> Concept:
    folder = Path(subset.image_dir or "")
    if not folder.is_dir():
        raise KilnError(f"{where}: image_dir is not a folder", path=folder)
    pictures = list_images(folder)
    used = tuple(p for p in pictures if p.suffix.lower() in KOHYA_IMAGE_EXTENSIONS)
    unused = tuple(p for p in pictures if p.suffix.lower() not in KOHYA_IMAGE_EXTENSIONS)
    return Concept(folder, FolderName(int(subset.num_repeats), subset.class_tokens or ""), used,
                   bool(subset.is_reg), unused)


def caption_rules(subset: SubsetSpec) -> CaptionRules:
    names = {f.name for f in fields(CaptionRules)}
    values = {name: getattr(subset, name) for name in SHARED_SUBSET_OPTIONS if name in names}
    values["caption_prefix"] = values.get("caption_prefix") or ""
    values["caption_suffix"] = values.get("caption_suffix") or ""
    values["secondary_separator"] = values.get("secondary_separator") or ""
    return CaptionRules(**values)
