"""ESRGAN / Real-ESRGAN files load through Kiln's own RRDBNet reader, both key layouts."""

import torch
from PIL import Image
from safetensors.torch import save_file

from core.generation.upscalers_model import ModelUpscalers, RRDBNet, build_rrdbnet, tiled_apply


def _tiny(scale: int = 4) -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(nf=8, nb=2, gc=4, scale=scale).eval()


def _to_old_layout(sd: dict) -> dict:
    """Write the original ESRGAN key names, as old .pth files have them."""
    out = {}
    names = {"conv_first": "model.0", "conv_body": "model.1.sub.2", "conv_up1": "model.3", "conv_up2": "model.6",
             "conv_hr": "model.8", "conv_last": "model.10"}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module in names:
            out[f"{names[module]}.{param}"] = value
        else:  # body.N.rdbK.convJ.param
            _, n, rdb, conv = module.split(".")
            out[f"model.1.sub.{n}.RDB{rdb[-1]}.conv{conv[-1]}.0.{param}"] = value
    return out


def test_both_layouts_load_to_the_same_network():
    net = _tiny()
    sd = net.state_dict()
    x = torch.rand(1, 3, 8, 8)
    for layout in (sd, _to_old_layout(sd)):
        loaded = build_rrdbnet({k: v.clone() for k, v in layout.items()})
        assert loaded.scale == 4
        assert torch.allclose(loaded(x), net(x))


def test_x2_model_uses_pixel_unshuffle():
    net = _tiny(scale=2)
    loaded = build_rrdbnet(net.state_dict())
    assert loaded.scale == 2
    assert loaded(torch.rand(1, 3, 8, 8)).shape[-2:] == (16, 16)


def test_tiles_cover_the_whole_image():
    net = _tiny()
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        full = net(x)
        tiled = tiled_apply(net, x, 4, tile=12, overlap=4)
    assert tiled.shape == full.shape
    # Borders of tiles differ slightly (receptive field), the bulk matches.
    assert (tiled - full).abs().mean() < 0.05


def test_folder_scan_and_upscale_to_target(tmp_path):
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    save_file(_tiny().state_dict(), folder / "tiny-x4.safetensors")
    ups = ModelUpscalers(folder, tile=16, overlap=4)
    assert ups.names() == ["tiny-x4"]
    out = ups.upscale(Image.new("RGB", (10, 12), "red"), "tiny-x4", 30, 36)
    assert out.size == (30, 36)
