"""``python -m core.dataset preprocess``: options from the command line, exit codes, a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.dataset.__main__ import main
from core.dataset.preprocess_cli import parse_size

REPO = Path(__file__).resolve().parents[1]


def make_source(folder: Path) -> Path:
    folder.mkdir()
    Image.new("RGB", (96, 64), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder / "b.jpg")
    (folder / "a.txt").write_text("sls, 1girl", encoding="utf-8")
    return folder


def test_parse_size():
    assert parse_size("512x768") == (512, 768)
    assert parse_size("640") == (640, 640)
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("big")


def test_main_writes_and_exits_0(tmp_path, capsys):
    src = make_source(tmp_path / "src")
    code = main(["preprocess", str(src), str(tmp_path / "out"), "--size", "64x48", "--flip", "--mode", "fill"])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a-flipped.png", "a-flipped.txt", "a.png", "a.txt", "b-flipped.png", "b.png"]
    with Image.open(tmp_path / "out" / "b.png") as im:
        assert im.size == (64, 48)
    out = capsys.readouterr()
    assert "4 pictures written" in out.out and "2/2" in out.err  # summary on stdout, bar on stderr


def test_broken_file_gives_exit_1_and_names_it(tmp_path, capsys):
    src = make_source(tmp_path / "src")
    (src / "bad.png").write_bytes(b"")
    assert main(["preprocess", str(src), str(tmp_path / "out"), "--size", "64"]) == 1
    assert "bad.png" in capsys.readouterr().err


def test_nested_destination_refused(tmp_path, capsys):
    src = make_source(tmp_path / "src")
    assert main(["preprocess", str(src), str(src / "out"), "--size", "64"]) == 1
    assert "inside the source" in capsys.readouterr().err
    assert not (src / "out").exists()


def test_bad_size_and_unknown_upscaler(tmp_path, capsys):
    src = make_source(tmp_path / "src")
    assert main(["preprocess", str(src), str(tmp_path / "o1"), "--size", "60x60"]) == 1
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "data"), "preprocess", str(src), str(tmp_path / "o2"),
                 "--upscaler", "4x-Missing"]) == 1
    assert "4x-Missing" in capsys.readouterr().err


def test_upscaler_lanczos_and_focal_options(tmp_path):
    src = make_source(tmp_path / "src")
    assert main(["preprocess", str(src), str(tmp_path / "out"), "--size", "64", "--focal", "--upscaler",
                 "Lanczos", "--split", "--format", "webp"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "a.webp", "b.webp"]


def test_subprocess(tmp_path):
    src = make_source(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "core.dataset", "preprocess", str(src), str(tmp_path / "out"),
                           "--size", "32x32"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "a.png").is_file()
    proc = subprocess.run([sys.executable, "-m", "core.dataset", "preprocess", str(tmp_path / "missing"),
                           str(tmp_path / "out2")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not found" in proc.stderr


def test_caption_in_the_same_pass_with_a_tagger(tmp_path, capsys):
    """Seed 003: preprocess and tag in one go; each result gets its .txt, the trigger first."""
    from core.dataset.taggers.fixtures import write_tiny_wd14

    data = tmp_path / "data"
    write_tiny_wd14(data / "models" / "tagger" / "tiny-wd14")
    src = make_source(tmp_path / "src")
    code = main(["--data-dir", str(data), "preprocess", str(src), str(tmp_path / "out"), "--size", "32x32",
                 "--caption", "tiny-wd14", "--trigger", "shengcai", "--caption-action", "ignore"])
    assert code == 0, capsys.readouterr().err
    a = (tmp_path / "out" / "a.txt").read_text(encoding="utf-8")
    b = (tmp_path / "out" / "b.txt").read_text(encoding="utf-8")
    assert a.startswith("shengcai, ") and "red theme" in a
    assert b.startswith("shengcai, ") and "green theme" in b
    assert (src / "a.txt").read_text(encoding="utf-8") == "sls, 1girl"  # the original untouched
    assert main(["--data-dir", str(data), "preprocess", str(src), str(tmp_path / "o2"), "--caption", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
