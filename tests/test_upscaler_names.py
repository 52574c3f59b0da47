"""The WebUI's upscaler names ("R-ESRGAN 4x+", "R-ESRGAN General 4xV3", "SwinIR 4x"...) resolve to
files in the WebUI's folders; an absent one is explained (which file, which folder)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from core.errors import InvalidParameterError
from core.generation.upscalers_model import (
    ModelUpscalers,
    RRDBNet,
    SRVGGNetCompact,
    build_kiln_upscaler,
    spandrel_available,
)


def _srvgg() -> SRVGGNetCompact:
    torch.manual_seed(1)
    net = SRVGGNetCompact(nf=8, num_conv=2, scale=4).eval()
    for p in net.parameters():  # random, but small enough that the output is not all clipped
        p.data.mul_(0.1)
    return net


def _rrdb(scale: int = 4) -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(nf=8, nb=2, gc=4, scale=scale).eval()


def _save_release(net: torch.nn.Module, path, wrapper: str) -> None:
    """As Real-ESRGAN's release .pth files: the weights under ``params`` / ``params_ema``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrapper: net.state_dict()}, path)


def test_srvgg_is_read_by_kiln_with_its_size_from_the_weights():
    net = _srvgg()
    loaded = build_kiln_upscaler({f"params.{k}": v.clone() for k, v in net.state_dict().items()})
    assert isinstance(loaded, SRVGGNetCompact) and loaded.scale == 4 and len(loaded.body) == 2 * 2 + 3
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x)) and loaded(x).shape[-2:] == (32, 32)


def test_webui_names_resolve_to_files_in_the_webui_folders_and_upscale(tmp_path):
    srvgg = _srvgg()
    _save_release(srvgg, tmp_path / "models" / "RealESRGAN" / "realesr-general-x4v3.pth", "params")
    _save_release(_rrdb(), tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth", "params_ema")
    _save_release(_rrdb(2), tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x2plus.pth", "params_ema")
    ups = ModelUpscalers(tmp_path / "models" / "ESRGAN", data_dir=tmp_path)
    entries = {e.name: e for e in ups.entries()}
    assert set(entries) == {"R-ESRGAN General 4xV3", "R-ESRGAN 4x+", "R-ESRGAN 2x+"}
    assert (entries["R-ESRGAN 2x+"].model_name, entries["R-ESRGAN 2x+"].scale) == ("RealESRGAN", 2)
    image = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype("uint8"))
    out = ups.upscale(image, "R-ESRGAN General 4xV3", 32, 32)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = (srvgg(x)[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert out.size == (32, 32) and np.abs(np.asarray(out).astype(int) - expected.astype(int)).max() <= 1
    assert ups.upscale(image, "R-ESRGAN 4x+", 32, 32).size == (32, 32)
    assert ups.upscale(image, "R-ESRGAN 2x+", 16, 16).size == (16, 16)


def test_an_absent_webui_name_says_which_file_to_put_where(tmp_path):
    ups = ModelUpscalers(tmp_path / "models" / "ESRGAN", data_dir=tmp_path)
    reason = ups.missing_reason("R-ESRGAN 4x+")
    assert "RealESRGAN_x4plus.pth" in reason and str(tmp_path / "models" / "RealESRGAN") in reason
    assert "DAT_x3.pth" in ups.missing_reason("DAT x3") and "SwinIR_4x.pth" in ups.missing_reason("SwinIR 4x")
    assert "ESRGAN_4x.pth" in ups.missing_reason("ESRGAN_4x")
    assert "latent diffusion" in ups.missing_reason("LDSR")
    assert ups.missing_reason("my-own-upscaler") is None
    with pytest.raises(Exception, match="RealESRGAN_x4plus.pth"):
        ups.upscale(Image.new("RGB", (8, 8)), "R-ESRGAN 4x+", 32, 32)


@pytest.mark.skipif(spandrel_available(), reason="spandrel is installed here: SwinIR loads through it")
def test_a_present_swinir_file_without_spandrel_is_not_listed_and_explained(tmp_path):
    path = tmp_path / "models" / "SwinIR" / "SwinIR_4x.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"never opened")
    ups = ModelUpscalers(tmp_path / "models" / "ESRGAN", data_dir=tmp_path)
    assert "SwinIR 4x" not in ups.names()
    assert "spandrel" in ups.missing_reason("SwinIR 4x") and "torchvision" in ups.missing_reason("SwinIR 4x")


@pytest.fixture()
def api(tmp_path):
    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), "--api"]), tmp_path)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    queue = JobQueue()
    try:
        with TestClient(create_api_app(engine, queue), raise_server_exceptions=False) as client:
            yield client, engine, tmp_path
    finally:
        queue.shutdown()


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_api_lists_webui_names_and_explains_an_absent_one(api):
    client, engine, data = api
    body = {"image": _b64(Image.new("RGB", (8, 8), "red")), "upscaler_1": "R-ESRGAN 2x+", "upscaling_resize": 2}
    refused = client.post("/sdapi/v1/extra-single-image", json=body)
    assert refused.status_code == 422 and refused.json()["field"] == "upscaler_1"
    assert "RealESRGAN_x2plus.pth" in refused.json()["detail"] and "RealESRGAN" in refused.json()["detail"]
    with pytest.raises(InvalidParameterError, match="RealESRGAN_x4plus.pth"):
        engine.upscale_image(Image.new("RGB", (8, 8)), "R-ESRGAN 4x+", 32, 32)  # hires fix, pasted infotext

    _save_release(_rrdb(2), data / "models" / "RealESRGAN" / "RealESRGAN_x2plus.pth", "params_ema")
    listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
    assert listed["R-ESRGAN 2x+"]["model_name"] == "RealESRGAN" and listed["R-ESRGAN 2x+"]["scale"] == 2.0
    done = client.post("/sdapi/v1/extra-single-image", json=body)
    assert done.status_code == 200, done.text
    assert Image.open(io.BytesIO(base64.b64decode(done.json()["image"]))).size == (16, 16)


def test_face_restoration_is_refused_with_the_reason_and_the_alternative(api):
    client, _engine, _data = api
    faces = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "restore_faces": True})
    assert faces.status_code == 422 and faces.json()["field"] == "restore_faces"
    assert "GFPGAN" in faces.json()["detail"]
    extras = client.post("/sdapi/v1/extra-single-image", json={"image": _b64(Image.new("RGB", (8, 8))),
                                                               "codeformer_visibility": 1})
    assert extras.status_code == 422 and "inpaint" in extras.json()["detail"] + str(extras.json())


def test_a_pasted_infotext_naming_an_absent_hires_upscaler_is_refused_before_any_step(api):
    client, _engine, _data = api  # no checkpoint either: the upscaler is checked first, by name
    infotext = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.5, " \
               "Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+"
    response = client.post("/sdapi/v1/txt2img", json={"infotext": infotext})
    assert response.status_code == 422 and response.json()["field"] == "hr_upscaler", response.text
    assert "RealESRGAN_x4plus.pth" in response.json()["detail"]
    plain = client.post("/sdapi/v1/txt2img", json={"infotext": infotext.replace("R-ESRGAN 4x+", "Lanczos")})
    assert plain.status_code == 500 and "checkpoint" in plain.json()["detail"].lower()  # past the check
