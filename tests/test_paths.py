"""Folder layout: the WebUI's, under --data-dir, each folder overridable by its flag."""

from __future__ import annotations

import os
from pathlib import Path

from core.cli import parse_flags
from core.paths import KilnPaths


def test_default_layout_is_the_webuis(tmp_path):
    p = KilnPaths.from_flags(parse_flags([]), tmp_path)
    assert p.data_dir == tmp_path
    assert p.ckpt_dir == tmp_path / "models" / "Stable-diffusion"
    assert p.vae_dir == tmp_path / "models" / "VAE"
    assert p.lora_dir == tmp_path / "models" / "Lora"
    assert p.embeddings_dir == tmp_path / "embeddings"
    assert p.hypernetwork_dir == tmp_path / "models" / "hypernetworks"
    assert p.esrgan_dir == tmp_path / "models" / "ESRGAN"
    assert p.outputs_dir == tmp_path / "outputs"
    assert p.config_path == tmp_path / "config.json"
    assert p.cache_path == tmp_path / "cache.json"
    assert p.extensions_dir == tmp_path / "extensions"
    assert p.builtin_checkpoint_dir == p.ckpt_dir
    assert p.checkpoint_dirs() == [p.ckpt_dir]


def test_data_dir_moves_everything_but_the_builtin_model(tmp_path):
    repo, data = tmp_path / "repo", tmp_path / "data"
    p = KilnPaths.from_flags(parse_flags(["--data-dir", str(data)]), repo)
    for folder in p.folders():
        assert data in folder.parents or folder == data, folder
    assert p.config_path == data / "config.json" and p.cache_path == data / "cache.json"
    assert p.builtin_checkpoint_dir == repo / "models" / "Stable-diffusion"
    assert p.checkpoint_dirs() == [data / "models" / "Stable-diffusion", repo / "models" / "Stable-diffusion"]


def test_each_folder_flag_overrides_its_folder(tmp_path):
    argv = [
        "--data-dir", str(tmp_path / "data"),
        "--ckpt-dir", str(tmp_path / "ck"), "--vae-dir", str(tmp_path / "va"),
        "--lora-dir", str(tmp_path / "lo"), "--embeddings-dir", str(tmp_path / "em"),
        "--hypernetwork-dir", str(tmp_path / "hn"), "--esrgan-models-path", str(tmp_path / "es"),
    ]
    p = KilnPaths.from_flags(parse_flags(argv), tmp_path / "repo")
    assert (p.ckpt_dir, p.vae_dir, p.lora_dir) == (tmp_path / "ck", tmp_path / "va", tmp_path / "lo")
    assert (p.embeddings_dir, p.hypernetwork_dir, p.esrgan_dir) == (tmp_path / "em", tmp_path / "hn", tmp_path / "es")
    # Folders without a flag of their own stay under the data folder.
    assert p.outputs_dir == tmp_path / "data" / "outputs"
    assert p.extensions_dir == tmp_path / "data" / "extensions"
    assert p.checkpoint_dirs()[0] == tmp_path / "ck"


def test_relative_flags_resolve_against_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = KilnPaths.from_flags(parse_flags(["--lora-dir", "my-loras", "--data-dir", "d"]), Path("/repo"))
    assert p.lora_dir == tmp_path / "my-loras"
    assert p.data_dir == tmp_path / "d"
    assert all(folder.is_absolute() for folder in p.folders())


def test_home_folder_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = KilnPaths.from_flags(parse_flags(["--ckpt-dir", "~/sd"]), tmp_path / "repo")
    assert p.ckpt_dir == tmp_path / "sd"


def test_ensure_dirs_creates_the_layout(tmp_path):
    data = tmp_path / "fresh"
    p = KilnPaths.from_flags(parse_flags(["--data-dir", str(data)]), tmp_path / "repo")
    p.ensure_dirs()
    for rel in ["models/Stable-diffusion", "models/VAE", "models/Lora", "models/hypernetworks",
                "models/ESRGAN", "embeddings", "outputs", "extensions"]:
        assert (data / rel).is_dir(), rel
    assert not p.config_path.exists()  # settings files are written by Settings.save, not here
    assert not (tmp_path / "repo").exists()  # the repo's folders are only read
    p.ensure_dirs()  # idempotent


def test_checkpoint_dirs_deduplicates_through_symlinks(tmp_path):
    repo = tmp_path / "repo"
    (repo / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(repo / "models" / "Stable-diffusion", tmp_path / "link")
    p = KilnPaths.from_flags(parse_flags(["--ckpt-dir", str(tmp_path / "link")]), repo)
    assert p.checkpoint_dirs() == [tmp_path / "link"]


def test_resolve_output(tmp_path):
    p = KilnPaths.from_flags(parse_flags([]), tmp_path)
    assert p.resolve_output("outputs/txt2img-images") == tmp_path / "outputs" / "txt2img-images"
    assert p.resolve_output(tmp_path / "abs") == tmp_path / "abs"
