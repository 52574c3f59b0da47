"""The checker reads background, shape colour and shape class back from pictures."""

import random

import numpy as np
from PIL import Image

from core.shapes import checker, world


def test_reads_the_worlds_own_pictures():
    samples = world.sample_world(seed=11, n=300, split="all")
    results = [checker.check_image(s.image) for s in samples]
    expected = [checker.Expected(s.color, s.shape, s.background) for s in samples]
    accuracy = checker.score(results, expected)
    assert accuracy["background"] >= 0.98
    assert accuracy["color"] >= 0.98
    assert accuracy["shape"] >= 0.98


def test_shape_class_does_not_depend_on_rotation():
    rng = random.Random(4)
    for shape in world.SHAPES:
        for _ in range(12):
            params = world.ShapeParams(32 + rng.uniform(-3, 3), 32 + rng.uniform(-3, 3), rng.uniform(13, 17), rng.uniform(0, 360))
            result = checker.check_image(world.render(shape, "yellow", "black", params))
            assert result.shape == shape, (shape, params, result)


def test_background_ignores_a_smeared_frame():
    # VAEs smear a 2-3 px frame of another colour along the edge.
    array = np.array(world.render("square", "white", "green"))
    array[:3, :] = array[-3:, :] = array[:, :3] = array[:, -3:] = world.PALETTE["red"]
    result = checker.check_image(Image.fromarray(array))
    assert (result.background, result.color, result.shape) == ("green", "white", "square")


def test_tolerates_noise_and_blur():
    rng = np.random.default_rng(0)
    from PIL import ImageFilter

    for shape in world.SHAPES:
        img = world.render(shape, "blue", "yellow").filter(ImageFilter.GaussianBlur(1.0))
        noisy = np.clip(np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
        result = checker.check_image(Image.fromarray(noisy))
        assert (result.background, result.color, result.shape) == ("yellow", "blue", shape)


def test_empty_picture_has_no_shape():
    result = checker.check_image(Image.new("RGB", (64, 64), world.PALETTE["white"]))
    assert result.background == "white"
    assert result.color is None and result.shape is None


def test_largest_component_drops_specks():
    array = np.array(world.render("triangle", "red", "white"))
    array[10:12, 50:52] = world.PALETTE["black"]
    result = checker.check_image(Image.fromarray(array))
    assert (result.color, result.shape) == ("red", "triangle")


def test_score_counts_each_attribute():
    results = [
        checker.CheckResult("blue", "red", "circle", 1, 1, 1, 1, 1, 0.2),
        checker.CheckResult("blue", "red", "square", 1, 1, 1, 0.6, 1, 0.2),
    ]
    expected = [checker.Expected("red", "circle", "blue"), checker.Expected("green", "circle", "blue")]
    assert checker.score(results, expected) == {"background": 1.0, "color": 0.5, "shape": 0.5, "all": 0.5}
