"""The training evaluation sheet on two epoch files made by Kiln's trainer (tiny fixture model),
the Shapes checker's score per cell, and "keep this one"."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageChops, ImageDraw

from core.cli import parse_flags
from core.engine import Engine
from core.errors import KilnError
from core.jobs import JobQueue
from core.models.fixtures import write_tiny_checkpoint
from core.settings import Settings
from core.training.evaluation import (
    SheetRequest,
    best_file,
    epoch_files,
    keep_file,
    shapes_score,
    sheet_job,
)
from core.training.samples import SamplePrompt


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An engine over the tiny SD1 fixture and a 2-epoch LoRA run of it: teal-000001, teal."""
    from core.training.data import DataOptions
    from core.training.jobs import training_job
    from core.training.loop import LoopOptions
    from core.training.lora import LoraJob, OutputOptions
    from core.training.network import NetworkSpec

    root = tmp_path_factory.mktemp("sheet")
    write_tiny_checkpoint(root / "data", "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(root / "data")]), root / "data")
    engine = Engine(settings)
    folder = root / "train" / "2_teal star"
    folder.mkdir(parents=True)
    for k in range(3):
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        ImageDraw.Draw(im).ellipse([k * 2, k * 3, 20 + k, 24], fill=(0, 128, 128))
        im.save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(f"teal star, shape {k}", encoding="utf-8")
    job = LoraJob(train_data_dir=root / "train",
                  output=OutputOptions(output_dir=root / "out", output_name="teal", save_every_n_epochs=1),
                  loop=LoopOptions(train_batch_size=2, max_train_epochs=2, seed=7),
                  data=DataOptions(resolution=(32, 32), caption_extension=".txt"),
                  network=NetworkSpec(network_dim=2, network_alpha=1.0), learning_rate=5e-2)
    queue = JobQueue()
    try:
        queue.submit(training_job(engine, job), "LoRA teal", "user:ann", kind="train").wait(300)
        yield engine, queue, root / "out"
    finally:
        queue.shutdown()


def test_epoch_files_in_training_order(tmp_path):
    for name in ("run.safetensors", "run-000002.safetensors", "run-000001.safetensors", "run-step00000010.safetensors",
                 "other-000001.safetensors", "run-000001.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in epoch_files(tmp_path, "run")] == [
        "run-000001.safetensors", "run-000002.safetensors", "run-step00000010.safetensors", "run.safetensors"]
    with pytest.raises(KilnError, match="no LoRA files of the run 'nope'"):
        epoch_files(tmp_path, "nope")
    with pytest.raises(KilnError, match="does not exist"):
        epoch_files(tmp_path / "missing", "run")


def test_the_sheet_renders_epochs_by_weights_by_prompts_and_saves_png_and_html(run):
    engine, queue, out = run
    files = epoch_files(out, "teal")
    assert [p.name for p in files] == ["teal-000001.safetensors", "teal.safetensors"]
    request = SheetRequest(folder=out, output_name="teal", weights=(0.0, 1.0), steps=2, sampler_name="Euler",
                           prompts=[SamplePrompt("teal star"), SamplePrompt("a red circle")], seed=3)
    result = queue.submit(sheet_job(engine, request), "sheet", "user:ann", kind="generate").wait(300)
    assert len(result.cells) == 2 * 2 * 2 and all(c.image is not None for c in result.cells)
    by = {(c.file, c.weight, c.prompt): c for c in result.cells}
    for prompt in ("teal star", "a red circle"):
        # Weight 0 is the base model whichever file: the same picture, bit for bit.
        zero = [by[(f, 0.0, prompt)].image for f in ("teal-000001", "teal")]
        assert ImageChops.difference(*zero).getbbox() is None
        # At weight 1 the trained LoRA changes the picture.
        assert ImageChops.difference(zero[1], by[("teal", 1.0, prompt)].image).getbbox() is not None
        assert "<lora:teal:1>" in by[("teal", 1.0, prompt)].infotext
        assert "<lora:teal-000001:0>" in by[("teal-000001", 0.0, prompt)].infotext
    assert all(c.score is None for c in result.cells) and result.best is None  # not the Shapes model
    assert ("Network dim / alpha", "2 / 1.0") in result.parameters or any(
        k == "Network dim / alpha" and v.startswith("2 /") for k, v in result.parameters)
    assert result.png == out / "teal-sheet.png" and result.html == out / "teal-sheet.html"
    with Image.open(result.png) as sheet:
        assert sheet.width >= 2 * 64 and sheet.height >= 2 * 2 * 64  # two prompts of two rows each
        assert sheet.info["parameters"].startswith("Evaluation sheet: teal")
    page = result.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 8 and "teal-000001" in page and "Network dim / alpha" in page
    # The next sheet takes a new name; the first stays as it was.
    before = result.png.read_bytes()
    again = queue.submit(sheet_job(engine, SheetRequest(folder=out, output_name="teal", weights=(1.0,), steps=1,
                                                        prompts=[SamplePrompt("teal star")])), "sheet").wait(300)
    assert again.png.name == "teal-sheet-2.png" and result.png.read_bytes() == before


def test_bad_requests_are_refused_before_anything_is_queued(run):
    engine, _queue, out = run
    with pytest.raises(KilnError, match="at least one prompt"):
        sheet_job(engine, SheetRequest(folder=out, output_name="teal", prompts=[]))
    with pytest.raises(KilnError, match="has the tag <lora:teal:"):
        sheet_job(engine, SheetRequest(folder=out, output_name="teal", prompts=[SamplePrompt("x <lora:teal:1>")]))
    with pytest.raises(KilnError, match="no LoRA files"):
        sheet_job(engine, SheetRequest(folder=out, output_name="other", prompts=[SamplePrompt("x")]))


def test_shapes_checker_scores_what_the_prompt_names():
    from core.shapes.world import render

    picture = render("circle", "red", "blue", random.Random(1))
    assert shapes_score("a red circle on a blue background", picture)[0] == 1.0
    assert shapes_score("a red square on a blue background", picture)[0] == pytest.approx(2 / 3)
    assert shapes_score("a green triangle", picture)[0] == 0.0
    score, reading = shapes_score("a nice picture", picture)
    assert score is None and reading == "red circle on blue"
    concept = render("square", "orange", "white", random.Random(2))  # the demo concept's colour
    assert shapes_score("a orange square on a white background", concept)[0] == 1.0
    assert shapes_score("a red square on a white background", concept)[0] == pytest.approx(2 / 3)


def test_best_file_is_the_highest_mean_score():
    from core.training.evaluation import SheetCell

    cells = [SheetCell("e1", 1.0, "p", None, score=0.5), SheetCell("e1", 0.5, "p", None, score=0.5),
             SheetCell("e2", 1.0, "p", None, score=1.0), SheetCell("e2", 0.5, "p", None, score=0.5),
             SheetCell("e3", 1.0, "p", None, score=0.75), SheetCell("e3", 0.5, "p", None, score=0.75)]
    assert best_file(cells) == ("e2", 0.75)  # ties go to the earlier file
    assert best_file([SheetCell("e1", 1.0, "p", None)]) is None


def test_keep_this_one_copies_into_models_lora_and_never_overwrites(tmp_path):
    source = tmp_path / "out" / "run-000002.safetensors"
    source.parent.mkdir()
    source.write_bytes(b"weights")
    lora_dir = tmp_path / "models" / "Lora"
    kept = keep_file(source, lora_dir, "my-run-e2")
    assert kept == lora_dir / "my-run-e2.safetensors" and kept.read_bytes() == b"weights" and source.is_file()
    with pytest.raises(KilnError, match="exists already"):
        keep_file(source, lora_dir, "my-run-e2.safetensors")
    with pytest.raises(KilnError):
        keep_file(source, lora_dir, "../escape")
    with pytest.raises(KilnError, match="does not exist"):
        keep_file(tmp_path / "nope.safetensors", lora_dir, "x")
