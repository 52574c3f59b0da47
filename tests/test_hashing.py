"""Hashes as A1111 / kohya compute them, and the JSON hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import torch
from safetensors.torch import save_file

from core.hashing import HashCache, addnet_hash_safetensors, model_hash_old, sha256_file


def test_sha256_file_is_whole_file(tmp_path):
    p = tmp_path / "a.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_addnet_hash_ignores_metadata(tmp_path):
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(a), metadata={"ss_note": "one"})
    save_file(tensors, str(b), metadata={"ss_note": "a much longer note " * 10})
    assert sha256_file(a) != sha256_file(b)
    assert addnet_hash_safetensors(a) == addnet_hash_safetensors(b)
    raw = a.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert addnet_hash_safetensors(a) == hashlib.sha256(raw[8 + n:]).hexdigest()


def test_old_model_hash_window(tmp_path):
    big = tmp_path / "big.ckpt"
    data = os.urandom(0x100000 + 0x20000)
    big.write_bytes(data)
    assert model_hash_old(big) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    small = tmp_path / "small.ckpt"
    small.write_bytes(b"x" * 1000)
    assert model_hash_old(small) == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"


def test_hash_cache_reuses_until_file_changes(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"first version")
    cache_path = tmp_path / "cache.json"
    cache = HashCache(cache_path)
    assert cache.cached(model) is None
    first = cache.sha256(model)
    assert first == hashlib.sha256(b"first version").hexdigest()
    data = json.loads(cache_path.read_text())
    (key, entry), = data["hashes"].items()
    assert key.startswith("checkpoint/") and entry["sha256"] == first and "mtime" in entry
    # a new HashCache reads the file: a planted value for the same mtime/size proves the cache is used
    entry["sha256"] = "f" * 64
    cache_path.write_text(json.dumps(data))
    assert HashCache(cache_path).sha256(model) == "f" * 64
    # the file changes (mtime and size): the hash is computed again
    model.write_bytes(b"second version!")
    os.utime(model, (1_000_000, 1_000_000))
    again = HashCache(cache_path)
    assert again.cached(model) is None
    assert again.sha256(model) == hashlib.sha256(b"second version!").hexdigest()


def test_hash_cache_addnet_section(tmp_path):
    p = tmp_path / "lora.safetensors"
    save_file({"w": torch.ones(2)}, str(p))
    cache = HashCache(tmp_path / "cache.json")
    assert cache.addnet(p) == addnet_hash_safetensors(p)
    data = json.loads((tmp_path / "cache.json").read_text())
    assert list(data["hashes-addnet"])[0].startswith("lora/")


def test_damaged_cache_is_ignored(tmp_path):
    (tmp_path / "cache.json").write_text("{not json")
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"abc")
    assert HashCache(tmp_path / "cache.json").sha256(p) == hashlib.sha256(b"abc").hexdigest()
