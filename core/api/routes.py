"""The WebUI-compatible routes (/sdapi/v1/...), on the same JobQueue as the UI.

Generation handlers are ``async``: they hand the CPU work (decoding pictures, validating, encoding
PNGs) to the thread pool and wait for their job on the event loop, so a hundred waiting clients
hold no threads and /progress, /interrupt and the page keep answering at once. A client that goes
away gets its job cancelled. Other handlers are plain ``def`` (the thread pool).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from core.api import convert
from core.api.models import (
    ImageToImageResponse,
    Img2ImgRequest,
    LatentUpscalerModeItem,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    TextToImageResponse,
    Txt2ImgRequest,
    UpscalerItem,
)
from core.errors import InvalidParameterError, JobInterrupted
from core.paths import check_name
from core.settings import OPTION_DEFAULTS

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import Job, JobQueue

log = logging.getLogger(__name__)
DISCONNECT_POLL_SECONDS = 0.5

# Who API jobs belong to without logins: every API client shares this owner, and none of them
# sees or stops a browser's jobs (nor a browser theirs).
API_OWNER = "api"


def caller(request: Request) -> str:
    """Who an API request's jobs belong to: its login (HTTP Basic, checked by core.api.auth) —
    the same owner as that person's browser — else the one shared API owner."""
    user = getattr(request.state, "user", None)
    return f"user:{user}" if user else API_OWNER
# The WebUI's built-in upscalers that need no model file (shared.sd_upscalers; scale 4 is its default).
PLAIN_UPSCALERS = ("None", "Lanczos", "Nearest")


def _parse_infotext(text: str) -> dict[str, Any]:
    from core.generation.infotext import parse_generation_parameters

    return parse_generation_parameters(text)


def model_name_of(name: str) -> str:
    """The WebUI's ``CheckpointInfo.model_name``: the relative name, folders joined by "_", no extension."""
    return os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]


def build_router(engine: Engine, queue: JobQueue) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    settings = engine.settings

    def parse_pasted(text: str) -> dict[str, Any]:
        """A client's infotext, with the styles of styles.csv found in it (the WebUI's infotext_styles)."""
        from core.generation.infotext import parse_generation_parameters

        return parse_generation_parameters(text, styles=engine.styles, infotext_styles=settings.options.infotext_styles)

    async def run_generation(request: Request, mode: str, values: dict[str, Any], params: Any,
                             parameters: dict[str, Any], script: Any = None) -> dict[str, Any]:
        """Queue one generation job with the options of this moment (override_settings on top) and
        answer as the WebUI does; an Interrupt returns what was made up to then."""
        overrides = convert.overrides_from_request(values)
        options = await run_in_threadpool(engine.run_options, overrides)
        run = engine.txt2img if mode == "txt2img" else engine.img2img
        fn = lambda ctx: run(params, ctx, options)  # noqa: E731
        if script is not None:  # the X/Y/Z plot: checked now (422 before anything runs), one job
            from core.api.xyz_routes import xyz_job

            fn = await run_in_threadpool(xyz_job, engine, mode, script, params, options)
        job = queue.submit(fn, description=mode if script is None else f"{mode} X/Y/Z plot",
                           owner=caller(request), kind="generate", options=options)
        await wait_for_job(request, job)
        try:
            result = job.wait(0)
        except JobInterrupted:
            # Interrupted while still queued: nothing was made, which is not an error.
            return {"images": [], "parameters": parameters, "info": convert.info_json({"interrupted": True})}
        if overrides and values.get("override_settings_restore_afterwards") is False:
            keep_overrides(overrides)

        def answer() -> dict[str, Any]:
            images = []
            if values.get("send_images", True):
                images = [convert.encode_image_base64(g.image, g.infotext, options) for g in result.images]
            info = {**convert.result_info(result, job.progress.started_at, _parse_infotext), "job_id": job.id}
            return {"images": images, "parameters": parameters, "info": convert.info_json(info)}

        return await run_in_threadpool(answer)

    async def wait_for_job(request: Request, job: Job) -> None:
        """Wait on the event loop (no thread held); cancel the job if the client disconnects."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        job.add_done_callback(lambda _job: loop.call_soon_threadsafe(done.set))
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), timeout=DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    log.info("client of %s went away; cancelling it", job.id)
                    queue.interrupt(job.id)

    def keep_overrides(overrides: dict[str, Any]) -> None:
        """``override_settings_restore_afterwards: false``: the job's overrides become the settings."""
        changes = {k: v for k, v in overrides.items() if k in OPTION_DEFAULTS and k != "sd_model_checkpoint"}
        if changes:
            settings.update(**changes)
            settings.save()
        if overrides.get("sd_model_checkpoint"):
            engine.select_checkpoint(str(overrides["sd_model_checkpoint"]))

    @router.post("/txt2img", response_model=TextToImageResponse)
    async def txt2img(req: Txt2ImgRequest, request: Request) -> dict[str, Any]:
        from core.api.xyz_routes import take_script
        from core.generation.params import validate

        def prepare() -> tuple[dict[str, Any], Any, Any]:
            values = convert.request_fields(req, parse_pasted)
            script = take_script(values)
            engine.styles.check("styles", values.get("styles") or [])
            params = validate(convert.params_from_request(values, scripts=engine.extensions))
            check_hr_upscaler(params)
            return values, params, script

        values, params, script = await run_in_threadpool(prepare)
        return await run_generation(request, "txt2img", values, params, req.model_dump(), script)

    def check_hr_upscaler(params: Any) -> None:
        """A hires upscaler that is not here is a 422 before the first pass runs, not after it; a
        WebUI name whose file is absent (a pasted infotext's) says which file to put where."""
        from core.generation.upscale import IMAGE_RESAMPLERS, is_latent_upscaler

        name = params.hires.upscaler
        if not params.hires.enabled or is_latent_upscaler(name) or name in IMAGE_RESAMPLERS:
            return
        if name not in engine.upscalers.names():
            raise InvalidParameterError("hr_upscaler", engine.upscalers.missing_reason(name)
                                        or f"unknown upscaler {name!r}", hint="see GET /sdapi/v1/upscalers for the names")

    @router.post("/img2img", response_model=ImageToImageResponse)
    async def img2img(req: Img2ImgRequest, request: Request) -> dict[str, Any]:
        from core.generation.img2img import validate_img2img

        if req.init_images is None:
            raise HTTPException(status_code=404, detail="Init image not found")

        from core.api.xyz_routes import take_script

        def prepare() -> tuple[dict[str, Any], Any, Any]:
            values = convert.request_fields(req, parse_pasted)
            script = take_script(values)
            engine.styles.check("styles", values.get("styles") or [])
            params = convert.img2img_params_from_request(values, scripts=engine.extensions)
            return values, validate_img2img(params), script

        values, params, script = await run_in_threadpool(prepare)
        parameters = req.model_dump()
        if not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        return await run_generation(request, "img2img", values, params, parameters, script)

    # On the event loop, never behind the thread pool: these answer at once whatever the queue holds.
    @router.get("/progress", response_model=ProgressResponse)
    async def progress(request: Request, skip_current_image: bool = Query(False)) -> dict[str, Any]:
        # The caller's job (the WebUI's /progress semantics, for the caller alone).
        snap = queue.progress(owner=caller(request))
        return convert.progress_body(snap, convert.encode_png_base64, skip_current_image)

    @router.post("/interrupt")
    async def interrupt(request: Request) -> dict[str, Any]:
        queue.interrupt(owner=caller(request))
        return {}

    @router.post("/skip")
    async def skip(request: Request) -> dict[str, Any]:
        queue.skip(owner=caller(request))
        return {}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        options = settings.options.to_json()
        if not options.get("sd_model_checkpoint"):
            # Like the WebUI, name the checkpoint in use even when the user never picked one.
            entry = engine.selected_checkpoint()
            options["sd_model_checkpoint"] = engine.registry.title_with_hash(entry) if entry else None
        return options

    @router.post("/options")
    def set_options(request: Request, body: dict[str, Any] = Body(...)) -> None:
        """All or nothing: every key is checked first (unknown keys, types, ranges, folders that
        would leave the data folder, frozen settings: 422 naming the key), then stored at once."""
        changes = dict(body)
        checkpoint = changes.pop("sd_model_checkpoint", None)
        if checkpoint is not None:
            check_name("sd_model_checkpoint", str(checkpoint))
            if engine.registry.find_checkpoint(str(checkpoint)) is None:
                engine.refresh_models()
                if engine.registry.find_checkpoint(str(checkpoint)) is None:
                    raise InvalidParameterError("sd_model_checkpoint", f"model {checkpoint!r} not found",
                                                hint=f"see GET /sdapi/v1/sd-models or put it into {settings.paths.ckpt_dir}")
        vae = changes.get("sd_vae")
        if vae not in (None, "", "Automatic", "None"):
            check_name("sd_vae", str(vae))
            if engine.registry.find("vae", str(vae)) is None:
                raise InvalidParameterError("sd_vae", f"VAE {vae!r} not found",
                                            hint=f"see GET /sdapi/v1/sd-vae or put it into {settings.paths.vae_dir}")
        settings.check_user_changes(changes)
        if checkpoint is not None:
            # Through the queue: a running generation finishes on the model it started with. A file
            # that fails to load leaves the previous model loaded and selected (500 with the reason).
            queue.run(lambda _ctx: engine.switch_checkpoint(str(checkpoint)), description="load checkpoint",
                      owner=caller(request), kind="load")
        settings.apply_user_changes(changes)
        return None

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        from core.sampling.samplers import SAMPLERS

        return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[dict[str, Any]]:
        from core.sampling.schedulers import SCHEDULERS

        return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) if s.aliases else None,
                 "default_rho": s.default_rho, "need_inner_model": s.need_inner_model} for s in SCHEDULERS]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        items = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
                 for n in PLAIN_UPSCALERS]
        # Model files are listed, not loaded, so their scale is unknown until first use.
        items += [{"name": e.name, "model_name": e.model_name, "model_path": str(e.path), "model_url": None,
                   "scale": float(e.scale) if e.scale else None} for e in engine.upscalers.entries()]
        return items

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    def latent_upscale_modes() -> list[dict[str, str]]:
        from core.generation.upscale import LATENT_UPSCALE_MODES

        return [{"name": m.name} for m in LATENT_UPSCALE_MODES]

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[dict[str, Any]]:
        # Titles carry the hash once it is known (cache.json), as in the WebUI: listing never
        # hashes gigabytes; find_checkpoint accepts the title with or without it.
        return [{"title": e.title, "model_name": model_name_of(e.name), "hash": e.shorthash, "sha256": e.sha256,
                 "filename": str(e.path), "config": None} for e in engine.registry.checkpoints()]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> dict[str, Any]:
        engine.refresh_models()
        return {}

    @router.post("/refresh-vae")
    def refresh_vae() -> dict[str, Any]:
        engine.refresh_models()
        return {}

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def sd_vae() -> list[dict[str, str]]:
        return [{"model_name": e.name, "filename": str(e.path)} for e in engine.registry.vaes()]

    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(req: PNGInfoRequest) -> dict[str, Any]:
        from core.generation.infotext import read_png_infotext

        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        image = convert.decode_base64_image(req.image)
        info = read_png_infotext(image) or ""
        items = {k: v for k, v in (image.info or {}).items()
                 if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
        return {"info": info, "items": items, "parameters": parse_pasted(info) if info else {}}

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> list[dict[str, Any]]:
        return engine.styles.as_api()

    return router
