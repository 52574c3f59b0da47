"""Model upscalers for hires fix and Extras: the WebUI's upscaler files in the WebUI's folders.

Kiln reads two architectures itself: the RRDBNet family (ESRGAN in both key layouts and
Real-ESRGAN x1/x2/x4 via pixel-unshuffle: "ESRGAN_4x", "R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B",
"R-ESRGAN 2x+") and Real-ESRGAN's compact SRVGGNet ("R-ESRGAN General 4xV3", "... WDN 4xV3",
"R-ESRGAN AnimeVideo"). The others (SwinIR, DAT, HAT, ScuNET) load through spandrel, the library
the WebUI uses, when it is importable: it needs torchvision, and the torchvision wheels on PyPI
are built against PyPI's CUDA torch, so on a CPU torch they fail to import and the CPU build
comes only from PyTorch's own index (README, "Upscalers"). Inference is tiled with overlap so
big images fit in memory.
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
SPANDREL_HINT = ("SwinIR, DAT, HAT and ScuNET load through spandrel: pip install spandrel with a torchvision "
                 "built for the installed torch (same index as torch); or use an ESRGAN / Real-ESRGAN model")


def spandrel_available() -> bool:
    """Whether spandrel imports (with a working torchvision) in this install."""
    try:
        import spandrel  # noqa: F401
    except Exception:  # ImportError, or torchvision built for another torch (RuntimeError)
        return False
    return True


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


def unwrap(sd: dict) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's release files keep the weights under ``params_ema`` (or ``params``); the
    reader flattens them to ``params_ema.conv_first.weight``..., so the prefix is taken off."""
    for wrapper in ("params_ema", "params"):
        if isinstance(sd.get(wrapper), dict):
            return sd[wrapper]
        prefix = wrapper + "."
        inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if inner:
            return inner
    return sd


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network (realesr-general-x4v3, realesr-animevideov3): convolutions
    with PReLU, a pixel shuffle, plus the nearest-upscaled input. Names as Real-ESRGAN's."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, num_conv: int = 16, scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_nc, nf, 3, 1, 1), nn.PReLU(num_parameters=nf)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(num_parameters=nf)]
        layers.append(nn.Conv2d(nf, out_nc * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def build_srvgg(sd: dict[str, torch.Tensor], path: str | Path = "") -> SRVGGNetCompact:
    """An SRVGGNetCompact sized from the state dict (conv count, features, scale)."""
    sd = unwrap(sd)
    convs = sorted(int(k.split(".")[1]) for k in sd if re.fullmatch(r"body\.\d+\.weight", k) and sd[k].dim() == 4)
    if not convs or "body.1.weight" not in sd or sd["body.1.weight"].dim() != 1:
        raise ModelFileError("not a Real-ESRGAN compact (SRVGGNet, PReLU) model", path=path)
    first, last = sd[f"body.{convs[0]}.weight"], sd[f"body.{convs[-1]}.weight"]
    in_nc, nf = first.shape[1], first.shape[0]
    scale = int(round((last.shape[0] / in_nc) ** 0.5))
    if scale * scale * in_nc != last.shape[0]:
        raise ModelFileError(f"SRVGGNet output channels {last.shape[0]} fit no scale", path=path)
    net = SRVGGNetCompact(in_nc=in_nc, out_nc=in_nc, nf=nf, num_conv=len(convs) - 2, scale=scale)
    net.load_state_dict(sd, strict=True)
    return net.eval()


def build_kiln_upscaler(sd: dict, path: str | Path = "") -> nn.Module:
    """The architectures Kiln reads itself: RRDBNet (ESRGAN, Real-ESRGAN) or SRVGGNetCompact."""
    inner = unwrap(sd)
    if "body.0.weight" in inner and "conv_first.weight" not in inner:
        return build_srvgg(inner, path)
    return build_rrdbnet(sd, path)


def build_rrdbnet(sd: dict[str, torch.Tensor], path: str | Path = "") -> RRDBNet:
    """Build an RRDBNet whose dimensions are read from the state dict's shapes."""
    if "model.0.weight" in sd:
        sd = convert_old_esrgan_keys(sd)
    sd = unwrap(sd)
    if "conv_first.weight" not in sd:
        raise ModelFileError(
            "not an ESRGAN / Real-ESRGAN model (RRDBNet or SRVGGNet, the architectures Kiln reads itself)",
            path=path, hint=SPANDREL_HINT)
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
    name: str  # what the UI, the API and infotexts show (the WebUI's name, or the file stem)
    path: Path
    model_name: str = "ESRGAN"  # the WebUI's upscaler family (/sdapi/v1/upscalers ``model_name``)
    scale: int | None = None  # known for the WebUI's named models; files are not opened to list them


class ModelUpscalers:
    """Upscaler files in the WebUI's folders, loaded lazily and cached (one at a time).

    Listed: every file in the ESRGAN folder by its stem (as the WebUI), the WebUI's named models
    whose file is present ("R-ESRGAN 4x+" = models/RealESRGAN/RealESRGAN_x4plus.pth...), and,
    when spandrel is importable, the files in models/SwinIR, ScuNET, DAT and HAT by stem.
    ``data_dir`` None: the ESRGAN folder alone.
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", tile: int = 192, overlap: int = 16,
                 data_dir: str | Path | None = None):
        self.folder = Path(folder)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.device = torch.device(device)
        self.tile = tile
        self.overlap = overlap
        self._loaded: tuple[Path, nn.Module, int] | None = None

    def entries(self) -> list[UpscalerEntry]:
        from core.generation.upscaler_names import KILN_ARCHS, NAMED_UPSCALERS, STEM_FOLDERS, named_path
        from core.models.folders import walk_files

        found = [UpscalerEntry(p.stem, p) for p in walk_files(self.folder, UPSCALER_EXTENSIONS, key=lambda p: p)]
        if self.data_dir is None:
            return found
        spandrel = spandrel_available()
        for named in NAMED_UPSCALERS:
            path = named_path(self.data_dir, named, self.folder)
            if named.arch != "LDSR" and (named.arch in KILN_ARCHS or spandrel) and path.is_file():
                family = named.folder.split("/")[-1]
                found.append(UpscalerEntry(named.name, path, family, named.scale))
        if spandrel:
            for sub in STEM_FOLDERS[1:]:
                for p in walk_files(self.data_dir / sub, UPSCALER_EXTENSIONS, key=lambda p: p):
                    found.append(UpscalerEntry(p.stem, p, sub.split("/")[-1]))
        unique: dict[str, UpscalerEntry] = {}
        for entry in found:  # a named file listed by its stem too (ESRGAN_4x.pth) is one entry
            if entry.name not in unique and all(e.path != entry.path for e in unique.values()):
                unique[entry.name] = entry
        return list(unique.values())

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def missing_reason(self, name: str) -> str | None:
        """For a WebUI upscaler name that is not usable here: which file to put where (or why it
        cannot run); None for a name the WebUI does not have either."""
        from core.generation.upscaler_names import KILN_ARCHS, NAMED_BY_NAME, absent_message, named_path

        named = NAMED_BY_NAME.get(name)
        if named is None:
            return None
        where = named_path(self.data_dir or self.folder.parent.parent, named, self.folder)
        if where.is_file() and named.arch not in KILN_ARCHS and named.arch != "LDSR":
            return f"{name} ({where}) is a {named.arch} model, which Kiln runs through spandrel; {SPANDREL_HINT}"
        return absent_message(named, where)

    def _load(self, path: Path) -> tuple[nn.Module, int]:
        if self._loaded and self._loaded[0] == path:
            return self._loaded[1], self._loaded[2]
        from core.models.state_dict_io import read_state_dict

        sd = read_state_dict(path)
        try:
            net: nn.Module = build_kiln_upscaler(sd, path)
            scale = int(net.scale)
        except ModelFileError:
            if not spandrel_available():
                raise
            import spandrel

            desc = spandrel.ModelLoader().load_from_state_dict(sd)
            net, scale = desc.model.eval(), int(desc.scale)
        net = net.to(self.device)
        self._loaded = (path, net, scale)
        return net, scale

    @torch.inference_mode()
    def upscale(self, image: Image.Image, name: str, width: int, height: int) -> Image.Image:
        entry = next((e for e in self.entries() if e.name == name), None)
        if entry is None:
            raise ModelFileError(self.missing_reason(name) or f"upscaler {name!r} not found", path=self.folder)
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
