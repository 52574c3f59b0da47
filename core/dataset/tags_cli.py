"""``python -m core.dataset tags DIR --list | --remove A,B | --replace OLD=NEW | --merge A,B=NEW |
--below N | --above N | --trigger WORD``: the tag editor's batch edits from a terminal.

Edits run in the order given on the command line (remove, replace, merge, below, above,
trigger), then the changed captions are saved once: the old files backed up first
(``.kiln-caption-backups/<time>-tags``), each file replaced atomically.
"""

from __future__ import annotations

import argparse
import sys

from core.dataset.tag_editor import TagEditor, parse_tag_list
from core.errors import KilnError


def _pair(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise KilnError(f"{flag} {text!r}: write it as OLD=NEW", hint=f"e.g. {flag} '1boy=Smith'")
    old, new = text.split("=", 1)
    if not old.strip():
        raise KilnError(f"{flag} {text!r}: nothing before '='")
    return old, new


def run_tags(args: argparse.Namespace) -> int:
    editor = TagEditor.load(args.folder, caption_extension=args.caption_extension, recursive=args.recursive)
    changed = 0
    for remove in args.remove:
        changed += editor.remove_tags(parse_tag_list(remove))
    for replace in args.replace:
        old, new = _pair(replace, "--replace")
        changed += editor.replace_tags({old: new})
    for merge in args.merge:
        olds, new = _pair(merge, "--merge")
        changed += editor.merge_tags(parse_tag_list(olds), new)
    if args.below is not None:
        changed += editor.remove_by_frequency(below=args.below)
    if args.above is not None:
        changed += editor.remove_by_frequency(above=args.above)
    if args.trigger:
        changed += editor.put_trigger_first(args.trigger)
    if args.list or not changed:
        for tag, count in editor.tag_table(sort="name" if args.sort == "name" else "frequency"):
            print(f"{tag}\t{count}")
    if editor.changed:
        result = editor.save(label="tags")
        print(f"{result.written} captions saved; the previous ones are in {result.backup}", file=sys.stderr)
        for line in result.skipped:
            print(f"warning: {line}", file=sys.stderr)
        return 1 if result.skipped else 0
    return 0


def add_commands(subparsers) -> None:
    tags = subparsers.add_parser("tags", help="list tags by frequency, or edit every caption of a folder")
    tags.add_argument("folder", help="folder of pictures with their captions")
    tags.add_argument("--list", action="store_true", help="print 'tag<TAB>files' lines, most frequent first")
    tags.add_argument("--sort", choices=("frequency", "name"), default="frequency")
    tags.add_argument("--remove", action="append", default=[], metavar="TAG[,TAG]", help="remove these tags")
    tags.add_argument("--replace", action="append", default=[], metavar="OLD=NEW",
                      help="replace a tag in place (NEW empty: remove)")
    tags.add_argument("--merge", action="append", default=[], metavar="A,B=NEW",
                      help="replace several tags by one where the first stood (seed 001: '1boy,facial hair=Smith')")
    tags.add_argument("--below", type=int, default=None, metavar="N", help="remove tags in fewer than N files")
    tags.add_argument("--above", type=int, default=None, metavar="N", help="remove tags in more than N files")
    tags.add_argument("--trigger", default="", metavar="WORD", help="put WORD first in every caption")
    tags.add_argument("--caption-extension", default=".txt")
    tags.add_argument("--recursive", action="store_true", help="include sub-folders")
    tags.set_defaults(run=run_tags)
