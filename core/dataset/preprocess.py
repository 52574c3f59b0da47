"""Preprocess a folder of pictures into a training set: one code path for Dataset › Preprocess,
Extras › Batch from folder, the API and ``python -m core.dataset preprocess``.

Per picture, as the WebUI's Preprocess (1.6) and Extras (1.7+) do it:
1. read upright RGB (core.dataset.images; broken files listed with the reason and skipped);
2. smaller than the target: upscale first with the chosen upscaler (ESRGAN file or resampler);
3. size it — one of: split an oversized (very tall or wide) picture into overlapping W×H tiles;
   auto-sized crop (the largest / best-fitting multiple of 64 within min/max); focal-point crop
   (core.dataset.focal); or the plain modes crop (centre crop and resize), fill (fit inside and
   stretch the edges into the border, the WebUI's "resize and fill") and resize (stretch);
   or, for Extras, upscale ×N / to W×H with upscaler 1 + 2 (core.dataset.upscale);
4. optionally a mirrored copy of each result;
5. the same-stem ``.txt`` caption copied beside each result, merged with a caption callback
   (the Tag tab's tagger) when one is given.

Safety: the destination is never the source nor inside it (nor the other way round); originals
are only read; every file is written atomically (core.fileio); a picture's main output is
written last, so its presence means the picture is done and a rerun skips it (resumable).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from core.dataset.captions import caption_path, join_tags, read_caption, split_tags
from core.dataset.focal import FocalWeights, cover_size, focal_crop
from core.dataset.images import Skipped, UnreadableImage, list_images, open_image
from core.dataset.upscale import ExtrasUpscale, UpscaleFn, extras_upscale
from core.errors import KilnError
from core.fileio import atomic_write_bytes

MODES = ("crop", "fill", "resize")
CAPTION_ACTIONS = ("copy", "prepend", "append", "ignore")  # the WebUI's PreprocessTxtAction
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
MAX_SIDE = 8192
FLIP_SUFFIX = "-flipped"

Progress = Callable[["PreprocessProgress"], None]
Captioner = Callable[[Image.Image], str]


@dataclass(frozen=True)
class PreprocessOptions:
    """Everything a preprocess run is asked to do (UI, API and CLI fill the same object)."""

    width: int = 512
    height: int = 512
    mode: str = "crop"  # crop | fill | resize (when no split / auto-size / focal applies)
    split: bool = False  # split oversized pictures into overlapping tiles
    split_threshold: float = 0.5  # split when (short/long ratio relative to the target's) ≤ this
    overlap_ratio: float = 0.2
    focal: bool = False  # auto focal-point crop instead of the centre crop
    focal_weights: FocalWeights = field(default_factory=FocalWeights)
    auto_size: bool = False  # centre crop at an automatically chosen size within the bounds
    auto_min_dim: int = 384
    auto_max_dim: int = 768
    auto_min_area: int = 64 * 64
    auto_max_area: int = 640 * 640
    auto_objective: str = "Maximize area"  # or "Minimize error"
    auto_threshold: float = 0.1  # largest aspect-ratio error accepted
    flip: bool = False  # also write a mirrored copy of each result
    upscaler: str | None = None  # upscale first with this when the picture is smaller than needed
    extras: ExtrasUpscale | None = None  # Extras batch: upscale ×N / to W×H instead of sizing
    background: tuple[int, int, int] = (255, 255, 255)  # transparency is flattened on this
    output_format: str = "png"
    recursive: bool = False  # also subfolders (their layout kept in the destination)
    caption_extension: str = ".txt"
    caption_action: str = "copy"  # what to do with an existing caption when a captioner is given
    # The Tag tab's tagger: picture → caption text; None = only copy existing captions.
    caption: Captioner | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value > MAX_SIDE or value % 8:
                raise KilnError(f"{name} must be a multiple of 8 between 8 and {MAX_SIDE}, got {value!r}")
        if self.mode not in MODES:
            raise KilnError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.split_threshold <= 1.0:
            raise KilnError(f"split threshold must be between 0 and 1, got {self.split_threshold}")
        if not 0.0 <= self.overlap_ratio <= 0.9:
            raise KilnError(f"overlap ratio must be between 0 and 0.9, got {self.overlap_ratio}")
        if self.auto_size:
            if not 64 <= self.auto_min_dim <= self.auto_max_dim <= MAX_SIDE:
                raise KilnError(f"auto-sized crop: need 64 ≤ min ({self.auto_min_dim}) ≤ max ({self.auto_max_dim})"
                                f" ≤ {MAX_SIDE}")
            if not 0 <= self.auto_min_area <= self.auto_max_area:
                raise KilnError(f"auto-sized crop: area bounds {self.auto_min_area}–{self.auto_max_area} are reversed")
            if self.auto_objective not in ("Maximize area", "Minimize error"):
                raise KilnError(f"auto-sized crop objective must be 'Maximize area' or 'Minimize error', "
                                f"got {self.auto_objective!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise KilnError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.caption_action not in CAPTION_ACTIONS:
            raise KilnError(f"caption action must be one of {', '.join(CAPTION_ACTIONS)}, got {self.caption_action!r}")

    @property
    def suffix(self) -> str:
        return f".{self.output_format}"


@dataclass(frozen=True)
class PreprocessProgress:
    index: int  # pictures finished (done or skipped) so far
    total: int
    path: Path | None  # the picture being worked on (None at the end)
    written: int  # files written so far


@dataclass
class PreprocessReport:
    source: Path
    destination: Path
    total: int = 0
    written: list[Path] = field(default_factory=list)  # pictures written (captions not counted)
    captions: list[Path] = field(default_factory=list)
    done_before: list[Path] = field(default_factory=list)  # sources a previous run finished
    skipped: list[Skipped] = field(default_factory=list)  # readable, but nothing to write (reason)
    broken: list[Skipped] = field(default_factory=list)  # unreadable files, with the reason
    stopped: bool = False

    def summary(self) -> str:
        parts = [f"{len(self.written)} pictures written to {self.destination}"]
        if self.captions:
            parts.append(f"{len(self.captions)} captions")
        if self.done_before:
            parts.append(f"{len(self.done_before)} already done")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.broken:
            parts.append(f"{len(self.broken)} unreadable")
        text = ", ".join(parts)
        if self.stopped:
            text += " (stopped; run again to continue)"
        return text

    def problems(self) -> list[str]:
        """One line per file that was not processed, naming it and why."""
        return [f"{s.path}: {s.reason}" for s in (*self.broken, *self.skipped)]


# ------------------------------------------------------------- picture sizing --
def center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop to the target's aspect ratio around the centre and resize (float box: no 1-px drift)."""
    iw, ih = image.size
    if ih / height < iw / width:
        sw = width * ih / height
        box = ((iw - sw) / 2, 0, iw - (iw - sw) / 2, ih)
    else:
        sh = height * iw / width
        box = (0, (ih - sh) / 2, iw, ih - (ih - sh) / 2)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside W×H and fill the two borders by stretching the picture's edge rows/columns
    (the WebUI's resize mode 2, "Resize and fill")."""
    iw, ih = image.size
    out = Image.new("RGB", (width, height))
    if width / height < iw / ih:  # wider than the target: bands above and below
        sh = max(1, round(ih * width / iw))
        resized = image.resize((width, sh), Image.Resampling.LANCZOS)
        top = (height - sh) // 2
        out.paste(resized, (0, top))
        if top > 0:
            out.paste(resized.resize((width, top), box=(0, 0, width, 1)), (0, 0))
        if height - top - sh > 0:
            out.paste(resized.resize((width, height - top - sh), box=(0, sh - 1, width, sh)), (0, top + sh))
    else:
        sw = max(1, round(iw * height / ih))
        resized = image.resize((sw, height), Image.Resampling.LANCZOS)
        left = (width - sw) // 2
        out.paste(resized, (left, 0))
        if left > 0:
            out.paste(resized.resize((left, height), box=(0, 0, 1, height)), (0, 0))
        if width - left - sw > 0:
            out.paste(resized.resize((width - left - sw, height), box=(sw - 1, 0, sw, height)), (left + sw, 0))
    return out


def split_oversized(image: Image.Image, width: int, height: int, threshold: float,
                    overlap: float) -> list[Image.Image] | None:
    """Overlapping W×H tiles along the long side of a picture much longer than the target's
    aspect (the WebUI's "split oversized images"); None when the picture is not that long."""
    iw, ih = image.size
    tall = ih > iw
    # How the picture's short/long proportion compares with the target's (1 = same shape).
    ratio = (iw * height) / (ih * width) if tall else (ih * width) / (iw * height)
    if ratio >= 1.0 or ratio > threshold:
        return None
    if tall:  # scale the width to W, tile down
        scaled = image.resize((width, max(height, ih * width // iw)), Image.Resampling.LANCZOS)
        span, tile = scaled.height, height
    else:
        scaled = image.resize((max(width, iw * height // ih), height), Image.Resampling.LANCZOS)
        span, tile = scaled.width, width
    count = max(1, math.ceil((span - tile * overlap) / (tile * (1.0 - overlap))))
    step = (span - tile) / (count - 1) if count > 1 else 0.0
    tiles = []
    for i in range(count):
        at = int(step * i)
        box = (0, at, width, at + height) if tall else (at, 0, at + width, height)
        tiles.append(scaled.crop(box))
    return tiles


def auto_size(size: tuple[int, int], options: PreprocessOptions) -> tuple[int, int] | None:
    """The crop size the WebUI's "auto-sized crop" picks: multiples of 64 within the bounds whose
    aspect error is within the threshold, the largest area (or the smallest error) first."""
    iw, ih = size

    def error(w: int, h: int) -> float:
        x = (iw / ih) / (w / h)
        return 1 - (x if x < 1 else 1 / x)

    dims = range(options.auto_min_dim, options.auto_max_dim + 1, 64)
    fits = [(w, h) for w in dims for h in dims
            if options.auto_min_area <= w * h <= options.auto_max_area and error(w, h) <= options.auto_threshold]
    if not fits:
        return None
    if options.auto_objective == "Maximize area":
        return max(fits, key=lambda wh: (wh[0] * wh[1], -error(*wh)))
    return max(fits, key=lambda wh: (-error(*wh), wh[0] * wh[1]))


def upscale_first(image: Image.Image, needed: tuple[int, int], name: str | None,
                  upscale: UpscaleFn | None) -> Image.Image:
    """Enlarge with the chosen upscaler when the picture is smaller than ``needed`` (a model
    upscaler keeps detail a plain resize blurs); otherwise leave it for the resize step."""
    if not name or name == "None" or upscale is None:
        return image
    if image.width >= needed[0] and image.height >= needed[1]:
        return image
    return upscale(image, name, *cover_size(image.size, *needed)).convert("RGB")


def process_image(image: Image.Image, options: PreprocessOptions,
                  upscale: UpscaleFn | None = None) -> tuple[list[Image.Image], str | None]:
    """The results for one upright RGB picture (first = main) and, when there are none, why."""
    if options.extras is not None:
        out, _info = extras_upscale(image, options.extras, upscale or _no_upscaler)
        return [out], None
    w, h = options.width, options.height
    if options.auto_size:
        size = auto_size(image.size, options)
        if size is None:
            return [], (f"no crop size within {options.auto_min_dim}–{options.auto_max_dim} px fits its "
                        f"{image.width}×{image.height} aspect within the error threshold {options.auto_threshold}")
        image = upscale_first(image, size, options.upscaler, upscale)
        return [center_crop(image, *size)], None
    if options.split:
        # The tiles need the short side at the target: upscale to cover that, not the long side.
        tall = image.height > image.width
        probe = split_oversized(image, w, h, options.split_threshold, options.overlap_ratio)
        if probe is not None:
            needed = (w, max(h, image.height * w // image.width)) if tall else (max(w, image.width * h // image.height), h)
            if options.upscaler and (image.width < needed[0] or image.height < needed[1]):
                image = upscale_first(image, needed, options.upscaler, upscale)
                probe = split_oversized(image, w, h, options.split_threshold, options.overlap_ratio) or probe
            return probe, None
    image = upscale_first(image, (w, h), options.upscaler, upscale)
    if options.focal and abs(image.width * h - image.height * w) > max(w, h):  # shape differs from the target's
        return [focal_crop(image, w, h, options.focal_weights)], None
    if options.mode == "fill":
        return [resize_and_fill(image, w, h)], None
    if options.mode == "resize":
        return [image.resize((w, h), Image.Resampling.LANCZOS)], None
    return [center_crop(image, w, h)], None


def _no_upscaler(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    from core.dataset.upscale import plain_upscale

    return plain_upscale(image, name, width, height)


# ----------------------------------------------------------------- folders --
def check_folders(source: str | Path, destination: str | Path) -> tuple[Path, Path]:
    """Resolved (source, destination), or KilnError when they are the same or one holds the other."""
    src = Path(source).expanduser()
    dst = Path(destination).expanduser()
    if not str(source).strip():
        raise KilnError("no source folder given", hint="enter the folder that holds your pictures")
    if not str(destination).strip():
        raise KilnError("no destination folder given", hint="enter a new folder for the results")
    if not src.exists():
        raise KilnError("source folder not found", path=src, hint="check the path; it must exist on the server")
    if not src.is_dir():
        raise KilnError("the source is a file, not a folder", path=src)
    if dst.exists() and not dst.is_dir():
        raise KilnError("the destination is a file, not a folder", path=dst)
    rs, rd = src.resolve(), dst.resolve()
    if rs == rd:
        raise KilnError("the destination is the source folder; originals are never overwritten", path=dst,
                        hint="choose another (new or empty) destination folder")
    if rs in rd.parents:
        raise KilnError("the destination is inside the source folder", path=dst,
                        hint="choose a destination outside the source, or the next run would pick up its results")
    if rd in rs.parents:
        raise KilnError("the source is inside the destination folder", path=src,
                        hint="choose a destination outside the source")
    return rs, rd


def output_stems(files: list[Path], root: Path) -> dict[Path, Path]:
    """Each source → its output path without suffix, relative to the destination: ``a.jpg`` → ``a``;
    ``a.jpg`` and ``a.png`` side by side (seed 002's pitfall) → ``a_jpg`` and ``a_png``."""
    rel = {f: f.relative_to(root) for f in files}
    taken: dict[Path, int] = {}
    for r in rel.values():
        key = r.with_suffix("")
        taken[key] = taken.get(key, 0) + 1
    out = {}
    for f, r in rel.items():
        stem = r.with_suffix("")
        out[f] = stem.with_name(f"{stem.name}_{r.suffix.lstrip('.').lower()}") if taken[stem] > 1 else stem
    return out


def _encode(image: Image.Image, options: PreprocessOptions) -> bytes:
    buffer = io.BytesIO()
    fmt = OUTPUT_FORMATS[options.output_format]
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _caption_text(existing: str | None, generated: str | None, action: str) -> str | None:
    if generated is None:
        return existing
    if action == "ignore" or not existing:
        return generated
    if action == "copy":
        return existing
    first, second = (existing, generated) if action == "prepend" else (generated, existing)
    tags = split_tags(first)
    tags += [tag for tag in split_tags(second) if tag not in tags]
    return join_tags(tags)


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise KilnError(f"could not write ({exc.strerror or exc}); the originals are untouched and finished "
                        "pictures are kept", path=path, hint="free some disk space and run again to continue") from exc


def run_preprocess(source: str | Path, destination: str | Path, options: PreprocessOptions, *,
                   upscale: UpscaleFn | None = None, progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> PreprocessReport:
    """Preprocess every picture of ``source`` into ``destination`` (see the module docstring).

    ``upscale(image, name, w, h)`` does the upscaling (default: plain resamplers only);
    ``progress`` is called after each picture; ``should_stop()`` is asked between pictures."""
    src, dst = check_folders(source, destination)
    files = list_images(src, recursive=options.recursive)
    if options.recursive:
        files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(src).parts)]
    report = PreprocessReport(src, dst, total=len(files))
    if not files:
        raise KilnError("no pictures in the source folder", path=src,
                        hint="it needs .png, .jpg, .webp, .bmp, .gif or .avif files")
    dst.mkdir(parents=True, exist_ok=True)
    stems = output_stems(files, src)
    upscale = upscale or _no_upscaler
    for index, path in enumerate(files):
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        if progress is not None:
            progress(PreprocessProgress(index, len(files), path, len(report.written)))
        _process_one(path, dst / stems[path], options, upscale, report)
    if progress is not None:
        progress(PreprocessProgress(len(files) if not report.stopped else index, len(files), None,
                                    len(report.written)))
    return report


def _process_one(path: Path, stem: Path, options: PreprocessOptions, upscale: UpscaleFn,
                 report: PreprocessReport) -> None:
    main = stem.with_name(stem.name + options.suffix)
    if main.exists():
        report.done_before.append(path)
        return
    try:
        image = open_image(path, background=options.background)
    except UnreadableImage as exc:
        report.broken.append(Skipped(path, exc.problem))
        return
    results, reason = process_image(image, options, upscale)
    if not results:
        report.skipped.append(Skipped(path, reason or "nothing to write"))
        return
    existing = None
    source_caption = caption_path(path, options.caption_extension)
    raw_caption: bytes | None = None
    if source_caption.is_file():
        read = read_caption(source_caption)
        existing = read.text
        if read.encoding == "unknown":  # undecodable: copy the bytes as they are, never lossy
            raw_caption = source_caption.read_bytes()
    outputs: list[tuple[Path, Image.Image]] = []
    for i, result in enumerate(results):
        name = stem.name if i == 0 else f"{stem.name}-{i + 1}"
        outputs.append((stem.with_name(name + options.suffix), result))
        if options.flip:
            outputs.append((stem.with_name(name + FLIP_SUFFIX + options.suffix), ImageOps.mirror(result)))
    # The main picture goes last: when it exists, everything of this source exists (resume).
    outputs = outputs[1:] + outputs[:1]
    for out_path, picture in outputs:
        generated = options.caption(picture) if options.caption is not None else None
        text = _caption_text(existing, generated, options.caption_action)
        if text is not None:
            cap = caption_path(out_path, options.caption_extension)
            data = raw_caption if (raw_caption is not None and generated is None) else text.encode("utf-8")
            _write(cap, data)
            report.captions.append(cap)
        _write(out_path, _encode(picture, options))
        report.written.append(out_path)
