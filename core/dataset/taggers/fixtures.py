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


# tag → the logit the tiny DeepBooru model gives ``DEEPBOORU_REFERENCE`` (a grey picture)
DEEPBOORU_TAGS: tuple[tuple[str, float], ...] = (
    ("1girl", 3.0), ("solo", 1.0), ("long_hair", 0.5), ("fate_(series)", 0.2), ("smile", -0.5),
    ("rating:safe", 2.0), ("rating:explicit", -3.0),
)
DEEPBOORU_REFERENCE = (128, 128, 128)


def write_tiny_deepbooru(folder: str | Path, *, width: int = 2, seed: int = 0) -> Path:
    """``folder/model-resnet_custom_v3.pt``: the WebUI layout with ``width`` instead of 64 channels.

    The head is solved so that a grey ``DEEPBOORU_REFERENCE`` picture scores the logits of
    ``DEEPBOORU_TAGS`` exactly, through the real preprocessing and network."""
    import torch
    from PIL import Image

    from core.dataset.taggers.deepbooru import HEAD, MODEL_FILE, build_model, preprocess, published_shapes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tags = [t for t, _ in DEEPBOORU_TAGS]
    model = build_model(published_shapes(width, len(tags)), tags).eval()
    head = getattr(model, f"n_Conv_{HEAD}")
    x = torch.from_numpy(preprocess(Image.new("RGB", (64, 48), DEEPBOORU_REFERENCE)))[None]
    with torch.no_grad():
        # pooled features f of the reference picture: logit_i = w_i · f; take w_i = logit_i f / |f|²
        feats = _deepbooru_features(model, x)
        if float(feats.norm()) == 0:
            raise RuntimeError("the random network has dead features; pick another seed")
        targets = torch.tensor([logit for _, logit in DEEPBOORU_TAGS])
        head.weight[:, :, 0, 0] = targets[:, None] * feats[None, :] / feats.dot(feats)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["tags"] = tags
    torch.save(state, folder / MODEL_FILE)
    return folder


def _deepbooru_features(model, x):
    """The pooled input of the head conv for ``x`` (a forward hook, no copy of the forward)."""
    import torch

    from core.dataset.taggers.deepbooru import HEAD

    seen = {}
    handle = getattr(model, f"n_Conv_{HEAD}").register_forward_hook(lambda _m, inp, _o: seen.update(x=inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return torch.nn.functional.adaptive_avg_pool2d(seen["x"], 1).flatten()


TINY_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "man", "girl", "cat", "in", "on",
              "with", "red", "blue", "kitchen", "hammer", "fire", "picture", "of", "and", "is", "holding")


def _tiny_bert_tokenizer(folder: Path):
    from transformers import BertTokenizer

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return BertTokenizer(str(vocab), do_lower_case=True, model_max_length=64)


def write_tiny_blip(folder: str | Path, *, seed: int = 0) -> Path:
    """A BLIP captioning folder (config.json model_type "blip", model.safetensors, processor, BERT
    tokenizer) with 32-wide layers and a 24-word vocabulary, loadable by ``CaptionModel``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_bert_tokenizer(folder)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        text_config={"vocab_size": len(TINY_VOCAB), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "encoder_hidden_size": 32, "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3,
                     "pad_token_id": 0},
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_tiny_git(folder: str | Path, *, seed: int = 0) -> Path:
    """A GIT captioning folder (model_type "git") with the same tiny sizes and vocabulary."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_bert_tokenizer(folder)
    config = GitConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        vocab_size=len(TINY_VOCAB), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    GitForCausalLM(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
