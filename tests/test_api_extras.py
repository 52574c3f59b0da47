"""POST /sdapi/v1/extra-single-image and /extra-batch-images: the WebUI's fields and answers,
plain resamplers and a tiny real ESRGAN file, and 422s naming the bad field."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.jobs import JobQueue


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture()
def api(tmp_path):
    from fastapi.testclient import TestClient

    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.upscalers_model import RRDBNet
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), "--api"]), tmp_path)
    settings.paths.ensure_dirs()
    torch.manual_seed(0)
    save_file(RRDBNet(nf=8, nb=1, gc=4, scale=4).eval().state_dict(),
              settings.paths.esrgan_dir / "tiny-x4.safetensors")
    engine = Engine(settings)
    queue = JobQueue()
    try:
        with TestClient(create_api_app(engine, queue), raise_server_exceptions=False) as client:
            yield client, queue
    finally:
        queue.shutdown()


def test_single_image_scale_by(api):
    client, queue = api
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(Image.new("RGB", (24, 16), (9, 90, 200))),
                                                          "upscaling_resize": 2, "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    body = r.json()
    out = unb64(body["image"])
    assert out.size == (48, 32) and out.getpixel((10, 10)) == (9, 90, 200)
    assert "Postprocess upscale by: 2" in body["html_info"] and body["html_info"].startswith("<p>")
    assert [j.kind for j in queue.jobs()] == ["extras"]  # it ran on the shared queue


def test_single_image_scale_to_with_a_model_and_upscaler_2(api):
    client, _ = api
    payload = {"image": "data:image/png;base64," + b64(Image.new("RGBA", (16, 8), (200, 0, 0, 255))),
               "resize_mode": 1, "upscaling_resize_w": 40, "upscaling_resize_h": 40, "upscaling_crop": True,
               "upscaler_1": "tiny-x4", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5}
    r = client.post("/sdapi/v1/extra-single-image", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert unb64(body["image"]).size == (40, 40)
    for part in ("Postprocess upscaler: tiny-x4", "Postprocess upscaler 2: Nearest", "Postprocess crop to: 40x40"):
        assert part in body["html_info"]


def test_upscaler_none_returns_the_picture_unchanged(api):
    client, _ = api
    im = Image.new("RGB", (10, 6), (1, 2, 3))
    body = client.post("/sdapi/v1/extra-single-image", json={"image": b64(im)}).json()
    assert unb64(body["image"]).size == (10, 6) and body["html_info"] == "<p></p>"


def test_batch_images(api):
    client, _ = api
    payload = {"imageList": [{"data": b64(Image.new("RGB", (8, 8))), "name": "a.png"},
                             {"data": b64(Image.new("RGB", (12, 4)), "JPEG"), "name": "b.jpg"}],
               "upscaling_resize": 3, "upscaler_1": "Lanczos"}
    r = client.post("/sdapi/v1/extra-batch-images", json=payload)
    assert r.status_code == 200, r.text
    assert [unb64(s).size for s in r.json()["images"]] == [(24, 24), (36, 12)]
    hidden = client.post("/sdapi/v1/extra-batch-images", json={**payload, "show_extras_results": False}).json()
    assert hidden["images"] == []


@pytest.mark.parametrize("payload, field", [
    ({"image": "bm90IGFuIGltYWdl", "upscaler_1": "Lanczos"}, "image"),
    ({"image": "", "upscaler_1": "Lanczos"}, "image"),
    ({"upscaler_1": "4x-Nope"}, "upscaler_1"),
    ({"upscaler_2": "4x-Nope", "extras_upscaler_2_visibility": 0.3}, "upscaler_2"),
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"),
    ({"resize_mode": 3, "upscaler_1": "Lanczos"}, "resize_mode"),
    ({"upscaling_resize": 16, "upscaler_1": "Lanczos"}, "upscaling_resize"),  # 4096 × 16 px is too large
])
def test_bad_requests_name_the_field(api, payload, field):
    client, _ = api
    body = {"image": b64(Image.new("RGB", (4096 // 16 * 16, 8)))}
    body.update(payload)
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_batch_needs_images_and_names_the_broken_one(api):
    client, _ = api
    assert client.post("/sdapi/v1/extra-batch-images", json={"imageList": []}).status_code == 422
    r = client.post("/sdapi/v1/extra-batch-images",
                    json={"imageList": [{"data": b64(Image.new("RGB", (8, 8))), "name": "ok.png"},
                                        {"data": "AAAA", "name": "broken.png"}], "upscaler_1": "Lanczos"})
    assert r.status_code == 422 and "broken.png" in r.text
