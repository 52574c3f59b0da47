"""``python -m core.dataset preprocess SRC DST --size 512x512 [--mode crop|fill|resize] [--focal]
[--flip] [--split] [--upscaler NAME]``: run_preprocess from a terminal, a progress bar on stderr.

Exit status: 0 all pictures done, 1 some files unreadable / skipped or the run failed, 2 bad
arguments. The same safety rules as the app (core.dataset.preprocess).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import TextIO

from core.dataset.focal import FocalWeights
from core.dataset.preprocess import (
    CAPTION_ACTIONS,
    MODES,
    OUTPUT_FORMATS,
    PreprocessOptions,
    PreprocessProgress,
)
from core.errors import KilnError


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*|\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 or 512, got {text!r}")
    if m.group(3):
        return int(m.group(3)), int(m.group(3))
    return int(m.group(1)), int(m.group(2))


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="crop / resize / split / flip pictures into a new folder",
                              description="Preprocess the pictures of SRC into DST (originals never touched; "
                                          "a rerun skips pictures already done).")
    p.add_argument("src", help="folder with the original pictures")
    p.add_argument("dst", help="new folder for the results (not SRC, not inside it)")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="WxH, multiples of 8 (default 512x512)")
    p.add_argument("--mode", choices=MODES, default="crop", help="keep-ratio mode (default crop)")
    p.add_argument("--focal", action="store_true", help="auto focal-point crop (face, entropy, edges)")
    p.add_argument("--face-weight", type=float, default=FocalWeights.face)
    p.add_argument("--entropy-weight", type=float, default=FocalWeights.entropy)
    p.add_argument("--edges-weight", type=float, default=FocalWeights.edges)
    p.add_argument("--flip", action="store_true", help="also write a mirrored copy")
    p.add_argument("--split", action="store_true", help="split oversized pictures into overlapping tiles")
    p.add_argument("--split-threshold", type=float, default=0.5)
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap ratio (default 0.2)")
    p.add_argument("--auto-size", metavar="MIN-MAX", default=None,
                   help="auto-sized centre crop with sides within MIN-MAX px (e.g. 384-768)")
    p.add_argument("--upscaler", default=None,
                   help="upscale smaller pictures first: Lanczos, Nearest or a file name in models/ESRGAN")
    p.add_argument("--format", choices=list(OUTPUT_FORMATS), default="png")
    p.add_argument("--recursive", action="store_true", help="also subfolders (layout kept)")
    p.add_argument("--background", default="#ffffff", help="colour transparency is flattened on")
    p.add_argument("--caption-action", choices=CAPTION_ACTIONS, default="copy")
    p.add_argument("--caption", metavar="MODEL", default=None,
                   help="tag / caption each result in the same pass with a tagger of models/tagger, "
                        "models/torch_deepdanbooru or models/BLIP (as `tag --model`)")
    p.add_argument("--threshold", type=float, default=0.35, help="tag threshold for --caption (default 0.35)")
    p.add_argument("--trigger", default="", help="with --caption: words put first in every caption")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> PreprocessOptions:
    from PIL import ImageColor

    try:
        background = ImageColor.getrgb(args.background)[:3]
    except ValueError as exc:
        raise KilnError(f"--background: not a colour: {args.background!r}") from exc
    auto = {}
    if args.auto_size:
        m = re.fullmatch(r"(\d+)-(\d+)", args.auto_size)
        if not m:
            raise KilnError(f"--auto-size must look like 384-768, got {args.auto_size!r}")
        lo, hi = int(m.group(1)), int(m.group(2))
        auto = {"auto_size": True, "auto_min_dim": lo, "auto_max_dim": hi, "auto_max_area": hi * hi}
    try:
        weights = FocalWeights(args.face_weight, args.entropy_weight, args.edges_weight)
    except ValueError as exc:
        raise KilnError(str(exc)) from exc
    width, height = args.size
    return PreprocessOptions(width=width, height=height, mode=args.mode, split=args.split,
                             split_threshold=args.split_threshold, overlap_ratio=args.overlap, focal=args.focal,
                             focal_weights=weights, flip=args.flip, upscaler=args.upscaler,
                             background=background, output_format=args.format, recursive=args.recursive,
                             caption_action=args.caption_action, **auto)


def upscaler_for(args: argparse.Namespace):
    """The upscale function for --upscaler: a plain resampler, or the ESRGAN folder's models."""
    from core.generation.upscale import IMAGE_RESAMPLERS

    if not args.upscaler or args.upscaler in IMAGE_RESAMPLERS:
        return None  # run_preprocess's default handles the resamplers
    from core.dataset.__main__ import kiln_paths
    from core.generation.upscalers_model import ModelUpscalers

    paths = kiln_paths(args)
    models = ModelUpscalers(paths.esrgan_dir, data_dir=paths.data_dir)  # the WebUI's named ones too
    if args.upscaler not in models.names():
        known = ", ".join([*IMAGE_RESAMPLERS, *models.names()])
        raise KilnError(models.missing_reason(args.upscaler) or f"upscaler {args.upscaler!r} not found",
                        path=models.folder, hint=f"known: {known}")
    return models.upscale


def captioner_for(args: argparse.Namespace):
    """Picture → caption text with the tagger ``--caption`` names (seed 003: image + .txt per input)."""
    from core.dataset.__main__ import kiln_paths
    from core.dataset.taggers import load_tagger
    from core.dataset.taggers.common import TagOptions, parse_tag_list

    tagger = load_tagger(args.caption, kiln_paths(args))
    options = TagOptions(general_threshold=args.threshold, additional=parse_tag_list(args.trigger))

    def caption(picture) -> str:
        return tagger.tag([picture], options)[0].text
    return caption


class ProgressBar:
    """``[#####-----] 12/40 a.png`` redrawn in place on a terminal, a line every 10% otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream or sys.stderr  # looked up now: a redirected stderr is honoured
        self.width = width
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.started = time.monotonic()
        self._last_decile = -1

    def __call__(self, p: PreprocessProgress) -> None:
        fraction = p.index / p.total if p.total else 1.0
        filled = int(fraction * self.width)
        elapsed = time.monotonic() - self.started
        eta = f" ETA {elapsed / p.index * (p.total - p.index):.0f}s" if p.index and p.index < p.total else ""
        name = p.path.name if p.path else "done"
        line = f"[{'#' * filled}{'-' * (self.width - filled)}] {p.index}/{p.total}{eta} {name}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120) + ("\n" if p.path is None else ""))
            self.stream.flush()
        elif int(fraction * 10) != self._last_decile or p.path is None:
            self._last_decile = int(fraction * 10)
            self.stream.write(line + "\n")


def run(args: argparse.Namespace) -> int:
    from core.dataset.preprocess import run_preprocess

    options = options_from_args(args)
    if args.caption:
        import dataclasses

        options = dataclasses.replace(options, caption=captioner_for(args))
    report = run_preprocess(args.src, args.dst, options, upscale=upscaler_for(args), progress=ProgressBar())
    for line in report.problems():
        print(f"skipped: {line}", file=sys.stderr)
    print(report.summary())
    return 1 if report.problems() else 0
