"""Model upscalers for hires fix: ESRGAN / Real-ESRGAN (RRDBNet) files in models/ESRGAN.

Kiln reads the RRDBNet family itself (both the original ESRGAN key layout and the
Real-ESRGAN/BasicSR one, x1/x2/x4 via pixel-unshuffle), because spandrel — the library the
WebUI uses — requires torchvision, which drags a multi-GB CUDA torch into CPU installs.
When spandrel *is* importable, other architectures (SwinIR, DAT, ...) load through it.
Inference is tiled with overlap so big images fit in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.errors import ModelFileError

UPSCALER_EXTENSIONS = (".pth", ".pt", ".safetensors")


class _ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1 = _ResidualDenseBlock(nf, gc)
        self.rdb2 = _ResidualDenseBlock(nf, gc)
        self.rdb3 = _ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """RRDBNet in the BasicSR (Real-ESRGAN) parameter naming."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, scale: int = 4):
        super().__init__()
        self.scale = scale
        unshuffle = {1: 4, 2: 2}.get(scale, 1)
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(in_nc * unshuffle * unshuffle, nf, 3, 1, 1)
        self.body = nn.Sequential(*[_RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        feat = act(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = act(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(act(self.conv_hr(feat)))


_OLD_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")


def convert_old_esrgan_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ESRGAN layout (model.0 / model.1.sub.N.RDBk / model.3,6,8,10) → BasicSR names."""
    nb = max((int(m.group(1)) for k in sd if (m := _OLD_BODY.match(k))), default=-1) + 1
    fixed = {"model.0": "conv_first", f"model.1.sub.{nb}": "conv_body", "model.3": "conv_up1",
             "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    out = {}
    for key, value in sd.items():
        m = _OLD_BODY.match(key)
        if m:
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
            continue
        prefix, _, param = key.rpartition(".")
        if prefix in fixed:
            out[f"{fixed[prefix]}.{param}"] = value
        else:
            raise ModelFileError(f"unexpected ESRGAN key {key!r}")
    return out


def build_rrdbnet(sd: dict[str, torch.Tensor], path: str | Path = "") -> RRDBNet:
    """Build an RRDBNet whose dimensions are read from the state dict's shapes."""
    if "model.0.weight" in sd:
        sd = convert_old_esrgan_keys(sd)
    if "params_ema" in sd or "params" in sd:  # Real-ESRGAN release wrapper
        sd = sd.get("params_ema") or sd["params"]
    if "conv_first.weight" not in sd:
        raise ModelFileError("not an ESRGAN/Real-ESRGAN (RRDBNet) model", path=path,
                             hint="install spandrel (needs torchvision) for other upscaler architectures")
    first = sd["conv_first.weight"]
    nf, in_total = first.shape[0], first.shape[1]
    out_nc = sd["conv_last.weight"].shape[0]
    nb = max(int(k.split(".")[1]) for k in sd if k.startswith("body.")) + 1
    gc = sd["body.0.rdb1.conv1.weight"].shape[0]
    scale = {3: 4, 12: 2, 48: 1}.get(in_total)
    if scale is None:
        raise ModelFileError(f"unsupported input channels {in_total}", path=path)
    net = RRDBNet(in_nc=in_total // {4: 1, 2: 4, 1: 16}[scale], out_nc=out_nc, nf=nf, nb=nb, gc=gc, scale=scale)
    net.load_state_dict(sd, strict=True)
    return net.eval()


@dataclass
class UpscalerEntry:
    name: str  # what the UI and infotext show (the file stem, like the WebUI)
    path: Path


class ModelUpscalers:
    """Upscaler files found under the ESRGAN folder, loaded lazily and cached (one at a time)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", tile: int = 192, overlap: int = 16):
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.tile = tile
        self.overlap = overlap
        self._loaded: tuple[Path, nn.Module, int] | None = None

    def entries(self) -> list[UpscalerEntry]:
        from core.models.folders import walk_files

        return [UpscalerEntry(p.stem, p) for p in walk_files(self.folder, UPSCALER_EXTENSIONS, key=lambda p: p)]

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def _load(self, path: Path) -> tuple[nn.Module, int]:
        if self._loaded and self._loaded[0] == path:
            return self._loaded[1], self._loaded[2]
        from core.models.state_dict_io import read_state_dict

        sd = read_state_dict(path)
        try:
            net: nn.Module = build_rrdbnet(sd, path)
            scale = net.scale
        except ModelFileError:
            try:
                import spandrel
            except ImportError:
                raise
            desc = spandrel.ModelLoader().load_from_state_dict(sd)
            net, scale = desc.model.eval(), int(desc.scale)
        net = net.to(self.device)
        self._loaded = (path, net, scale)
        return net, scale

    @torch.inference_mode()
    def upscale(self, image: Image.Image, name: str, width: int, height: int) -> Image.Image:
        entry = next((e for e in self.entries() if e.name == name), None)
        if entry is None:
            raise ModelFileError(f"upscaler {name!r} not found", path=self.folder)
        net, scale = self._load(entry.path)
        current = image.convert("RGB")
        # Apply the model until the image is at least the target size (the WebUI does the same).
        while current.width < width or current.height < height:
            before = current.size
            current = self._run(net, scale, current)
            if current.size == before:
                break
        if current.size != (width, height):
            current = current.resize((width, height), Image.Resampling.LANCZOS)
        return current

    def _run(self, net: nn.Module, scale: int, image: Image.Image) -> Image.Image:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(self.device)
        y = tiled_apply(net, x, scale, self.tile, self.overlap)
        arr = (y[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr)


def tiled_apply(net: nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """Run ``net`` on overlapping tiles and average the overlaps (bounded memory)."""
    _, c, h, w = x.shape
    if h <= tile and w <= tile:
        return net(x)
    out = torch.zeros(1, c, h * scale, w * scale, device=x.device)
    weight = torch.zeros_like(out)
    step = tile - overlap
    for top in range(0, max(h - overlap, 1), step):
        for left in range(0, max(w - overlap, 1), step):
            t0, l0 = min(top, max(h - tile, 0)), min(left, max(w - tile, 0))
            patch = x[:, :, t0:t0 + tile, l0:l0 + tile]
            y = net(patch)
            out[:, :, t0 * scale:t0 * scale + y.shape[2], l0 * scale:l0 * scale + y.shape[3]] += y
            weight[:, :, t0 * scale:t0 * scale + y.shape[2], l0 * scale:l0 * scale + y.shape[3]] += 1
    return out / weight.clamp(min=1)
