"""Find and load the extensions in extensions/: one import and one ``setup(api)`` call each.

An extension is a folder ``extensions/<name>/`` with ``kiln_extension.py`` defining
``setup(api: ExtensionAPI) -> None``. The folder is imported as a package of its own
(``kiln_ext_<name>``), so the entry point can import its neighbours with ``from . import x``.
Each extension is imported inside its own try/except: one that raises (on import, in setup, or
by adding a taken sampler name) is recorded with its error and skipped, and what it had already
registered is taken back. Disabled ones are never imported. Loading costs each extension's own
import and nothing else (bench/bench_extensions_startup.py measures it).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from core.extensions.registry import DISABLED, FAILED, LOADED, NOT_RUN, ExtensionRecord, ExtensionRegistry

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT = "kiln_extension.py"
PACKAGE_PREFIX = "kiln_ext_"


def discover(folder: Path) -> list[Path]:
    """The extension folders, by name (hidden ones and files are not extensions)."""
    if not folder.is_dir():
        return []
    return sorted((c for c in folder.iterdir() if c.is_dir() and not c.name.startswith((".", "_"))),
                  key=lambda p: p.name.lower())


def disabled_reason(name: str, settings: Settings) -> str | None:
    """Why ``name`` is not to be loaded: a flag or a setting (the WebUI's names), else None."""
    flags, options = settings.flags, settings.options
    if getattr(flags, "disable_all_extensions", False):
        return "--disable-all-extensions"
    if getattr(flags, "disable_extra_extensions", False):
        return "--disable-extra-extensions"
    if options.disable_all_extensions in ("extra", "all"):
        return f"setting disable_all_extensions is {options.disable_all_extensions!r}"
    if name in options.disabled_extensions:
        return "listed in the setting disabled_extensions"
    return None


def package_name(folder_name: str) -> str:
    return PACKAGE_PREFIX + re.sub(r"\W", "_", folder_name)


def import_entry_point(folder: Path) -> ModuleType:
    """``folder/kiln_extension.py`` as ``kiln_ext_<name>.kiln_extension`` (a fresh import each
    time: an earlier engine's copy and its submodules are dropped first)."""
    package = package_name(folder.name)
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]
    spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    parent = importlib.util.module_from_spec(spec)
    parent.__path__ = [str(folder)]
    sys.modules[package] = parent
    name = f"{package}.kiln_extension"
    entry_spec = importlib.util.spec_from_file_location(name, folder / ENTRY_POINT)
    if entry_spec is None or entry_spec.loader is None:
        raise ImportError(f"cannot import {folder / ENTRY_POINT}")
    module = importlib.util.module_from_spec(entry_spec)
    sys.modules[name] = module
    entry_spec.loader.exec_module(module)
    return module


def _forget(folder: Path) -> None:
    package = package_name(folder.name)
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]


def last_frame(exc: BaseException, folder: Path | None = None) -> str | None:
    """The traceback's last frame in the extension's own files (the line its author must look
    at, rather than the Kiln check that raised), else the last frame: 'kiln_extension.py, line 3,
    in setup'."""
    frames = traceback.extract_tb(exc.__traceback__)
    if folder is not None:
        own = [f for f in frames if Path(f.filename).resolve().is_relative_to(folder.resolve())]
        frames = own or frames
    if not frames:
        return None
    frame = frames[-1]
    return f"{Path(frame.filename).name}, line {frame.lineno}, in {frame.name}"


def load_one(folder: Path, engine: Engine, queue: JobQueue | None, registry: ExtensionRegistry) -> ExtensionRecord:
    from core.extensions.api import ExtensionAPI

    record = ExtensionRecord(folder.name, folder, LOADED)
    api = ExtensionAPI(folder.name, folder, engine, queue)
    started = time.perf_counter()
    try:
        module = import_entry_point(folder)
        setup: Any = getattr(module, "setup", None)
        if not callable(setup):
            raise TypeError(f"{ENTRY_POINT} defines no setup(api) function")
        setup(api)
        registry.add(api, record)
    except (Exception, SystemExit) as exc:  # an extension's sys.exit() must not stop Kiln either
        api.withdraw()
        _forget(folder)
        record.state, record.error, record.where = FAILED, f"{type(exc).__name__}: {exc}", last_frame(exc, folder)
        record.message = record.error + (f" ({record.where})" if record.where else "")
        registry.records.append(record)
        log.warning("extension %s failed to load and is skipped: %s", folder.name, record.message)
    record.seconds = time.perf_counter() - started
    return record


def load_extensions(engine: Engine, queue: JobQueue | None = None) -> ExtensionRegistry:
    """Load every enabled extension of ``engine.paths.extensions_dir`` into ``engine.extensions``
    (once per engine; a second call returns the registry as it is)."""
    registry: ExtensionRegistry = engine.extensions
    if registry.loaded:
        return registry
    registry.loaded = True
    from core.extensions.webui import not_run_message

    for folder in discover(registry.folder):
        if not (folder / ENTRY_POINT).is_file():
            registry.records.append(ExtensionRecord(folder.name, folder, NOT_RUN, not_run_message(folder)))
            continue
        reason = disabled_reason(folder.name, engine.settings)
        if reason is not None:
            registry.records.append(ExtensionRecord(folder.name, folder, DISABLED, f"disabled: {reason}"))
            continue
        record = load_one(folder, engine, queue, registry)
        if record.state == LOADED:
            log.info("extension %s loaded in %.3f s (%s)", record.name, record.seconds,
                     ", ".join(record.adds) or "adds nothing")
    failed = registry.by_state(FAILED)
    if failed:
        log.warning("%d extension(s) failed to load: %s (see the Extensions tab)", len(failed),
                    ", ".join(r.name for r in failed))
    return registry
