"""The X/Y/Z plot as one queue job: cell k of n, the grid filling in, Interrupt keeps what is done.

Each cell is an ordinary txt2img / img2img run through the engine (so its picture is saved as
usual, and the engine's per-job model handling applies: a checkpoint loads when the cell names a
new one, LoRA tags patch the loaded base per cell without reloading it). Finished cells go to a
temporary folder on disk, not memory, so a large grid holds one cell at a time plus a small
preview; the grids are drawn from those files at the end.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.errors import JobInterrupted, JobSkipped, KilnError
from core.generation.infotext import quote
from core.generation.params import GeneratedImage, GenerationResult
from core.xyz import grid as g
from core.xyz.axes import Catalog
from core.xyz.plan import XyzPlan

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobContext

log = logging.getLogger(__name__)
PREVIEW_SIDE = 1024  # the live preview's longest side: a small copy, whatever the grid's size
GRID_BASENAME = "xyz_grid"


def engine_catalog(engine: Engine) -> Catalog:
    """The names the list axes accept, from the engine's registry (no model load)."""
    from ui.txt2img import upscaler_names

    def find_checkpoint(name: str) -> str | None:
        entry = engine.registry.find_checkpoint(name)
        return entry.title if entry is not None else None

    return Catalog(checkpoints=engine.checkpoint_titles, find_checkpoint=find_checkpoint,
                   vaes=lambda: [e.name for e in engine.registry.vaes()],
                   upscalers=lambda: upscaler_names(engine), styles=engine.styles.names)


def plan_for(engine: Engine, mode: str, args: Any, params: Any, options: Any) -> XyzPlan:
    """``args`` (XyzArgs) resolved against the engine's names and checked (bad axis, value, a grid
    too large to hold: InvalidParameterError); the cell-count limit is the caller's to apply."""
    from core.xyz.plan import check_grid_size, resolve

    plan = resolve(args, mode, params, options, engine_catalog(engine))
    check_grid_size(plan)
    return plan


class CellContext:
    """The job's context as one cell's run sees it: its steps add to the grid's progress, its
    per-step previews are dropped (the job's preview is the grid), Interrupt / Skip pass through."""

    def __init__(self, ctx: JobContext):
        self._ctx = ctx
        self.preview_every = 0

    def set_total(self, total_steps: int, job_count: int = 1) -> None:
        pass  # the grid's total was set once for all cells

    def set_text(self, text: str) -> None:
        pass

    def advance(self, steps: int = 1, *, check: bool = True) -> None:
        self._ctx.advance(steps, check=check)

    def image_done(self) -> None:
        pass  # counted once per cell by the grid job

    def wants_preview(self, step_in_pass: int) -> bool:
        return False

    def set_preview(self, image: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # interrupted, stop_requested, check, report ...
        return getattr(self._ctx, name)


@dataclass
class CellDone:
    """A rendered cell: its picture in the job's temporary folder, and what it was made with."""

    path: Path
    infotext: str
    seed: int
    subseed: int
    saved: str | None


@dataclass
class RenderedCells:
    done: dict[tuple[int, int, int], CellDone]
    warnings: list[str]
    interrupted: bool
    total: int


def cell_steps(params: Any) -> int:
    """Sampler steps a cell takes (for the progress bar and its ETA)."""
    steps = int(params.steps)
    if hasattr(params, "init_images"):
        steps = max(int(min(params.denoising_strength, 0.999) * steps), 1)
    elif params.hires.enabled:
        steps += int(params.hires.steps or params.steps)
    return steps * int(params.batch_count)


def run_xyz(engine: Engine, plan: XyzPlan, ctx: JobContext) -> GenerationResult:
    """worker: render every cell in the plan's order, then draw and save the grid(s)."""
    with tempfile.TemporaryDirectory(prefix="kiln-xyz-") as tmp:
        cells = render_cells(engine, plan, ctx, Path(tmp))
        images = _assemble(engine, plan, cells.done)
    warnings = list(cells.warnings)
    if cells.interrupted:
        warnings.append(f"interrupted: {len(cells.done)} of {cells.total} cells rendered; the grid shows them")
    return GenerationResult(images=images, params=plan.params, warnings=warnings, interrupted=cells.interrupted)


def render_cells(engine: Engine, plan: XyzPlan, ctx: JobContext, folder: Path) -> RenderedCells:
    """worker: every cell in the plan's order (cell k of n on the job's progress, the grid filling
    in as its preview), each cell's first picture written to ``folder``; Interrupt stops after the
    current cell and keeps the finished ones. Raises when no cell could be rendered."""
    run = engine.txt2img if plan.mode == "txt2img" else engine.img2img
    order = plan.order()
    cells = {(ix, iy, iz): plan.cell(ix, iy, iz) for ix, iy, iz in order}
    ctx.set_total(sum(cell_steps(c.params) for c in cells.values()), job_count=len(order))
    warnings: list[str] = []
    done: dict[tuple[int, int, int], CellDone] = {}
    interrupted = False
    first_error: BaseException | None = None
    cell_ctx = CellContext(ctx)
    preview = _Preview(plan)
    for k, key in enumerate(order, start=1):
        if ctx.interrupted:
            interrupted = True
            break
        ctx.set_text(f"X/Y/Z plot: cell {k} of {len(order)}")
        cell = cells[key]
        try:
            result = run(cell.params, cell_ctx, cell.options)
        except JobSkipped:
            warnings.append(f"cell {k} skipped")
            continue
        except JobInterrupted:
            interrupted = True
            break
        except KilnError as exc:
            first_error = first_error or exc
            warnings.append(f"cell {k} ({_cell_name(plan, key)}): {exc.message}")
            continue
        for w in result.warnings:
            if w not in warnings:
                warnings.append(w)
        if result.images:
            first = result.images[0]
            path = folder / f"{plan.index(*key):06}.png"
            first.image.save(path, format="PNG", compress_level=1)
            done[key] = CellDone(path, first.infotext, first.seed, first.subseed, first.path)
            preview.add(key, first.image)
            ctx.set_preview(preview.image())
        ctx.job.progress.job_no = k
        if result.interrupted or ctx.interrupted:
            interrupted = True
            break
    if not done:
        if first_error is not None:
            raise first_error
        if interrupted:
            raise JobInterrupted()
        raise KilnError("the X/Y/Z plot made no picture", hint="see the warnings of the cells")
    return RenderedCells(done, warnings, interrupted, len(order))


def _cell_name(plan: XyzPlan, key: tuple[int, int, int]) -> str:
    ix, iy, iz = key
    return ", ".join(label for label in (plan.x.labels[ix], plan.y.labels[iy], plan.z.labels[iz]) if label)


class _Preview:
    """A small copy of the grid being filled in (cells scaled down to fit PREVIEW_SIDE)."""

    def __init__(self, plan: XyzPlan):
        self.plan = plan
        nx, ny, nz = plan.shape
        self.columns, self.rows = nx * nz, ny
        self.canvas: Image.Image | None = None
        self.cell_size = (0, 0)

    def add(self, key: tuple[int, int, int], image: Image.Image) -> None:
        if self.canvas is None:
            w, h = image.size
            scale = min(1.0, PREVIEW_SIDE / max(w * self.columns, h * self.rows))
            self.cell_size = (max(int(w * scale), 1), max(int(h * scale), 1))
            cw, ch = self.cell_size
            self.canvas = Image.new("RGB", (cw * self.columns, ch * self.rows), (0, 0, 0))
        ix, iy, iz = key
        nx = self.plan.shape[0]
        cw, ch = self.cell_size
        self.canvas.paste(image.convert("RGB").resize(self.cell_size), ((iz * nx + ix) * cw, iy * ch))

    def image(self) -> Image.Image | None:
        return self.canvas.copy() if self.canvas is not None else None


def _assemble(engine: Engine, plan: XyzPlan, done: dict[tuple[int, int, int], CellDone]) -> list[GeneratedImage]:
    """Main grid first, then the sub-grids (include_sub_grids), then the cells (include_lone_images),
    as the WebUI returns them; the grids saved under outputs/<mode>-grids/<date>/."""
    args = plan.args
    nx, ny, nz = plan.shape
    first_key = min(done, key=lambda key: plan.index(*key))
    size = Image.open(done[first_key].path).size
    sub_grids: list[Image.Image] = []
    for iz in range(nz):
        cells = []
        for iy in range(ny):
            for ix in range(nx):
                entry = done.get((ix, iy, iz))
                if entry is None:
                    cells.append(g.blank_cell(size))
                else:
                    with Image.open(entry.path) as im:
                        cells.append(im.convert("RGB").resize(size) if im.size != size else im.convert("RGB"))
        sub = g.image_grid(cells, columns=nx, margin=args.margin_size)
        del cells
        if args.draw_legend:
            sub = g.annotate(sub, size, plan.x.labels, plan.y.labels, args.margin_size)
        sub_grids.append(sub)
    main = g.title_grid(sub_grids, plan.z.labels, args.draw_legend)
    base = done[first_key]
    main_info = _with_fields(base.infotext, plan.infotext_fields(with_z=True))
    out: list[GeneratedImage] = []
    if args.draw_grid:
        from core.generation.filenames import NameContext
        from core.generation.saving import SaveOptions, save_image

        settings, options, params = engine.settings.options, plan.options, plan.params
        outdir = settings.outdir_txt2img_grids if plan.mode == "txt2img" else settings.outdir_img2img_grids
        root = engine.paths.resolve_output(outdir)

        def save_grid(image: Image.Image, info: str, entry: Any) -> str | None:
            """``xyz_grid-NNNN-<seed>.<grid_format>`` when grid_save is on (the WebUI's names)."""
            if not options.grid_save:
                return None
            names = NameContext(seed=entry.seed, prompt=params.prompt, negative_prompt=params.negative_prompt,
                                styles=tuple(params.styles), steps=params.steps, cfg_scale=params.cfg_scale,
                                sampler=params.sampler_name, scheduler=params.scheduler)
            return str(save_image(image, root, names, info, SaveOptions.of(options), basename=GRID_BASENAME,
                                  grid=True).path)

        out.append(GeneratedImage(image=main, seed=base.seed, subseed=base.subseed, infotext=main_info,
                                  path=save_grid(main, main_info, base)))
        if args.include_sub_grids and nz > 1:
            for iz, sub in enumerate(sub_grids):
                entry = next((done[k] for k in sorted(done, key=lambda k: plan.index(*k)) if k[2] == iz), base)
                info = _with_fields(entry.infotext, plan.infotext_fields(with_z=False))
                out.append(GeneratedImage(image=sub, seed=entry.seed, subseed=entry.subseed, infotext=info,
                                          path=save_grid(sub, info, entry)))
    if args.include_lone_images:
        for key in sorted(done, key=lambda k: plan.index(*k)):
            entry = done[key]
            with Image.open(entry.path) as im:
                image = im.convert("RGB")
            out.append(GeneratedImage(image=image, seed=entry.seed, subseed=entry.subseed, infotext=entry.infotext,
                                      path=entry.saved))
    return out


def _with_fields(infotext: str, fields: dict[str, str]) -> str:
    """The cell's infotext with ``Script: X/Y/Z plot, X Type: ..., X Values: ...`` at the end."""
    extra = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items())
    return f"{infotext}, {extra}" if infotext else extra


