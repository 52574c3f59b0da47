"""The Shapes world: deterministic pictures, exact captions, a held-out split that stays out."""

import random
import re

import numpy as np
import pytest

from core.errors import InvalidParameterError
from core.shapes import world


def pixels(image):
    return np.asarray(image)


def test_same_seed_same_pixels_and_captions():
    a = world.sample_world(seed=7, n=12)
    b = world.sample_world(seed=7, n=12)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(pixels(x.image), pixels(y.image)) for x, y in zip(a, b))
    c = world.sample_world(seed=8, n=12)
    assert any(not np.array_equal(pixels(x.image), pixels(y.image)) for x, y in zip(a, c))


def test_captions_follow_the_exact_template():
    pattern = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")
    for s in world.sample_world(seed=1, n=90, split="all"):
        match = pattern.match(s.caption)
        assert match, s.caption
        assert match.groups() == (s.color, s.shape, s.background)
        assert s.color in world.COLORS and s.background in world.COLORS and s.shape in world.SHAPES
        assert s.color != s.background
        assert s.image.size == (64, 64) and s.image.mode == "RGB"
    assert world.caption_for("red", "circle", "blue") == "a red circle on a blue background"


def test_picture_shows_the_named_colours():
    img = pixels(world.render("circle", "red", "blue"))
    assert tuple(img[32, 32]) == world.PALETTE["red"]
    assert tuple(img[5, 5]) == world.PALETTE["blue"]
    # Anti-aliased: the edge has colours between the two.
    assert len({tuple(p) for p in img.reshape(-1, 3)}) > 2


def test_held_out_combinations_never_appear_in_training():
    combos = world.all_combinations()
    assert len(combos) == 6 * 3 * 5
    assert world.HELD_OUT <= set(combos)
    assert 0.08 <= len(world.HELD_OUT) / len(combos) <= 0.12
    train = world.sample_world(seed=3, n=400, split="train")
    assert not {(s.color, s.shape, s.background) for s in train} & world.HELD_OUT
    held = world.sample_world(seed=3, n=20, split="heldout")
    assert {(s.color, s.shape, s.background) for s in held} == set(world.HELD_OUT)


def test_every_word_pairing_of_a_held_out_combination_is_still_trained():
    # Composition is what the evaluation tests: each pair of words of a held-out
    # combination must have been seen together in training.
    train = set(world.combinations("train"))
    for color, shape, background in world.HELD_OUT:
        assert any(c == color and s == shape for c, s, _ in train)
        assert any(s == shape and b == background for _, s, b in train)
        assert any(c == color and b == background for c, _, b in train)


def test_split_cycles_through_every_combination_evenly():
    samples = world.sample_world(seed=5, n=2 * len(world.combinations("train")), split="train")
    counts = {}
    for s in samples:
        counts[(s.color, s.shape, s.background)] = counts.get((s.color, s.shape, s.background), 0) + 1
    assert set(counts.values()) == {2}


def test_shape_stays_inside_the_checker_ring():
    rng = random.Random(0)
    for _ in range(200):
        params = world.random_params(rng)
        for shape in ("square", "triangle"):
            for x, y in world.shape_vertices(shape, params):
                assert 5 <= x <= 59 and 5 <= y <= 59


def test_render_refuses_unknown_words_and_equal_colours():
    with pytest.raises(InvalidParameterError):
        world.render("hexagon", "red", "blue")
    with pytest.raises(InvalidParameterError):
        world.render("circle", "purple", "blue")
    with pytest.raises(InvalidParameterError):
        world.render("circle", "red", "red")
    with pytest.raises(InvalidParameterError):
        world.combinations("test")


def test_write_dataset_makes_a_kohya_folder(tmp_path):
    folder = world.write_dataset(tmp_path, n=5, seed=2)
    assert folder == tmp_path / "10_shapes"
    images = sorted(folder.glob("*.png"))
    assert len(images) == 5
    expected = world.sample_world(seed=2, n=5)
    for image, sample in zip(images, expected):
        assert image.with_suffix(".txt").read_text().strip() == sample.caption


def test_caption_variants_name_only_parts_of_the_picture():
    variants = world.caption_variants("red", "circle", "blue")
    assert world.caption_for("red", "circle", "blue") not in variants
    assert "red" in variants and "circle" in variants  # lone words, for negative prompts
    for text in variants:
        words = set(text.replace(",", " ").split()) - {"a", "on", "background"}
        assert words and words <= {"red", "circle", "blue"}, text
