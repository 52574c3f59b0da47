"""Auto focal-point crop: cut a W×H window out of a picture around what matters in it.

The semantics follow the WebUI's ``textual_inversion/autocrop.py`` (used by its Preprocess and,
since 1.7, by Extras › "Auto focal point crop"): the picture is scaled so that it covers the
target, then three kinds of points of interest are found — faces (OpenCV's Haar cascades that
ship inside opencv-python, so nothing is downloaded), edges (corner features) and the window
with the most entropy along the long side — each kind averaged to a centroid, the centroids
averaged with the user's weights (normalised over the kinds that found something), and the
crop window centred there and pushed back inside the picture.

Unlike the WebUI (seed 003: "The truth value of an array with more than one element is
ambiguous" from ``if faces:`` on a numpy array, and cv2 errors on grey pictures), every step
here accepts any Pillow picture — grey, RGBA, 16-bit, palette, 1×1, tiny, huge, faceless — and
a detector that fails only drops its kind of point; ``focal_crop`` never raises for a picture.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.dataset.images import to_rgb

log = logging.getLogger(__name__)

# Detection runs on a copy whose long side is at most this (speed on huge pictures; points are
# mapped back). Large enough that a face a twentieth of the picture wide is still ~25 px.
ANALYSIS_MAX_SIDE = 768
ENTROPY_POSITIONS = 48  # windows tried along the long side (the WebUI slides by 4 px: thousands)

# (cascade file in cv2.data.haarcascades, smallest object as a fraction of the short side).
# The WebUI tries these in order and keeps the first that finds anything; so do we, without
# the eye and upper-body cascades, which fire on textures and anime hair more than on faces.
FACE_CASCADES: tuple[tuple[str, float], ...] = (
    ("haarcascade_frontalface_default.xml", 0.05),
    ("haarcascade_profileface.xml", 0.05),
    ("haarcascade_frontalface_alt.xml", 0.05),
    ("haarcascade_frontalface_alt2.xml", 0.05),
)
_CASCADE_MIN_SIDE = 24  # the cascades' own window: a smaller picture can hold no face


@dataclass(frozen=True)
class FocalWeights:
    """How much each kind of point pulls the crop (the WebUI's sliders, 0–1, its defaults)."""

    face: float = 0.9
    entropy: float = 0.15
    edges: float = 0.5

    def __post_init__(self) -> None:
        for name in ("face", "entropy", "edges"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"focal {name} weight must be a number ≥ 0, got {value!r}")


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    weight: float = 1.0


@dataclass(frozen=True)
class FocalResult:
    """The crop and why it is there (for a debug view or a test)."""

    image: Image.Image
    box: tuple[int, int, int, int]  # in the scaled picture
    focus: Point
    faces: tuple[Point, ...] = ()
    edges: tuple[Point, ...] = ()
    entropy: tuple[Point, ...] = ()


# ----------------------------------------------------------------- detectors --
_local = threading.local()  # CascadeClassifier objects are not shared between threads


def _cascade(name: str):
    import cv2

    cache = getattr(_local, "cascades", None)
    if cache is None:
        cache = _local.cascades = {}
    if name not in cache:
        classifier = None
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder or "") / name
        if folder and path.is_file():
            classifier = cv2.CascadeClassifier(str(path))
            if classifier.empty():
                classifier = None
        if classifier is None:
            log.warning("OpenCV face cascade %s not found in this opencv build; focal crop goes without faces", name)
        cache[name] = classifier
    return cache[name]


def _grey(image: Image.Image) -> np.ndarray:
    """An 8-bit C-contiguous grey array of any picture (alpha flattened on white first)."""
    return np.ascontiguousarray(np.asarray(to_rgb(image).convert("L"), dtype=np.uint8))


def face_points(image: Image.Image) -> list[Point]:
    """Centres of the faces found by the first cascade that finds any; [] when none (or no cv2)."""
    rects = face_rects(image)
    return [Point(x + fw / 2, y + fh / 2, 1.0 / len(rects)) for x, y, fw, fh in rects]


def face_rects(image: Image.Image) -> list[tuple[float, float, float, float]]:
    """(x, y, w, h) of the faces found by the first cascade that finds any; [] when none (or no cv2)."""
    grey = _grey(image)
    h, w = grey.shape[:2]
    if min(w, h) < _CASCADE_MIN_SIDE:
        return []
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency; stay usable without it
        return []
    for name, fraction in FACE_CASCADES:
        classifier = _cascade(name)
        if classifier is None:
            continue
        side = max(int(min(w, h) * fraction), _CASCADE_MIN_SIDE)
        try:
            faces = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=7, minSize=(side, side),
                                                flags=cv2.CASCADE_SCALE_IMAGE)
        except cv2.error as exc:
            log.debug("face cascade %s failed on a %dx%d picture: %s", name, w, h, exc)
            continue
        # detectMultiScale returns an empty tuple or an N×4 array: len() works for both (``if faces``
        # on the array is seed 003's crash).
        rects = np.asarray(faces, dtype=np.float64).reshape(-1, 4)
        if len(rects) == 0:
            continue
        return [tuple(float(v) for v in r) for r in rects]
    return []


def edge_points(image: Image.Image) -> list[Point]:
    """Strong corners (cv2.goodFeaturesToTrack), as the WebUI's "edges"; [] on a flat picture."""
    grey = _grey(image)
    h, w = grey.shape[:2]
    if min(w, h) < 3:
        return []
    # The WebUI's guard against watermarks and signatures: the bottom tenth counts as flat grey.
    grey = grey.copy()
    grey[int(h * 0.9):, :] = 153
    try:
        import cv2

        found = cv2.goodFeaturesToTrack(grey, maxCorners=100, qualityLevel=0.04,
                                        minDistance=max(min(w, h) * 0.06, 1.0), useHarrisDetector=False)
    except Exception as exc:  # cv2.error, or cv2 missing: no edge points, not a failed crop
        log.debug("corner detection failed on a %dx%d picture: %s", w, h, exc)
        return []
    if found is None:
        return []
    corners = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    return [Point(float(x), float(y), 1.0 / len(corners)) for x, y in corners]


def _entropy(grey: np.ndarray) -> float:
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum())


def entropy_points(image: Image.Image, crop_width: int, crop_height: int) -> list[Point]:
    """The centre of the crop-sized window with the most grey-level entropy along the long side
    (a square picture, or one no bigger than the window, has a single window: no point)."""
    grey = _grey(image)
    h, w = grey.shape[:2]
    cw, ch = min(crop_width, w), min(crop_height, h)
    if w > cw and w >= h:
        along, span, window = "x", w, cw
    elif h > ch:
        along, span, window = "y", h, ch
    else:
        return []
    steps = min(ENTROPY_POSITIONS, span - window) + 1
    best, best_at = -1.0, 0
    for i in range(steps):
        start = round((span - window) * i / (steps - 1)) if steps > 1 else 0
        part = grey[:, start:start + window] if along == "x" else grey[start:start + window, :]
        e = _entropy(part)
        if e > best:
            best, best_at = e, start
    if along == "x":
        return [Point(best_at + cw / 2, ch / 2)]
    return [Point(cw / 2, best_at + ch / 2)]


# --------------------------------------------------------------------- focus --
def _centroid(points: list[Point], weight: float) -> Point:
    return Point(sum(p.x for p in points) / len(points), sum(p.y for p in points) / len(points), weight)


def combine(kinds: list[tuple[list[Point], float]], fallback: Point) -> Point:
    """Each kind's centroid, averaged with its weight normalised over the kinds that found points."""
    found = [(points, weight) for points, weight in kinds if points and weight > 0]
    total = sum(weight for _, weight in found)
    if not found or total <= 0:
        return fallback
    centroids = [_centroid(points, weight / total) for points, weight in found]
    return Point(sum(c.x * c.weight for c in centroids), sum(c.y * c.weight for c in centroids))


def focal_point(image: Image.Image, crop_width: int, crop_height: int,
                weights: FocalWeights = FocalWeights()) -> tuple[Point, dict[str, list[Point]]]:
    """The point the crop centres on, in ``image`` coordinates, and the points behind it.

    Detection runs on a copy at most ANALYSIS_MAX_SIDE px long; points are scaled back."""
    w, h = image.size
    scale = min(1.0, ANALYSIS_MAX_SIDE / max(w, h, 1))
    small = image if scale >= 1.0 else image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.Resampling.BILINEAR)
    back = 1.0 / scale

    def scaled(points: list[Point]) -> list[Point]:
        return [Point(p.x * back, p.y * back, p.weight) for p in points]

    found = {
        "faces": scaled(face_points(small)) if weights.face > 0 else [],
        "edges": scaled(edge_points(small)) if weights.edges > 0 else [],
        "entropy": (scaled(entropy_points(small, max(1, round(crop_width * scale)),
                                          max(1, round(crop_height * scale))))
                    if weights.entropy > 0 else []),
    }
    focus = combine([(found["faces"], weights.face), (found["edges"], weights.edges),
                     (found["entropy"], weights.entropy)], Point(w / 2, h / 2))
    return focus, found


def cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The smallest size with ``size``'s aspect ratio that covers width × height."""
    w, h = size
    scale = max(width / w, height / h)
    return max(width, round(w * scale)), max(height, round(h * scale))


def window_around(focus: Point, size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """A width × height box centred on ``focus`` as far as the picture's edges allow."""
    w, h = size
    left = int(round(focus.x - width / 2))
    top = int(round(focus.y - height / 2))
    left = min(max(left, 0), max(w - width, 0))
    top = min(max(top, 0), max(h - height, 0))
    return left, top, left + width, top + height


def focal_crop_result(image: Image.Image, width: int, height: int,
                      weights: FocalWeights = FocalWeights()) -> FocalResult:
    """``image`` scaled to cover width × height and cropped there around its focal point."""
    if width < 1 or height < 1:
        raise ValueError(f"crop size must be positive, got {width}x{height}")
    image = to_rgb(image)
    if image.width < 1 or image.height < 1:  # Pillow can hold a 0×N picture; give a blank crop
        blank = Image.new("RGB", (width, height), (255, 255, 255))
        return FocalResult(blank, (0, 0, width, height), Point(width / 2, height / 2))
    size = cover_size(image.size, width, height)
    scaled = image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
    focus, found = focal_point(scaled, width, height, weights)
    box = window_around(focus, size, width, height)
    return FocalResult(scaled.crop(box), box, focus, tuple(found["faces"]), tuple(found["edges"]),
                       tuple(found["entropy"]))


def focal_crop(image: Image.Image, width: int, height: int, weights: FocalWeights = FocalWeights()) -> Image.Image:
    """The width × height RGB crop of ``image`` around its focal point (never raises for a picture)."""
    return focal_crop_result(image, width, height, weights).image
