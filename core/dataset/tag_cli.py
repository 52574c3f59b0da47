"""``python -m core.dataset tag DIR --model NAME``: Dataset › Tag from a terminal.

Progress goes to stderr (one line per picture with its tags, or a bar when stderr is a
terminal); the exit status is 0 when every picture got a caption, 1 when some were unreadable
or the work failed, 2 for bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import sys

from core.dataset.captions import DEFAULT_CAPTION_EXTENSION
from core.dataset.tag_folder import MODES, TagFolderOptions, TagProgress, tag_folder
from core.dataset.taggers.common import CaptionOptions, TagOptions, parse_tag_list


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("tag", help="tag / caption every picture of a folder (WD14, DeepBooru, BLIP, GIT)",
                              description="Write a caption file beside each picture of DIR.")
    p.add_argument("dir", nargs="?", help="the folder of pictures")
    # also accepted after the command (``tag DIR --data-dir X``), as users type it
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="Kiln's data folder (models/ under it)")
    p.add_argument("--model", help="a folder name under models/tagger/ (WD14), a file under "
                   "models/torch_deepdanbooru/, a folder under models/BLIP/, or a path to a model")
    p.add_argument("--list-models", action="store_true", help="list the installed taggers and captioners")
    p.add_argument("--threshold", type=float, default=0.35, help="general tag threshold (default 0.35)")
    p.add_argument("--character-threshold", type=float, default=0.85, help="WD14 character threshold")
    p.add_argument("--mcut", action="store_true", help="WD14: MCut thresholds for general and character tags")
    p.add_argument("--trigger", default="", help="tags put first in every caption (comma separated)")
    p.add_argument("--exclude", default="", help="tags never written (comma separated)")
    p.add_argument("--max-tags", type=int, default=0, help="at most this many tags (0: no limit)")
    p.add_argument("--ratings", action="store_true", help="put the rating tag first (WD14, DeepBooru)")
    p.add_argument("--keep-underscores", action="store_true", help="write long_hair, not long hair")
    p.add_argument("--escape", action="store_true", help=r"escape brackets: fate \(series\)")
    p.add_argument("--sort", choices=("confidence", "alphabetical", "model"), default="confidence")
    p.add_argument("--mode", choices=MODES, default="overwrite",
                   help="an existing caption: replace it, add after it, add before it, or keep it")
    p.add_argument("--caption-extension", default=DEFAULT_CAPTION_EXTENSION)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--beams", type=int, default=1, help="BLIP / GIT: beam search width")
    p.add_argument("--nucleus", action="store_true", help="BLIP / GIT: nucleus sampling (top-p) instead of beams")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--min-length", type=int, default=5)
    p.add_argument("--max-length", type=int, default=75)
    p.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    p.set_defaults(run=run_tag)


def options_from_args(args: argparse.Namespace) -> TagFolderOptions:
    caption = CaptionOptions(num_beams=args.beams, nucleus=args.nucleus, top_p=args.top_p,
                             min_length=args.min_length, max_length=args.max_length)
    tags = TagOptions(general_threshold=args.threshold, character_threshold=args.character_threshold,
                      general_mcut=args.mcut, character_mcut=args.mcut, include_ratings=args.ratings,
                      replace_underscore=not args.keep_underscores, escape_brackets=args.escape,
                      exclude=parse_tag_list(args.exclude), max_tags=args.max_tags, sort=args.sort,
                      additional=parse_tag_list(args.trigger), caption=caption)
    return TagFolderOptions(mode=args.mode, extension=args.caption_extension, batch_size=args.batch_size,
                            recursive=args.recursive, tags=tags)


def _device(args: argparse.Namespace) -> str:
    if args.cpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_tag(args: argparse.Namespace) -> int:
    from core.dataset.__main__ import kiln_paths
    from core.dataset.taggers import list_models, load_tagger, missing_model_message

    paths = kiln_paths(args)
    if args.list_models:
        models = list_models(paths)
        for info in models:
            print(f"{info.name}\t{info.kind}\t{info.path}")
        if not models:
            print(missing_model_message(paths), file=sys.stderr)
            return 1
        return 0
    if not args.dir or not args.model:
        print("error: give the folder and --model (or --list-models)", file=sys.stderr)
        return 2
    options = options_from_args(args)
    tagger = load_tagger(args.model, paths, device=_device(args))
    tty = sys.stderr.isatty()

    def show(p: TagProgress) -> None:
        if p.image is None:
            print(f"tagging {p.total} pictures with {tagger.name}", file=sys.stderr)
            return
        eta = f" ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
        text = p.result.text if p.result is not None else "(unreadable, skipped)"
        if tty:
            width = 30
            filled = int(width * p.done / max(p.total, 1))
            line = f"\r[{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total}{eta} {p.image.name}"
            print(line[:120].ljust(120), end="", file=sys.stderr, flush=True)
        else:
            print(f"{p.done}/{p.total}{eta} {p.image.name}: {text}", file=sys.stderr)

    try:
        report = tag_folder(args.dir, tagger, options, on_progress=show)
    finally:
        tagger.close()
    if tty:
        print(file=sys.stderr)
    for skipped in report.broken:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    return 1 if report.broken else 0
