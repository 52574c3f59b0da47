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


# ------------------------------------------------------------ the WebUI's cache.json keys --
def _webui_cache(path, sections):
    path.write_text(json.dumps({**sections, "safetensors-metadata": {"checkpoint/x": {"mtime": 1, "value": {}}}}))


def test_a_webui_cache_json_is_read_under_its_titles_and_its_other_sections_kept(tmp_path):
    ckpt = tmp_path / "models" / "Stable-diffusion" / "sub" / "model.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"checkpoint bytes")
    lora = tmp_path / "models" / "Lora" / "style.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(lora))
    cache_path = tmp_path / "cache.json"
    _webui_cache(cache_path, {
        "hashes": {"checkpoint/sub/model.safetensors": {"mtime": ckpt.stat().st_mtime, "sha256": "a" * 64}},
        "hashes-addnet": {"lora/style": {"mtime": lora.stat().st_mtime, "sha256": "b" * 64}}})
    cache = HashCache(cache_path)
    # Planted values prove the WebUI's entries are used: nothing is hashed.
    assert cache.sha256(ckpt, "checkpoint", name="sub/model.safetensors") == "a" * 64
    assert cache.addnet(lora, "lora", name="style") == "b" * 64
    other = ckpt.parent.parent / "other.safetensors"
    other.write_bytes(b"other")
    assert cache.sha256(other, "checkpoint", name="other.safetensors") == hashlib.sha256(b"other").hexdigest()
    data = json.loads(cache_path.read_text())
    entry = data["hashes"]["checkpoint/other.safetensors"]
    assert entry["mtime"] == other.stat().st_mtime and entry["sha256"] == hashlib.sha256(b"other").hexdigest()
    assert data["hashes"]["checkpoint/sub/model.safetensors"]["sha256"] == "a" * 64
    assert data["hashes-addnet"]["lora/style"]["sha256"] == "b" * 64
    assert data["safetensors-metadata"] == {"checkpoint/x": {"mtime": 1, "value": {}}}


def test_a_webui_entry_for_an_older_file_version_or_a_windows_name(tmp_path):
    ckpt = tmp_path / "sub" / "m.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"new bytes")
    mtime = ckpt.stat().st_mtime
    cache_path = tmp_path / "cache.json"
    _webui_cache(cache_path, {"hashes": {"checkpoint/sub\\m.ckpt": {"mtime": mtime, "sha256": "c" * 64}}})
    assert HashCache(cache_path).sha256(ckpt, name="sub/m.ckpt") == "c" * 64  # a Windows WebUI's key
    _webui_cache(cache_path, {"hashes": {"checkpoint/sub/m.ckpt": {"mtime": mtime - 10, "sha256": "c" * 64}}})
    assert HashCache(cache_path).sha256(ckpt, name="sub/m.ckpt") == hashlib.sha256(b"new bytes").hexdigest()


def test_entries_a_webui_adds_meanwhile_survive_kilns_next_write(tmp_path):
    cache_path = tmp_path / "cache.json"
    cache = HashCache(cache_path)
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    one.write_bytes(b"1")
    two.write_bytes(b"2")
    cache.sha256(one, name="one.safetensors")
    data = json.loads(cache_path.read_text())
    data["hashes"]["checkpoint/webui-only.safetensors"] = {"mtime": 5.0, "sha256": "d" * 64}
    cache_path.write_text(json.dumps(data))
    cache.sha256(two, name="two.safetensors")
    keys = set(json.loads(cache_path.read_text())["hashes"])
    assert keys == {"checkpoint/one.safetensors", "checkpoint/two.safetensors", "checkpoint/webui-only.safetensors"}


def test_a_shared_webui_folders_cache_is_reused_and_left_untouched(tmp_path):
    from core.cli import parse_flags
    from core.engine import Engine
    from core.settings import Settings

    webui = tmp_path / "stable-diffusion-webui"
    ckpt = webui / "models" / "Stable-diffusion" / "shared.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a multi-GB file, in spirit")
    _webui_cache(webui / "cache.json",
                 {"hashes": {"checkpoint/shared.safetensors": {"mtime": ckpt.stat().st_mtime, "sha256": "e" * 64}}})
    before = (webui / "cache.json").read_bytes()
    kiln = tmp_path / "kiln"
    settings = Settings.from_flags(parse_flags(["--data-dir", str(kiln), "--ckpt-dir", str(ckpt.parent)]), kiln)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    entry = engine.registry.find_checkpoint("shared.safetensors")
    assert entry.sha256 == "e" * 64 and entry.title == "shared.safetensors [eeeeeeeeee]"
    assert engine.registry.sha256(entry) == "e" * 64
    assert (webui / "cache.json").read_bytes() == before  # Kiln writes only its own cache.json
