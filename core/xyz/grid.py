"""Drawing an X/Y/Z grid: cells in rows and columns, the legend around them (PIL).

Legend text is sized from the cell (readable at 64 px and at 1024 px), long labels wrap onto
several lines, and a label with Chinese / Japanese / Korean characters is drawn with a system
CJK font (Noto CJK, WenQuanYi, Droid Sans Fallback...) when one is installed; otherwise with
DejaVu Sans, then PIL's own font, so drawing never fails for want of a font.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts"), "/System/Library/Fonts",
             "C:/Windows/Fonts")
CJK_FONT_NAMES = ("NotoSansCJK-Regular.ttc", "NotoSansCJKsc-Regular.otf", "NotoSerifCJK-Regular.ttc",
                  "NotoSansCJK-Bold.ttc", "NotoSerifCJK-Bold.ttc", "wqy-zenhei.ttc", "wqy-microhei.ttc",
                  "DroidSansFallbackFull.ttf", "msyh.ttc", "simhei.ttf", "PingFang.ttc")
LATIN_FONT_NAMES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf")
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
BACKGROUND, TEXT = (255, 255, 255), (0, 0, 0)


@functools.lru_cache(maxsize=4)
def find_font(cjk: bool) -> str | None:
    """The path of a font that draws ``cjk`` text (or Latin), searched once per process."""
    names = CJK_FONT_NAMES if cjk else LATIN_FONT_NAMES + CJK_FONT_NAMES
    for name in names:
        for folder in FONT_DIRS:
            root = Path(folder)
            if not root.is_dir():
                continue
            direct = root / name
            if direct.is_file():
                return str(direct)
            found = next(iter(root.rglob(name)), None)
            if found is not None:
                return str(found)
    return None


@functools.lru_cache(maxsize=64)
def _font(size: int, cjk: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = find_font(cjk) or find_font(False)
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size)


def font_for(text: str, size: int):
    return _font(size, bool(_CJK.search(text)))


def has_cjk_font() -> bool:
    return find_font(True) is not None


def font_size_for(cell_width: int, cell_height: int) -> int:
    """The WebUI's rule, (W + H) / 2 × 0.06, with a floor that stays readable on tiny cells."""
    return max(int((cell_width + cell_height) / 2 * 0.06), 12)


def wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Lines that fit ``width``: by words, and by characters for a word (or CJK text) too long."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for token in re.findall(r"\S+\s*|\s+", paragraph) or [""]:
            candidate = line + token
            if draw.textlength(candidate.rstrip(), font=font) <= width or not line:
                line = candidate
            else:
                lines.append(line.rstrip())
                line = token
            while draw.textlength(line.rstrip(), font=font) > width and len(line) > 1:
                cut = len(line)
                while cut > 1 and draw.textlength(line[:cut], font=font) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return lines


def text_block(text: str, width: int, size: int) -> Image.Image:
    """``text`` wrapped to ``width`` and centred, on a white strip as tall as it needs."""
    font = font_for(text, size)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = wrap(text, font, max(width - size // 2, size), scratch) if text else []
    line_height = int(size * 1.25)
    block = Image.new("RGB", (width, max(line_height * len(lines) + size // 2, 1)), BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        w = draw.textlength(line, font=font)
        draw.text(((width - w) / 2, size // 4 + i * line_height), line, font=font, fill=TEXT)
    return block


def image_grid(cells: Sequence[Image.Image], columns: int, margin: int = 0) -> Image.Image:
    """Cells left to right, top to bottom; ``margin`` pixels of white between them."""
    w, h = cells[0].size
    rows = (len(cells) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w + (columns - 1) * margin, rows * h + (rows - 1) * margin), BACKGROUND)
    for i, cell in enumerate(cells):
        grid.paste(cell.convert("RGB"), ((i % columns) * (w + margin), (i // columns) * (h + margin)))
    return grid


def annotate(grid: Image.Image, cell_size: tuple[int, int], column_labels: Sequence[str],
             row_labels: Sequence[str], margin: int = 0) -> Image.Image:
    """Column labels above, row labels on the left (the WebUI's draw_grid_annotations layout).
    Labels that are all empty take no room."""
    cw, ch = cell_size
    size = font_size_for(cw, ch)
    has_cols, has_rows = any(column_labels), any(row_labels)
    col_blocks = [text_block(label, cw, size) for label in column_labels] if has_cols else []
    top = max((b.height for b in col_blocks), default=0)
    left_width = 0
    if has_rows:
        left_width = min(max(cw * 3 // 4, size * 6), max(int(max(
            ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font_for(label, size))
            for label in row_labels)) + size, size * 3))
    row_blocks = [text_block(label, left_width, size) for label in row_labels] if has_rows else []
    out = Image.new("RGB", (grid.width + left_width, grid.height + top), BACKGROUND)
    out.paste(grid, (left_width, top))
    for i, block in enumerate(col_blocks):
        out.paste(block, (left_width + i * (cw + margin), max(top - block.height, 0)))
    for i, block in enumerate(row_blocks):
        y = top + i * (ch + margin) + max((ch - block.height) // 2, 0)
        out.paste(block.crop((0, 0, left_width, min(block.height, ch))), (0, y))
    return out


def title_grid(grids: Sequence[Image.Image], titles: Sequence[str], draw_legend: bool) -> Image.Image:
    """The Z grids side by side, each under its title (the WebUI puts sub-grids in one row)."""
    if len(grids) == 1 and not (draw_legend and any(titles)):
        return grids[0]
    w = max(g.width for g in grids)
    h = max(g.height for g in grids)
    row = image_grid([_pad(g, w, h) for g in grids], columns=len(grids))
    if not draw_legend or not any(titles):
        return row
    return annotate(row, (w, h), titles, [""] * 1)


def _pad(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    out = Image.new("RGB", (width, height), BACKGROUND)
    out.paste(image, (0, 0))
    return out


def blank_cell(size: tuple[int, int]) -> Image.Image:
    """A cell that was not rendered (interrupted, skipped, failed): black, as the WebUI's."""
    return Image.new("RGB", size, (0, 0, 0))
