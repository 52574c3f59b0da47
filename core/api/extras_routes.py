"""The WebUI's Extras API: ``POST /sdapi/v1/extra-single-image`` and ``/extra-batch-images``.

Request and response fields as A1111's ``modules/api/models.py`` (ExtrasSingleImageRequest,
ExtrasBatchImagesRequest and their responses): resize_mode 0 = scale by ``upscaling_resize``,
1 = scale to ``upscaling_resize_w``×``upscaling_resize_h`` (``upscaling_crop``), upscaler_1 /
upscaler_2 with ``extras_upscaler_2_visibility``; images are base64. The work is an "extras"
job on the shared queue (model upscalers run on the worker's device), through the same
core.dataset.upscale code as the Extras tab. Face restoration (GFPGAN / CodeFormer) is not
part of Kiln: a visibility above 0 is refused by name rather than silently ignored.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core.errors import InvalidParameterError

if TYPE_CHECKING:
    from PIL import Image

    from core.engine import Engine
    from core.jobs import JobQueue

MAX_BATCH_IMAGES = 64  # one request's pictures, each also held to the API's pixel limit


class ExtrasBaseRequest(BaseModel):
    resize_mode: int = Field(0, description="0 = scale by upscaling_resize, 1 = scale to upscaling_resize_w/h")
    show_extras_results: bool = Field(True, description="return the images")
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, le=16)
    upscaling_resize_w: int = Field(512, ge=1, le=8192)
    upscaling_resize_h: int = Field(512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image")


class FileData(BaseModel):
    data: str = Field(..., description="base64 image")
    name: str = Field("", description="file name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(..., description="base64 images")  # noqa: N815 - the WebUI's name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


def upscale_settings(req: ExtrasBaseRequest, known: list[str],
                     missing_reason: Callable[[str], str | None] | None = None):
    """The request as core.dataset.upscale.ExtrasUpscale; 422 naming the field when wrong (for a
    WebUI upscaler name whose file is absent, ``missing_reason`` says which file to put where)."""
    from core.dataset.upscale import ExtrasUpscale
    from core.generation.face_restore import FACE_RESTORE_HINT, FACE_RESTORE_REASON

    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, field) > 0:
            raise InvalidParameterError(field, FACE_RESTORE_REASON, hint=f"send 0; {FACE_RESTORE_HINT}")
    for field in ("upscaler_1", "upscaler_2"):
        name = getattr(req, field)
        if name not in known:
            missing = missing_reason(name) if missing_reason is not None else None
            raise InvalidParameterError(field, missing or f"unknown upscaler {name!r}",
                                        hint=f"one of: {', '.join(known)} (GET /sdapi/v1/upscalers)")
    return ExtrasUpscale(resize_mode=req.resize_mode, upscaling_resize=req.upscaling_resize,
                         upscaling_resize_w=req.upscaling_resize_w, upscaling_resize_h=req.upscaling_resize_h,
                         upscaling_crop=req.upscaling_crop, upscaler_1=req.upscaler_1, upscaler_2=req.upscaler_2,
                         extras_upscaler_2_visibility=req.extras_upscaler_2_visibility)


def info_html(info: dict[str, str]) -> str:
    """The WebUI's ``plaintext_to_html`` of the "Postprocess ..." line."""
    text = ", ".join(f"{key}: {value}" for key, value in info.items())
    return f"<p>{html.escape(text)}</p>"


def extras_router(engine: Engine, queue: JobQueue) -> APIRouter:
    from core.api.convert import decode_base64_image, encode_png_base64
    from core.api.routes import PLAIN_UPSCALERS, caller

    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    def known() -> list[str]:
        return [*PLAIN_UPSCALERS, *engine.upscalers.names()]

    def run(images: list[Image.Image], settings: Any, request: Request, label: str):
        from core.dataset.images import to_rgb
        from core.dataset.upscale import extras_upscale

        def job(ctx) -> list[tuple[Image.Image, dict[str, str]]]:
            ctx.set_total(len(images), job_count=len(images))
            out = []
            for image in images:
                ctx.check()
                out.append(extras_upscale(to_rgb(image), settings, engine.upscale_image))
                ctx.advance()
                ctx.image_done()
            return out

        return queue.run(job, description=label, owner=caller(request), kind="extras")

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(req: ExtrasSingleImageRequest, request: Request) -> dict[str, Any]:
        settings = upscale_settings(req, known(), engine.upscalers.missing_reason)
        if not req.image:
            raise InvalidParameterError("image", "no image given", hint="send the picture as base64")
        image = decode_base64_image(req.image, "image")
        [(result, info)] = run([image], settings, request, "extras: single image")
        return {"html_info": info_html(info), "image": encode_png_base64(result) if req.show_extras_results else None}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(req: ExtrasBatchImagesRequest, request: Request) -> dict[str, Any]:
        settings = upscale_settings(req, known(), engine.upscalers.missing_reason)
        if not req.imageList:
            raise InvalidParameterError("imageList", "no images given")
        if len(req.imageList) > MAX_BATCH_IMAGES:
            raise InvalidParameterError("imageList", f"{len(req.imageList)} images; at most {MAX_BATCH_IMAGES} "
                                        "per request", hint="send them in several requests")
        images = []
        for i, item in enumerate(req.imageList):
            images.append(decode_base64_image(item.data, f"imageList[{i}]" + (f" ({item.name})" if item.name else "")))
        results = run(images, settings, request, f"extras: {len(images)} images")
        info = results[0][1] if results else {}
        return {"html_info": info_html(info),
                "images": [encode_png_base64(r) for r, _ in results] if req.show_extras_results else []}

    return router
