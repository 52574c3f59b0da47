"""The tagging API: the WebUI's /sdapi/v1/interrogate and the wd14-tagger extension's /tagger/v1."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _client(data):
    from fastapi.testclient import TestClient

    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--api", "--use-cpu", "all"]), data)
    settings.paths.ensure_dirs()
    queue = JobQueue()
    return TestClient(create_api_app(Engine(settings), queue), raise_server_exceptions=False), queue


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from core.dataset.taggers.fixtures import write_tiny_blip, write_tiny_deepbooru, write_tiny_wd14

    data = tmp_path_factory.mktemp("api_tagger")
    write_tiny_wd14(data / "models" / "tagger" / "wd-tiny")
    write_tiny_deepbooru(data / "models" / "torch_deepdanbooru")
    write_tiny_blip(data / "models" / "BLIP" / "tiny-blip")
    client, queue = _client(data)
    try:
        with client:
            yield client, queue
    finally:
        queue.shutdown()


def test_interrogators_lists_tag_models(api):
    client, _ = api
    assert client.get("/tagger/v1/interrogators").json() == {"models": ["wd-tiny", "model-resnet_custom_v3"]}


def test_tagger_interrogate_shape_and_threshold(api):
    client, queue = api
    red = _b64(Image.new("RGB", (40, 40), (255, 0, 0)))
    body = client.post("/tagger/v1/interrogate", json={"image": red, "model": "wd-tiny"}).json()
    tags, ratings = body["caption"]["tag"], body["caption"]["rating"]
    assert list(tags)[0] == "red_theme"  # raw names, best first
    assert set(tags) == {"red_theme", "^_^", "fate_(series)"}  # ≥ 0.35 (0.55, 0.45), underscores kept
    assert set(ratings) == {"general", "sensitive", "questionable", "explicit"}
    assert ratings["general"] == pytest.approx(0.7311, abs=1e-3)
    high = client.post("/tagger/v1/interrogate", json={"image": red, "model": "wd-tiny", "threshold": 0.5}).json()
    assert set(high["caption"]["tag"]) == {"red_theme", "^_^"}
    assert any(j.kind == "tag" for j in queue.jobs(owner="api"))  # ran on the queue


def test_tagger_interrogate_errors(api):
    client, _ = api
    red = _b64(Image.new("RGB", (8, 8), "red"))
    missing = client.post("/tagger/v1/interrogate", json={"image": red, "model": "wd14-vit.v2"})
    assert missing.status_code == 404 and "Model not found" in missing.json()["detail"]
    assert "wd-tiny" in missing.json()["detail"]
    assert client.post("/tagger/v1/interrogate", json={"image": "", "model": "wd-tiny"}).status_code == 404
    bad = client.post("/tagger/v1/interrogate", json={"image": "bm90IGFuIGltYWdl", "model": "wd-tiny"})
    assert bad.status_code == 422 and "image" in bad.text
    assert client.post("/tagger/v1/interrogate", json={"image": red, "model": "wd-tiny",
                                                        "threshold": 2}).status_code == 422


def test_webui_interrogate_deepdanbooru_and_clip(api):
    client, _ = api
    grey = _b64(Image.new("RGB", (64, 48), (128, 128, 128)))
    dd = client.post("/sdapi/v1/interrogate", json={"image": grey, "model": "deepdanbooru"})
    assert dd.status_code == 200
    assert dd.json() == {"caption": r"1girl, fate \(series\), long hair, solo"}  # WebUI defaults
    clip = client.post("/sdapi/v1/interrogate", json={"image": grey}).json()  # model defaults to "clip"
    assert isinstance(clip["caption"], str) and clip["caption"]
    wd = client.post("/sdapi/v1/interrogate", json={"image": grey, "model": "wd-tiny"}).json()
    assert wd["caption"].startswith("^_^")


def test_webui_interrogate_without_models_says_where_to_put_them(tmp_path):
    client, queue = _client(tmp_path)
    try:
        with client:
            r = client.post("/sdapi/v1/interrogate", json={"image": _b64(Image.new("RGB", (8, 8))),
                                                            "model": "deepdanbooru"})
            assert r.status_code == 404
            assert "model-resnet_custom_v3.pt" in r.json()["detail"]
            assert str(tmp_path / "models" / "torch_deepdanbooru") in r.json()["detail"]
            assert client.get("/tagger/v1/interrogators").json() == {"models": []}
    finally:
        queue.shutdown()
