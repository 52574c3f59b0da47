"""The extra-network API routes (WebUI shapes) on a FastAPI app holding only that router."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.api.networks import networks_router
from core.cli import parse_flags
from core.engine import Engine
from core.jobs import JobQueue
from core.settings import Settings

TI_NAMES = {"kiln_token", "kiln_token_st", "kiln_concept", "kiln_png", "kiln_pixels"}


def make_engine(data: Path, ckpt: str) -> Engine:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", ckpt]), data)
    settings.paths.builtin_checkpoint_dir = data / "models" / "Stable-diffusion"
    return Engine(settings)


@pytest.fixture()
def data(fixture_models_dir, tmp_path) -> Path:
    root = tmp_path / "data"
    for sub in ("models/Stable-diffusion", "models/Lora", "models/hypernetworks", "embeddings"):
        shutil.copytree(fixture_models_dir / sub, root / sub)
    return root


def client_for(engine: Engine, queue: JobQueue | None = None) -> TestClient:
    app = FastAPI()
    app.include_router(networks_router(engine, queue))
    return TestClient(app, raise_server_exceptions=False)


def test_loras_list_with_decoded_metadata(data):
    client = client_for(make_engine(data, "tiny-sd1.safetensors"))
    response = client.get("/sdapi/v1/loras")
    assert response.status_code == 200
    items = {item["name"]: item for item in response.json()}
    assert set(items) >= {"kiln_style_v1", "kiln_loha", "kiln_peft"}
    style = items["kiln_style_v1"]
    assert set(style) == {"name", "alias", "path", "metadata"}
    assert style["alias"] == "kiln_style" and style["path"].endswith("kiln_style_v1.safetensors")
    # JSON-valued keys come back as objects, like the WebUI's read_metadata_from_safetensors.
    assert style["metadata"]["ss_tag_frequency"]["10_sls 1girl"]["1girl"] == 4
    assert style["metadata"]["ss_network_dim"] == "4"
    assert items["kiln_loha"] == {"name": "kiln_loha", "alias": "kiln_loha", "path": items["kiln_loha"]["path"],
                                  "metadata": {}}
    # A broken file is listed with empty metadata; it does not fail the route.
    (data / "models" / "Lora" / "broken.safetensors").write_bytes(b"\xff" * 16)
    assert "broken" not in {i["name"] for i in client.get("/sdapi/v1/loras").json()}
    refreshed = client.post("/sdapi/v1/refresh-loras")
    assert refreshed.status_code == 200 and refreshed.json() is None
    broken = [i for i in client.get("/sdapi/v1/loras").json() if i["name"] == "broken"]
    assert broken == [{"name": "broken", "alias": "broken", "path": broken[0]["path"], "metadata": {}}]


def test_hypernetworks(data):
    client = client_for(make_engine(data, "tiny-sd1.safetensors"))
    [item] = client.get("/sdapi/v1/hypernetworks").json()
    assert item["name"] == "kiln_hypernet" and item["path"].endswith("kiln_hypernet.pt")


def test_embeddings_without_a_loaded_model_use_the_checkpoint_header(data):
    engine = make_engine(data, "tiny-sd1.safetensors")
    assert engine.model is None
    client = client_for(engine)
    body = client.get("/sdapi/v1/embeddings").json()
    assert set(body) == {"loaded", "skipped"}
    assert set(body["loaded"]) == TI_NAMES and body["skipped"] == {}
    assert body["loaded"]["kiln_token"] == {"step": 100, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "kiln-tiny",
                                            "shape": 32, "vectors": 2}
    xl = client_for(make_engine(data, "tiny-sdxl.safetensors")).get("/sdapi/v1/embeddings").json()
    assert xl["loaded"] == {} and set(xl["skipped"]) == TI_NAMES
    assert xl["skipped"]["kiln_token"]["shape"] == 32
    # A new file appears after refresh-embeddings.
    shutil.copy(data / "embeddings" / "kiln_token.pt", data / "embeddings" / "kiln_token2.pt")
    response = client.post("/sdapi/v1/refresh-embeddings")
    assert response.status_code == 200 and response.json() is None
    assert "kiln_token2" in client.get("/sdapi/v1/embeddings").json()["loaded"]


def test_embeddings_with_a_loaded_model_come_from_its_database(data):
    engine = make_engine(data, "tiny-sd1.safetensors")
    queue = JobQueue()
    try:
        queue.submit(lambda _ctx: engine.ensure_model(), description="load").wait()
        assert engine.extras is not None
        client = client_for(engine, queue)
        body = client.get("/sdapi/v1/embeddings").json()
        assert set(body["loaded"]) == set(engine.extras.embeddings.loaded) == TI_NAMES
        shutil.copy(data / "embeddings" / "kiln_token.pt", data / "embeddings" / "kiln_token3.pt")
        assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200  # runs on the queue
        assert "kiln_token3" in engine.extras.embeddings.loaded
        assert "kiln_token3" in client.get("/sdapi/v1/embeddings").json()["loaded"]
    finally:
        queue.shutdown()
