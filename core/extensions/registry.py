"""What was found in extensions/ and what the loaded extensions add; one per Engine.

No module globals: the Engine owns its ExtensionRegistry, so two engines in one process (the
tests) each know their own extensions. Only the sampler table and the X/Y/Z axis list are
process-wide (the sampling and plot code reads them everywhere); what an extension put there is
taken back by ``unload()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.extensions.api import ExtensionAPI, RouteEntry, ScriptEntry, TabEntry

LOADED = "loaded"
FAILED = "failed"  # raised on import or in setup(): skipped, with the reason
DISABLED = "disabled"  # switched off by a setting or a flag: not imported
NOT_RUN = "not-run"  # no kiln_extension.py (a WebUI extension, another folder)
STATES = (LOADED, FAILED, DISABLED, NOT_RUN)


@dataclass
class ExtensionRecord:
    """One folder of extensions/ and what became of it."""

    name: str
    folder: Path
    state: str
    message: str = ""  # why it is disabled / not run, or the error of a failed one
    error: str | None = None  # "ValueError: sampler name 'Euler' is taken ..."
    where: str | None = None  # the traceback's last frame: 'kiln_extension.py, line 3, in setup'
    seconds: float = 0.0  # its import plus setup()
    adds: list[str] = field(default_factory=list)  # "tab: Notes", "sampler: Euler x2", ...
    problems: list[str] = field(default_factory=list)  # after loading: a tab or route that failed

    @property
    def enabled(self) -> bool:
        return self.state == LOADED

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.folder), "state": self.state, "enabled": self.enabled,
                "message": self.message, "error": self.error, "where": self.where,
                "seconds": round(self.seconds, 4), "adds": list(self.adds), "problems": list(self.problems)}


class ExtensionRegistry:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.records: list[ExtensionRecord] = []
        self.tabs: list[TabEntry] = []
        self.scripts: list[ScriptEntry] = []
        self.routes: list[RouteEntry] = []
        self._apis: list[ExtensionAPI] = []
        self.loaded = False  # load_extensions ran for this engine

    # ------------------------------------------------------------------ queries --
    def record(self, name: str) -> ExtensionRecord | None:
        return next((r for r in self.records if r.name == name), None)

    def by_state(self, state: str) -> list[ExtensionRecord]:
        return [r for r in self.records if r.state == state]

    def scripts_for(self, mode: str) -> list[ScriptEntry]:
        return [s for s in self.scripts if mode in s.modes]

    def find_script(self, title: str, mode: str) -> ScriptEntry | None:
        """By title in any case (the WebUI matches alwayson_scripts keys lower-cased)."""
        wanted = str(title).strip().lower()
        return next((s for s in self.scripts_for(mode) if s.title.lower() == wanted), None)

    # ------------------------------------------------------------------ loading --
    def add(self, api: ExtensionAPI, record: ExtensionRecord) -> None:
        """Keep a loaded extension's contributions. A script title another extension already
        uses is refused (the API picks scripts by title): ValueError, before anything is kept."""
        for script in api.scripts:
            for mode in script.modes:
                other = self.find_script(script.title, mode)
                if other is not None:
                    raise ValueError(f"script title {script.title!r} is taken by the extension {other.extension!r}")
        self._apis.append(api)
        self.tabs.extend(api.tabs)
        self.scripts.extend(api.scripts)
        self.routes.extend(api.routes)
        record.adds = ([f"tab: {t.title}" for t in api.tabs] + [f"script: {s.title}" for s in api.scripts]
                       + [f"route: {','.join(r.methods)} {r.path}" for r in api.routes]
                       + [f"X/Y/Z axis: {a.label}" for a in api.axes] + [f"sampler: {s.name}" for s in api.samplers])
        self.records.append(record)

    def report_problem(self, name: str, problem: str) -> None:
        """A loaded extension's tab or route that failed later (while the page or API was built)."""
        record = self.record(name)
        if record is not None:
            record.problems.append(problem)

    def unload(self) -> None:
        """Take the samplers and axes back from the process-wide tables and forget everything."""
        for api in self._apis:
            api.withdraw()
        self._apis.clear()
        self.records.clear()
        self.tabs.clear()
        self.scripts.clear()
        self.routes.clear()
        self.loaded = False

    # ---------------------------------------------------------------- running --
    def apply_scripts(self, params: Any, alwayson: dict[str, Any] | None, mode: str) -> Any:
        """``params`` after each always-on script named in ``alwayson`` (the WebUI's request field
        ``{"Title": {"args": [...]}}``) ran its ``process``. An unknown title, or a script that
        rejects its values, is an InvalidParameterError naming the field (a 422, or the page's
        error box); any other failure is a KilnError naming the extension."""
        from core.errors import InvalidParameterError, KilnError

        for title, entry in (alwayson or {}).items():
            script = self.find_script(title, mode)
            if script is None:
                known = ", ".join(s.title for s in self.scripts_for(mode)) or "none"
                raise InvalidParameterError("alwayson_scripts", f"always on script {title!r} not found",
                                            hint=f"the {mode} always-on scripts: {known}")
            args = entry.get("args", []) if isinstance(entry, dict) else entry
            if not isinstance(args, (list, tuple)):
                raise InvalidParameterError(f"alwayson_scripts.{title}", "args must be a list")
            try:
                changed = script.process(params, *args)
            except (ValueError, TypeError) as exc:
                raise InvalidParameterError(f"alwayson_scripts.{title}",
                                            f"{script.extension}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                raise KilnError(f"the always-on script {script.title!r} of the extension {script.extension!r} "
                                f"failed: {type(exc).__name__}: {exc}") from exc
            if changed is not None:
                params = changed
        return params
