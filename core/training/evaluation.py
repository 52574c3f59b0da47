"""The training evaluation sheet: a run's epoch files × LoRA weights × its sample prompts, in one job.

Seeds 000 and 002 end every training by hand the same way: put the per-epoch files on X of an
X/Y/Z plot, weights on Y, look, and note the verdict beside the run's parameters. Here that is
one queue job: the cells are an X/Y/Z plan with three axes of the sheet's own (X = the epoch
file, as a ``<lora:...>`` tag added to the prompt; Y = that tag's weight; Z = the prompt; one
fixed seed), rendered by ``core.xyz.job.render_cells`` with the epoch files found where the trainer
wrote them (``RunOptions.lora_folders``), then drawn as one sheet: the run's parameters from the
files' kohya metadata, each prompt's grid, and — on the built-in Shapes model — the checker's
score under every cell and the epoch that scores best. Saved as ``<output_name>-sheet.png`` and
``.html`` beside the LoRA files (a new number when one exists; nothing is overwritten).
"""

from __future__ import annotations

import base64
import html
import io
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.errors import KilnError
from core.fileio import write_new_file
from core.generation.params import GenerationParams
from core.training.samples import SamplePrompt
from core.xyz import grid as g
from core.xyz.axes import FLOAT, TEXT, Axis
from core.xyz.plan import AxisArgs, XyzArgs
from core.xyz.values import list_to_csv

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobContext

DEFAULT_WEIGHTS = (0.4, 0.6, 0.8, 1.0, 1.2)
_EPOCH_FILE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})$")
_STEP_FILE = re.compile(r"^(?P<name>.+)-step(?P<step>\d{8})$")


# ----------------------------------------------------------------------- the files --
def epoch_files(folder: str | Path, output_name: str) -> list[Path]:
    """A run's LoRA files in training order: ``<name>-000001.safetensors`` ... (kohya's
    per-epoch names), ``<name>-step00000500`` ones by step after them, then the final ``<name>``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KilnError("the folder of the run's LoRA files does not exist", path=folder,
                        hint="the trainer's output_dir")
    epochs, steps, final = [], [], []
    for path in folder.glob("*.safetensors"):
        stem = path.stem
        m = _EPOCH_FILE.match(stem)
        if m and m["name"] == output_name:
            epochs.append((int(m["epoch"]), path))
            continue
        m = _STEP_FILE.match(stem)
        if m and m["name"] == output_name:
            steps.append((int(m["step"]), path))
        elif stem == output_name:
            final.append(path)
    files = [p for _, p in sorted(epochs)] + [p for _, p in sorted(steps)] + final
    if not files:
        raise KilnError(f"no LoRA files of the run {output_name!r} in this folder", path=folder,
                        hint=f"the trainer writes {output_name}-000001.safetensors ... and {output_name}.safetensors "
                             "into its output_dir; pick that folder and the run's output_name")
    return files


def run_parameters(path: Path) -> list[tuple[str, str]]:
    """The run's parameters as the metadata viewer lists them (rank, alpha, LRs, optimizer, ...)."""
    from core.networks.catalog import decode_metadata, network_type_from_keys
    from core.networks.kohya import lora_summary
    from core.networks.lora import read_safetensors_metadata

    raw = read_safetensors_metadata(path)
    metadata = decode_metadata(raw)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    return lora_summary(metadata, sd_version=str(metadata.get("ss_base_model_version", "")),
                        network_type=network_type_from_keys(keys), hash12="", file_size=path.stat().st_size)


# --------------------------------------------------------------------- the request --
@dataclass
class SheetRequest:
    """What the sheet renders: ``files`` on X (default: the run's epoch files), ``weights`` on
    Y, ``prompts`` on Z, every cell with the same ``seed``."""

    folder: Path
    output_name: str
    prompts: list[SamplePrompt]
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    files: list[Path] | None = None
    seed: int = 1
    steps: int = 20
    sampler_name: str = "Euler a"
    cfg_scale: float = 7.0
    width: int | None = None  # None: the base model's native size
    height: int | None = None
    negative_prompt: str = ""
    checkpoint: str | None = None

    def resolved_files(self) -> list[Path]:
        return list(self.files) if self.files else epoch_files(self.folder, self.output_name)


@dataclass
class SheetCell:
    file: str  # the LoRA file's stem
    weight: float
    prompt: str
    image: Image.Image | None  # None: not rendered (interrupted)
    infotext: str = ""
    score: float | None = None  # the Shapes checker's, when the prompt names Shapes-world words
    reading: str = ""  # what the checker saw


@dataclass
class SheetResult:
    png: Path
    html: Path
    cells: list[SheetCell]
    parameters: list[tuple[str, str]]
    best: tuple[str, float] | None  # (file, mean score) when there are scores
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False


def _file_axis() -> Axis:
    def apply(cell: Any, stem: str, _values: list) -> None:
        cell.params.prompt = f"{cell.params.prompt} <lora:{stem}:1>"

    return Axis("LoRA file", TEXT, apply, label_style="value")


_SHEET_TAG = re.compile(r"<lora:([^:>]+):1>$")


def _weight_axis() -> Axis:
    """The weight of the tag the file axis added (the prompt's own tags are left alone)."""
    def apply(cell: Any, weight: float, _values: list) -> None:
        p = cell.params
        p.prompt = _SHEET_TAG.sub(lambda m: f"<lora:{m[1]}:{weight:g}>", p.prompt)

    return Axis("LoRA weight", FLOAT, apply, label_style="value")


def _prompt_axis(request: SheetRequest) -> Axis:
    """The cell's prompt: the base prompt's leading text (the first prompt) becomes this one, by
    position, not by search, so a trigger word that is also the file's name changes nothing else."""
    first = request.prompts[0].prompt
    negatives = {p.prompt: p.negative_prompt or request.negative_prompt for p in request.prompts}

    def apply(cell: Any, text: str, _values: list) -> None:
        p = cell.params
        p.prompt = text + p.prompt[len(first):]
        p.negative_prompt = negatives[text]

    return Axis("Prompt", TEXT, apply, label_style="value")


def xyz_args(request: SheetRequest, files: Sequence[Path]) -> tuple[XyzArgs, str]:
    """The X/Y/Z plan of the sheet (X: the file's tag added to the prompt; Y: its weight; Z: the
    prompts) and its base prompt (the first prompt)."""
    stems = [p.stem for p in files]
    prompts = [p.prompt for p in request.prompts]
    args = XyzArgs(x=AxisArgs(_file_axis(), list_to_csv(stems)),
                   y=AxisArgs(_weight_axis(), ", ".join(f"{w:g}" for w in request.weights)),
                   z=AxisArgs(_prompt_axis(request), list_to_csv(prompts)),
                   include_lone_images=True)
    return args, prompts[0]


def check_request(request: SheetRequest) -> list[Path]:
    if not request.prompts:
        raise KilnError("the evaluation sheet needs at least one prompt",
                        hint="the run's sample prompts, one per line")
    if not request.weights:
        raise KilnError("the evaluation sheet needs at least one LoRA weight", hint="e.g. 0.4, 0.6, 0.8, 1.0, 1.2")
    files = request.resolved_files()
    texts = [p.prompt for p in request.prompts]
    for stem in (p.stem for p in files):
        if any(f"<lora:{stem}:" in text for text in texts):
            raise KilnError(f"a prompt has the tag <lora:{stem}:...>; the sheet puts the LoRA tag in itself",
                            hint="write the prompts without it")
    if len(set(texts)) != len(texts):
        raise KilnError("two prompts of the evaluation sheet are the same", hint="one line per prompt")
    return files


# -------------------------------------------------------------------------- the job --
def sheet_job(engine: Engine, request: SheetRequest):
    """The queue function (kind "generate"): checked now (no file, no prompt: KilnError before
    anything is queued); renders the cells, draws and saves the sheet."""
    from core.xyz.job import plan_for

    files = check_request(request)
    args, prompt = xyz_args(request, files)
    size = engine.native_size()
    params = GenerationParams(prompt=prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                              sampler_name=request.sampler_name, cfg_scale=request.cfg_scale,
                              width=request.width or size, height=request.height or size, seed=request.seed,
                              checkpoint=request.checkpoint)
    options = engine.run_options().replace(lora_folders=(str(request.folder),))
    if request.checkpoint:
        options = options.replace(checkpoint=request.checkpoint, checkpoint_explicit=True)
    plan = plan_for(engine, "txt2img", args, params, options)

    def run(ctx: JobContext) -> SheetResult:
        from core.xyz.job import render_cells

        with tempfile.TemporaryDirectory(prefix="kiln-sheet-") as tmp:
            rendered = render_cells(engine, plan, ctx, Path(tmp))
            cells = _cells(request, files, plan, rendered.done, _scores_apply(engine, files))
        parameters = run_parameters(files[-1])
        best = best_file(cells)
        sheet = draw_sheet(request, files, cells, parameters, best)
        png, page = save_sheet(request, sheet, cells, parameters, best)
        warnings = list(rendered.warnings)
        if rendered.interrupted:
            warnings.append(f"interrupted: {len(rendered.done)} of {rendered.total} cells rendered; the sheet shows them")
        return SheetResult(png, page, cells, parameters, best, warnings, rendered.interrupted)

    return run


def _scores_apply(engine: Engine, files: Sequence[Path]) -> bool:
    """The checker reads Shapes-world pictures only: the built-in model, or a run trained on it."""
    from core.engine import BUILTIN_CHECKPOINT_PREFIX
    from core.networks.lora import read_safetensors_metadata

    try:
        base = str(read_safetensors_metadata(files[-1]).get("ss_sd_model_name", ""))
    except KilnError:
        base = ""
    selected = engine.selected_checkpoint()
    names = [Path(base).name, Path(selected.name).name if selected is not None else ""]
    return any(name.startswith(BUILTIN_CHECKPOINT_PREFIX) for name in names)


def _cells(request: SheetRequest, files: Sequence[Path], plan: Any, done: dict, scored: bool) -> list[SheetCell]:
    out = []
    nz = max(len(request.prompts), 1)
    for iz in range(nz):
        for iy, weight in enumerate(request.weights):
            for ix, path in enumerate(files):
                entry = done.get((ix, iy, iz))
                prompt = request.prompts[iz].prompt
                cell = SheetCell(path.stem, weight, prompt, None)
                if entry is not None:
                    with Image.open(entry.path) as im:
                        cell.image = im.convert("RGB")
                    cell.infotext = entry.infotext
                    if scored:
                        cell.score, cell.reading = shapes_score(prompt, cell.image)
                out.append(cell)
    return out


def shapes_score(prompt: str, image: Image.Image) -> tuple[float | None, str]:
    """How much of what ``prompt`` names (shape colour, shape, background colour, in the world's
    words, its concept colours such as orange included) the Shapes checker reads in ``image``:
    0..1, or None when the prompt names none."""
    from core.shapes.checker import check_image
    from core.shapes.world import ALL_PALETTE, SHAPES

    words = re.findall(r"[a-z]+", prompt.lower())
    wanted: dict[str, str] = {}
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in ALL_PALETTE and nxt == "background":
            wanted.setdefault("background", word)
        elif word in ALL_PALETTE:
            wanted.setdefault("color", word)
        elif word in SHAPES:
            wanted.setdefault("shape", word)
    # With the concept colours always: a sheet is mostly of a run that taught one, and an orange
    # picture must not count as the "red" a prompt without the trigger asked for.
    result = check_image(image, concepts=True)
    reading = f"{result.color or '?'} {result.shape or 'no shape'} on {result.background}"
    if not wanted:
        return None, reading
    hits = sum(getattr(result, attribute) == value for attribute, value in wanted.items())
    return hits / len(wanted), reading


def best_file(cells: Sequence[SheetCell]) -> tuple[str, float] | None:
    """The file whose cells score highest on average (ties: the earlier file)."""
    by_file: dict[str, list[float]] = {}
    for cell in cells:
        if cell.score is not None:
            by_file.setdefault(cell.file, []).append(cell.score)
    if not by_file:
        return None
    means = {name: sum(v) / len(v) for name, v in by_file.items()}
    name = max(means, key=lambda n: (means[n], -list(means).index(n)))
    return name, means[name]


# ---------------------------------------------------------------------- drawing --
def _score_text(cell: SheetCell) -> str:
    if cell.image is None:
        return "—"
    return f"{cell.score:.2f}" if cell.score is not None else ""


def draw_sheet(request: SheetRequest, files: Sequence[Path], cells: Sequence[SheetCell],
               parameters: Sequence[tuple[str, str]], best: tuple[str, float] | None) -> Image.Image:
    """One picture: title and parameters, then per prompt its grid (files across, weights down),
    each cell with its score underneath when there is one."""
    first = next((c.image for c in cells if c.image is not None), None)
    size = first.size if first is not None else (64, 64)
    scored = any(c.score is not None for c in cells)
    font = g.font_size_for(*size)
    grids = []
    labels = [p.stem for p in files]
    rows = [f"{w:g}" for w in request.weights]
    per_prompt = len(files) * len(request.weights)
    for iz, prompt in enumerate(request.prompts):
        mine = cells[iz * per_prompt:(iz + 1) * per_prompt]
        tiles = []
        for cell in mine:
            tile = cell.image if cell.image is not None else g.blank_cell(size)
            if scored:
                tile = _stack([tile, g.text_block(_score_text(cell), size[0], font)])
            tiles.append(tile)
        tile_size = tiles[0].size
        grid = g.annotate(g.image_grid(tiles, columns=len(files), margin=2), tile_size, labels, rows, 2)
        grids.append(_stack([g.text_block(prompt.prompt, grid.width, font), grid]))
    body = _stack(grids, gap=font)
    lines = [f"{request.output_name}", f"{len(files)} files (columns) × {len(request.weights)} LoRA weights (rows) × "
             f"{len(request.prompts)} prompts, seed {request.seed}"]
    if best is not None:
        lines.append(f"best: {best[0]} (checker score {best[1]:.2f})")
    lines.append("")
    lines += [f"{label}: {value}" for label, value in parameters]
    panel = _text_panel(lines, max(min(body.width, 640), 360), max(font, 13))
    return _side_by_side(body, panel, gap=font)


def _text_panel(lines: Sequence[str], width: int, size: int) -> Image.Image:
    """Left-aligned lines, wrapped to ``width`` (the run's parameters beside the grids)."""
    from PIL import ImageDraw

    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped: list[str] = []
    for line in lines:
        font = g.font_for(line, size)
        wrapped += g.wrap(line, font, width - size, scratch) if line else [""]
    line_height = int(size * 1.3)
    panel = Image.new("RGB", (width, line_height * len(wrapped) + size), g.BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(wrapped):
        draw.text((size // 2, size // 2 + i * line_height), line, font=g.font_for(line, size), fill=g.TEXT)
    return panel


def _side_by_side(left: Image.Image, right: Image.Image, gap: int) -> Image.Image:
    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), g.BACKGROUND)
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _stack(images: Sequence[Image.Image], gap: int = 0) -> Image.Image:
    width = max(im.width for im in images)
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), g.BACKGROUND)
    y = 0
    for im in images:
        out.paste(im.convert("RGB"), ((width - im.width) // 2, y))
        y += im.height + gap
    return out


def _names(stem: str, extension: str):
    yield f"{stem}{extension}"
    n = 2
    while True:
        yield f"{stem}-{n}{extension}"
        n += 1


def save_sheet(request: SheetRequest, sheet: Image.Image, cells: Sequence[SheetCell],
               parameters: Sequence[tuple[str, str]], best: tuple[str, float] | None) -> tuple[Path, Path]:
    """``<output_name>-sheet.png`` and the matching ``.html`` beside the LoRA files (the next free
    number when a sheet is there already)."""
    from core.generation.saving import png_bytes

    info = f"Evaluation sheet: {request.output_name}, weights: {', '.join(f'{w:g}' for w in request.weights)}"
    png = write_new_file(request.folder, _names(f"{request.output_name}-sheet", ".png"), png_bytes(sheet, info))
    page = write_new_file(request.folder, [png.with_suffix(".html").name],
                          sheet_html(request, cells, parameters, best, png.name).encode("utf-8"))
    return png, page


def sheet_html(request: SheetRequest, cells: Sequence[SheetCell], parameters: Sequence[tuple[str, str]],
               best: tuple[str, float] | None, png_name: str) -> str:
    """A page that stands alone: parameters, then each prompt's table of pictures (embedded),
    every picture's infotext on hover, score and what the checker read under it."""
    esc = html.escape
    files = list(dict.fromkeys(c.file for c in cells))
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>{esc(request.output_name)} — evaluation sheet</title>",
           "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px;text-align:center;vertical-align:top}"
           "img{image-rendering:pixelated;width:128px}.params td{text-align:left}</style></head><body>",
           f"<h1>{esc(request.output_name)}</h1>",
           f"<p>{len(files)} files × {len(request.weights)} weights × {len(request.prompts)} prompts, "
           f"seed {request.seed}, {request.steps} steps, {esc(request.sampler_name)}. "
           f"<a href='{esc(png_name)}'>{esc(png_name)}</a></p>"]
    if best is not None:
        out.append(f"<p><b>Best: {esc(best[0])}</b> (checker score {best[1]:.2f})</p>")
    out.append("<table class='params'>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                                  for k, v in parameters) + "</table>")
    for prompt in request.prompts:
        out.append(f"<h2>{esc(prompt.prompt)}</h2><table><tr><th>weight</th>"
                   + "".join(f"<th>{esc(f)}</th>" for f in files) + "</tr>")
        for weight in request.weights:
            row = [f"<tr><th>{weight:g}</th>"]
            for name in files:
                cell = next(c for c in cells if c.file == name and c.weight == weight and c.prompt == prompt.prompt)
                if cell.image is None:
                    row.append("<td>—</td>")
                    continue
                buffer = io.BytesIO()
                cell.image.save(buffer, format="PNG")
                data = base64.b64encode(buffer.getvalue()).decode("ascii")
                score = f"<br>{cell.score:.2f}" if cell.score is not None else ""
                reading = f"<br><small>{esc(cell.reading)}</small>" if cell.score is not None else ""
                row.append(f"<td><img src='data:image/png;base64,{data}' title='{esc(cell.infotext)}'>"
                           f"{score}{reading}</td>")
            out.append("".join(row) + "</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


# ------------------------------------------------------------------ keep this one --
def keep_file(source: str | Path, lora_dir: str | Path, name: str) -> Path:
    """Copy the chosen epoch file to ``models/Lora/<name>.safetensors`` (the original stays;
    an existing name is refused, never overwritten), so it shows in Extra networks."""
    from core.paths import check_name

    source = Path(source)
    if not source.is_file():
        raise KilnError("the LoRA file to keep does not exist", path=source)
    name = check_name("name", (name or "").strip().removesuffix(".safetensors"))
    if "/" in name or "\\" in name:
        raise KilnError(f"{name!r} is not a file name", hint="a name without folders, e.g. mylora-e3")
    try:
        return write_new_file(lora_dir, [f"{name}.safetensors"], source.read_bytes())
    except FileExistsError:
        raise KilnError(f"a LoRA named {name!r} exists already; nothing was overwritten",
                        path=Path(lora_dir) / f"{name}.safetensors", hint="pick another name") from None
