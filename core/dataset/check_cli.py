"""``python -m core.dataset check TRAIN_DIR [--reg REG_DIR]`` and ``... folders SRC TRAIN_DIR --repeats N``.

``check`` prints the concept folders, kohya's step arithmetic and one line per problem; the exit
status is 1 when any problem was found (0: clean). ``folders`` copies a flat picture folder
into a kohya concept folder (``10_sls 1girl``), originals untouched.
"""

from __future__ import annotations

import argparse
import sys

from core.dataset.checks import CheckOptions, check_layout
from core.dataset.kohya_folders import lay_out_concept, plan_layout, scan_dataset
from core.errors import KilnError


def parse_resolution(text: str) -> tuple[int, int]:
    """kohya's ``--resolution``: ``512`` or ``512,768`` (W,H); ``512x768`` too."""
    parts = text.replace("x", ",").replace("×", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise KilnError(f"resolution {text!r} is not a number", hint="e.g. 512 or 512,768") from None
    if len(values) not in (1, 2) or min(values) < 8:
        raise KilnError(f"resolution {text!r} must be one or two sizes of 8 or more", hint="e.g. 512 or 512,768")
    return (values[0], values[-1])


def terminal_progress(label: str):
    """A callback printing ``label 12/40 name`` on one stderr line (only on a terminal)."""
    def show(done: int, total: int, path) -> None:
        if sys.stderr.isatty():
            end = "\n" if done == total else ""
            print(f"\r{label} {done}/{total} {path.name[:60]:<60}", end=end, file=sys.stderr, flush=True)
    return show


def run_check(args: argparse.Namespace) -> int:
    layout = scan_dataset(args.train_dir, args.reg)
    options = CheckOptions(resolution=parse_resolution(args.resolution), caption_extension=args.caption_extension,
                           check_near_duplicates=not args.no_near_duplicates,
                           near_duplicate_distance=args.near_duplicate_distance)
    for concept in (*layout.concepts, *layout.reg_concepts):
        kind = "reg  " if concept.is_reg else "train"
        print(f"{kind} {concept.path.name}: {len(concept.images)} images × {concept.repeats} repeats "
              f"= {concept.weighted_count}")
    if layout.concepts:
        plan = plan_layout(layout, batch_size=args.batch_size, epochs=args.epochs,
                           gradient_accumulation=args.gradient_accumulation_steps)
        one = layout.concepts[0] if len(layout.concepts) == 1 else None
        print(plan.explain(len(one.images), one.repeats) if one else plan.explain())
    problems = check_layout(layout, options, progress=terminal_progress("checking"))
    for problem in problems:
        print(problem.line())
    errors = sum(p.severity == "error" for p in problems)
    print(f"{errors} errors, {len(problems) - errors} warnings" if problems else "no problems found",
          file=sys.stderr)
    return 1 if problems else 0


def run_folders(args: argparse.Namespace) -> int:
    result = lay_out_concept(args.source, args.train_dir, repeats=args.repeats, instance=args.name,
                             class_word=args.class_word, caption_extension=args.caption_extension)
    print(f"{result.folder}: {result.copied} files copied, {result.already_there} already there")
    return 0


def add_commands(subparsers) -> None:
    check = subparsers.add_parser("check", help="check a kohya dataset before training (exit 1 on problems)")
    check.add_argument("train_dir", help="the folder holding the <repeats>_<name> <class> folders (train_data_dir)")
    check.add_argument("--reg", default=None, help="the regularisation folder (reg_data_dir)")
    check.add_argument("--resolution", default="512", help="training resolution, 512 or 512,768 (default 512)")
    check.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    check.add_argument("--batch-size", type=int, default=1, help="train_batch_size, for the step count")
    check.add_argument("--epochs", type=int, default=1, help="max_train_epochs, for the step count")
    check.add_argument("--gradient-accumulation-steps", type=int, default=1)
    check.add_argument("--near-duplicate-distance", type=int, default=6,
                       help="perceptual-hash bits (of 64) two pictures may differ by and count as near-duplicates")
    check.add_argument("--no-near-duplicates", action="store_true", help="skip the near-duplicate search")
    check.set_defaults(run=run_check)

    folders = subparsers.add_parser("folders", help="copy a picture folder into a kohya folder <repeats>_<name> <class>")
    folders.add_argument("source", help="folder of pictures (and same-stem captions)")
    folders.add_argument("train_dir", help="the training folder to create the concept folder in")
    folders.add_argument("--repeats", type=int, required=True)
    folders.add_argument("--name", required=True, help="the identifier, e.g. sls")
    folders.add_argument("--class", dest="class_word", default="", help="the class, e.g. 1girl")
    folders.add_argument("--caption-extension", default=".txt")
    folders.set_defaults(run=run_folders)
