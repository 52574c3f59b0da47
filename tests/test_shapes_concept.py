"""The world's new concept (orange): drawn, kept out of the base model's world, read by the checker."""

import math
import random

import numpy as np
import pytest

from core.errors import InvalidParameterError
from core.shapes import checker, world


def test_concept_colours_keep_their_distance_from_the_palette():
    # Not the palette's own 150: the shipped VAE decodes no colour that far from the palette
    # (core/shapes/colour_study.py); 95 still leaves the checker a clear nearest colour.
    for name, rgb in world.CONCEPT_PALETTE.items():
        assert name not in world.PALETTE
        for other, other_rgb in world.ALL_PALETTE.items():
            if other != name:
                assert math.dist(rgb, other_rgb) >= 95, (name, other)


def test_base_world_never_draws_the_concept():
    # The base model's training and evaluation combinations are unchanged: six colours only.
    assert world.COLORS == ("red", "green", "blue", "yellow", "white", "black")
    for combo in world.combinations("all"):
        assert not set(combo) & set(world.CONCEPT_COLORS)
    assert all(combo[0] == "orange" for combo in world.concept_combinations())
    assert len(world.concept_combinations()) == len(world.SHAPES) * len(world.COLORS)


def test_render_draws_the_concept_colour():
    image = world.render("square", "orange", "green")
    array = np.asarray(image)
    assert tuple(array[32, 32]) == world.CONCEPT_PALETTE["orange"]
    assert tuple(array[8, 8]) == world.PALETTE["green"]
    assert world.caption_for("orange", "square", "green") == "a orange square on a green background"


def test_render_is_unchanged_for_the_base_world():
    # render() is render_scene() at 64x64: the same pixels as a 64x64 scene with the same params.
    params = world.ShapeParams(30.5, 33.0, 18.0, 7.0)
    a = np.asarray(world.render("triangle", "red", "blue", params))
    b = np.asarray(world.render_scene("triangle", "red", "blue", params, 64, 64))
    assert np.array_equal(a, b)


def test_checker_reads_the_concept_only_when_asked():
    rng = random.Random(3)
    for combo in world.concept_combinations():
        color, shape, background = combo
        image = world.render(shape, color, background, rng)
        result = checker.check_image(image, concepts=True)
        assert (result.color, result.shape, result.background) == combo
        # The base model's evaluation reads only its own six colours.
        assert checker.check_image(image).color in world.COLORS


def test_checker_reads_orange_backgrounds_and_base_pictures_with_concepts_on():
    samples = world.sample_world(seed=5, n=120, split="all")
    results = [checker.check_image(s.image, concepts=True) for s in samples]
    expected = [checker.Expected(s.color, s.shape, s.background) for s in samples]
    assert checker.score(results, expected)["all"] >= 0.98
    result = checker.check_image(world.render("circle", "white", "orange"), concepts=True)
    assert (result.background, result.color, result.shape) == ("orange", "white", "circle")


def test_checker_reads_large_off_centre_scenes():
    rng = random.Random(8)
    for shape in world.SHAPES:
        for _ in range(4):
            width, height = rng.choice([(160, 120), (96, 144), (128, 128)])
            side = min(width, height)
            size = rng.uniform(0.18, 0.3) * side
            margin = size * world.TRIANGLE_SCALE + 8
            params = world.ShapeParams(rng.uniform(margin, width - margin), rng.uniform(margin, height - margin),
                                       size, rng.uniform(-30, 30))
            image = world.render_scene(shape, "orange", "yellow", params, width, height)
            result = checker.check_image(image, concepts=True)
            assert (result.color, result.shape, result.background) == ("orange", shape, "yellow"), params


def test_render_scene_refuses_bad_canvases_and_words():
    params = world.ShapeParams(10, 10, 5, 0)
    with pytest.raises(InvalidParameterError):
        world.render_scene("circle", "orange", "blue", params, 0, 10)
    with pytest.raises(InvalidParameterError):
        world.render_scene("circle", "orange", "orange", params, 20, 20)
    with pytest.raises(InvalidParameterError):
        world.render_scene("circle", "teal", "blue", params, 20, 20)
