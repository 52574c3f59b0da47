"""Prompt styles: the WebUI's ``styles.csv`` (modules/styles.py), read, applied, extracted, saved.

The file is the WebUI's: UTF-8 (with or without BOM) CSV, columns ``name,prompt,negative_prompt``
(the oldest WebUI files have ``name,text``), rows whose name starts with ``#`` are dividers. A
style's text holding ``{prompt}`` has the prompt put in its place; any other text is appended
after ``", "``. A WebUI ``styles.csv`` dropped into the data folder works as it is, and Kiln's
saves keep its dividers and row order, after copying the previous file to ``styles.csv.bak``.

Several files (the WebUI's ``--styles-file``, given more than once, each a path or a glob such as
``styles/*.csv``) merge into one list, in the order given: a later file's style of an earlier name
wins but keeps the earlier place, as in the WebUI. Each style remembers its file; saving a style
rewrites only that file (new styles go to the first file), so editing one style never rewrites,
or loses rows of, the others. (The WebUI rewrites every file from its merged list, which drops a
style shadowed by a later file of the same name.)
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import InvalidParameterError, KilnError
from core.fileio import atomic_write_bytes, file_stamp

log = logging.getLogger(__name__)
STYLES_FILE = "styles.csv"
PROMPT_PLACEHOLDER = "{prompt}"
CSV_FIELDS = ("name", "prompt", "negative_prompt")
# The WebUI's infotext_styles option: what pasting an infotext does with the styles in its prompts.
INFOTEXT_STYLES_CHOICES = ("Ignore", "Apply", "Discard", "Apply if any")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    # The styles file the style was read from (None: not saved yet). Not part of equality: two
    # styles of the same texts are the same style wherever they are kept.
    path: Path | None = field(default=None, compare=False)


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """The WebUI's merge: ``{prompt}`` replaced by the prompt, else ``"prompt, style"`` (empty parts dropped)."""
    if PROMPT_PLACEHOLDER in style_prompt:
        return style_prompt.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Iterable[str]) -> str:
    """Each style text merged in turn, in the order the styles were chosen."""
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def extract_style_text_from_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """Undo :func:`merge_prompts` for one style text: (matched, the prompt without it).

    ``("masterpiece", "1girl, art by greg, masterpiece")`` → ``(True, "1girl, art by greg")``;
    ``("masterpiece, {prompt}", "masterpiece, 1girl")`` → ``(True, "1girl")``.
    """
    stripped_prompt, stripped_style = prompt.strip(), style_text.strip()
    if PROMPT_PLACEHOLDER in stripped_style:
        left, _, right = stripped_style.partition(PROMPT_PLACEHOLDER)
        # The length check is Kiln's: the WebUI also "matches" a prompt shorter than the style's
        # own text (its slice then comes out empty or garbled); such a prompt cannot come from it.
        if stripped_prompt.startswith(left) and stripped_prompt.endswith(right) \
                and len(left) + len(right) <= len(stripped_prompt):
            return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_original_prompts(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    """(matched, prompt, negative prompt) with the style taken out of both; it must match both."""
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt
    matched, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not matched:
        return False, prompt, negative_prompt
    matched, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not matched:
        return False, prompt, negative_prompt
    return True, positive, negative


def _is_divider(name: str) -> bool:
    return name.startswith("#")


def _is_pattern(path: str) -> bool:
    return any(c in Path(path).name for c in "*?[")


class StyleDatabase:
    """The styles of one or more ``styles.csv`` files. Reread when a file changes on disk (a hand
    edit or the WebUI sharing the folder), or a glob matches a new file, so every job applies the
    styles the files hold when it starts."""

    def __init__(self, paths: str | Path | Sequence[str | Path]):
        given = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not given:
            raise ValueError("StyleDatabase needs at least one styles file")
        self.patterns: list[str] = [str(p) for p in given]
        first = self.patterns[0]
        if _is_pattern(first):
            # The WebUI's rule: a wildcard first path saves new styles to its first match, else to
            # styles.csv in its folder.
            matches = sorted(glob.glob(first))
            self.path = Path(matches[0]) if matches else Path(first).parent / STYLES_FILE
        else:
            self.path = Path(first)  # the default file: new styles are saved here
        self._lock = threading.RLock()
        self._files: dict[Path, list[PromptStyle]] = {}  # file → its styles and dividers, in file order
        self._stamp: tuple[Any, ...] | None = None

    # -- reading ---------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """The styles files, in the order given (globs expanded, sorted); the default file first
        when a wildcard chose it. Files that do not exist yet are listed too (they read as empty)."""
        found: list[Path] = [self.path] if _is_pattern(self.patterns[0]) else []
        for pattern in self.patterns:
            found += [Path(p) for p in sorted(glob.glob(pattern))] if _is_pattern(pattern) else [Path(pattern)]
        return list(dict.fromkeys(found))

    def _fresh(self) -> dict[Path, list[PromptStyle]]:
        with self._lock:
            files = self.files()
            stamp = tuple((f, file_stamp(f)) for f in files)
            if stamp != self._stamp:
                self._files = {f: ([] if st is None else self._read(f)) for f, st in stamp}
                self._stamp = stamp
            return self._files

    @staticmethod
    def _read(path: Path) -> list[PromptStyle]:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise KilnError(f"cannot read the prompt styles ({exc})", path=path,
                            hint="save it as UTF-8 CSV with the columns name,prompt,negative_prompt") from None
        reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
        header = reader.fieldnames or []
        if text.strip() and ("name" not in header or not ({"prompt", "text"} & set(header))):
            raise KilnError(f"no name/prompt columns in the first line (found {', '.join(header) or 'nothing'})",
                            path=path, hint="the first line must be name,prompt,negative_prompt")
        rows: list[PromptStyle] = []
        for row in reader:
            name = row.get("name") or ""
            if not name:
                continue
            prompt = row.get("prompt") if "prompt" in row else row.get("text")
            rows.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
        return rows

    def reload(self) -> None:
        """Read the files again now (the Styles dropdown's refresh button)."""
        with self._lock:
            self._stamp = None
            self._fresh()

    @property
    def styles(self) -> dict[str, PromptStyle]:
        """Name → style, in file order, dividers left out (a later row of the same name wins, in
        the place of the first, as in the WebUI)."""
        merged: dict[str, PromptStyle] = {}
        for rows in self._fresh().values():
            merged.update((s.name, s) for s in rows if not _is_divider(s.name))
        return merged

    def names(self) -> list[str]:
        return list(self.styles)

    def get(self, name: str) -> PromptStyle | None:
        return self.styles.get(name)

    # -- applying --------------------------------------------------------------------------
    def check(self, field: str, names: Sequence[str]) -> list[str]:
        """``names`` if all are styles of the file; else InvalidParameterError naming the first
        unknown one. (The WebUI skips unknown names silently: the picture would lack the style.)"""
        known = self.styles
        for name in names:
            if not isinstance(name, str) or name not in known:
                where = ", ".join(map(str, self.files()))
                hint = (f"the styles are {', '.join(known)}" if known else f"{where} has no styles") + \
                       " (GET /sdapi/v1/prompt-styles)"
                raise InvalidParameterError(field, f"no prompt style named {name!r}", hint=hint)
        return list(names)

    def apply_styles_to_prompt(self, prompt: str, names: Sequence[str]) -> str:
        styles = self.styles
        return apply_styles_to_prompt(prompt, [styles[n].prompt for n in names if n in styles])

    def apply_negative_styles_to_prompt(self, prompt: str, names: Sequence[str]) -> str:
        styles = self.styles
        return apply_styles_to_prompt(prompt, [styles[n].negative_prompt for n in names if n in styles])

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The WebUI's paste rule: take out, from the last applied on, every style whose texts end
        (or, with ``{prompt}``, wrap) both prompts; returns (style names in the order they were
        applied, prompt, negative prompt)."""
        extracted: list[str] = []
        candidates = list(self.styles.values())
        while True:
            for style in candidates:
                matched, new_prompt, new_negative = extract_original_prompts(style, prompt, negative_prompt)
                if matched:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    extracted.append(style.name)
                    break
            else:
                break
        return list(reversed(extracted)), prompt, negative_prompt

    # -- saving ----------------------------------------------------------------------------
    def save_style(self, style: PromptStyle) -> Path:
        """Replace the style of that name in its own file and place, or add it to the default
        file; write that file only. Returns the file written."""
        name = style.name.strip()
        if not name:
            raise InvalidParameterError("name", "a style needs a name")
        if _is_divider(name):
            raise InvalidParameterError("name", f"{name!r}: names starting with # are dividers in styles.csv")
        with self._lock:
            current = self.styles.get(name)
            target = current.path if current is not None and current.path is not None else self.path
            style = replace(style, name=name, path=target)
            rows = list(self._fresh().get(target, []))
            at = next((i for i, s in enumerate(rows) if s.name == name), None)
            if at is None:
                rows.append(style)
            else:
                rows[at] = style
            return self._write(target, rows)

    def delete_style(self, name: str) -> Path:
        """Remove the style the list shows under ``name`` from its file (a same-name style of an
        earlier file, which it shadowed, shows again). Returns the file written."""
        with self._lock:
            current = self.styles.get(name)
            if current is None or current.path is None:
                raise InvalidParameterError("name", f"no prompt style named {name!r}")
            rows = self._fresh()[current.path]
            return self._write(current.path, [s for s in rows if s.name != name])

    def _write(self, path: Path, rows: list[PromptStyle]) -> Path:
        """The WebUI's layout (BOM, header, CRLF as csv writes it); the old file kept as
        <name>.bak; the new one replaces it atomically."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(CSV_FIELDS)
        for s in rows:
            writer.writerow((s.name, s.prompt, s.negative_prompt))
        if path.exists():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        written = atomic_write_bytes(path, buffer.getvalue().encode("utf-8-sig"))
        self._stamp = None  # reread on next use: the stamp of every file is taken together
        return written

    def as_api(self) -> list[dict[str, Any]]:
        """``GET /sdapi/v1/prompt-styles``: the WebUI's PromptStyleItem list."""
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in self.styles.values()]


def apply_styles(params: Any, db: StyleDatabase) -> Any:
    """Generation parameters with their ``styles`` merged into the prompts (hires prompts too
    when set, as the WebUI's processing does); the ``styles`` list stays for the file names."""
    names = list(getattr(params, "styles", None) or [])
    if not names:
        return params
    db.check("styles", names)
    changes: dict[str, Any] = {
        "prompt": db.apply_styles_to_prompt(params.prompt, names),
        "negative_prompt": db.apply_negative_styles_to_prompt(params.negative_prompt, names),
    }
    hires = getattr(params, "hires", None)
    if hires is not None and (hires.prompt or hires.negative_prompt):
        changes["hires"] = replace(
            hires,
            prompt=db.apply_styles_to_prompt(hires.prompt, names) if hires.prompt else hires.prompt,
            negative_prompt=(db.apply_negative_styles_to_prompt(hires.negative_prompt, names)
                             if hires.negative_prompt else hires.negative_prompt))
    return replace(params, **changes)


def extract_pasted_styles(parsed: dict[str, Any], db: StyleDatabase | None, mode: str = "Apply if any") -> None:
    """The WebUI's infotext paste (``infotext_styles``): styles found at the end of the pasted
    prompts are taken out of them (unless "Ignore") and listed as ``Styles array`` ("Apply": always,
    "Apply if any": when one was found, "Discard": never)."""
    if db is None or mode == "Ignore":
        return
    try:
        found, prompt, negative = db.extract_styles_from_prompt(str(parsed.get("Prompt", "")),
                                                                str(parsed.get("Negative prompt", "")))
    except KilnError as exc:
        # A broken styles.csv must not stop a paste: the prompts stay whole, and the log says why.
        log.warning("styles not looked for in the pasted infotext: %s", exc.message)
        return
    parsed["Prompt"], parsed["Negative prompt"] = prompt, negative
    if mode == "Apply" or (mode == "Apply if any" and found):
        parsed["Styles array"] = found


def styles_path(data_dir: str | Path) -> Path:
    """The WebUI's default styles file: styles.csv in the data folder."""
    return Path(data_dir) / STYLES_FILE
