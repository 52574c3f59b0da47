"""``ExtensionAPI``: everything an extension's ``setup(api)`` may use, and what it adds.

An extension reaches Kiln only through this object: the engine (settings, paths, models,
registries), the job queue, and the ``add_*`` methods. Samplers and axes are checked and
registered at once (a taken name fails the extension's ``setup`` with the reason); tabs,
scripts and routes are kept here and handed to the UI and the API once ``setup`` returned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.sampling.samplers import SamplerInfo
    from core.xyz.axes import Axis

MODES = ("txt2img", "img2img")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROUTE_PREFIX = "/kiln/ext"  # below /kiln/: behind the same logins as the rest of the API
_URL_SAFE = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TabEntry:
    extension: str
    title: str
    build: Callable[[], Any]  # builds the tab's widgets inside the gr.Tab Kiln opens


@dataclass(frozen=True)
class ScriptEntry:
    """An always-on script: an accordion on the generation tabs whose values change the params.

    ``build()`` makes its widgets inside the accordion and returns the input components, in the
    order ``process(params, *values)`` takes them; ``process`` changes the GenerationParams (or
    Img2ImgParams) in place or returns new ones, before they are checked and the job runs. Keys it
    puts in ``params.extra_generation_params`` are written into the pictures' infotext.
    """

    extension: str
    title: str
    build: Callable[[], Sequence[Any]]
    process: Callable[..., Any]
    modes: tuple[str, ...] = MODES


@dataclass(frozen=True)
class RouteEntry:
    extension: str
    path: str  # the full path: ROUTE_PREFIX/<extension>/<the path the extension gave>
    endpoint: Callable[..., Any]
    methods: tuple[str, ...]


@dataclass
class ExtensionAPI:
    """What ``setup(api)`` receives. One per extension; ``name`` is its folder's name."""

    name: str
    folder: Path
    engine: Engine
    queue: JobQueue | None = None  # None when loaded without a queue (a tool that only lists)
    tabs: list[TabEntry] = field(default_factory=list)
    scripts: list[ScriptEntry] = field(default_factory=list)
    routes: list[RouteEntry] = field(default_factory=list)
    axes: list[Axis] = field(default_factory=list)
    samplers: list[SamplerInfo] = field(default_factory=list)

    @property
    def settings(self) -> Any:
        return self.engine.settings

    @property
    def paths(self) -> Any:
        return self.engine.paths

    def add_tab(self, title: str, build_fn: Callable[[], Any]) -> None:
        """A top-level tab titled ``title``; ``build_fn()`` makes its Gradio widgets (and events)."""
        _check_text("tab title", title)
        _check_callable("build_fn", build_fn)
        self.tabs.append(TabEntry(self.name, title, build_fn))

    def add_script(self, title: str, build_fn: Callable[[], Sequence[Any]], process_fn: Callable[..., Any],
                   modes: Sequence[str] = MODES) -> None:
        """An always-on accordion on txt2img and/or img2img (see ScriptEntry). The API runs it when
        a request names ``title`` in ``alwayson_scripts`` with its ``args``, as in the WebUI."""
        _check_text("script title", title)
        _check_callable("build_fn", build_fn)
        _check_callable("process_fn", process_fn)
        modes = tuple(modes)
        if not modes or any(mode not in MODES for mode in modes):
            raise ValueError(f"script {title!r}: modes must be among {', '.join(MODES)}")
        self.scripts.append(ScriptEntry(self.name, title, build_fn, process_fn, modes))

    def add_api_route(self, path: str, fn: Callable[..., Any], methods: Sequence[str] = ("GET",)) -> str:
        """An HTTP route served at ``/kiln/ext/<extension><path>`` (with --api or --nowebui), behind
        the API's logins; ``fn`` is a FastAPI endpoint. Returns the full path."""
        _check_text("route path", path)
        if not path.startswith("/") or "//" in path:
            raise ValueError(f"route path {path!r} must start with one '/'")
        _check_callable("fn", fn)
        methods = tuple(m.upper() for m in methods)
        if not methods or any(m not in HTTP_METHODS for m in methods):
            raise ValueError(f"route {path!r}: methods must be among {', '.join(HTTP_METHODS)}")
        if not _URL_SAFE.fullmatch(self.name):
            raise ValueError(f"the folder name {self.name!r} cannot be part of a URL: rename it with letters, "
                             "digits, '.', '_' or '-' only")
        full = f"{ROUTE_PREFIX}/{self.name}{path}"
        if any(r.path == full and set(r.methods) & set(methods) for r in self.routes):
            raise ValueError(f"route {full!r} is added twice")
        self.routes.append(RouteEntry(self.name, full, fn, methods))
        return full

    def add_xyz_axis(self, axis: Axis) -> None:
        """An X/Y/Z plot axis type (a core.xyz.axes.Axis), after the WebUI's and Kiln's axes."""
        from core.xyz.axes import register_axis

        self.axes.append(register_axis(axis))

    def add_sampler(self, info: SamplerInfo) -> None:
        """A sampler (a core.sampling.samplers.SamplerInfo) in every sampler list and the API."""
        from core.sampling.samplers import register_sampler

        self.samplers.append(register_sampler(info))

    def withdraw(self) -> None:
        """Take back the samplers and axes this extension registered (its setup failed, or the
        engine unloads extensions)."""
        from core.sampling.samplers import unregister_sampler
        from core.xyz.axes import unregister_axis

        for info in self.samplers:
            unregister_sampler(info.name)
        for axis in self.axes:
            unregister_axis(axis.label)
        self.samplers.clear()
        self.axes.clear()


def _check_text(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")


def _check_callable(what: str, value: Any) -> None:
    if not callable(value):
        raise ValueError(f"{what} must be callable, not {type(value).__name__}")
