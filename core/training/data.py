"""The trainer's data, as kohya's DreamBooth-style dataset reads a ``train_data_dir``.

- Items: each picture of each ``<repeats>_<class tokens>`` folder (core/dataset/kohya_folders.py)
  with its caption (``caption_extension``; the class tokens when there is none, kohya's rule).
- Regularisation pictures are balanced to the train count as kohya does: each keeps its folder's
  repeats, then repeats are added round robin until reg ≥ train; pictures past that are unused.
- Buckets (``enable_bucket``): kohya's resolutions (``make_bucket_resolutions``: the square of
  the resolution's area, then every width from ``min_bucket_reso`` to ``max_bucket_reso`` in
  ``bucket_reso_steps`` with the height that keeps the area), the bucket whose aspect ratio is
  nearest, resized to cover it and centre-cropped (``random_crop``: anywhere). With
  ``bucket_no_upscale`` the bucket is the picture's own size (scaled down to the area), rounded
  down to the steps. Without buckets every picture is covered-and-cropped to ``resolution``.
- Epochs: the same seed gives the same order (a batch never mixes buckets); ``epoch_batches(e)``
  depends only on the seed and ``e``, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.dataset.caption_rules import CaptionRules
from core.dataset.captions import caption_path, read_caption
from core.dataset.images import open_image
from core.dataset.kohya_folders import Concept, DatasetLayout
from core.errors import KilnError


@dataclass(frozen=True)
class DataOptions:
    resolution: tuple[int, int] = (512, 512)
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    caption_extension: str = ".caption"  # kohya's default; the UI and the seeds use .txt
    flip_aug: bool = False
    random_crop: bool = False
    color_aug: bool = False  # kohya's weak colour augmentation: a random hue shift of ±8 (OpenCV's 0-180 hue)
    face_crop_aug_range: tuple[float, float] | None = None  # crop around the face, the face this many times smaller
    captions: CaptionRules = field(default_factory=CaptionRules)

    @property
    def random_pixels(self) -> bool:
        """True when a picture's pixels change from one epoch to the next (no latent caching then)."""
        face = self.face_crop_aug_range
        return self.random_crop or self.color_aug or (face is not None and face[0] != face[1])


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str
    repeats: int
    is_reg: bool
    folder: str  # the concept folder's name ("10_sls 1girl")
    size: tuple[int, int]  # the picture's own width, height
    bucket: tuple[int, int]  # the training size (width, height)
    resized: tuple[int, int]  # the size it is resized to before the crop
    ar_error: float


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[tuple[int, int]]:
    """kohya's ``model_util.make_bucket_resolutions``."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


class Buckets:
    def __init__(self, options: DataOptions):
        self.options = options
        self.steps = options.bucket_reso_steps
        if options.enable_bucket and not options.bucket_no_upscale:
            self.resos = make_bucket_resolutions(options.resolution, options.min_bucket_reso,
                                                 options.max_bucket_reso, options.bucket_reso_steps)
        else:
            self.resos = [options.resolution]
        self.ratios = np.array([w / h for w, h in self.resos])

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int], float]:
        """(bucket, resized size, aspect-ratio error) for a ``width``×``height`` picture."""
        aspect = width / height
        if self.options.enable_bucket and self.options.bucket_no_upscale:
            max_area = self.options.resolution[0] * self.options.resolution[1]
            if width * height > max_area:
                rw = math.sqrt(max_area * aspect)
                rh = max_area / rw
                bw = self._round(rw)
                ar_w = bw / max(self._round(bw / aspect), 1)
                bh = self._round(rh)
                ar_h = max(self._round(bh * aspect), 1) / max(bh, 1)
                resized = ((bw, int(bw / aspect + 0.5)) if abs(ar_w - aspect) < abs(ar_h - aspect)
                           else (int(bh * aspect + 0.5), bh))
            else:
                resized = (width, height)
            bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
            if min(bucket) < self.steps:
                raise KilnError(f"{width}×{height} is smaller than one bucket step ({self.steps} px)")
            return bucket, resized, bucket[0] / bucket[1] - aspect
        index = int(np.abs(self.ratios - aspect).argmin())
        bucket = self.resos[index]
        scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
        resized = (max(int(width * scale + 0.5), bucket[0]), max(int(height * scale + 0.5), bucket[1]))
        return bucket, resized, bucket[0] / bucket[1] - aspect


def _picture_size(path: Path) -> tuple[int, int]:
    """Width and height as the picture is seen (EXIF rotation), read from the header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except (OSError, ValueError, SyntaxError) as exc:
        raise KilnError(f"not a picture Pillow can read ({exc})", path=path,
                        hint="run the dataset check; remove or re-save the file") from exc


def _caption_of(image: Path, concept: Concept, extension: str) -> str:
    caption = read_caption(caption_path(image, extension))
    return caption.text if caption.exists and caption.text.strip() else concept.name.class_tokens


COLOR_AUG_HUE = 8.0  # kohya's hue_shift_limit, in OpenCV's 0-180 hue scale


def hue_shift(image: Image.Image, shift: float) -> Image.Image:
    """kohya's color_aug: the hue turned by ``shift`` on OpenCV's 0-180 scale (PIL's is 0-255)."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + int(round(shift * 256 / 180))) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def face_from_name(path: Path) -> tuple[float, float, float, float] | None:
    """kohya's face info in a file name: the last four ``_`` parts are cx, cy, w, h."""
    parts = path.stem.split("_")
    if len(parts) < 5:
        return None
    try:
        cx, cy, w, h = (int(p) for p in parts[-4:])
    except ValueError:
        return None
    return (float(cx), float(cy), float(w), float(h)) if w > 0 and h > 0 else None


def _detected_face(image: Image.Image) -> tuple[float, float, float, float] | None:
    from core.dataset.focal import face_rects

    rects = face_rects(image)
    if not rects:
        return None
    x, y, w, h = max(rects, key=lambda r: r[2] * r[3])  # the largest face
    return (x + w / 2, y + h / 2, w, h)


def face_crop(image: Image.Image, face: tuple[float, float, float, float], target: tuple[int, int],
              aug_range: tuple[float, float], rng: random.Random, random_crop: bool) -> Image.Image:
    """kohya's crop_target: scale so the face is 1/``aug_range`` of the short side (a random scale
    between the two; never up, never below the target), then cut the target around the face."""
    face_cx, face_cy, face_w, face_h = face
    tw, th = target
    width, height = image.size
    if (width, height) == (tw, th):
        return image
    face_size = max(face_w, face_h)
    size = min(th, tw)
    min_scale = max(th / height, tw / width)
    min_scale = min(1.0, max(min_scale, size / (face_size * aug_range[1])))
    max_scale = min(1.0, max(min_scale, size / (face_size * aug_range[0])))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    nw, nh = max(int(width * scale + 0.5), tw), max(int(height * scale + 0.5), th)
    image = image.resize((nw, nh), Image.Resampling.LANCZOS)
    face_cx, face_cy = int(face_cx * scale + 0.5), int(face_cy * scale + 0.5)
    origin = []
    for target_size, length, face_p in ((th, nh, face_cy), (tw, nw, face_cx)):
        p1 = face_p - target_size // 2
        if random_crop:  # kohya: mostly around the face, sometimes towards the background
            reach = max(length - face_p, face_p)
            p1 = p1 + (rng.randint(0, reach) + rng.randint(0, reach)) - reach
        elif aug_range[0] != aug_range[1] and face_size > size // 10 and face_size >= 40:
            p1 = p1 + rng.randint(-int(face_size) // 20, int(face_size) // 20)
        origin.append(max(0, min(p1, length - target_size)))
    top, left = origin
    return image.crop((left, top, left + tw, top + th))


class TrainingData:
    def __init__(self, layout: DatasetLayout, options: DataOptions, seed: int = 0):
        self.layout = layout
        self.options = options
        self.seed = seed
        self.buckets = Buckets(options)
        self._faces: dict[Path, tuple[float, float, float, float] | None] = {}
        self._random_crops: dict[Path, tuple[int, int]] = {}  # (top, left) of the latest random crop
        self.train = [self._item(c, p) for c in layout.concepts for p in c.images]
        if not self.train:
            raise KilnError("no training pictures", path=layout.train_dir,
                            hint="put pictures into folders named <repeats>_<name> <class>, e.g. 10_sls 1girl")
        reg_items = [self._item(c, p) for c in layout.reg_concepts for p in c.images]
        self.num_train_images = sum(i.repeats for i in self.train)
        self.num_reg_images = sum(i.repeats for i in reg_items)
        self.reg = self._balanced(reg_items)

    def _item(self, concept: Concept, path: Path) -> Item:
        size = _picture_size(path)
        bucket, resized, error = self.buckets.select(*size)
        return Item(path, _caption_of(path, concept, self.options.caption_extension), concept.repeats,
                    concept.is_reg, concept.path.name, size, bucket, resized, error)

    def _balanced(self, reg: list[Item]) -> list[Item]:
        """kohya: reg pictures get more repeats round robin until they match the train count."""
        if not reg:
            return []
        repeats = [0] * len(reg)
        n, first = 0, True
        while n < self.num_train_images:
            for i, item in enumerate(reg):
                if first:
                    repeats[i] = item.repeats
                    n += item.repeats
                else:
                    repeats[i] += 1
                    n += 1
                if n >= self.num_train_images:
                    break
            first = False
        return [Item(**{**item.__dict__, "repeats": r}) for item, r in zip(reg, repeats) if r > 0]

    # ---- what kohya's metadata reports

    @property
    def items(self) -> list[Item]:
        return self.train + self.reg

    def bucket_info(self) -> dict | None:
        if not self.options.enable_bucket:
            return None
        counts = Counter()
        for item in self.items:
            counts[item.bucket] += item.repeats
        order = sorted(counts)
        return {"buckets": {i: {"resolution": list(reso), "count": counts[reso]} for i, reso in enumerate(order)},
                "mean_img_ar_error": float(np.mean([abs(i.ar_error) for i in self.items]))}

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for concept in (self.layout.reg_concepts if reg else self.layout.concepts):
            name, n = concept.path.name, 2
            while name in out:
                name = f"{concept.path.name} ({n})"
                n += 1
            out[name] = {"n_repeats": concept.repeats, "img_count": len(concept.images)}
        return out

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_tag_frequency``: per folder, tags split on ',', stripped, lower-cased, counted
        once per picture (repeats not counted); reg folders included."""
        out: dict[str, Counter] = {}
        for item in self.train + [i for i in self.reg]:
            counter = out.setdefault(item.folder, Counter())
            for tag in item.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counter[tag] += 1
        return {folder: dict(c) for folder, c in out.items()}

    # ---- epochs

    def epoch_batches(self, epoch: int, batch_size: int) -> list[list[Item]]:
        """The batches of ``epoch`` (1-based): every item × its repeats, grouped by bucket, shuffled
        with ``seed + epoch`` (kohya seeds its shuffle the same way)."""
        rng = random.Random(self.seed + epoch)
        per_bucket: dict[tuple[int, int], list[Item]] = {}
        for item in self.items:
            per_bucket.setdefault(item.bucket, []).extend([item] * item.repeats)
        batches = []
        for bucket in sorted(per_bucket):
            entries = per_bucket[bucket]
            rng.shuffle(entries)
            batches += [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self, batch_size: int) -> int:
        counts = Counter()
        for item in self.items:
            counts[item.bucket] += item.repeats
        return sum(math.ceil(n / batch_size) for n in counts.values())

    def pixels(self, item: Item, rng: random.Random, *, flip: bool = False) -> torch.Tensor:
        """The picture as a (3, H, W) tensor in [-1, 1] at its bucket size."""
        original = open_image(item.path)
        face = self.face(item, original) if self.options.face_crop_aug_range else None
        if face is not None:
            image = face_crop(original, face, item.bucket, self.options.face_crop_aug_range, rng,
                              self.options.random_crop)
        else:
            image = original.resize(item.resized, Image.Resampling.LANCZOS)
            bw, bh = item.bucket
            extra_w, extra_h = image.width - bw, image.height - bh
            if self.options.random_crop:
                left, top = rng.randint(0, extra_w), rng.randint(0, extra_h)
                self._random_crops[item.path] = (top, left)
            else:
                left, top = extra_w // 2, extra_h // 2
            image = image.crop((left, top, left + bw, top + bh))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.options.color_aug:
            image = hue_shift(image, rng.uniform(-COLOR_AUG_HUE, COLOR_AUG_HUE))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        return array / 127.5 - 1.0

    def crop_top_left(self, item: Item) -> tuple[int, int]:
        """Where the bucket crop of ``item`` starts in the resized picture, (top, left): SDXL's crop
        conditioning. The centre crop's, or the last random crop drawn; a face crop counts as (0, 0)."""
        if self.options.face_crop_aug_range:
            return (0, 0)
        if self.options.random_crop and item.path in self._random_crops:
            return self._random_crops[item.path]
        return ((item.resized[1] - item.bucket[1]) // 2, (item.resized[0] - item.bucket[0]) // 2)

    def face(self, item: Item, image: Image.Image) -> tuple[float, float, float, float] | None:
        """The face of a picture as (centre x, centre y, width, height): from the file name as
        kohya's face tools write it (``name_<cx>_<cy>_<w>_<h>.png``), else found with OpenCV
        (kohya has no detection: pictures without the name suffix get no face crop there)."""
        if item.path not in self._faces:
            self._faces[item.path] = face_from_name(item.path) or _detected_face(image)
        return self._faces[item.path]
