"""The X/Y/Z plot from the txt2img / img2img Script dropdown, and the grid job's edges (Interrupt
keeps a partial grid, Z sub-grids, Chinese legends) on the tiny fixture model."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from core.cli import parse_flags
from core.engine import Engine
from core.generation.infotext import read_png_infotext
from core.jobs import JobQueue
from core.settings import Settings
from core.xyz.plan import AxisArgs, XyzArgs, from_script_args

CELL = 64


@pytest.fixture(scope="module")
def model_engine(tmp_path_factory) -> Engine:
    from core.models.fixtures import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("xyz-ui")
    write_tiny_checkpoint(root, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(root)]), root)
    settings.paths.ensure_dirs()
    return Engine(settings)


def _defaults(tab) -> dict[str, object]:
    return {name: component.value for name, component in tab.fields.items()}


def _script_data(controls, **changes) -> dict[object, object]:
    """The page's script widgets at their defaults, with ``changes`` by name (x_type, x_values ...)."""
    data: dict[object, object] = {c: getattr(c, "value", None) for c in controls.inputs}
    data[controls.script] = "X/Y/Z plot"
    for name, value in changes.items():
        axis, _, part = name.partition("_")
        if axis in controls.axes and part in ("type", "values", "dropdown"):
            data[getattr(controls.axes[axis], part)] = value
        else:
            data[controls.options[name]] = value
    return data


def _txt2img_tab(engine: Engine):
    from ui.txt2img import build_txt2img_tab

    with gr.Blocks():
        return build_txt2img_tab(engine)


def test_script_dropdown_offers_the_webuis_axes_and_reads_like_the_api(model_engine):
    from ui.xyz import NO_SCRIPT, axis_labels, xyz_args

    tab = _txt2img_tab(model_engine)
    controls = tab.script
    assert [value for _label, value in controls.script.choices] == [NO_SCRIPT, "X/Y/Z plot"]
    labels = [value for _label, value in controls.axes["x"].type.choices]
    assert labels == axis_labels("txt2img")
    assert labels[:5] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps"] and "Token merging ratio" not in labels
    assert controls.panel.visible is False
    assert xyz_args(controls, {controls.script: NO_SCRIPT}) is None
    data = _script_data(controls, x_type="Steps", x_values="1-2", y_type="Sampler", y_dropdown=["Euler", "DDIM"],
                        include_lone_images=True, margin_size=4)
    args = xyz_args(controls, data)
    same = from_script_args(["Steps", "1-2", [], "Sampler", "", ["Euler", "DDIM"], "Nothing", "", [], True, True,
                             False, False, False, False, False, 4, False])
    assert args == same
    # With text inputs instead of dropdowns the list axis takes the typed values.
    data = _script_data(controls, y_type="Sampler", y_values="Euler, DDIM", y_dropdown=["Heun"], csv_mode=True)
    assert xyz_args(controls, data).y == AxisArgs("Sampler", "Euler, DDIM", None)


def test_generate_with_the_script_renders_a_grid_and_asks_before_a_big_one(model_engine):
    from ui.txt2img import generate_updates
    from ui.xyz import xyz_args

    tab = _txt2img_tab(model_engine)
    values = dict(_defaults(tab), prompt="a red circle", steps=1, width=CELL, height=CELL, seed=5,
                  sampler_name="Euler")
    queue = JobQueue()
    model_engine.settings.options.xyz_max_cells = 3
    try:
        args = xyz_args(tab.script, _script_data(tab.script, x_type="Steps", x_values="1-2", y_type="CFG Scale",
                                                 y_values="3, 7"))
        updates = list(generate_updates(tab, model_engine, queue, values, script=args))
        final = updates[-1]
        asked = next(u for u in updates if tab.script.confirmed in u)
        assert "4 cells" in asked[tab.error] and "xyz_max_cells" in asked[tab.error]
        assert tab.gallery not in final and queue.jobs() == []  # nothing ran
        # The second press with the same axes renders it.
        updates = list(generate_updates(tab, model_engine, queue, values, script=args,
                                        confirmed=asked[tab.script.confirmed]))
    finally:
        model_engine.settings.options.xyz_max_cells = 100
        queue.shutdown()
    final = updates[-1]
    grid = final[tab.gallery][0]
    assert grid.width > 2 * CELL and grid.height > 2 * CELL  # two columns, two rows and the legend
    info = read_png_infotext(grid)
    assert "Script: X/Y/Z plot" in info and "X Type: Steps" in info and 'Y Values: "3, 7"' in info
    assert {tab.script.confirmed: None} in updates  # the next big grid asks again


def test_img2img_script_varies_denoising(model_engine):
    from ui.img2img import Img2ImgTab, build_img2img_tab, generate_updates
    from ui.xyz import xyz_args

    with gr.Blocks():
        tab: Img2ImgTab = build_img2img_tab(model_engine)
    labels = [value for _label, value in tab.script.axes["x"].type.choices]
    assert "Image CFG Scale" in labels and "Hires steps" not in labels
    picture = Image.new("RGB", (CELL, CELL), (200, 40, 40))
    values = dict(_defaults(tab), prompt="a red circle", steps=4, width=CELL, height=CELL, seed=3,
                  sampler_name="Euler", denoising_strength=0.5)
    args = xyz_args(tab.script, _script_data(tab.script, x_type="Denoising", x_values="0.25, 0.75",
                                             include_lone_images=True))
    queue = JobQueue()
    try:
        updates = list(generate_updates(tab, model_engine, queue, values, "img2img", {"init_image": picture},
                                        script=args))
    finally:
        queue.shutdown()
    final = updates[-1]
    grid, *cells = final[tab.gallery]
    assert len(cells) == 2 and grid.width >= 2 * CELL
    infos = [read_png_infotext(c) for c in cells]
    assert "Denoising strength: 0.25" in infos[0] and "Denoising strength: 0.75" in infos[1]


def _run(engine: Engine, args: XyzArgs, **params):
    from core.generation.params import GenerationParams
    from core.xyz.job import plan_for, run_xyz

    base = dict(prompt="a red circle", steps=1, width=CELL, height=CELL, seed=9, sampler_name="Euler")
    base.update(params)
    plan = plan_for(engine, "txt2img", args, GenerationParams(**base), engine.run_options())
    queue = JobQueue()
    job = queue.submit(lambda ctx: run_xyz(engine, plan, ctx), description="xyz", kind="generate")
    return queue, job, plan


def test_interrupt_keeps_the_finished_cells_in_a_partial_grid(model_engine):
    args = XyzArgs(x=AxisArgs("Seed", "1, 2, 3, 4"), y=AxisArgs("Nothing"), include_lone_images=True)
    queue, job, plan = _run(model_engine, args, steps=40)
    try:
        deadline = time.monotonic() + 120
        while job.progress.job_no < 1 and not job.done and time.monotonic() < deadline:
            time.sleep(0.02)
        queue.interrupt(job.id)
        result = job.wait(timeout=120)
    finally:
        queue.shutdown()
    assert result.interrupted
    rendered = len(result.images) - 1  # the grid, then the cells it has
    assert 1 <= rendered < 4
    assert any(w.startswith(f"interrupted: {rendered} of 4 cells") for w in result.warnings)
    grid = result.images[0].image
    # The missing cells are drawn blank (black) in the grid, the rendered ones are pictures.
    last_cell = grid.crop((grid.width - CELL, grid.height - CELL, grid.width, grid.height))
    assert last_cell.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert Path(result.images[0].path).is_file()


def test_z_axis_makes_sub_grids_with_chinese_titles(model_engine):
    import os

    from core.xyz.grid import font_for, has_cjk_font

    if not has_cjk_font() and os.environ.get("CI") != "true":  # CI installs one (tests/run.sh)
        pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei)")
    args = XyzArgs(x=AxisArgs("Seed", "1, 2"), y=AxisArgs("Nothing"),
                   z=AxisArgs("Prompt S/R", "红色圆形, 蓝色圆形"), include_sub_grids=True)
    queue, job, plan = _run(model_engine, args, prompt="红色圆形")
    try:
        result = job.wait(timeout=300)
    finally:
        queue.shutdown()
    main, *subs = result.images
    assert len(subs) == 2  # one sub-grid per Z value, after the main grid
    assert all(s.image.width >= 2 * CELL for s in subs)
    assert main.image.width >= sum(s.image.width for s in subs)
    assert "Z Type: Prompt S/R" in main.infotext and "Z Type" not in subs[0].infotext
    # The Z titles are drawn above the sub-grids...
    band = main.image.crop((0, 0, main.image.width, main.image.height - subs[0].image.height)).convert("L")
    assert sum(band.histogram()[:128]) > 150
    # ... with a font that has the glyphs (one without them draws its .notdef box for every character).
    font = font_for("红色", 24)
    assert font.getbbox("红")[2] > 0 and font.getmask("红").getbbox() != font.getmask("\u0378").getbbox()


def test_every_axis_a_tab_offers_has_its_chinese_name():
    from ui.xyz import ZH, axis_labels

    missing = [label for mode in ("txt2img", "img2img") for label in axis_labels(mode) if label not in ZH]
    assert missing == []
