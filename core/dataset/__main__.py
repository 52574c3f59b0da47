"""``python -m core.dataset <command>``: the dataset workshop from a terminal.

Each command module adds its sub-command through ``add_commands(subparsers)``; a command
returns the exit status (0 ok, 1 problems found or the work failed, 2 bad arguments).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add commands (preprocess, tag, tags, check, demo); each has add_commands(subparsers).
COMMAND_MODULES: tuple[str, ...] = ("core.dataset.preprocess_cli", "core.dataset.tag_cli", "core.dataset.tags_cli",
                                   "core.dataset.check_cli", "core.dataset.demo")


def kiln_paths(args: argparse.Namespace):
    """The app's folders for ``--data-dir`` (models/tagger/, models/BLIP/, ... under it)."""
    from pathlib import Path

    from core.cli import parse_flags
    from core.paths import KilnPaths

    flags = parse_flags(["--data-dir", args.data_dir] if args.data_dir else [])
    return KilnPaths.from_flags(flags, Path(__file__).resolve().parents[2])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.dataset",
                                     description="Kiln's dataset workshop: preprocess, tag, edit tags, check.")
    parser.add_argument("--data-dir", default=None,
                        help="Kiln's data folder (models/ under it), as the app's --data-dir; default: the repository")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.errors import KilnError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KilnError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; files finished so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
