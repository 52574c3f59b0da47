"""Kiln's entry point: flags → Settings → Engine + JobQueue → UI + REST API → one web server.

    python app.py [--listen] [--port 7860] [--api] [--nowebui] [--data-dir DIR] ...

The UI (Gradio, mounted at "/") and the WebUI-compatible API (/sdapi/v1/..., docs at /docs,
with --api or --nowebui) share one port, one Engine and one JobQueue, as in the WebUI.
Nothing here imports torch: the page serves first, models load with the first job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Options, Settings

REPO_ROOT = Path(__file__).resolve().parent
log = logging.getLogger("kiln")

# Set before gradio / huggingface_hub are imported: they read these at import time. Kiln never
# downloads models or sends telemetry; every file it uses is local.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "GRADIO_SSR_MODE": "False",
}


def offline_environment(environ: Any = os.environ) -> None:
    for key, value in OFFLINE_ENVIRONMENT.items():
        environ[key] = value


def preview_period(options: Options) -> int:
    """Steps between live previews for the JobQueue (0 = none); read at the start of each job."""
    if not options.live_previews_enable:
        return 0
    return max(int(options.show_progress_every_n_steps), 0)


def create_app(settings: Settings) -> tuple[FastAPI, Engine, JobQueue]:
    """The FastAPI app (UI and/or API per the flags), the Engine and the JobQueue behind it."""
    offline_environment()
    from fastapi import FastAPI

    from core.engine import Engine
    from core.jobs import JobQueue

    flags = settings.flags
    engine = Engine(settings)
    queue = JobQueue(preview_every=lambda: preview_period(settings.options), workers=engine.workers)
    api = flags.api_enabled
    engine.load_extensions(queue)  # before the page and the API: they show what extensions add

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        queue.shutdown()  # stop the worker (interrupting a running job) when the server stops

    app = FastAPI(title="Kiln", docs_url="/docs" if api else None, redoc_url=None,
                  openapi_url="/openapi.json" if api else None, lifespan=lifespan)
    from core.api.auth import BasicAuthMiddleware, page_and_api_logins

    page_logins, api_logins = page_and_api_logins(flags)

    from core.serving import install_web_flags

    install_web_flags(app, flags)  # CORS, --api-log, --theme
    if not flags.nowebui:
        from core.serving import PageScript
        from ui.i18n import chosen_locale, locale_script

        # Settings' "Language of the page": the page opens in it on every load, whatever the browser's.
        app.add_middleware(PageScript, script=lambda: locale_script(chosen_locale()) if chosen_locale() else "")
    if api:
        from core.api.server import install_api

        install_api(app, engine, queue)
    # HTTP Basic on /sdapi/v1/* whenever the API or the page has logins (never open while the page is locked).
    app.add_middleware(BasicAuthMiddleware, logins=api_logins)
    from core.api.limits import BodyLimitMiddleware

    app.add_middleware(BodyLimitMiddleware)  # outermost: too-large bodies never reach a handler
    if not flags.nowebui:
        import gradio as gr

        import ui

        demo = ui.build(engine, queue)
        app = gr.mount_gradio_app(
            app, demo, path="/", auth=page_logins.check if page_logins else None, ssr_mode=False,
            footer_links=["settings"], show_error=True, max_file_size="64mb", root_path=flags.subpath,
            **ui.page_options(),
        )
    return app, engine, queue


def display_url(host: str, port: int, scheme: str = "http") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}"


def main(argv: list[str] | None = None, open_browser: Callable[[str], Any] | None = None) -> int:
    """``open_browser``: what --autolaunch calls with the URL (default: the system's browser)."""
    offline_environment()
    from core.cli import parse_flags
    from core.errors import KilnError
    from core.settings import Settings

    flags = parse_flags(argv)
    logging.basicConfig(level=flags.loglevel or logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from core.api.auth import network_refusal

    refusal = network_refusal(flags)
    if refusal:
        print(f"Kiln will not start: {refusal}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_flags(flags, REPO_ROOT)
        settings.paths.ensure_dirs()
        threading.Thread(target=clean_crashed_saves, args=(settings,), daemon=True).start()
        for warning in settings.warnings:
            log.warning(warning)
        app, engine, queue = create_app(settings)
    except KilnError as exc:
        print(f"Kiln cannot start: {exc.message}", file=sys.stderr)
        return 1
    if not engine.registry.checkpoints():
        log.warning(engine.no_checkpoint_message())
    import uvicorn

    from core.serving import open_browser_when_serving, uvicorn_options

    url = display_url(flags.host, flags.port, "https" if flags.tls else "http")
    # Gradio's and the WebUI's wording: launch scripts and notebooks wait for this line.
    print(f"Running on local URL:  {url}", flush=True)
    if flags.api_enabled:
        print(f"API docs: {url}/docs", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=flags.host, port=flags.port, timeout_graceful_shutdown=5,
                                           **uvicorn_options(flags)))
    if flags.skip_load_model:
        log.info("--ui-debug-mode: no checkpoint is loaded at start; it loads with the first job")
    elif engine.registry.checkpoints():
        threading.Thread(target=preload_when_serving, args=(server, engine, queue), daemon=True).start()
    if flags.autolaunch:
        page = f"{url}/docs" if flags.nowebui else url
        threading.Thread(target=open_browser_when_serving, args=(server, page, open_browser), daemon=True).start()
    server.run()
    return 0


OUTPUT_FOLDER_OPTIONS = ("outdir_txt2img_samples", "outdir_img2img_samples", "outdir_txt2img_grids",
                         "outdir_img2img_grids")


def clean_crashed_saves(settings: Settings) -> list[Path]:
    """Remove the temp files a crash (kill -9, power cut) left in the output folders; in a thread,
    so a large outputs tree never delays the page."""
    from core.generation.saving import remove_stale_output_temps

    folders = [settings.paths.outputs_dir] + [settings.paths.resolve_output(getattr(settings.options, key))
                                              for key in OUTPUT_FOLDER_OPTIONS]
    removed = remove_stale_output_temps(folders)
    if removed:
        log.info("removed %d temp files left by interrupted saves", len(removed))
    return removed


def preload_when_serving(server, engine: Engine, queue: JobQueue) -> None:
    """Once the page answers, load the default checkpoint on the worker (as the WebUI does at
    start), so the first Generate doesn't wait for it. After serving: start-up stays fast."""
    import time

    while not server.started and not server.should_exit:
        time.sleep(0.1)
    if server.started:
        # A default that fails to load falls back to the next loadable checkpoint (built-in first).
        queue.submit(lambda _ctx: engine.ensure_model(), description="load checkpoint", owner="startup", kind="load")


if __name__ == "__main__":
    sys.exit(main())
