"""POST /sdapi/v1/img2img: the WebUI's JSON, inpaint through the API, bad requests naming the field."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from core.api import convert


def b64_png(image: Image.Image) -> str:
    return convert.encode_png_base64(image)


def red_disc(size: int = 64) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (size, size), (0, 0, 0))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    return image


def test_img2img_and_inpaint_answer_as_the_webui(model_api):
    client, _engine = model_api
    request = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
               "init_images": [b64_png(red_disc())], "denoising_strength": 0.5}
    response = client.post("/sdapi/v1/img2img", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["init_images"] is None  # not echoed back unless include_init_images
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in info["infotexts"][0]
    assert info["is_using_inpainting_conditioning"] is False
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpaint = client.post("/sdapi/v1/img2img", json={**request, "mask": b64_png(mask), "mask_blur": 2,
                                                      "inpainting_fill": 1, "inpaint_full_res": False})
    assert inpaint.status_code == 200, inpaint.text
    text = json.loads(inpaint.json()["info"])["infotexts"][0]
    assert "Mask blur: 2" in text and "Masked content" not in text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(inpaint.json()["images"][0]))).convert("RGB"))
    assert np.array_equal(out[:, 40:], np.asarray(red_disc())[:, 40:])  # unmasked half untouched


@pytest.mark.parametrize("change, status, field", [
    ({"init_images": None}, 404, None),
    ({"denoising_strength": 1.5}, 422, "denoising_strength"),
    ({"init_images": ["bm90IGFuIGltYWdl"]}, 422, "init_images"),
    ({"mask": "MASK32"}, 422, "mask"),
    ({"resize_mode": 9}, 422, "resize_mode"),
])
def test_bad_img2img_requests_name_the_field(model_api, change, status, field):
    client, _engine = model_api
    request = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "init_images": [b64_png(red_disc())], **change}
    if request.get("mask") == "MASK32":
        request["mask"] = b64_png(Image.new("L", (32, 32), 255))
    response = client.post("/sdapi/v1/img2img", json=request)
    assert response.status_code == status, response.text
    if field:
        assert response.json()["field"] == field
    else:
        assert "Init image not found" in response.text
