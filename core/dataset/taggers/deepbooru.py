"""DeepDanbooru through the WebUI's torch port (``models/torch_deepdanbooru/model-resnet_custom_v3.pt``).

The file is a state dict of the WebUI's ``modules/deepbooru_model.py``: 179 convolutions named
``n_Conv_0`` … ``n_Conv_178`` (a ResNet-152-like "resnet_custom_v3" on NHWC input) and the tag
list under the key ``tags``. It is read with ``torch.load(weights_only=True)``: no pickle code runs.

The network is built here from the topology (which convolution feeds which, strides, paddings
taken from the WebUI's forward) with each layer's width read from the file, so the published
model (64…4096 channels, 9176 tags) and a narrow test model of the same layout load the same way.

Pre/post-processing as the WebUI's ``modules/deepbooru.py``: the picture resized to 512² with
"resize and fill", RGB floats 0–1; tags at or over the threshold, ``rating:*`` tags set apart,
sorted alphabetically or by score, ``_`` → space and brackets escaped when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.dataset.images import to_rgb
from core.dataset.taggers.common import TagOptions, TagResult, finish_tags
from core.errors import KilnError, ModelFileError

MODEL_FILE = "model-resnet_custom_v3.pt"
INPUT_SIZE = 512
N_CONVS = 179
HEAD = N_CONVS - 1  # n_Conv_178: 1×1 to the tag scores, no bias


@dataclass(frozen=True)
class Block:
    """A bottleneck: ``a`` 1×1 → ``b`` 3×3 (stride) → ``c`` 1×1, plus a shortcut (a conv or identity)."""

    a: int
    b: int
    c: int
    shortcut: int | None
    stride: int


def topology() -> list[Block]:
    """The WebUI model's blocks in order (stages of 3, 8, 20+1+19, 3, 3 bottlenecks).

    The indices follow its forward: a stage's first block lists its shortcut conv first
    (n_Conv_1, 11, 36, 158, 168); the stride-2 block inside stage 3 lists it last (n_Conv_100)."""
    blocks: list[Block] = []

    def stage(first: int, downsample: bool, identities: int) -> int:
        blocks.append(Block(first + 1, first + 2, first + 3, first, 2 if downsample else 1))
        i = first + 4
        for _ in range(identities):
            blocks.append(Block(i, i + 1, i + 2, None, 1))
            i += 3
        return i

    i = stage(1, False, 2)  # 64 → 256
    i = stage(i, True, 7)  # 128 → 512
    i = stage(i, True, 19)  # 256 → 1024
    blocks.append(Block(i, i + 1, i + 2, i + 3, 2))  # n_Conv_97..100
    i += 4
    for _ in range(19):
        blocks.append(Block(i, i + 1, i + 2, None, 1))
        i += 3
    i = stage(i, True, 2)  # 512 → 2048
    i = stage(i, True, 2)  # 1024 → 4096
    assert i == HEAD, i
    return blocks


def published_shapes(width: int = 64, n_tags: int = 9176) -> dict[int, tuple[int, int, int, bool]]:
    """conv index → (out, in, kernel, bias) of the published model (``width`` 64); smaller widths
    give the same layout scaled down (the tests' model)."""
    shapes: dict[int, tuple[int, int, int, bool]] = {0: (width, 3, 7, True)}
    channels = width
    mids = [width, width * 2, width * 4, width * 4, width * 8, width * 16]
    # stage → mid width; the extra stride-2 block in stage 3 keeps 4·mid channels
    stage_of_first = {1: 0, 11: 1, 36: 2, 158: 4, 168: 5}
    mid = width
    for block in topology():
        if block.shortcut is not None and block.a == block.shortcut + 1:
            mid = mids[stage_of_first[block.shortcut]]
        out = mid * 4
        shapes[block.a] = (mid, channels, 1, True)
        shapes[block.b] = (mid, mid, 3, True)
        shapes[block.c] = (out, mid, 1, True)
        if block.shortcut is not None:
            shapes[block.shortcut] = (out, channels, 1, True)
        channels = out
    shapes[HEAD] = (n_tags, channels, 1, False)
    return shapes


def expected_keys() -> set[str]:
    keys = {f"n_Conv_{i}.weight" for i in range(N_CONVS)}
    keys |= {f"n_Conv_{i}.bias" for i in range(HEAD)}
    return keys


def build_model(shapes: dict[int, tuple[int, int, int, bool]], tags: Sequence[str] = ()):
    """The torch module for ``shapes`` (from ``published_shapes`` or a file), state-dict compatible
    with the WebUI's DeepDanbooruModel."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    blocks = topology()
    strides = {0: 2}
    for block in blocks:
        strides[block.b] = block.stride
        if block.shortcut is not None:
            strides[block.shortcut] = block.stride

    class DeepDanbooru(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tags = list(tags)
            for i in range(N_CONVS):
                out_c, in_c, k, bias = shapes[i]
                s = strides.get(i, 1)
                setattr(self, f"n_Conv_{i}", nn.Conv2d(in_c, out_c, kernel_size=k, stride=s, bias=bias))
            self.n_MaxPool_0 = nn.MaxPool2d(kernel_size=3, stride=2)

        def conv(self, i: int, x):
            return getattr(self, f"n_Conv_{i}")(x)

        def forward(self, x):  # x: float[N, H, W, 3] RGB 0–1, as the WebUI feeds it
            x = x.permute(0, 3, 1, 2)
            x = F.relu(self.conv(0, F.pad(x, [2, 3, 2, 3], value=0)))
            x = self.n_MaxPool_0(F.pad(x, [0, 1, 0, 1], value=float("-inf")))
            for block in blocks:
                # TensorFlow's "same" padding of the original: asymmetric for stride 2
                pad = [0, 1, 0, 1] if block.stride == 2 else [1, 1, 1, 1]
                y = F.relu(self.conv(block.a, x))
                y = F.relu(self.conv(block.b, F.pad(y, pad, value=0)))
                y = self.conv(block.c, y)
                shortcut = x if block.shortcut is None else self.conv(block.shortcut, x)
                x = F.relu(y + shortcut)
            x = self.conv(HEAD, x)
            x = F.avg_pool2d(x, kernel_size=x.shape[-2:]).flatten(1)
            return torch.sigmoid(x)

    return DeepDanbooru()


def find_model_file(folder: str | Path) -> Path | None:
    """The WebUI's file name first, else the only ``.pt`` in the folder."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".pt":
        return folder
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    found = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def load_state(path: Path) -> tuple[dict, list[str]]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError / EOFError for bad files
        raise ModelFileError(f"cannot read it as a weights-only torch file ({exc})", path=path,
                             hint=f"download {MODEL_FILE} again from AUTOMATIC1111/TorchDeepDanbooru") from exc
    if not isinstance(state, dict):
        raise ModelFileError("not a state dict", path=path)
    tags = state.pop("tags", None)
    missing = sorted(expected_keys() - state.keys(), key=_key_order)
    if missing or not isinstance(tags, list):
        what = f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}" if missing else "no tag list"
        raise ModelFileError(f"not the WebUI's DeepDanbooru model ({what})", path=path,
                             hint=f"use {MODEL_FILE} (AUTOMATIC1111/TorchDeepDanbooru)")
    return state, [str(t) for t in tags]


def _key_order(key: str) -> int:
    return int(key.split(".")[0].rsplit("_", 1)[1])


def shapes_from_state(state: dict) -> dict[int, tuple[int, int, int, bool]]:
    shapes = {}
    for i in range(N_CONVS):
        w = state[f"n_Conv_{i}.weight"]
        shapes[i] = (int(w.shape[0]), int(w.shape[1]), int(w.shape[2]), f"n_Conv_{i}.bias" in state)
    return shapes


def resize_and_fill(image: Image.Image, width: int = INPUT_SIZE, height: int = INPUT_SIZE) -> Image.Image:
    """The WebUI's ``images.resize_image(2, ...)``: fit inside, then stretch the edge rows or
    columns into the empty bands (no black or white borders for the model to tag)."""
    ratio = width / height
    src_ratio = image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((max(src_w, 1), max(src_h, 1)), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                      box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill + src_w, 0))
    return out


def preprocess(image: Image.Image) -> np.ndarray:
    """``float32[512, 512, 3]`` RGB 0–1 (transparency over white, as everywhere in Kiln)."""
    pic = resize_and_fill(to_rgb(image, (255, 255, 255)))
    return np.asarray(pic, dtype=np.float32) / 255.0


def select_tags(probs: np.ndarray, tags: Sequence[str], options: TagOptions) -> TagResult:
    """Scores → tags as the WebUI's ``tag_multi`` (threshold: ``options.general_threshold``)."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    ratings = {t: float(p) for t, p in zip(tags, probs) if t.startswith("rating:")}
    picked = [(t, float(p)) for t, p in zip(tags, probs)
              if p >= options.general_threshold and not t.startswith("rating:")]
    lead = [max(ratings.items(), key=lambda kv: kv[1])] if options.include_ratings and ratings else []
    return TagResult(tags=finish_tags(picked, options, lead=lead), ratings=ratings)


class DeepBooruTagger:
    kind = "deepbooru"

    def __init__(self, path: str | Path, *, name: str | None = None, device: str = "cpu"):
        import torch

        found = find_model_file(path)
        if found is None:
            raise KilnError(f"no DeepBooru model here: it needs {MODEL_FILE}", path=path,
                            hint=f"download {MODEL_FILE} from github.com/AUTOMATIC1111/TorchDeepDanbooru "
                            f"releases into {path}")
        self.path = found
        self.name = name or found.stem
        state, tags = load_state(found)
        shapes = shapes_from_state(state)
        if shapes[HEAD][0] != len(tags):
            raise ModelFileError(f"the model scores {shapes[HEAD][0]} tags but its tag list has {len(tags)}",
                                 path=found)
        self.tags = tags
        self.model = build_model(shapes, tags)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"the layers do not fit the DeepDanbooru layout ({exc})", path=found) from exc
        self.device = torch.device(device if device.startswith("cuda") and torch.cuda.is_available() else "cpu")
        self.model.eval().to(self.device)

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, len(self.tags)), dtype=np.float32)
        batch = torch.from_numpy(np.stack([preprocess(im) for im in images])).to(self.device)
        with torch.inference_mode():
            return self.model(batch).float().cpu().numpy()

    def tag(self, images: Sequence[Image.Image], options: TagOptions | None = None) -> list[TagResult]:
        options = options or TagOptions(general_threshold=0.5, sort="alphabetical", escape_brackets=True)
        return [select_tags(p, self.tags, options) for p in self.scores(images)]

    def close(self) -> None:
        self.model = None
