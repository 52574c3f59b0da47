"""Preprocess (core/dataset/preprocess.py) and Extras upscale (core/dataset/upscale.py) on
generated pictures: sizes and modes, split, auto-size, focal, flip, upscale-first, captions,
resume, and bad input (missing / empty folder, 0-byte and broken files, nested folders)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.dataset.focal import FocalWeights
from core.dataset.preprocess import (
    PreprocessOptions,
    auto_size,
    center_crop,
    check_folders,
    process_image,
    resize_and_fill,
    run_preprocess,
    split_oversized,
)
from core.dataset.upscale import SCALE_BY, SCALE_TO, ExtrasUpscale, extras_upscale, plain_upscale
from core.errors import InvalidParameterError, KilnError


def picture(w: int, h: int, colour=(200, 60, 30)) -> Image.Image:
    im = Image.new("RGB", (w, h), colour)
    d = ImageDraw.Draw(im)
    d.rectangle((w // 4, h // 4, w // 2, h // 2), fill=(20, 200, 90))
    d.line((0, 0, w, h), fill=(0, 0, 0), width=2)
    return im


def save(folder: Path, name: str, image: Image.Image, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    image.save(path, **kwargs)
    return path


def opts(**kwargs) -> PreprocessOptions:
    base = {"width": 64, "height": 64}
    base.update(kwargs)
    return PreprocessOptions(**base)


# ------------------------------------------------------------------ options --
@pytest.mark.parametrize("kwargs, words", [
    ({"width": 60}, "multiple of 8"),
    ({"height": 0}, "multiple of 8"),
    ({"width": 9000}, "multiple of 8"),
    ({"mode": "stretch"}, "mode"),
    ({"overlap_ratio": 0.95}, "overlap"),
    ({"split_threshold": 1.5}, "threshold"),
    ({"auto_size": True, "auto_min_dim": 800, "auto_max_dim": 400}, "auto-sized"),
    ({"output_format": "gif"}, "format"),
    ({"caption_action": "merge"}, "caption action"),
])
def test_bad_options_refused_with_the_field(kwargs, words):
    with pytest.raises(KilnError, match=words):
        PreprocessOptions(**kwargs)


def test_default_is_512_square_crop():
    o = PreprocessOptions()
    assert (o.width, o.height, o.mode) == (512, 512, "crop")


# ----------------------------------------------------------- picture sizing --
def test_center_crop_keeps_the_middle():
    im = Image.new("RGB", (120, 40), (255, 0, 0))
    im.paste((0, 0, 255), (40, 0, 80, 40))  # blue middle third
    out = center_crop(im, 32, 32)
    assert out.size == (32, 32)
    assert out.getpixel((16, 16))[2] > 200 and out.getpixel((1, 16))[2] > 150


def test_fill_stretches_the_edges_into_the_border():
    im = Image.new("RGB", (64, 32), (10, 10, 10))
    im.paste((250, 0, 0), (0, 0, 64, 1))  # red top row, black below
    out = resize_and_fill(im, 64, 64)
    assert out.size == (64, 64)
    assert out.getpixel((30, 2))[0] > 200  # the top band repeats the red top row
    assert out.getpixel((30, 32))[0] < 40  # the picture itself in the middle


def test_resize_mode_stretches():
    out = process_image(picture(128, 32), opts(mode="resize"))[0][0]
    assert out.size == (64, 64)


def test_split_a_tall_picture_into_overlapping_tiles():
    tall = picture(32, 160)  # after scaling: 64 × 320 → tiles of 64 with 20% overlap
    tiles = split_oversized(tall, 64, 64, 0.5, 0.2)
    assert tiles is not None and len(tiles) == 6
    assert all(t.size == (64, 64) for t in tiles)
    assert split_oversized(picture(64, 80), 64, 64, 0.5, 0.2) is None  # not oversized
    wide = split_oversized(picture(200, 40), 64, 64, 0.5, 0.0)
    assert wide is not None and len(wide) == 5


def test_split_falls_back_to_the_mode_for_normal_pictures():
    results, _ = process_image(picture(80, 64), opts(split=True))
    assert len(results) == 1 and results[0].size == (64, 64)


def test_auto_size_picks_the_largest_fitting_multiple_of_64():
    o = opts(auto_size=True, auto_min_dim=64, auto_max_dim=256, auto_max_area=256 * 256, auto_threshold=0.1)
    assert auto_size((300, 200), o) == (192, 128)
    assert auto_size((1000, 100), o) is None
    results, reason = process_image(picture(1000, 100), o)
    assert results == [] and "aspect" in reason
    results, _ = process_image(picture(300, 200), o)
    assert results[0].size == (192, 128)


def test_focal_crop_used_for_other_shapes():
    im = Image.new("L", (256, 64), 128)
    d = ImageDraw.Draw(im)
    for x in range(200, 250, 12):
        d.rectangle((x, 20, x + 6, 26), fill=0)
    o = opts(focal=True, focal_weights=FocalWeights(face=0, entropy=0, edges=1))
    out = process_image(im.convert("RGB"), o)[0][0]
    arr = np.asarray(out.convert("L"))
    assert (arr < 60).any()  # the squares at the right are in the crop
    centred = process_image(im.convert("RGB"), opts())[0][0]
    assert not (np.asarray(centred.convert("L")) < 60).any()  # a centre crop misses them


def test_upscale_first_only_when_smaller():
    calls = []

    def fake(image, name, w, h):
        calls.append((name, image.size, (w, h)))
        return image.resize((w, h))

    process_image(picture(32, 16), opts(upscaler="ESRGAN_4x"), fake)
    assert calls == [("ESRGAN_4x", (32, 16), (128, 64))]  # covers 64×64 keeping the aspect
    calls.clear()
    process_image(picture(128, 128), opts(upscaler="ESRGAN_4x"), fake)
    assert calls == []


# ------------------------------------------------------------------- extras --
def test_extras_scale_by_and_to():
    im = picture(40, 20)
    out, info = extras_upscale(im, ExtrasUpscale(resize_mode=SCALE_BY, upscaling_resize=2, upscaler_1="Lanczos"),
                               plain_upscale)
    assert out.size == (80, 40) and info["Postprocess upscale by"] == "2"
    out, info = extras_upscale(im, ExtrasUpscale(resize_mode=SCALE_TO, upscaling_resize_w=64, upscaling_resize_h=64,
                                                 upscaler_1="Lanczos"), plain_upscale)
    assert out.size == (64, 64) and info["Postprocess crop to"] == "64x64"
    out, _ = extras_upscale(im, ExtrasUpscale(resize_mode=SCALE_TO, upscaling_resize_w=64, upscaling_resize_h=64,
                                              upscaling_crop=False, upscaler_1="Lanczos"), plain_upscale)
    assert out.size == (128, 64)
    same, info = extras_upscale(im, ExtrasUpscale(upscaler_1="None"), plain_upscale)
    assert same is im and info == {}


def test_extras_upscaler_2_blends_at_its_visibility():
    im = Image.new("RGB", (8, 8), (100, 100, 100))

    def fake(image, name, w, h):
        return Image.new("RGB", (w, h), (0, 0, 0) if name == "black" else (200, 200, 200))

    settings = ExtrasUpscale(upscaling_resize=2, upscaler_1="black", upscaler_2="white",
                             extras_upscaler_2_visibility=0.25)
    out, info = extras_upscale(im, settings, fake)
    assert out.getpixel((3, 3)) == (50, 50, 50) and info["Postprocess upscaler 2"] == "white"


def test_extras_limits():
    with pytest.raises(InvalidParameterError, match="upscaling_resize"):
        ExtrasUpscale(upscaling_resize=0)
    with pytest.raises(InvalidParameterError, match="visibility"):
        ExtrasUpscale(extras_upscaler_2_visibility=2)
    with pytest.raises(InvalidParameterError, match="larger than"):
        ExtrasUpscale(upscaling_resize=16, upscaler_1="Lanczos").target_size((1000, 10))
    with pytest.raises(InvalidParameterError, match="unknown upscaler"):
        plain_upscale(picture(8, 8), "4x-UltraSharp", 16, 16)


# ------------------------------------------------------------------ folders --
def test_same_or_nested_folders_refused(tmp_path):
    src = tmp_path / "src"
    save(src, "a.png", picture(64, 64))
    with pytest.raises(KilnError, match="is the source"):
        check_folders(src, src)
    with pytest.raises(KilnError, match="inside the source"):
        check_folders(src, src / "out")
    with pytest.raises(KilnError, match="inside the destination"):
        check_folders(src, tmp_path)
    with pytest.raises(KilnError, match="not found"):
        check_folders(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(KilnError, match="is a file"):
        check_folders(src / "a.png", tmp_path / "out")
    with pytest.raises(KilnError, match="no source"):
        check_folders("", tmp_path / "out")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(KilnError, match="no pictures"):
        run_preprocess(tmp_path / "src", tmp_path / "out", opts())


def test_run_writes_sizes_flips_and_captions_and_leaves_originals(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    a = save(src, "a.png", picture(128, 96))
    save(src, "b.jpg", picture(40, 100, (20, 20, 200)))
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    save(src, "c.webp", rgba)
    (src / "a.txt").write_text("sls, 1girl", encoding="utf-8")
    (src / "b.txt").write_bytes("中文标签, 1girl".encode("gb18030"))  # a non-UTF-8 caption
    (src / "empty.png").write_bytes(b"")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.iterdir()}

    seen = []
    report = run_preprocess(src, dst, opts(flip=True), progress=seen.append)

    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.iterdir()} == before
    names = sorted(p.name for p in dst.iterdir())
    assert names == ["a-flipped.png", "a-flipped.txt", "a.png", "a.txt", "b-flipped.png", "b-flipped.txt",
                     "b.png", "b.txt", "c-flipped.png", "c.png"]
    for name in ("a.png", "b.png", "c.png", "a-flipped.png"):
        with Image.open(dst / name) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    with Image.open(dst / "c.png") as im:
        assert im.getpixel((5, 5)) == (255, 255, 255)  # transparency flattened on white
    with Image.open(dst / "a.png") as im, Image.open(dst / "a-flipped.png") as fl:
        assert np.array_equal(np.asarray(im)[:, ::-1], np.asarray(fl))
    assert (dst / "a.txt").read_text(encoding="utf-8") == "sls, 1girl"
    assert (dst / "b.txt").read_text(encoding="utf-8") == "中文标签, 1girl"
    assert {s.path.name for s in report.broken} == {"empty.png", "broken.jpg"}
    assert any("0 bytes" in s.reason for s in report.broken)
    assert len(report.written) == 6 and report.total == 5 and not report.stopped
    assert "6 pictures written" in report.summary() and "2 unreadable" in report.summary()
    assert any("broken.jpg" in line for line in report.problems())
    assert seen[-1].path is None and seen[-1].index == 5 and seen[0].path == a
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no temp files left


def test_rerun_skips_done_pictures_and_finishes_the_rest(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    for name in ("a.png", "b.png", "c.png"):
        save(src, name, picture(80, 64))
    stops = iter([False, False, True])
    first = run_preprocess(src, dst, opts(), should_stop=lambda: next(stops))
    assert first.stopped and [p.name for p in first.written] == ["a.png", "b.png"]
    stamp = (dst / "a.png").stat().st_mtime_ns
    second = run_preprocess(src, dst, opts())
    assert [p.name for p in second.written] == ["c.png"]
    assert [p.name for p in second.done_before] == ["a.png", "b.png"]
    assert (dst / "a.png").stat().st_mtime_ns == stamp  # not rewritten


def test_split_outputs_and_resume_marker_written_last(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    save(src, "long.png", picture(32, 160))
    report = run_preprocess(src, dst, opts(split=True))
    names = [p.name for p in report.written]
    assert names[-1] == "long.png" and len(names) == 6
    assert sorted(names) == ["long-2.png", "long-3.png", "long-4.png", "long-5.png", "long-6.png", "long.png"]


def test_same_stem_sources_get_distinct_outputs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    save(src, "a.jpg", picture(64, 64))
    save(src, "a.png", picture(64, 64, (0, 0, 0)))
    (src / "a.txt").write_text("shared", encoding="utf-8")
    run_preprocess(src, dst, opts())
    assert sorted(p.name for p in dst.iterdir()) == ["a_jpg.png", "a_jpg.txt", "a_png.png", "a_png.txt"]


def test_caption_callback_and_actions(tmp_path):
    src = tmp_path / "src"
    save(src, "a.png", picture(64, 64))
    save(src, "b.png", picture(64, 64))
    (src / "a.txt").write_text("trigger, 1girl", encoding="utf-8")

    def tagger(image: Image.Image) -> str:
        assert image.size == (64, 64)  # the tagger sees the result, not the original
        return "1girl, solo"

    cases = {"copy": "trigger, 1girl", "ignore": "1girl, solo", "prepend": "trigger, 1girl, solo",
             "append": "1girl, solo, trigger"}
    for action, expected in cases.items():
        dst = tmp_path / f"out-{action}"
        run_preprocess(src, dst, opts(caption=tagger, caption_action=action))
        assert (dst / "a.txt").read_text(encoding="utf-8") == expected, action
        assert (dst / "b.txt").read_text(encoding="utf-8") == "1girl, solo"


def test_recursive_keeps_the_layout_and_skips_hidden_folders(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    save(src / "10_sls 1girl", "a.png", picture(64, 64))
    save(src / ".kiln-caption-backups", "x.png", picture(64, 64))
    report = run_preprocess(src, dst, opts(recursive=True))
    assert [p.relative_to(dst).as_posix() for p in report.written] == ["10_sls 1girl/a.png"]


def test_extras_batch_uses_the_same_path(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    save(src, "a.png", picture(40, 30))
    o = opts(extras=ExtrasUpscale(upscaling_resize=2, upscaler_1="Lanczos"), output_format="jpg")
    report = run_preprocess(src, dst, o)
    with Image.open(report.written[0]) as im:
        assert im.size == (80, 60) and im.format == "JPEG"


def test_disk_full_is_a_clear_error_and_keeps_finished_files(tmp_path, monkeypatch):
    import core.dataset.preprocess as pp

    src, dst = tmp_path / "src", tmp_path / "out"
    for name in ("a.png", "b.png"):
        save(src, name, picture(64, 64))
    real = pp.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "b.png":
            raise OSError(28, os.strerror(28))
        return real(path, data)

    monkeypatch.setattr(pp, "atomic_write_bytes", full)
    with pytest.raises(KilnError, match="b.png.*could not write"):
        run_preprocess(src, dst, opts())
    assert sorted(p.name for p in dst.iterdir()) == ["a.png"]
    assert len(list(src.iterdir())) == 2
