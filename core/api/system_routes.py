"""The WebUI's server routes tools poll: cmd-flags, memory, extensions, face-restorers,
realesrgan-models, unload-checkpoint and reload-checkpoint (shapes as modules/api/models.py)."""

from __future__ import annotations

import configparser
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

log = logging.getLogger(__name__)


def ram_info() -> dict[str, Any]:
    """The WebUI's ``ram``: this process's resident memory as ``used``, of the machine's total."""
    try:
        import psutil

        used = psutil.Process(os.getpid()).memory_info().rss
        total = psutil.virtual_memory().total
    except ImportError:  # psutil is optional: Linux's /proc says the same
        try:
            used = _proc_kib("/proc/self/status", "VmRSS") * 1024
            total = _proc_kib("/proc/meminfo", "MemTotal") * 1024
        except (OSError, ValueError) as exc:
            return {"error": f"{exc}"}
    return {"free": total - used, "used": used, "total": total}


def _proc_kib(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"{key} not found in {path}")


def cuda_info(device_id: int | None) -> dict[str, Any]:
    """The WebUI's ``cuda`` block for one device, or ``{"error": "unavailable"}`` without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        device = torch.device("cuda", device_id or 0)
        free, total = torch.cuda.mem_get_info(device)
        s = dict(torch.cuda.memory_stats(device))

        def pair(name: str) -> dict[str, int]:
            return {"current": s.get(f"{name}.all.current", 0), "peak": s.get(f"{name}.all.peak", 0)}

        return {"system": {"free": free, "used": total - free, "total": total},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
    except Exception as exc:  # a driver error is reported, not raised (the WebUI does the same)
        return {"error": f"{exc}"}


def _git_info(folder: Path) -> dict[str, Any]:
    """remote / branch / commit of an extension's git checkout, read from .git without running git."""
    git = folder / ".git"
    info: dict[str, Any] = {"remote": None, "branch": None, "commit_hash": None, "version": None, "commit_date": None}
    if not git.is_dir():
        return info
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if head.startswith("ref: "):
            ref = head[5:]
            info["branch"] = ref.rsplit("/", 1)[-1]
            ref_file = git / ref
            commit = ref_file.read_text(encoding="utf-8").strip() if ref_file.is_file() else None
            if commit is None and (git / "packed-refs").is_file():
                for line in (git / "packed-refs").read_text(encoding="utf-8").splitlines():
                    if line.endswith(" " + ref):
                        commit = line.split()[0]
        else:
            commit = head
        info["commit_hash"] = commit
        info["version"] = commit[:8] if commit else None
        info["commit_date"] = _commit_time(git, commit) if commit else None
        config = configparser.ConfigParser(strict=False)
        config.read(git / "config", encoding="utf-8")
        if config.has_option('remote "origin"', "url"):
            info["remote"] = config.get('remote "origin"', "url")
    except (OSError, configparser.Error, UnicodeDecodeError) as exc:
        log.warning("could not read the git data of %s: %s", folder, exc)
    return info


def _commit_time(git: Path, commit: str) -> int | None:
    """The committer time (Unix seconds) of a loose commit object; None when it is packed."""
    import zlib

    obj = git / "objects" / commit[:2] / commit[2:]
    if not obj.is_file():
        return None
    try:
        body = zlib.decompress(obj.read_bytes()).decode("utf-8", "replace")
    except zlib.error:
        return None
    for line in body.split("\0", 1)[-1].splitlines():
        if line.startswith("committer "):
            try:
                return int(line.rsplit(" ", 2)[-2])
            except (ValueError, IndexError):
                return None
    return None


def list_extensions(folder: Path, loaded: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The WebUI's ExtensionItem for each folder in extensions/: ``enabled`` for the Kiln
    extensions that ``loaded`` names; false for disabled or failed ones and for WebUI extensions,
    which Kiln cannot run (listed so a tool sees what the shared folder holds). Details:
    GET /kiln/v1/extensions."""
    if not folder.is_dir():
        return []
    items = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if child.is_dir() and not child.name.startswith("."):
            items.append({"name": child.name, **_git_info(child), "enabled": child.name in loaded})
    return items


def system_router(engine: Engine, queue: JobQueue) -> APIRouter:
    from core.api.routes import caller

    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    settings = engine.settings

    @router.get("/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        from core.api.cmd_flags import cmd_flags

        return cmd_flags(settings.flags, settings.paths)

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        return {"ram": ram_info(), "cuda": cuda_info(engine.slots[0].device_id)}

    @router.get("/extensions")
    def extensions() -> list[dict[str, Any]]:
        loaded = {record.name for record in engine.extensions.records if record.enabled}
        return list_extensions(settings.paths.extensions_dir, loaded)

    @router.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        # Kiln has no face restorer (core.generation.face_restore says why): none to list.
        return []

    @router.get("/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        """The WebUI's Real-ESRGAN names whose file is in models/RealESRGAN (Kiln downloads none)."""
        from core.generation.upscaler_names import NAMED_UPSCALERS, REALESRGAN_FOLDER, named_path

        items = []
        for named in NAMED_UPSCALERS:
            path = named_path(settings.paths.data_dir, named)
            if named.folder == REALESRGAN_FOLDER and path.is_file():
                items.append({"name": named.name, "path": str(path), "scale": named.scale})
        return items

    # On the queue, as a short job: it waits for the running generation's step and never pulls
    # the model from under a job (each worker's model is dropped only when that worker is free).
    @router.post("/unload-checkpoint")
    def unload_checkpoint(request: Request) -> dict[str, Any]:
        queue.run(lambda _ctx: engine.unload_all(), description="unload checkpoint", owner=caller(request),
                  kind="load")
        return {}

    @router.post("/reload-checkpoint")
    def reload_checkpoint(request: Request) -> dict[str, Any]:
        queue.run(lambda _ctx: engine.ensure_model(), description="reload checkpoint", owner=caller(request),
                  kind="load")
        return {}

    return router
