"""The tag editor's model: every caption of a folder in memory, batch edits with undo, atomic save.

What seed 000 does in the dataset-tag-editor extension (a table of tags with file counts,
``1girl 100``; remove selected tags; sort by frequency) plus what it lacks: selection by tags
(AND / OR / NOT), merge (seed 001: ``1boy`` + ``facial hair`` → ``Smith`` in place), removal by
frequency, trigger word first, undo, and a save that backs the old captions up first and
replaces each file atomically. Files are only rewritten when their tags changed.

Indices refer to ``entries`` (sorted by image path). An edit returns how many captions it changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.dataset.captions import (
    DEFAULT_CAPTION_EXTENSION,
    backup_captions,
    caption_path,
    join_tags,
    read_caption,
    split_tags,
)
from core.dataset.images import list_images
from core.errors import KilnError
from core.fileio import atomic_write_many

MAX_UNDO = 50


@dataclass(frozen=True)
class CaptionEntry:
    image: Path
    caption: Path
    saved: tuple[str, ...]  # the tags as in the file (as loaded or last saved)
    encoding: str  # read_caption's: "" when there was no caption file, "unknown" when undecodable


@dataclass(frozen=True)
class SaveResult:
    written: int
    backup: Path | None
    skipped: tuple[str, ...] = ()  # one message per caption that could not be written


def _unique(tags: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for tag in tags:
        if tag and tag not in seen:
            seen.add(tag)
            out.append(tag)
    return tuple(out)


def parse_tag_list(text: str | Iterable[str]) -> list[str]:
    """Tags typed by a user: ``"a, b"`` or a list; brackets keep their commas (``(red, blue)``)."""
    if isinstance(text, str):
        return split_tags(text)
    return [t.strip() for t in text if t and t.strip()]


class TagEditor:
    def __init__(self, folder: Path, entries: list[CaptionEntry], caption_extension: str):
        self.folder = folder
        self.entries = entries
        self.caption_extension = caption_extension
        self.tags: list[tuple[str, ...]] = [e.saved for e in entries]
        self._undo: list[tuple[str, dict[int, tuple[str, ...]]]] = []

    @classmethod
    def load(cls, folder: str | Path, *, caption_extension: str = DEFAULT_CAPTION_EXTENSION,
             recursive: bool = False) -> TagEditor:
        """Every picture of ``folder`` with its caption (a missing caption is an empty one)."""
        folder = Path(folder)
        images = list_images(folder, recursive=recursive)
        images = [p for p in images if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if not images:
            raise KilnError("no pictures in this folder", path=folder,
                            hint="choose the folder that holds the pictures and their .txt captions")
        entries = []
        for image in images:
            caption = read_caption(caption_path(image, caption_extension))
            entries.append(CaptionEntry(image, caption.path, tuple(split_tags(caption.text)), caption.encoding))
        return cls(folder, entries, caption_extension)

    # ---- reading

    def __len__(self) -> int:
        return len(self.entries)

    def _indices(self, indices: Iterable[int] | None) -> list[int]:
        return list(range(len(self.entries))) if indices is None else list(indices)

    def counts(self, indices: Iterable[int] | None = None) -> Counter[str]:
        """Tag → number of captions holding it (a tag twice in one caption counts once)."""
        counter: Counter[str] = Counter()
        for i in self._indices(indices):
            counter.update(set(self.tags[i]))
        return counter

    def tag_table(self, *, sort: str = "frequency", filter_text: str = "",
                  indices: Iterable[int] | None = None) -> list[tuple[str, int]]:
        """(tag, files) rows: most frequent first (ties by name) or by name; ``filter_text`` is a
        case-insensitive substring."""
        needle = filter_text.strip().lower()
        rows = [(t, n) for t, n in self.counts(indices).items() if needle in t.lower()]
        if sort == "name":
            rows.sort(key=lambda r: r[0].lower())
        elif sort == "frequency":
            rows.sort(key=lambda r: (-r[1], r[0].lower()))
        elif sort == "rarest":
            rows.sort(key=lambda r: (r[1], r[0].lower()))
        else:
            raise KilnError(f"unknown sort {sort!r}", hint="frequency, rarest or name")
        return rows

    def select(self, include: Iterable[str] = (), *, mode: str = "AND", exclude: Iterable[str] = ()) -> list[int]:
        """Indices of the captions holding all (AND) or any (OR) of ``include`` and none of
        ``exclude``; no ``include`` selects every caption not excluded."""
        wanted, unwanted = set(include), set(exclude)
        if mode not in ("AND", "OR"):
            raise KilnError(f"unknown selection mode {mode!r}", hint="AND or OR")
        chosen = []
        for i, tags in enumerate(self.tags):
            have = set(tags)
            if unwanted & have:
                continue
            if wanted and not (wanted <= have if mode == "AND" else wanted & have):
                continue
            chosen.append(i)
        return chosen

    def caption_text(self, index: int) -> str:
        return join_tags(list(self.tags[index]))

    @property
    def changed(self) -> list[int]:
        return [i for i, e in enumerate(self.entries) if self.tags[i] != e.saved]

    # ---- editing

    def _apply(self, label: str, new_tags: dict[int, tuple[str, ...]]) -> int:
        before = {i: self.tags[i] for i, tags in new_tags.items() if tags != self.tags[i]}
        for i in before:
            self.tags[i] = new_tags[i]
        if before:
            self._undo.append((label, before))
            del self._undo[:-MAX_UNDO]
        return len(before)

    def _map(self, label: str, indices: Iterable[int] | None, fn) -> int:
        return self._apply(label, {i: _unique(fn(self.tags[i])) for i in self._indices(indices)})

    def remove_tags(self, tags: Iterable[str], indices: Iterable[int] | None = None) -> int:
        gone = set(parse_tag_list(tags))
        return self._map("remove tags", indices, lambda t: [x for x in t if x not in gone])

    def remove_by_frequency(self, *, below: int | None = None, above: int | None = None,
                            indices: Iterable[int] | None = None) -> int:
        """Remove the tags held by fewer than ``below`` or more than ``above`` captions (counted
        over the captions edited)."""
        chosen = self._indices(indices)
        counts = self.counts(chosen)
        gone = {t for t, n in counts.items() if (below is not None and n < below) or (above is not None and n > above)}
        return self._map("remove by frequency", chosen, lambda t: [x for x in t if x not in gone])

    def replace_tags(self, mapping: dict[str, str], indices: Iterable[int] | None = None) -> int:
        """Each old tag becomes its new text in place (an empty new text removes it; a new text
        with commas becomes several tags); duplicates that result are dropped."""
        table = {old.strip(): parse_tag_list(new) for old, new in mapping.items() if old.strip()}
        return self._map("replace tags", indices,
                         lambda t: [y for x in t for y in (table[x] if x in table else [x])])

    def merge_tags(self, olds: Iterable[str], new: str, indices: Iterable[int] | None = None) -> int:
        """The captions holding any of ``olds`` get ``new`` where the first of them stood, the
        others removed (seed 001: ``1boy, …, facial hair, …`` → ``Smith, …``)."""
        gone = set(parse_tag_list(olds))
        replacement = parse_tag_list(new)

        def merge(tags: tuple[str, ...]) -> list[str]:
            out, placed = [], False
            for tag in tags:
                if tag in gone:
                    if not placed:
                        out += replacement
                        placed = True
                else:
                    out.append(tag)
            return out
        return self._map("merge tags", indices, merge)

    def add_tags(self, tags: Iterable[str] | str, *, position: str = "front",
                 indices: Iterable[int] | None = None) -> int:
        """Add ``tags`` at the front or the back (a tag already there stays where it is)."""
        new = parse_tag_list(tags)
        if position not in ("front", "back"):
            raise KilnError(f"unknown position {position!r}", hint="front or back")

        def add(t: tuple[str, ...]) -> list[str]:
            missing = [x for x in new if x not in t]
            return [*missing, *t] if position == "front" else [*t, *missing]
        return self._map(f"add tags ({position})", indices, add)

    def move_to_front(self, tags: Iterable[str] | str, indices: Iterable[int] | None = None) -> int:
        """The given tags first, in the given order, where a caption has them."""
        first = parse_tag_list(tags)
        return self._map("move to front", indices, lambda t: [*[x for x in first if x in t],
                                                                *[x for x in t if x not in first]])

    def put_trigger_first(self, word: str, indices: Iterable[int] | None = None) -> int:
        """The trigger word leads every caption (added where missing): seed 000's ``shengcai``."""
        trigger = parse_tag_list(word)
        if not trigger:
            raise KilnError("no trigger word given")
        return self._map("trigger word first", indices, lambda t: [*trigger, *[x for x in t if x not in trigger]])

    def dedupe(self, indices: Iterable[int] | None = None) -> int:
        return self._map("remove duplicates", indices, lambda t: t)

    def sort_tags(self, *, key: str = "name", keep_first: int = 0, indices: Iterable[int] | None = None) -> int:
        """Sort each caption's tags by name or by dataset frequency, the first ``keep_first`` staying
        in place (the trigger word and the tags kohya's keep_tokens keeps)."""
        counts = self.counts() if key == "frequency" else None
        if key not in ("name", "frequency"):
            raise KilnError(f"unknown sort {key!r}", hint="name or frequency")

        def order(t: tuple[str, ...]) -> list[str]:
            head, rest = list(t[:keep_first]), list(t[keep_first:])
            rest.sort(key=(lambda x: (-counts[x], x.lower())) if counts else (lambda x: x.lower()))
            return head + rest
        return self._map(f"sort by {key}", indices, order)

    def set_caption(self, index: int, text: str) -> int:
        return self._apply("edit caption", {index: _unique(split_tags(text))})

    def undo(self) -> str | None:
        """Undo the last edit; returns its label, None when there is nothing to undo."""
        if not self._undo:
            return None
        label, before = self._undo.pop()
        for i, tags in before.items():
            self.tags[i] = tags
        return label

    @property
    def undo_label(self) -> str | None:
        return self._undo[-1][0] if self._undo else None

    # ---- saving

    def save(self, *, label: str = "tag-editor") -> SaveResult:
        """Write the changed captions: first a backup of their old files (a timestamped folder in
        ``.kiln-caption-backups``), then the files replaced all at once (``atomic_write_many``). A
        caption whose file could not be decoded is not rewritten (its text would be lossy). A
        failing write (disk full) changes no caption file and keeps every edit, to save again."""
        changed = self.changed
        skipped = []
        writable = []
        for i in changed:
            if self.entries[i].encoding == "unknown":
                skipped.append(f"{self.entries[i].caption}: not saved, its encoding could not be read "
                               "(open it in a text editor and save it as UTF-8)")
            else:
                writable.append(i)
        if not writable:
            return SaveResult(0, None, tuple(skipped))
        backup = backup_captions(self.folder, [self.entries[i].caption for i in writable], label=label)
        try:
            atomic_write_many((self.entries[i].caption, join_tags(list(self.tags[i])).encode("utf-8"))
                              for i in writable)
        except OSError as exc:
            raise KilnError(f"could not save the captions ({exc.strerror}); no caption was changed"
                            + (f", and the old ones are also in {backup}" if backup else ""),
                            path=getattr(exc, "filename", None) or self.folder,
                            hint="free some disk space and press Save again") from exc
        for i in writable:
            entry = self.entries[i]
            self.entries[i] = CaptionEntry(entry.image, entry.caption, self.tags[i], "utf-8")
        written = len(writable)
        return SaveResult(written, backup, tuple(skipped))
