"""The X/Y/Z plot's value syntax and axes, against the WebUI's own examples (scripts/xyz_grid.py)."""

from __future__ import annotations

import pytest

from core.errors import InvalidParameterError
from core.generation.params import GenerationParams
from core.generation.run_options import RunOptions
from core.xyz import values as v
from core.xyz.axes import Catalog, img2img_axes, txt2img_axes
from core.xyz.plan import AxisArgs, XyzArgs, check_cell_limit, from_script_args, resolve


def test_int_ranges_are_the_webuis():
    assert v.expand_ints(["1-5"]) == [1, 2, 3, 4, 5]
    assert v.expand_ints(["1-5 (+2)"]) == [1, 3, 5]
    assert v.expand_ints(["1-10 (+2)"]) == [1, 3, 5, 7, 9]
    assert v.expand_ints(["1-10 [5]"]) == [1, 3, 5, 7, 10]  # linspace, truncated
    assert v.expand_ints(["10-1 (-3)"]) == [10, 7, 4]  # the WebUI ends at b + 1 whatever the sign
    assert v.expand_ints(["1", " 7", "3-4"]) == [1, 7, 3, 4]
    with pytest.raises(v.ValueSyntaxError, match="1-5 \\(2\\)"):  # the step needs its sign
        v.expand_ints(["1-5 (2)"])
    with pytest.raises(v.ValueSyntaxError, match="not a whole number"):
        v.expand_ints(["1.5"])


def test_float_ranges_are_the_webuis():
    assert v.expand_floats(["0.5-1.5 (+0.25)"]) == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert v.expand_floats(["0-1 [5]"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert v.expand_floats(["1-3"]) == [1.0, 2.0, 3.0]
    # numpy's arange up to b + step, as the WebUI: float error can add one more value there too.
    assert [v.format_number(x) for x in v.expand_floats(["0.1-0.3 (+0.1)"])] == [0.1, 0.2, 0.3, 0.4]
    assert v.expand_floats(["7", "7.5"]) == [7.0, 7.5]
    with pytest.raises(v.ValueSyntaxError, match="not a number"):
        v.expand_floats(["seven"])


def test_quoted_csv_keeps_commas():
    assert v.csv_to_list('cat,"dog, running", bird') == ["cat", "dog, running", "bird"]
    # Python's csv (the WebUI's reader): a quote opens a quoted value only at the field's start.
    assert v.csv_to_list('cat, "dog, running"') == ["cat", '"dog', 'running"']
    assert v.csv_to_list("a,b\nc") == ["a", "b", "c"]
    assert v.list_to_csv(["a", "b, c"]) == 'a,"b, c"'
    assert v.csv_to_list(v.list_to_csv(["x", "y, z"])) == ["x", "y, z"]
    assert v.orders(["a", "b"]) == [("a", "b"), ("b", "a")]


def test_axis_indices_are_the_webuis_v1_10_1():
    t2i, i2i = txt2img_axes(), img2img_axes()
    assert [t2i.find(i).label for i in (0, 1, 4, 7, 9, 11, 17, 24, 29, 41)] == [
        "Nothing", "Seed", "Steps", "Prompt S/R", "Sampler", "Checkpoint name", "Schedule type", "Clip skip", "VAE",
        "Size"]
    assert i2i.find(40).label == "Size" and i2i.find(6).label == "Image CFG Scale"
    assert t2i.find("cfg scale").label == "CFG Scale" and t2i.find("4").label == "Steps"
    with pytest.raises(ValueError, match="out of range"):
        t2i.find(99)


def params(**kw) -> GenerationParams:
    return GenerationParams(prompt="a red circle", negative_prompt="blurry", seed=5, **kw)


def plan(x, y=AxisArgs(), z=AxisArgs(), mode="txt2img", catalog=None, **kw):
    return resolve(XyzArgs(x=x, y=y, z=z, **kw), mode, params(), RunOptions(), catalog)


def test_prompt_sr_replaces_in_both_prompts_and_refuses_a_missing_text():
    p = plan(AxisArgs("Prompt S/R", "red, blue, green"))
    cells = [p.cell(i, 0, 0).params.prompt for i in range(3)]
    assert cells == ["a red circle", "a blue circle", "a green circle"]
    p = plan(AxisArgs("Prompt S/R", "blurry, sharp"))
    assert p.cell(1, 0, 0).params.negative_prompt == "sharp"
    with pytest.raises(InvalidParameterError, match="did not find 'square'"):
        plan(AxisArgs("Prompt S/R", "square, triangle"))


def test_prompt_order_and_labels():
    base = GenerationParams(prompt="red, circle, big", seed=1)
    p = resolve(XyzArgs(x=AxisArgs(8, "red, big")), "txt2img", base, RunOptions())
    assert [p.cell(i, 0, 0).params.prompt for i in range(2)] == ["red, circle, big", "big, circle, red"]
    assert p.x.labels == ["red, big", "big, red"]
    p = plan(AxisArgs("Steps", "10-20 (+5)"), AxisArgs("CFG Scale", "5, 7.5"))
    assert p.x.labels == ["Steps: 10", "Steps: 15", "Steps: 20"] and p.y.labels == ["CFG Scale: 5.0", "CFG Scale: 7.5"]
    assert p.cell(2, 1, 0).params.steps == 20 and p.cell(2, 1, 0).params.cfg_scale == 7.5


def test_seeds_fixed_kept_and_varied():
    p = plan(AxisArgs("Seed", "-1, 42"))
    assert p.x.values[0] != -1 and p.x.values[1] == 42
    assert p.infotext_fields(with_z=False)["Fixed X Values"] == f"{p.x.values[0]}, 42"
    kept = plan(AxisArgs("Seed", "-1, 42"), no_fixed_seeds=True)
    assert kept.x.values == [-1, 42] and "Fixed X Values" not in kept.infotext_fields(with_z=False)
    base = GenerationParams(seed=-1)
    random_base = resolve(XyzArgs(x=AxisArgs("Steps", "1-2")), "txt2img", base, RunOptions())
    assert random_base.params.seed != -1  # the WebUI's fix_seed: one seed for the whole grid
    varied = plan(AxisArgs("Steps", "1-3"), AxisArgs("CFG Scale", "5, 6"), vary_seeds_x=True, vary_seeds_y=True)
    assert [varied.cell(ix, iy, 0).params.seed for iy in range(2) for ix in range(3)] == [5, 6, 7, 8, 9, 10]
    only_y = plan(AxisArgs("Steps", "1-3"), AxisArgs("CFG Scale", "5, 6"), vary_seeds_y=True)
    assert [only_y.cell(ix, iy, 0).params.seed for iy in range(2) for ix in range(3)] == [5, 5, 5, 6, 6, 6]


def test_cells_are_ordered_so_the_checkpoint_changes_least():
    catalog = Catalog(checkpoints=lambda: ["a.safetensors", "b.safetensors"],
                      find_checkpoint=lambda name: {"a": "a.safetensors", "b": "b.safetensors"}.get(name))
    p = plan(AxisArgs("Checkpoint name", "a, b"), AxisArgs("Steps", "1-3"), catalog=catalog)
    checkpoints = [p.cell(ix, iy, iz).params.checkpoint for ix, iy, iz in p.order()]
    assert checkpoints == ["a.safetensors"] * 3 + ["b.safetensors"] * 3
    assert p.x.labels == ["a.safetensors", "b.safetensors"]
    default = plan(AxisArgs("Steps", "1-2"), AxisArgs("CFG Scale", "5, 6"))
    assert default.order() == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    with pytest.raises(InvalidParameterError, match="Unknown checkpoint: c"):
        plan(AxisArgs("Checkpoint name", "a, c"), catalog=catalog)


def test_list_axes_read_the_dropdown_unless_csv_mode():
    p = plan(AxisArgs("Sampler", "", ["Euler", "DPM++ 2M"]))
    assert p.x.values == ["Euler", "DPM++ 2M"] and p.x.raw == "Euler,DPM++ 2M"
    assert plan(AxisArgs("Sampler", "Euler a, Euler"), csv_mode=True).x.values == ["Euler a", "Euler"]
    with pytest.raises(InvalidParameterError, match="unknown sampler 'Nope'"):
        plan(AxisArgs("Sampler", "Nope"), csv_mode=True)


def test_size_denoising_clip_skip_and_network_multiplier():
    p = plan(AxisArgs("Size", "64x96, 128x64"))
    assert (p.cell(0, 0, 0).params.width, p.cell(0, 0, 0).params.height) == (64, 96)
    with pytest.raises(InvalidParameterError, match="WIDTHxHEIGHT"):
        plan(AxisArgs("Size", "64"))
    assert plan(AxisArgs("Denoising", "0.3")).cell(0, 0, 0).params.hires.denoising_strength == 0.3
    assert plan(AxisArgs("Clip skip", "2")).cell(0, 0, 0).params.clip_skip == 2
    base = GenerationParams(prompt="x <lora:style:1> <lora:b:0.5:te=0.2> <hypernet:h>", seed=1)
    p = resolve(XyzArgs(x=AxisArgs("Extra networks multiplier", "0.4, 0.8")), "txt2img", base, RunOptions())
    assert p.cell(0, 0, 0).params.prompt == "x <lora:style:0.4> <lora:b:0.4:te=0.2> <hypernet:h:0.4>"
    with pytest.raises(InvalidParameterError, match="no <lora"):
        plan(AxisArgs("Extra networks multiplier", "0.5"))
    with pytest.raises(InvalidParameterError, match="cannot be plotted: Kiln has no face restoration"):
        plan(AxisArgs("Face restore", "true"))
    with pytest.raises(InvalidParameterError, match="has no values"):
        plan(AxisArgs("Steps", ""))


def test_script_args_positions_and_limits():
    args = from_script_args([4, "1-2", [], "CFG Scale", "5,7", None, 0, "", [], True, True, False, False,
                             False, True, False, 12, False])
    assert args.x.type == 4 and args.y.type == "CFG Scale" and args.vary_seeds_y and args.margin_size == 12
    assert args.include_lone_images and not args.include_sub_grids
    legacy = from_script_args([4, "1-2", [], 0, "", [], 0, "", [], False, False, True, True, 8, True])
    assert legacy.margin_size == 8 and legacy.csv_mode and not legacy.draw_legend and legacy.no_fixed_seeds
    with pytest.raises(InvalidParameterError, match="margin_size"):
        from_script_args([4, "1-2", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False,
                          "wide"])
    p = plan(AxisArgs("Steps", "1-6"), AxisArgs("CFG Scale", "1-3"))
    check_cell_limit(p, 18)
    with pytest.raises(InvalidParameterError, match="18 cells .* over the limit of 10.*xyz_max_cells"):
        check_cell_limit(p, 10)
