"""Auto focal-point crop (core/dataset/focal.py): faces found with OpenCV's bundled cascades,
edge and entropy points, weights, and no picture that makes it raise (seed 003's crash)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from core.dataset import focal
from core.dataset.focal import FocalWeights, Point, combine, focal_crop, focal_crop_result


def draw_face(canvas: tuple[int, int], centre: tuple[int, int], size: int, mode: str = "L") -> Image.Image:
    """A drawn frontal face (skin oval, dark eyes and brows, nose, mouth) the Haar cascades detect."""
    im = Image.new("L", canvas, 90)
    d = ImageDraw.Draw(im)
    cx, cy, s = centre[0], centre[1], size
    d.ellipse((cx - s * 0.42, cy - s * 0.55, cx + s * 0.42, cy + s * 0.55), fill=200)
    for ex in (-0.18, 0.18):
        d.ellipse((cx + ex * s - s * 0.09, cy - s * 0.165, cx + ex * s + s * 0.09, cy - s * 0.075), fill=40)
        d.rectangle((cx + ex * s - s * 0.12, cy - s * 0.25, cx + ex * s + s * 0.12, cy - s * 0.21), fill=60)
    d.polygon([(cx, cy - s * 0.05), (cx - s * 0.05, cy + s * 0.12), (cx + s * 0.05, cy + s * 0.12)], fill=150)
    d.ellipse((cx - s * 0.14, cy + s * 0.22, cx + s * 0.14, cy + s * 0.29), fill=70)
    return im.filter(ImageFilter.GaussianBlur(s / 40)).convert(mode)


def test_drawn_face_is_found_where_it_is():
    im = draw_face((256, 128), (200, 64), 80, "RGB")
    faces = focal.face_points(im)
    assert faces, "the frontal-face cascade should find the drawn face"
    assert all(abs(p.x - 200) < 20 and abs(p.y - 64) < 20 for p in faces)


def test_faceless_picture_has_no_face_points():
    im = Image.new("RGB", (128, 96), (30, 120, 200))
    ImageDraw.Draw(im).rectangle((10, 10, 60, 40), fill=(250, 250, 0))
    assert focal.face_points(im) == []


def test_crop_follows_the_face_in_a_wide_picture():
    im = draw_face((384, 128), (320, 64), 90, "RGB")  # face near the right edge
    result = focal_crop_result(im, 128, 128, FocalWeights(face=1.0, entropy=0.0, edges=0.0))
    assert result.image.size == (128, 128)
    assert result.faces
    left, top, right, bottom = result.box
    assert left <= 320 - 45 and right >= 320 + 45, result.box  # the whole face is in the crop
    # Without any weight the crop is centred (the fallback), which would cut the face off.
    centred = focal_crop_result(im, 128, 128, FocalWeights(face=0.0, entropy=0.0, edges=0.0))
    assert centred.box == (128, 0, 256, 128)


def test_crop_follows_a_face_in_a_tall_picture_too():
    im = draw_face((128, 384), (64, 280), 90, "RGB")  # face in the lower part
    result = focal_crop_result(im, 128, 128, FocalWeights(face=1.0, entropy=0.0, edges=0.0))
    assert result.box[0] == 0 and result.box[1] <= 280 - 45 and result.box[3] >= 280 + 45, result.box


def test_entropy_picks_the_busy_window():
    rng = np.random.default_rng(0)
    arr = np.full((64, 256), 128, np.uint8)
    arr[:, 180:244] = rng.integers(0, 256, (64, 64))  # noise on the right, flat elsewhere
    im = Image.fromarray(arr, "L")
    points = focal.entropy_points(im, 64, 64)
    assert len(points) == 1 and 170 <= points[0].x <= 254
    result = focal_crop_result(im, 64, 64, FocalWeights(face=0.0, entropy=1.0, edges=0.0))
    assert result.box[0] >= 150


def test_edges_pull_towards_corners():
    im = Image.new("L", (256, 64), 128)
    d = ImageDraw.Draw(im)
    for x in range(10, 60, 12):  # a row of sharp black squares at the left
        d.rectangle((x, 20, x + 6, 26), fill=0)
    points = focal.edge_points(im)
    assert points and all(p.x < 70 for p in points)
    result = focal_crop_result(im, 64, 64, FocalWeights(face=0.0, entropy=0.0, edges=1.0))
    assert result.box[0] <= 10 and result.box[2] >= 56, result.box  # every square in the crop


def test_bottom_tenth_is_ignored_for_edges():
    """A watermark in the bottom strip does not attract the crop (the WebUI's rule)."""
    im = Image.new("L", (128, 200), 128)
    ImageDraw.Draw(im).rectangle((10, 185, 60, 195), fill=0)
    assert focal.edge_points(im) == []


def test_weights_normalised_over_kinds_found():
    a = [Point(0, 0)]
    b = [Point(100, 100), Point(100, 300)]
    focus = combine([(a, 0.5), (b, 0.5), ([], 0.9)], Point(-1, -1))
    assert (focus.x, focus.y) == (50, 100)
    assert combine([([], 1.0)], Point(7, 8)) == Point(7, 8)
    assert combine([(a, 0.0)], Point(7, 8)) == Point(7, 8)


def test_negative_weight_refused():
    with pytest.raises(ValueError, match="face"):
        FocalWeights(face=-1)


@pytest.mark.parametrize("picture", [
    Image.new("L", (96, 64), 100),                           # grey
    Image.new("RGBA", (96, 64), (255, 0, 0, 0)),            # transparent
    Image.new("LA", (40, 90), (10, 200)),
    Image.new("P", (70, 50)),
    Image.new("I;16", (64, 80)),
    Image.new("CMYK", (50, 50), (0, 100, 0, 0)),
    Image.new("1", (90, 30)),
    Image.new("F", (30, 60)),
    Image.new("RGB", (1, 1), (1, 2, 3)),                     # 1×1
    Image.new("RGB", (3, 200)),                              # a sliver
    Image.new("RGB", (7, 5)),                                # tiny
])
def test_any_picture_gives_a_crop_of_the_asked_size(picture):
    for size in ((64, 64), (32, 48), (48, 16)):
        out = focal_crop(picture, *size, FocalWeights(face=0.9, entropy=0.15, edges=0.5))
        assert out.size == size and out.mode == "RGB"


def test_grey_and_rgba_faces_are_found_too():
    grey = draw_face((256, 128), (190, 64), 80, "L")
    rgba = draw_face((256, 128), (190, 64), 80, "RGBA")
    assert focal.face_points(grey) and focal.face_points(rgba)


def test_many_faces_do_not_crash():
    """Several detections are an N×4 array: the case that raised "truth value ... ambiguous"."""
    im = Image.new("L", (400, 130), 90)
    for cx in (70, 200, 330):
        im.paste(draw_face((130, 130), (65, 65), 90), (cx - 65, 0))
    faces = focal.face_points(im)
    assert len(faces) >= 2
    assert focal_crop(im, 128, 128).size == (128, 128)


def test_huge_picture_is_analysed_on_a_small_copy(monkeypatch):
    seen = []
    original = focal.face_points
    monkeypatch.setattr(focal, "face_points", lambda im: seen.append(im.size) or original(im))
    im = draw_face((4000, 1000), (3300, 500), 700, "RGB")
    result = focal_crop_result(im, 256, 256, FocalWeights(face=1.0, entropy=0.0, edges=0.0))
    assert max(seen[0]) <= focal.ANALYSIS_MAX_SIDE
    assert result.image.size == (256, 256)
    assert result.box[0] > 512  # the face is at 82% of the width: the crop went right


def test_failing_detector_only_drops_its_points(monkeypatch):
    import cv2

    def boom(*_args, **_kwargs):
        raise cv2.error("simulated")

    monkeypatch.setattr(cv2, "goodFeaturesToTrack", boom)
    assert focal.edge_points(Image.new("RGB", (64, 64))) == []
    assert focal_crop(Image.new("RGB", (128, 64)), 64, 64).size == (64, 64)


def test_bad_crop_size_refused():
    with pytest.raises(ValueError):
        focal_crop(Image.new("RGB", (10, 10)), 0, 10)
