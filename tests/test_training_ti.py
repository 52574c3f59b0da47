"""Textual inversion: create and train on a tiny SD1 checkpoint through Kiln's real loaders."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from core.errors import InvalidParameterError, KilnError
from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.networks.embeddings import EmbeddingDatabase, expected_dims_for, load_embedding
from core.training.learn_schedule import LearnRateScheduler, parse_schedule
from core.training.textual_inversion import EmbeddingTrainJob, create_embedding, train_embedding
from core.training.ti_data import DataOptions, create_text, list_templates, read_template
from core.training.ti_loop import PreviewOptions, TrainHooks, TrainOptions


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "sd1"))


def _state(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, part in enumerate([model.unet, model.vae, *model.text_encoders])
            for k, v in part.state_dict().items()}


def dataset(root: Path, n: int = 3) -> Path:
    folder = root / "data"
    folder.mkdir(parents=True)
    for k in range(n):
        im = Image.new("RGB", (40, 40), (255, 255, 255))
        ImageDraw.Draw(im).ellipse([k * 2, k * 3, 20 + k, 24], fill=(0, 128, 128))
        im.save(folder / f"{k:05d}-0-shape.png")
        (folder / f"{k:05d}-0-shape.txt").write_text(f"teal star, shape {k}", encoding="utf-8")
    (folder / "notes.md").write_text("not a picture", encoding="utf-8")
    return folder


def options(root: Path, **changes) -> TrainOptions:
    data = DataOptions(data_root=root / "data", template_filename=changes.pop("template", "subject_filewords.txt"),
                       width=64, height=64, batch_size=changes.pop("batch_size", 1),
                       latent_sampling_method=changes.pop("latent", "once"))
    return TrainOptions(data=data, learn_rate=changes.pop("learn_rate", "0.05"), steps=changes.pop("steps", 4),
                        log_directory=root / "textual_inversion", save_every=changes.pop("save_every", 2),
                        create_image_every=changes.pop("create_image_every", 0), seed=7, **changes)


def test_schedule_text_follows_the_webui():
    assert parse_schedule("0.005:100, 1e-3:1000, 1e-5", 10000) == [(0.005, 100), (1e-3, 1000), (1e-5, 10000)]
    assert parse_schedule("0.005:100, 1e-3:1000, 1e-5", 500) == [(0.005, 100), (1e-3, 500)]
    assert parse_schedule("0.005:100, 1e-3:1000", 5000, cur_step=200) == [(1e-3, 1000)]
    assert parse_schedule("0.1:-1", 30) == [(0.1, 30)]
    with pytest.raises(InvalidParameterError, match="0.001:100"):
        parse_schedule("fast", 10)
    with pytest.raises(InvalidParameterError):
        parse_schedule("0.1:5", 10, cur_step=6)
    sched = LearnRateScheduler.from_text("0.5:2, 0.25:4", 10)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=sched.learn_rate)
    seen = []
    for step in range(5):
        sched.apply(opt, step)
        seen.append((opt.param_groups[0]["lr"], sched.finished))
    assert seen == [(0.5, False), (0.5, False), (0.25, False), (0.25, False), (0.25, True)]


def test_templates_are_the_webuis_and_substitution():
    names = set(list_templates())
    assert {"none.txt", "style.txt", "style_filewords.txt", "subject.txt", "subject_filewords.txt",
            "hypernetwork.txt"} <= names
    assert read_template("none.txt") == ["picture"]
    assert read_template("subject.txt")[0] == "a photo of a [name]"
    import random

    text = create_text(["a photo of a [name], [filewords]"], "teal, star, big", "kx", random.Random(1), False, 0)
    assert text == "a photo of a kx, teal, star, big"
    dropped = create_text(["[filewords]"], "a,b,c,d,e,f,g,h", "kx", random.Random(1), True, 0.5)
    assert 0 < len(dropped.split(",")) < 8


def test_create_embedding_writes_the_webui_layout_and_loads(model, tmp_path):
    path = create_embedding(model, tmp_path / "embeddings", "kx tok!", num_vectors_per_token=3, init_text="teal star")
    assert path.name == "kx tok.pt"
    data = torch.load(path, weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265} and data["step"] == 0 and data["name"] == "kx tok"
    vec = data["string_to_param"]["*"]
    tok, te = model.tokenizers[0], model.text_encoders[0]
    ids = tok("teal star", add_special_tokens=False)["input_ids"]
    table = te.get_input_embeddings().weight
    assert vec.shape == (3, table.shape[1]) and vec.dtype == torch.float32
    for i in range(3):  # the WebUI picks embedded[i * len // n]
        assert torch.equal(vec[i], table[ids[i * len(ids) // 3]])
    loaded = load_embedding(path)
    assert loaded.vectors == 3 and torch.equal(loaded.vec["default"], vec)
    db = EmbeddingDatabase(tmp_path / "embeddings", model.tokenizers)
    db.load_for_model("sd1", expected_dims_for(model.text_encoders))
    assert "kx tok" in db.loaded
    with pytest.raises(KilnError, match="already exists"):
        create_embedding(model, tmp_path / "embeddings", "kx tok", 1)
    assert torch.load(create_embedding(model, tmp_path / "embeddings", "kx tok", 1, overwrite_old=True,
                                       init_text=""), weights_only=True)["string_to_param"]["*"].abs().sum() == 0
    with pytest.raises(InvalidParameterError, match="1 to 75"):
        create_embedding(model, tmp_path / "embeddings", "big", 76)


def test_create_sdxl_embedding_writes_clip_l_and_clip_g(tmp_path):
    sdxl = load_checkpoint(write_tiny_checkpoint(tmp_path, "sdxl"))
    path = create_embedding(sdxl, tmp_path / "embeddings", "xl", 2, init_text="red")
    assert path.suffix == ".safetensors"
    loaded = load_embedding(path)
    assert loaded.is_sdxl and loaded.vectors == 2
    widths = expected_dims_for(sdxl.text_encoders)
    assert {k: v.shape[-1] for k, v in loaded.vec.items()} == widths


def test_training_moves_only_the_vectors_and_saves_copies(model, tmp_path):
    dataset(tmp_path)
    path = create_embedding(model, tmp_path / "embeddings", "kx", 2, init_text="star")
    before_vec = torch.load(path, weights_only=True)["string_to_param"]["*"].clone()
    before = _state(model)
    steps = []
    job = EmbeddingTrainJob(path, options(tmp_path, gradient_step=2, clip_grad_mode="norm", clip_grad_value="1.0"),
                            sd_checkpoint="abcdef0123", sd_checkpoint_name="tiny-sd1")
    result = train_embedding(model, job, TrainHooks(on_step=steps.append))
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for part in (model.unet, model.vae, *model.text_encoders)
               for p in part.parameters())
    assert [s.step for s in steps] == [1, 2, 3, 4] and all(s.loss > 0 for s in steps)
    assert "kx" in steps[0].prompt and "teal star" in steps[0].prompt
    data = torch.load(path, weights_only=True)
    assert data["step"] == 4 and data["sd_checkpoint"] == "abcdef0123" and data["sd_checkpoint_name"] == "tiny-sd1"
    assert not torch.equal(data["string_to_param"]["*"], before_vec)
    assert [p.name for p in result.copies] == ["kx-2.pt", "kx-4.pt"]
    assert result.copies[0].parent.parent == result.log_dir and result.log_dir.name == "kx"
    copy = load_embedding(result.copies[1])
    assert copy.step == 4 and torch.equal(copy.vec["default"], data["string_to_param"]["*"])
    assert torch.load(result.copies[0], weights_only=True)["name"] == "kx-2"
    rows = list(csv.reader(open(result.log_dir / "textual_inversion_loss.csv", encoding="utf-8")))
    assert rows[0] == ["step", "epoch", "epoch_step", "loss", "learn_rate"] and len(rows) == 5
    with pytest.raises(KilnError, match="beyond max steps"):
        train_embedding(model, job)
    # Continuing: the step count carries on from the file.
    more = EmbeddingTrainJob(path, options(tmp_path, steps=6, save_every=0))
    assert train_embedding(model, more).step == 6


def test_stop_saves_progress_into_the_embedding(model, tmp_path):
    dataset(tmp_path)
    path = create_embedding(model, tmp_path / "embeddings", "kx", 1)
    seen = []
    result = train_embedding(model, EmbeddingTrainJob(path, options(tmp_path, steps=100000, save_every=0,
                                                                     latent="random")),
                             TrainHooks(on_step=seen.append, should_stop=lambda: len(seen) >= 3))
    assert result.interrupted and result.step == 3
    assert torch.load(path, weights_only=True)["step"] == 3


def test_previews_use_the_saved_embedding(model, tmp_path):
    dataset(tmp_path)
    path = create_embedding(model, tmp_path / "embeddings", "kx", 1)
    asked = []

    def preview(params: PreviewOptions, saved: Path):
        asked.append((params, torch.load(saved, weights_only=True)["step"]))
        return Image.new("RGB", (params.width, params.height), (9, 9, 9))

    result = train_embedding(model, EmbeddingTrainJob(path, options(tmp_path, steps=2, create_image_every=1,
                                                                     save_every=0)), TrainHooks(preview=preview))
    assert [step for _, step in asked] == [1, 2]
    assert asked[0][0].steps == 20 and asked[0][0].width == 64 and "kx" in asked[0][0].prompt
    assert [p.name for p in result.images] == ["kx-1.png", "kx-2.png"]
    assert not (result.log_dir / "image_embeddings").exists()
    custom = PreviewOptions(from_txt2img=True, prompt="a kx", steps=3, width=96, height=48)
    asked.clear()
    train_embedding(model, EmbeddingTrainJob(path, options(tmp_path, steps=3, create_image_every=1, save_every=0,
                                                           preview=custom)), TrainHooks(preview=preview))
    assert asked[0][0].prompt == "a kx" and asked[0][0].steps == 3 and asked[0][0].width == 96


def test_clear_errors(model, tmp_path):
    path = create_embedding(model, tmp_path / "embeddings", "kx", 1)
    with pytest.raises(KilnError, match="doesn't exist"):
        train_embedding(model, EmbeddingTrainJob(path, options(tmp_path)))
    dataset(tmp_path)
    with pytest.raises(KilnError, match="not found"):
        train_embedding(model, EmbeddingTrainJob(path, options(tmp_path, template="nope.txt")))
    with pytest.raises(KilnError, match="batch size"):
        train_embedding(model, EmbeddingTrainJob(path, options(tmp_path, batch_size=9)))
    with pytest.raises(InvalidParameterError, match="schedule"):
        train_embedding(model, EmbeddingTrainJob(path, options(tmp_path, learn_rate="abc")))


def test_preview_pictures_can_carry_the_embedding(model, tmp_path):
    dataset(tmp_path)
    path = create_embedding(model, tmp_path / "embeddings", "kx", 2)
    opts = options(tmp_path, steps=2, create_image_every=2, save_every=0, save_image_with_stored_embedding=True)
    result = train_embedding(model, EmbeddingTrainJob(path, opts),
                             TrainHooks(preview=lambda params, saved: Image.new("RGB", (64, 64), (200, 10, 10))))
    stored = result.log_dir / "image_embeddings" / "kx-2.png"
    assert stored in result.images
    from_picture = load_embedding(stored)  # Kiln's loader, as the WebUI's, reads the sd-ti-embedding chunk
    assert from_picture.name == "kx" and from_picture.step == 2
    assert torch.allclose(from_picture.vec["default"], load_embedding(path).vec["default"])
