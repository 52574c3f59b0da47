"""Textual inversion: every file format the WebUI reads, width checks, token lookup, reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.models.fixtures import tiny_model
from core.networks.embeddings import (
    EmbeddingDatabase,
    bundled_embeddings,
    embedding_from_data,
    expected_dims_for,
    load_embedding,
)
from core.networks.fixtures import write_network_fixtures, write_ti_png, write_ti_pt

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "core" / "models" / "clip_tokenizer"


def models_of(model):
    return model.unet, model.text_encoders


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def sd1_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd1")
    unet, tes = models_of(tiny_model("sd1", seed=0))
    return out, write_network_fixtures(out, "sd1", unet, tes), tes


def test_each_format_loads_with_right_shape(sd1_files):
    _, files, _ = sd1_files
    pt = load_embedding(files["ti_pt"])
    assert pt.name == "kiln_token" and pt.vectors == 2 and pt.shape == 32
    assert pt.vec["default"].shape == (2, 32) and pt.vec["default"].dtype == torch.float32
    assert pt.step == 100 and pt.sd_checkpoint == "0123456789"
    st = load_embedding(files["ti_safetensors"])
    assert st.name == "kiln_token_st" and st.vec["default"].shape == (2, 32)
    torch.testing.assert_close(st.vec["default"], pt.vec["default"])
    concept = load_embedding(files["ti_bin"])  # diffusers {token: [dim]}: one vector, name = file stem
    assert concept.name == "kiln_concept" and concept.vectors == 1 and concept.vec["default"].shape == (1, 32)
    png = load_embedding(files["ti_png"])
    assert png.name == "kiln_png" and png.vec["default"].shape == (2, 32)
    torch.testing.assert_close(png.vec["default"], pt.vec["default"])
    pixels = load_embedding(files["ti_png_pixels"])
    assert pixels.name == "kiln_pixels"
    torch.testing.assert_close(pixels.vec["default"], pt.vec["default"])
    # TI hashes: whole-file sha256, 12 hex
    import hashlib

    assert pt.hash == hashlib.sha256(files["ti_pt"].read_bytes()).hexdigest()[:12]


def test_sdxl_embedding(tmp_path):
    unet, tes = models_of(tiny_model("sdxl", seed=0))
    files = write_network_fixtures(tmp_path, "sdxl", unet, tes)
    emb = load_embedding(files["ti_sdxl"])
    width_l, width_g = (te.config.hidden_size for te in tes)
    assert expected_dims_for(tes) == {"clip_l": width_l, "clip_g": width_g}
    assert emb.is_sdxl and emb.vectors == 2 and emb.shape == width_l + width_g
    assert emb.vec["clip_l"].shape == (2, width_l) and emb.vec["clip_g"].shape == (2, width_g)


def test_database_loads_skips_and_ignores(sd1_files, tokenizer, tmp_path):
    out, files, tes = sd1_files
    emb_dir = out / "embeddings"
    # noise the WebUI ignores: zero-byte files, preview images, non-embedding images
    (emb_dir / "empty.pt").write_bytes(b"")
    write_ti_png(emb_dir / "kiln_token.preview.png", "should_not_load", torch.zeros(1, 32))
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 255, 255)).save(emb_dir / "just_a_picture.png")
    # a wrong width (SD2) is skipped with the reason
    write_ti_pt(emb_dir / "sub" / "wide_one.pt", "wide_one", torch.zeros(1, 1024))
    db = EmbeddingDatabase(emb_dir, tokenizer)
    assert db.load_for_model("sd1", expected_dims_for(tes))
    assert set(db.loaded) == {"kiln_token", "kiln_token_st", "kiln_concept", "kiln_png", "kiln_pixels"}
    assert list(db.loaded) == sorted(db.loaded, key=str.lower)
    assert db.skipped["wide_one"].reason == "width 1024 ≠ 32"
    assert "should_not_load" not in db.loaded and not db.errors
    # unchanged folder: no reload
    assert not db.load_for_model("sd1", expected_dims_for(tes))
    # a new file in a subfolder: reload picks it up
    write_ti_pt(emb_dir / "sub" / "late_one.pt", "late_one", torch.zeros(3, 32))
    st = (emb_dir / "sub").stat()
    os.utime(emb_dir / "sub", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert db.load_for_model("sd1", expected_dims_for(tes))
    assert db.loaded["late_one"].vectors == 3
    # an SDXL model: every SD1 embedding is skipped
    db.load_for_model("sdxl", {"clip_l": 32, "clip_g": 40})
    assert not db.loaded and "not an SDXL embedding" in db.skipped["kiln_token"].reason


def test_corrupt_embedding_is_reported_not_raised(tokenizer, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02not a pickle at all")
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(tmp_path / "two_terms.safetensors"))
    write_ti_pt(tmp_path / "fine.pt", "fine", torch.zeros(1, 32))
    db = EmbeddingDatabase(tmp_path, [tokenizer])
    db.load_for_model("sd1", {"default": 32})
    assert set(db.loaded) == {"fine"}
    assert any("broken.pt" in k for k in db.errors)
    assert any("multiple terms" in msg for msg in db.errors.values())


def test_find_embedding_at_position_prefers_longest_name(tokenizer, tmp_path):
    for name in ("kiln", "kiln-style", "other"):
        write_ti_pt(tmp_path / f"{name}.pt", name, torch.zeros(1, 32))
    db = EmbeddingDatabase(tmp_path, tokenizer)
    db.load_for_model("sd1", {"default": 32})
    ids = tokenizer("a photo of kiln-style and kiln", add_special_tokens=False)["input_ids"]
    long_ids = db.token_ids("kiln-style")
    short_ids = db.token_ids("kiln")
    assert len(long_ids) > len(short_ids)
    start = ids.index(long_ids[0])
    emb, length = db.find_embedding_at_position(ids, start)
    assert emb.name == "kiln-style" and length == len(long_ids)
    last = len(ids) - len(short_ids)
    emb, length = db.find_embedding_at_position(ids, last)
    assert emb.name == "kiln" and length == len(short_ids)
    assert db.find_embedding_at_position(ids, 0) == (None, 0)


def test_bundled_embeddings_register_unless_folder_has_them(tokenizer, tmp_path):
    write_ti_pt(tmp_path / "kiln_tok.pt", "kiln_tok", torch.zeros(1, 32))
    db = EmbeddingDatabase(tmp_path, tokenizer)
    db.load_for_model("sd1", {"default": 32})
    bundles = {"kiln_tok": {"string_to_param": {"*": torch.ones(2, 32)}},
               "lora_only": {"string_to_param": {"*": torch.ones(1, 32)}},
               "too_wide": {"string_to_param": {"*": torch.ones(1, 768)}}}
    skipped = db.set_bundled(bundled_embeddings("my_lora", bundles), {"default": 32})
    assert [s.name for s in skipped] == ["too_wide"]
    assert db.loaded["kiln_tok"].vectors == 1  # the folder's copy wins
    assert db.loaded["lora_only"].bundled_in == "my_lora"
    db.set_bundled({}, {"default": 32})
    assert "lora_only" not in db.loaded and "kiln_tok" in db.loaded


def test_embedding_from_data_rejects_unknown_layouts():
    from core.errors import ModelFileError

    with pytest.raises(ModelFileError):
        embedding_from_data({"string_to_param": {"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}}, "x")
    with pytest.raises(ModelFileError):
        embedding_from_data({"name": "no tensors"}, "x")
