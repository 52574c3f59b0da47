"""Tiny taggers in the real file formats, for tests and demos (no download anywhere).

- ``write_tiny_wd14``: an ONNX graph with the WD14 signature (``float[N, S, S, 3]`` BGR 0–255 in,
  sigmoid scores ``float[N, K]`` out) and its ``selected_tags.csv``. Its scores are simple
  functions of the mean colour so tests know what a red or a white picture must give.
- ``write_tiny_deepbooru``: the WebUI's DeepDanbooru state dict layout (``n_Conv_0`` ...
  ``n_Conv_178`` plus ``tags``), with narrow layers.
- ``write_tiny_blip``: a BLIP captioning folder (config, weights, processor, BERT tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# name, category, logit = w · (mean B, G, R) / 255 + b  (BGR: the channel order WD14 models read)
WD14_TAGS: tuple[tuple[str, int, tuple[float, float, float], float], ...] = (
    ("general", 9, (0, 0, 0), 1.0),
    ("sensitive", 9, (0, 0, 0), 0.0),
    ("questionable", 9, (0, 0, 0), -1.0),
    ("explicit", 9, (0, 0, 0), -2.0),
    ("red_theme", 0, (-4, -4, 8), -2.0),
    ("green_theme", 0, (-4, 8, -4), -2.0),
    ("blue_theme", 0, (8, -4, -4), -2.0),
    ("white_background", 0, (6, 6, 6), -15.0),
    ("^_^", 0, (0, 0, 0), 0.2),  # 0.55 for every picture
    ("fate_(series)", 0, (0, 0, 0), -0.2),  # 0.45 for every picture
    ("hatsune_miku", 4, (-5, 10, -5), -5.0),
)


def wd14_expected_logits(bgr_mean: tuple[float, float, float]) -> np.ndarray:
    """What the tiny WD14 model computes for a picture whose preprocessed mean is ``bgr_mean`` (0–255)."""
    w = np.array([t[2] for t in WD14_TAGS], dtype=np.float64)
    b = np.array([t[3] for t in WD14_TAGS], dtype=np.float64)
    return w @ (np.asarray(bgr_mean, dtype=np.float64) / 255.0) + b


def write_tiny_wd14(folder: str | Path, *, size: int = 32, batch: int | str = "N") -> Path:
    """``folder/model.onnx`` + ``folder/selected_tags.csv`` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = len(WD14_TAGS)
    weights = (np.array([t[2] for t in WD14_TAGS], dtype=np.float32).T / 255.0).astype(np.float32)  # [3, K]
    bias = np.array([t[3] for t in WD14_TAGS], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0"], ["mean"], axes=[1, 2], keepdims=0),  # [N, 3]
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, k])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    lines = ["tag_id,name,category,count"]
    for i, (name, category, _w, _b) in enumerate(WD14_TAGS):
        quoted = f'"{name}"' if "," in name else name
        lines.append(f"{9999000 + i},{quoted},{category},{1000 - i}")
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
