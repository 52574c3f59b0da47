"""Model registry: WebUI folder scan, order, names, titles with hashes, checkpoint lookup."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from core.hashing import HashCache
from core.models.registry import ModelRegistry


@pytest.fixture()
def tree(tmp_path):
    ck, vae, lora, emb, hn = (tmp_path / d for d in ("ckpt", "VAE", "Lora", "embeddings", "hypernetworks"))
    files = {
        ck / "model10.safetensors": b"ten", ck / "model2.safetensors": b"two", ck / "Alpha.ckpt": b"alpha",
        ck / "sub" / "beta.safetensors": b"beta", ck / "model2.vae.safetensors": b"vae-near",
        ck / ".model3.safetensors.tmp": b"half-written", ck / "notes.txt": b"",
        vae / "ft-mse.safetensors": b"v1", vae / "old.pt": b"v2", vae / "x.bin": b"v3",
        lora / "style" / "Ink.safetensors": b"l1", lora / "a.pt": b"l2",
        emb / "bad-hands.pt": b"e1", emb / "nice.bin": b"e2", emb / "tok.safetensors": b"e3",
        hn / "anime.pt": b"h1",
    }
    for p, data in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    paths = SimpleNamespace(ckpt_dir=ck, vae_dir=vae, lora_dir=lora, embeddings_dir=emb, hypernetwork_dir=hn)
    return paths, HashCache(tmp_path / "cache.json")


def test_scan_names_order_and_kinds(tree):
    paths, cache = tree
    reg = ModelRegistry(paths, cache)
    assert [e.name for e in reg.checkpoints()] == ["Alpha.ckpt", "model2.safetensors", "model10.safetensors",
                                                   "sub/beta.safetensors"]
    assert [e.title for e in reg.checkpoints()] == [e.name for e in reg.checkpoints()]  # not hashed yet
    assert [e.name for e in reg.vaes()] == ["ft-mse.safetensors", "model2.vae.safetensors", "old.pt", "x.bin"]
    assert [e.name for e in reg.loras()] == ["a", "Ink"]
    assert [e.relative for e in reg.loras()] == ["a.pt", "style/Ink.safetensors"]
    assert sorted(e.name for e in reg.embeddings_files()) == ["bad-hands", "nice", "tok"]
    assert [e.name for e in reg.hypernetworks()] == ["anime"]


def test_dict_paths_and_refresh(tree):
    paths, cache = tree
    reg = ModelRegistry(vars(paths), cache)
    (paths.ckpt_dir / "new.safetensors").write_bytes(b"new")
    assert "new.safetensors" not in [e.name for e in reg.checkpoints()]
    reg.refresh()
    assert "new.safetensors" in [e.name for e in reg.checkpoints()]


def test_title_with_hash_and_lookup(tree):
    paths, cache = tree
    reg = ModelRegistry(paths, cache)
    beta = reg.find_checkpoint("beta")
    assert beta is not None and beta.name == "sub/beta.safetensors"
    full = hashlib.sha256(b"beta").hexdigest()
    assert reg.title_with_hash(beta) == f"sub/beta.safetensors [{full[:10]}]"
    # a new registry picks the hash up from the cache without hashing again
    again = ModelRegistry(paths, HashCache(cache.cache_path))
    assert again.find_checkpoint("sub/beta.safetensors").title == f"sub/beta.safetensors [{full[:10]}]"
    assert again.find_checkpoint(f"sub/beta.safetensors [{full[:10]}]").name == "sub/beta.safetensors"
    assert again.find_checkpoint("model2").name == "model2.safetensors"
    assert again.find_checkpoint("model2.safetensors [0000000000]").name == "model2.safetensors"
    assert again.find_checkpoint(hashlib.sha256(b"alpha").hexdigest()[:10]).name == "Alpha.ckpt"
    assert again.find_checkpoint("odel1").name == "model10.safetensors"
    assert again.find_checkpoint("nothing-like-it") is None
    assert again.find_checkpoint("") is None


def test_builtin_checkpoint_folder_is_listed(tree, tmp_path):
    paths, cache = tree
    builtin = tmp_path / "repo" / "models" / "Stable-diffusion"
    builtin.mkdir(parents=True)
    (builtin / "kiln-shapes.safetensors").write_bytes(b"shapes")
    paths.builtin_checkpoint_dir = builtin
    names = [e.name for e in ModelRegistry(paths, cache).checkpoints()]
    assert "kiln-shapes.safetensors" in names and "model2.safetensors" in names


def test_find_vae_by_name(tree):
    paths, cache = tree
    reg = ModelRegistry(paths, cache)
    assert reg.find("vae", "ft-mse.safetensors").path.parent == paths.vae_dir
    assert reg.find("lora", "Ink").relative == "style/Ink.safetensors"
