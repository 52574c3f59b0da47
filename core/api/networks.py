"""Extra-network routes of the WebUI API: LoRAs, embeddings, hypernetworks, and their refreshes.

Shapes follow A1111 v1.10.1: ``/sdapi/v1/loras`` from ``extensions-builtin/Lora/scripts/
lora_script.py`` (``create_lora_json``), ``/embeddings`` and ``/hypernetworks`` from
``modules/api/api.py``. The refresh routes answer ``null`` as the WebUI's do.

Embeddings: with a model loaded, its database says what is loaded or skipped (the WebUI's only
mode). Before any model is loaded, the folder's files are checked against the selected
checkpoint's text-encoder widths read from its safetensors header, so clients get the same
answer without a multi-gigabyte load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from core.networks.catalog import NetworkCatalog
from core.networks.lora import output_name_alias

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.networks.embeddings import Embedding


def embedding_json(embedding: Embedding | None) -> dict[str, Any]:
    """One entry of ``loaded`` / ``skipped`` (A1111 ``convert_embedding``)."""
    if embedding is None:
        return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
    return {"step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
            "sd_checkpoint_name": embedding.sd_checkpoint_name, "shape": embedding.shape,
            "vectors": embedding.vectors}


def networks_router(engine: Engine, queue: JobQueue | None = None,
                    catalog: NetworkCatalog | None = None) -> APIRouter:
    """The routes on ``/sdapi/v1``. With ``queue``, the embedding refresh runs as a job so it never
    reloads the database under a running generation (the WebUI holds its queue lock)."""
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    cat = catalog if catalog is not None else NetworkCatalog(engine)

    @router.get("/loras")
    def loras() -> list[dict[str, Any]]:
        items = []
        for entry in engine.registry.loras():
            metadata = cat.lora_metadata(entry.path)
            items.append({"name": entry.name, "alias": output_name_alias(metadata, entry.name),
                          "path": str(entry.path), "metadata": metadata})
        return items

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        cat.refresh()

    @router.get("/embeddings")
    def embeddings() -> dict[str, dict[str, Any]]:
        state = cat.embedding_state()
        return {"loaded": {name: embedding_json(emb) for name, emb in state.loaded.items()},
                "skipped": {name: embedding_json(emb) for name, (emb, _reason) in state.skipped.items()}}

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        if queue is None:
            cat.refresh_embeddings()
            return
        queue.submit(lambda _ctx: cat.refresh_embeddings(), description="refresh embeddings", owner="api").wait()

    @router.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, str]]:
        return [{"name": e.name, "path": str(e.path)} for e in engine.registry.hypernetworks()]

    return router
