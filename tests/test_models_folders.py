"""The one folder walk every model list uses (core/models/folders.py)."""

from __future__ import annotations

import os

import pytest

from core.models.folders import natural_key, walk_files


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


def test_recursive_natural_order_and_case_insensitive_endings(tmp_path):
    for rel in ("m10.safetensors", "m2.SAFETENSORS", "B/x.ckpt", "a/y.pt", "notes.txt", "z.vae.pt"):
        touch(tmp_path / rel)
    assert names(walk_files(tmp_path, (".safetensors", ".ckpt", ".pt")), tmp_path) == [
        "a/y.pt", "B/x.ckpt", "m2.SAFETENSORS", "m10.safetensors", "z.vae.pt"]
    assert names(walk_files(tmp_path, (".vae.pt",)), tmp_path) == ["z.vae.pt"]
    assert len(walk_files(tmp_path)) == 6
    assert natural_key("M2") < natural_key("m10")


def test_hidden_files_folders_and_half_written_temp_files_are_left_out(tmp_path):
    touch(tmp_path / "ok.pt")
    touch(tmp_path / ".hidden.pt")
    touch(tmp_path / ".ok.pt.k3j2h1.tmp")  # core.fileio's temp name while a save is under way
    touch(tmp_path / ".git" / "inside.pt")
    touch(tmp_path / "sub" / ".cache" / "deep.pt")
    assert names(walk_files(tmp_path, (".pt", ".tmp")), tmp_path) == ["ok.pt"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_symlinked_folders_are_followed_and_a_link_loop_ends(tmp_path):
    outside = tmp_path / "elsewhere"
    touch(outside / "linked.safetensors")
    root = tmp_path / "models"
    touch(root / "own.safetensors")
    (root / "shared").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root, target_is_directory=True)  # a loop
    found = names(walk_files(root, (".safetensors",)), root)
    assert found[:2] == ["own.safetensors", "shared/linked.safetensors"]
    assert len(found) == len(set(p.resolve() for p in walk_files(root, (".safetensors",))))


def test_missing_folder_and_custom_order(tmp_path):
    assert walk_files(None) == [] and walk_files(tmp_path / "absent") == []
    touch(tmp_path / "b.pt")
    touch(tmp_path / "A.pt")
    assert names(walk_files(tmp_path, (".pt",), key=str), tmp_path) == ["A.pt", "b.pt"]
    assert names(walk_files(tmp_path, (".pt",), key=lambda p: p.name != "b.pt"), tmp_path) == ["b.pt", "A.pt"]
