"""The Shapes tagger: the shipped WD14-format model, run by Kiln's own WD14 code, reads fresh world
scenes (F1 ≥ 0.95) and the demo dataset; the recipe writes the SmilingWolf layout."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from core.cli import parse_flags
from core.dataset.demo import make_demo
from core.dataset.taggers import TagOptions, list_models, load_tagger
from core.errors import KilnError
from core.paths import KilnPaths
from core.shapes import tagger
from core.shapes.scenes import Scene, random_scene
from core.shapes.world import ShapeParams

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "tagger" / "kiln-shapes-tagger"


@pytest.fixture(scope="module")
def shipped():
    paths = KilnPaths.from_flags(parse_flags([]), REPO)
    found = {m.name: m for m in list_models(paths)}
    assert "kiln-shapes-tagger" in found, f"the shipped tagger is not listed from {paths.tagger_dir}"
    assert found["kiln-shapes-tagger"].kind == "wd14"
    model = load_tagger("kiln-shapes-tagger", paths)
    yield model
    model.close()


def test_shipped_files_are_small_and_in_the_smilingwolf_layout():
    assert (SHIPPED / "model.onnx").stat().st_size < 1_000_000
    with (SHIPPED / "selected_tags.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["tag_id", "name", "category", "count"]
    assert [r[1] for r in rows[1:]] == list(tagger.TAGS)
    assert {r[2] for r in rows[1:]} == {"0"} and all(int(r[3]) > 0 for r in rows[1:])
    info = json.loads((SHIPPED / tagger.INFO_FILE).read_text(encoding="utf-8"))
    assert info["heldout"]["f1"] >= 0.95


def test_shipped_model_reads_fresh_scenes_through_kilns_wd14_code(shipped):
    assert shipped.size == tagger.INPUT_SIZE  # read from the model's input, as for any WD14 export
    rng = random.Random(20261204)  # neither the recipe's training nor its held-out seed
    scenes = [random_scene(rng, ranges=tagger.TAGGER_RANGES) for _ in range(300)]
    results = shipped.tag([s.image for s in scenes], TagOptions())
    figures = tagger.score_tags([{t for t, _ in r.tags} for r in results], scenes)
    assert figures.f1 >= 0.95, figures
    assert min(figures.shape, figures.color, figures.background) >= 0.9, figures


def test_captions_read_as_wd14_captions(shipped):
    from core.shapes.world import render

    [result] = shipped.tag([render("circle", "orange", "blue", ShapeParams(30, 34, 18, 0))], TagOptions())
    assert sorted(result.text.split(", ")) == ["blue background", "circle", "orange shape"]
    assert all(score > 0.5 for _, score in result.tags)


def test_shipped_model_tags_the_demo_dataset(shipped, tmp_path):
    made = make_demo(tmp_path / "demo")
    pictures = [p for p in made.pictures if p.name != "small.png"]
    from PIL import Image

    results = shipped.tag([Image.open(p) for p in pictures], TagOptions())
    scenes = [made.scenes[p.name] for p in pictures]
    figures = tagger.score_tags([{t for t, _ in r.tags} for r in results], scenes)
    assert figures.color == 1.0  # every picture is tagged "orange shape": the concept is named
    assert figures.f1 >= 0.95, figures


def test_score_tags_counts_misses_and_extras():
    scene = Scene(None, "red", "square", "blue", ShapeParams(32, 32, 18, 0))
    perfect = tagger.score_tags([{"square", "red shape", "blue_background"}], [scene])
    assert (perfect.f1, perfect.shape, perfect.color, perfect.background) == (1.0, 1.0, 1.0, 1.0)
    wrong = tagger.score_tags([{"square", "red_shape", "blue_shape", "green_background"}], [scene])
    assert wrong.precision == 0.5 and wrong.recall == pytest.approx(2 / 3)
    assert (wrong.shape, wrong.color, wrong.background) == (1.0, 0.0, 0.0)


def test_recipe_writes_a_loadable_tagger_and_never_replaces_one(tmp_path, capsys):
    recipe = tagger.TaggerRecipe(train_images=128, steps=4, batch_size=16, eval_images=16)
    figures = tagger.make_tagger(tmp_path / "mine", recipe)
    assert figures.images == 16 and 0.0 <= figures.f1 <= 1.0
    paths = KilnPaths.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    model = load_tagger(str(tmp_path / "mine"), paths)
    assert model.size == 64 and len(model.labels.names) == len(tagger.TAGS)
    model.close()
    info = json.loads((tmp_path / "mine" / tagger.INFO_FILE).read_text(encoding="utf-8"))
    assert info["recipe"]["steps"] == 4
    before = (tmp_path / "mine" / "model.onnx").read_bytes()
    with pytest.raises(KilnError, match="already exists"):
        tagger.make_tagger(tmp_path / "mine", recipe)
    assert (tmp_path / "mine" / "model.onnx").read_bytes() == before
    assert tagger.main(["--out", str(tmp_path / "mine"), "--steps", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err
