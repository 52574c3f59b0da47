"""The evaluation: fixed prompts, injectable generation, Kiln's sampler path end to end."""

import io

import numpy as np
import pytest
import torch

from core.shapes import evaluate as E
from core.shapes import recipe as R
from core.shapes import world
from tests.test_shapes_recipe import tiny_recipe


def test_prompts_are_fixed_and_cover_every_held_out_combination():
    prompts = E.eval_prompts()
    assert len(prompts) == 64
    assert prompts == E.eval_prompts()
    held = {(p.expected.color, p.expected.shape, p.expected.background) for p in prompts if p.held_out}
    assert held == set(world.HELD_OUT)
    assert sum(p.held_out for p in prompts) == 2 * len(world.HELD_OUT)
    assert len({p.seed for p in prompts}) == 64
    assert all(p.prompt == world.caption_for(p.expected.color, p.expected.shape, p.expected.background) for p in prompts)


def test_a_perfect_generator_scores_one_and_a_wrong_one_does_not():
    def truth(prompts, seeds):
        images = []
        for prompt, seed in zip(prompts, seeds):
            words = prompt.split()
            images.append(world.render(words[2], words[1], words[5], __import__("random").Random(seed)))
        return images

    report = E.evaluate(truth)
    assert report.overall == {"background": 1.0, "color": 1.0, "shape": 1.0, "all": 1.0}
    assert report.held_out["all"] == 1.0 and report.meets_bar()

    def always_red_circle_on_blue(prompts, seeds):
        return [world.render("circle", "red", "blue") for _ in prompts]

    wrong = E.evaluate(always_red_circle_on_blue)
    assert wrong.overall["shape"] < 0.5 and not wrong.meets_bar()


def test_grid_has_one_cell_per_prompt(tmp_path):
    prompts = E.eval_prompts()[:16]
    report = E.evaluate(lambda ps, ss: [world.render("square", "white", "black") for _ in ps], prompts)
    path = E.save_grid(report, tmp_path / "grid.png")
    from PIL import Image

    grid = Image.open(path)
    assert grid.size == (8 * 128, 2 * (128 + 26))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from core.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("shapes-eval")
    built = R.build_model(tiny_recipe(), work, R.Progress(None, stream=io.StringIO()), monitor=False)
    return load_checkpoint(R.save_built(built, work / "tiny.safetensors", steps_scale=0.0))


@pytest.mark.parametrize("sampler", [None, "Euler a", "DDIM"])
def test_generation_runs_through_kilns_samplers(tiny_model, sampler):
    generate = E.sampler_generate_fn(tiny_model, sampler=sampler, steps=3)
    first = generate(["a red circle on a blue background", "a green square on a white background"], [1, 2])
    again = generate(["a red circle on a blue background"], [1])
    assert [img.size for img in first] == [(64, 64), (64, 64)]
    # Seeded: the same prompt and seed give the same picture alone or in a batch (up to
    # float rounding of batched convolutions).
    diff = np.abs(np.asarray(first[0], dtype=int) - np.asarray(again[0], dtype=int))
    assert diff.max() <= 2
    assert np.abs(np.asarray(first[0], dtype=int) - np.asarray(first[1], dtype=int)).max() > 2


def test_training_monitor_samples_through_kilns_sampler_from_bare_parts(tmp_path):
    torch.set_num_threads(1)
    built = R.build_model(tiny_recipe(), tmp_path, R.Progress(None, stream=io.StringIO()), monitor=False)
    parts = R.trainable_parts(built.unet, built.text_encoder, tiny_recipe().unet)
    monitor = R.make_monitor(parts, built.vae, built.text_encoder, R.load_tokenizer(), built.scaling_factor, seed=1, count=3)
    before = {k: v.clone() for k, v in parts.state_dict().items()}
    figures = monitor(0, parts.state_dict())
    assert set(figures) == {"background", "color", "shape", "all"}
    assert all(0.0 <= v <= 1.0 for v in figures.values())
    assert all(torch.equal(before[k], v) for k, v in parts.state_dict().items())  # live weights restored
    generate = E.components_generate_fn(built.unet, built.vae, built.text_encoder, R.load_tokenizer(), built.scaling_factor, steps=3)
    images = generate(["a red circle on a blue background"], [5])
    assert images[0].size == (64, 64)
