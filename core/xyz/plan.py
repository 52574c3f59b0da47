"""The X/Y/Z plot's arguments, resolved into the cells to render, before anything runs.

``XyzArgs`` holds the script's arguments (the UI's widgets, or the API's positional
``script_args`` through ``from_script_args``); ``resolve`` expands the values of each axis,
checks them all (an unknown sampler, a Prompt S/R text not in the prompt: a clear error, no cell
rendered), fixes seeds the WebUI's way and orders the cells so the costly axis (checkpoint, VAE)
changes as few times as possible.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidParameterError
from core.generation.params import GenerationParams
from core.generation.run_options import RunOptions
from core.xyz import values as v
from core.xyz.axes import FLOAT, INT, ORDER, SEED_AXES, Axis, AxisError, AxisList, Catalog, Cell, axis_list

SCRIPT_TITLE = "X/Y/Z plot"
SCRIPT_NAME = "x/y/z plot"  # the API's script_name (titles are matched lower-case)
DEFAULT_MAX_CELLS = 100
# v1.10.1's 18 arguments (x/y/z type, values, values dropdown; then the options), dev's 19th.
ARG_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
             "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images",
             "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
             "margin_size", "csv_mode", "draw_grid")
# Before v1.8 (no vary_seeds): 15 arguments, margin_size and csv_mode right after no_fixed_seeds.
LEGACY_ARG_NAMES = (*ARG_NAMES[:13], "margin_size", "csv_mode")
MAX_MARGIN = 500


@dataclass
class AxisArgs:
    type: int | str | Axis = 0  # index into the tab's axis list, a label, or an Axis of Kiln's own
    values: str = ""  # CSV / ranges
    dropdown: list[str] | None = None  # the list axes' multiselect


@dataclass
class XyzArgs:
    """The script's arguments; names and defaults are the WebUI's (x_type 1 = Seed)."""

    x: AxisArgs = field(default_factory=lambda: AxisArgs(1))
    y: AxisArgs = field(default_factory=AxisArgs)
    z: AxisArgs = field(default_factory=AxisArgs)
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds_x: bool = False
    vary_seeds_y: bool = False
    vary_seeds_z: bool = False
    margin_size: int = 0
    csv_mode: bool = False
    draw_grid: bool = True


def from_script_args(args: list[Any] | tuple[Any, ...] | None) -> XyzArgs:
    """The API's positional ``script_args``: v1.10.1's 18 values, dev's 19 (draw_grid) or the
    15 of WebUIs before v1.8; missing trailing values take the defaults."""
    args = list(args or [])
    names = LEGACY_ARG_NAMES if len(args) in (15, 16) else ARG_NAMES
    if len(args) > len(ARG_NAMES):
        raise InvalidParameterError("script_args", f"X/Y/Z plot takes at most {len(ARG_NAMES)} arguments "
                                    f"({', '.join(ARG_NAMES)}), got {len(args)}")
    named = dict(zip(names, args))
    out = XyzArgs()
    for axis in "xyz":
        spec = getattr(out, axis)
        if f"{axis}_type" in named and named[f"{axis}_type"] is not None:
            spec.type = named[f"{axis}_type"]
        spec.values = "" if named.get(f"{axis}_values") is None else str(named[f"{axis}_values"])
        dropdown = named.get(f"{axis}_values_dropdown")
        if dropdown is not None and not isinstance(dropdown, list):
            raise InvalidParameterError("script_args", f"{axis}_values_dropdown must be a list, got {dropdown!r}")
        spec.dropdown = [str(d) for d in dropdown] if dropdown else None
    for name in ARG_NAMES[9:]:
        if name in named and named[name] is not None:
            value = named[name]
            if name == "margin_size":
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise InvalidParameterError("script_args", f"margin_size must be a whole number, "
                                                f"got {value!r}") from None
            else:
                value = _boolean(name, value)
            setattr(out, name, value)
    return out


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidParameterError("script_args", f"{name} must be true or false, got {value!r}")


@dataclass
class ResolvedAxis:
    axis: Axis
    values: list[Any]
    raw: str  # the values as written (for the infotext's "X Values")
    labels: list[str]


@dataclass
class XyzPlan:
    mode: str
    args: XyzArgs
    x: ResolvedAxis
    y: ResolvedAxis
    z: ResolvedAxis
    params: GenerationParams  # the tab's parameters, seeds fixed unless "Keep -1 for seeds"
    options: RunOptions

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x.values), len(self.y.values), len(self.z.values)

    @property
    def cell_count(self) -> int:
        nx, ny, nz = self.shape
        return nx * ny * nz

    def index(self, ix: int, iy: int, iz: int) -> int:
        nx, ny, _ = self.shape
        return ix + iy * nx + iz * nx * ny

    def order(self) -> list[tuple[int, int, int]]:
        """(ix, iy, iz) in render order: the costliest axis outermost (the WebUI's rule: an axis
        whose cost beats both others goes first, then the costlier of the other two), so a
        checkpoint or VAE changes once per value; otherwise Z, then Y, then X innermost."""
        costs = {"x": self.x.axis.cost, "y": self.y.axis.cost, "z": self.z.axis.cost}
        first, second = "z", "y"
        for name, others in (("x", "yz"), ("y", "xz"), ("z", "xy")):
            a, b = others
            if costs[name] > costs[a] and costs[name] > costs[b]:
                first, second = name, (a if costs[a] > costs[b] else b)
                break
        third = next(n for n in "xyz" if n not in (first, second))
        sizes = dict(zip("xyz", self.shape))
        out = []
        for i1 in range(sizes[first]):
            for i2 in range(sizes[second]):
                for i3 in range(sizes[third]):
                    pos = {first: i1, second: i2, third: i3}
                    out.append((pos["x"], pos["y"], pos["z"]))
        return out

    def cell(self, ix: int, iy: int, iz: int) -> Cell:
        """The parameters and options of one cell: each axis applied, then the seed varied."""
        cell = Cell(params=_copy_params(self.params),
                    options=self.options)
        for axis, i in ((self.x, ix), (self.y, iy), (self.z, iz)):
            axis.axis.apply(cell, axis.values[i], axis.values)
        nx, ny, _ = self.shape
        xdim = nx if self.args.vary_seeds_x else 1
        ydim = ny if self.args.vary_seeds_y else 1
        seed = cell.params.seed
        if seed not in (-1, None):  # a random seed stays random (-1 + ix would fix it to ix - 1)
            if self.args.vary_seeds_x:
                seed += ix
            if self.args.vary_seeds_y:
                seed += iy * xdim
            if self.args.vary_seeds_z:
                seed += iz * xdim * ydim
            cell.params.seed = seed
        return cell

    def cells(self) -> Iterator[tuple[int, int, int, Cell]]:
        for ix, iy, iz in self.order():
            yield ix, iy, iz, self.cell(ix, iy, iz)

    def infotext_fields(self, *, with_z: bool) -> dict[str, str]:
        """``Script``, ``X Type``, ``X Values``, ``Fixed X Values`` ... for a grid's infotext."""
        fields = {"Script": SCRIPT_TITLE}
        axes = (("X", self.x), ("Y", self.y)) + ((("Z", self.z),) if with_z else ())
        for name, axis in axes:
            if axis.axis.label == "Nothing":
                continue
            fields[f"{name} Type"] = axis.axis.label
            fields[f"{name} Values"] = axis.raw
            if axis.axis.label in SEED_AXES and not self.args.no_fixed_seeds:
                fields[f"Fixed {name} Values"] = ", ".join(str(value) for value in axis.values)
        return fields


def _copy_params(params: GenerationParams) -> GenerationParams:
    """A cell's own parameters: nested hires and lists copied, init pictures shared (read only)."""
    import dataclasses

    changes: dict[str, Any] = {"hires": dataclasses.replace(params.hires), "notes": list(params.notes),
                               "styles": list(params.styles)}
    return dataclasses.replace(params, **changes)


def _random_seed() -> int:
    return int(random.randrange(4294967294))


def resolve(args: XyzArgs, mode: str, params: GenerationParams, options: RunOptions,
            catalog: Catalog | None = None) -> XyzPlan:
    """Every axis expanded and checked, seeds fixed; raises InvalidParameterError (field
    ``script_args``, or the axis) before anything renders."""
    catalog = catalog or Catalog()
    axes = axis_list(mode)
    params = _copy_params(params)
    if not args.no_fixed_seeds:  # the WebUI's fix_seed: one random seed for the whole grid
        if params.seed in (-1, None):
            params.seed = _random_seed()
        if params.subseed in (-1, None):
            params.subseed = _random_seed()
    if not 0 <= int(args.margin_size) <= MAX_MARGIN:
        raise InvalidParameterError("margin_size", f"must be between 0 and {MAX_MARGIN}, got {args.margin_size}")
    resolved = {}
    for name in "xyz":
        try:
            resolved[name] = _resolve_axis(getattr(args, name), axes, args, params, catalog)
        except (AxisError, v.ValueSyntaxError) as exc:
            raise InvalidParameterError(f"{name}_values", str(exc)) from None
    return XyzPlan(mode=mode, args=args, params=params, options=options, **resolved)


def _resolve_axis(spec: AxisArgs, axes: AxisList, args: XyzArgs, params: GenerationParams,
                  catalog: Catalog) -> ResolvedAxis:
    axis = spec.type if isinstance(spec.type, Axis) else axes.find(spec.type)
    if axis.unsupported:
        raise AxisError(f"the axis {axis.label!r} cannot be plotted: {axis.unsupported}")
    if axis.label == "Nothing":
        return ResolvedAxis(axis, [0], "", [""])
    # List axes read the dropdown, unless "Use text inputs instead of dropdowns". A script that
    # sends only the text (written for WebUIs before the dropdowns) gets its text read.
    if axis.choices is not None and not args.csv_mode and spec.dropdown:
        items = list(spec.dropdown)
        raw = v.list_to_csv(items)
    else:
        raw = spec.values or ""
        items = v.csv_to_list(raw)
    if axis.kind == INT:
        values: list[Any] = v.expand_ints(items)
    elif axis.kind == FLOAT:
        values = v.expand_floats(items)
    elif axis.kind == ORDER:
        values = v.orders(items)
    else:
        values = items
    if not values:
        raise AxisError(f"the axis {axis.label!r} has no values; {v.SYNTAX_HINT}")
    if axis.label in SEED_AXES and not args.no_fixed_seeds:
        values = [_random_seed() if value == -1 else value for value in values]
    if axis.check is not None:
        values = axis.check(params, values, catalog, axis.label)
    return ResolvedAxis(axis, values, raw, [axis.label_for(value) for value in values])


def check_cell_limit(plan: XyzPlan, limit: int) -> None:
    """Refuse a grid over ``limit`` cells (the Settings' ``xyz_max_cells``; 0 = no limit)."""
    if limit and plan.cell_count > limit:
        nx, ny, nz = plan.shape
        raise InvalidParameterError(
            "script_args", f"the X/Y/Z plot would render {plan.cell_count} cells ({nx} × {ny} × {nz}), over the "
            f"limit of {limit}", hint="fewer values, or raise xyz_max_cells in Settings (POST /sdapi/v1/options "
            '{"xyz_max_cells": N}; 0 = no limit)')


# The WebUI's img_max_size_mp default: the finished grid must fit in memory as one picture.
MAX_GRID_MEGAPIXELS = 200


def check_grid_size(plan: XyzPlan) -> None:
    """The WebUI's "Resulting grid would be too large" check, before anything renders."""
    widths = [parse_width_height(plan, ix, iy, iz) for ix, iy, iz in plan.order()]
    pixels = sum(w * h for w, h in widths)
    if pixels / 1_000_000 > MAX_GRID_MEGAPIXELS:
        raise InvalidParameterError("script_args", f"the grid would be {pixels / 1e6:.0f} megapixels, over the "
                                    f"limit of {MAX_GRID_MEGAPIXELS}", hint="fewer cells or smaller pictures")


def parse_width_height(plan: XyzPlan, ix: int, iy: int, iz: int) -> tuple[int, int]:
    params = plan.cell(ix, iy, iz).params
    return int(params.width), int(params.height)
