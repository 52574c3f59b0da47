"""The X/Y/Z plot through the API: ``script_name: "x/y/z plot"`` with the WebUI's positional
``script_args`` on /sdapi/v1/txt2img and /img2img, and the script lists (/scripts, /script-info)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from core.xyz.axes import axis_list
from core.xyz.plan import (
    ARG_NAMES,
    SCRIPT_NAME,
    SCRIPT_TITLE,
    XyzArgs,
    check_cell_limit,
    from_script_args,
)

if TYPE_CHECKING:
    from core.engine import Engine
    from core.extensions.registry import ExtensionRegistry


def take_script(values: dict[str, Any]) -> XyzArgs | None:
    """The request's X/Y/Z plot arguments (script_name / script_args taken out of ``values``), or
    None; another script name stays in ``values`` and is refused as "not found" by the conversion."""
    name = values.get("script_name")
    if not name or str(name).strip().lower() != SCRIPT_NAME:
        return None
    values.pop("script_name", None)
    return from_script_args(values.pop("script_args", None))


def xyz_job(engine: Engine, mode: str, args: XyzArgs, params: Any, options: Any):
    """The plan checked now (bad axis, value, cell count: InvalidParameterError → 422) and the
    job function that renders it."""
    from core.xyz.job import plan_for, run_xyz

    plan = plan_for(engine, mode, args, params, options)
    check_cell_limit(plan, int(engine.settings.options.xyz_max_cells))
    return lambda ctx: run_xyz(engine, plan, ctx)


def scripts_router(extensions: ExtensionRegistry | None = None) -> APIRouter:
    """``extensions``: their always-on scripts are listed after the X/Y/Z plot, by their titles
    lower-cased (the WebUI's script names), with ``is_alwayson`` true."""
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    def always_on(mode: str) -> list[Any]:
        return extensions.scripts_for(mode) if extensions is not None else []

    @router.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return {mode: [SCRIPT_NAME, *(s.title.lower() for s in always_on(mode))] for mode in ("txt2img", "img2img")}

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        out = []
        for mode in ("txt2img", "img2img"):
            labels = axis_list(mode).labels()
            arg_list = []
            for name in ARG_NAMES:
                item: dict[str, Any] = {"label": name, "value": None, "minimum": None, "maximum": None,
                                        "step": None, "choices": None}
                if name.endswith("_type"):
                    item["choices"] = labels
                    item["value"] = labels[1] if name == "x_type" else labels[0]
                arg_list.append(item)
            out.append({"name": SCRIPT_NAME, "is_alwayson": False, "is_img2img": mode == "img2img",
                        "args": arg_list, "title": SCRIPT_TITLE})
            # Their widgets exist only on the page, so their args are not described here.
            out.extend({"name": s.title.lower(), "is_alwayson": True, "is_img2img": mode == "img2img",
                        "args": [], "title": s.title} for s in always_on(mode))
        return out

    return router
