"""Tagging over HTTP: the WebUI's ``/sdapi/v1/interrogate`` and the wd14-tagger extension's ``/tagger/v1``.

- ``POST /sdapi/v1/interrogate`` {image, model}: the WebUI's names, "clip" (here: the BLIP / GIT
  caption of the first captioner in models/BLIP/, without the WebUI's CLIP flavour ranking) and
  "deepdanbooru" (with the WebUI's defaults: threshold 0.5, alphabetical, spaces, escaped
  brackets); any installed model name works too → {"caption": text}.
- ``GET /tagger/v1/interrogators`` → {"models": [names]} (WD14 and DeepBooru models).
- ``POST /tagger/v1/interrogate`` {image, model, threshold 0.35} → {"caption": {"tag": {t: p},
  "rating": {r: p}}}, the picobyte extension's shape (the maintained fork): raw tag names
  (underscores kept), best first, ratings unfiltered.

Every model run is a "tag" job on the queue, owned by the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from core.api import convert
from core.api.routes import caller
from core.errors import KilnError

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

TAG_KINDS = ("wd14", "deepbooru")
WEBUI_DEEPBOORU = {"general_threshold": 0.5, "sort": "alphabetical", "escape_brackets": True}


class InterrogateRequest(BaseModel):
    image: str = Field(default="", title="Image", description="Image to work on, must be a Base64 string.")
    model: str = Field(default="clip", title="Model", description="The interrogate model used.")


class InterrogateResponse(BaseModel):
    caption: str | None = Field(default=None, title="Caption", description="The generated caption for the image.")


class TaggerInterrogateRequest(InterrogateRequest):
    model: str = Field(title="Model", description="The interrogate model used.")
    threshold: float = Field(default=0.35, ge=0, le=1, title="Threshold")


def tagger_router(engine: Engine, queue: JobQueue) -> APIRouter:
    from core.dataset.taggers import list_models, missing_model_message, resolve_model
    from core.dataset.taggers.common import TagOptions
    from core.dataset.taggers.service import tag_images

    router = APIRouter()
    paths = engine.settings.paths

    def image_of(text: str):
        if not text or not text.strip():
            raise HTTPException(status_code=404, detail="Image not found")
        return convert.decode_base64_image(text, "image")

    @router.post("/sdapi/v1/interrogate", response_model=InterrogateResponse, tags=["sdapi"])
    def interrogate(req: InterrogateRequest, request: Request) -> dict:
        image = image_of(req.image)
        try:
            info = resolve_model(req.model, paths)
        except KilnError as exc:
            raise HTTPException(status_code=404, detail=f"Model not found: {exc.message}") from None
        options = TagOptions(**WEBUI_DEEPBOORU) if info.kind == "deepbooru" else TagOptions()
        (result,) = tag_images(engine, queue, str(info.path), [image.convert("RGB")], options, owner=caller(request))
        return {"caption": result.text}

    @router.get("/tagger/v1/interrogators", tags=["tagger"])
    def interrogators() -> dict:
        return {"models": [m.name for m in list_models(paths) if m.kind in TAG_KINDS]}

    @router.post("/tagger/v1/interrogate", tags=["tagger"])
    def tagger_interrogate(req: TaggerInterrogateRequest, request: Request) -> dict:
        image = image_of(req.image)
        models = {m.name: m for m in list_models(paths) if m.kind in TAG_KINDS}
        info = models.get(req.model)
        if info is None:
            raise HTTPException(status_code=404, detail=f"Model not found: '{req.model}'; installed: "
                                f"{', '.join(models) or 'none — ' + missing_model_message(paths)}")
        # The extension's API returns raw names: no underscore replacement, no escaping, one threshold.
        options = TagOptions(general_threshold=req.threshold, character_threshold=req.threshold,
                             replace_underscore=False, escape_brackets=False, sort="confidence")
        (result,) = tag_images(engine, queue, str(info.path), [image], options, owner=caller(request))
        return {"caption": {"tag": result.scores(), "rating": result.ratings}}

    return router
