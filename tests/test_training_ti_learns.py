"""Learning proof on the built-in Shapes model: an embedding for a word the model has never seen
("kxq"), trained on yellow shapes, turns "a kxq circle on a blue background" yellow; a
hypernetwork trained there changes pictures at strength 1 and not at 0. Real files, Kiln's
txt2img and the Shapes checker; a small CPU budget."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.cli import parse_flags
from core.engine import Engine
from core.generation.params import GenerationParams
from core.jobs import Job, JobContext, JobQueue
from core.settings import Settings
from core.shapes.checker import check_image
from core.shapes.world import render
from core.training.hypernetwork import HypernetworkSpec
from core.training.ti_data import DataOptions
from core.training.ti_jobs import (
    create_embedding_job,
    create_hypernetwork_file,
    train_embedding_job,
    train_hypernetwork_job,
)
from core.training.ti_loop import TrainOptions

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("blue", "red", "green", "black")
STEPS, LR = 40, "0.2"

pytestmark = pytest.mark.skipif(not (REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors").exists(),
                                reason="the built-in Shapes model is not in this checkout")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("shapes_ti")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data)]), REPO)
    engine, queue = Engine(settings), JobQueue()
    pictures = data / "pictures"
    pictures.mkdir()
    rng = random.Random(0)
    for k in range(6):
        shape, background = SHAPES[k % 3], BACKGROUNDS[k % 4]
        render(shape, "yellow", background, rng).save(pictures / f"{k}.png")
        # "[name]" in a caption is replaced too, as in the WebUI (filewords first, then the name)
        (pictures / f"{k}.txt").write_text(f"a [name] {shape} on a {background} background", encoding="utf-8")
    templates = data / "textual_inversion_templates"  # a data folder's own template, found like the shipped ones
    templates.mkdir()
    (templates / "filewords.txt").write_text("[filewords]\n", encoding="utf-8")
    yield engine, queue, data
    queue.shutdown()


def _pictures(engine, queue, prompt: str, count: int = 6) -> list:
    """One batch of ``count`` pictures (seeds 100, 101, ...) through Kiln's txt2img."""
    def run(_ctx):
        private = JobContext(Job(id="eval", description="eval", fn=lambda c: None, kind="generate"))
        params = GenerationParams(prompt=prompt, steps=8, width=64, height=64, seed=100, cfg_scale=5.0,
                                  batch_size=count, save_images=False)
        return [g.image for g in engine.txt2img(params, private).images]
    return queue.submit(run, "eval").wait(300)


def _options(data: Path, steps: int, learn_rate: str) -> TrainOptions:
    return TrainOptions(data=DataOptions(data_root=data / "pictures", template_filename="filewords.txt", width=64,
                                         height=64, batch_size=2), learn_rate=learn_rate, steps=steps,
                        save_every=0, create_image_every=0, seed=1)


def test_an_embedding_learns_a_colour_word_the_model_lacks(studio):
    engine, queue, data = studio
    # Initialised from "red": before training the word draws red shapes, so a move to yellow is learning.
    queue.submit(create_embedding_job(engine, "kxq", 1, False, "red"), "create").wait(60)
    prompt = "a kxq square on a blue background"  # the model draws "a red square" red
    before = [check_image(im).color for im in _pictures(engine, queue, prompt)]
    result = queue.submit(train_embedding_job(engine, "kxq", _options(data, STEPS, LR)), "train",
                          kind="train").wait(600)
    after = [check_image(im).color for im in _pictures(engine, queue, prompt)]
    assert result.step == STEPS
    assert before.count("red") >= 4, before  # the initial vector means "red"
    assert after.count("yellow") >= 4 and after.count("red") <= 1, (before, after)


def test_a_trained_hypernetwork_changes_pictures_at_strength_1_not_0(studio):
    import numpy as np

    engine, queue, data = studio
    create_hypernetwork_file(engine, HypernetworkSpec(name="hxq", enable_sizes=(32, 64), overwrite_old=True))
    options = _options(data, 8, "0.0005")
    result = queue.submit(train_hypernetwork_job(engine, "hxq", options), "train", kind="train").wait(600)
    assert result.step == 8
    prompt = "a yellow circle on a blue background"
    plain, zero, one = (np.asarray(_pictures(engine, queue, prompt + tag, count=1)[0], dtype=np.int16)
                        for tag in ("", " <hypernet:hxq:0>", " <hypernet:hxq:1>"))
    assert np.array_equal(plain, zero)
    assert np.abs(one - plain).mean() > 1.0
