"""Issue #19's proof in pixels, on the shipped files: the demo concept LoRA
(models/Lora/kiln-shapes-okt*.safetensors, made by ``python -m core.shapes.concept_lora``) turns
"okt, <shape>, <background> background" into an orange shape, which the base model never draws;
weight 0 is the base model bitwise; prompts without the trigger keep their colour; the last epoch
beats the first. Kiln's txt2img and the Shapes checker, few seeds and steps (CI budget ~1 min);
the full figures (5 seeds × 12 prompts, 20 steps) are in the README.

Run once (2026-12-04) with the recipe's 10-epoch files copied into models/Lora (not shipped):
16.5 s; the concept share was 67 % (< 80 %: failed), the other three tests passed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.cli import parse_flags
from core.engine import Engine
from core.generation.params import GenerationParams
from core.jobs import Job, JobContext, JobQueue
from core.settings import Settings
from core.shapes import concept_lora
from core.shapes.checker import check_image

REPO = Path(__file__).resolve().parents[1]
LORA_DIR = REPO / "models" / "Lora"
FINAL, FIRST = "kiln-shapes-okt", "kiln-shapes-okt-000001"
SEEDS = 4  # per prompt, one batch
PROMPTS = [concept_lora.caption(shape, background)
           for shape, background in (("circle", "blue"), ("square", "white"), ("triangle", "black"))]

pytestmark = pytest.mark.skipif(
    not (REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors").exists()
    or not (LORA_DIR / f"{FINAL}.safetensors").exists(),
    reason="the built-in Shapes model or the demo concept LoRA is not in this checkout")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("concept_lora")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", concept_lora.SHIPPED,
                                                "--lora-dir", str(LORA_DIR)]), REPO)
    settings.paths.ensure_dirs()
    engine, queue = Engine(settings), JobQueue()
    yield engine, queue
    queue.shutdown()


def _pictures(studio, prompt: str, lora: str | None = None, weight: float = 1.0) -> list:
    engine, queue = studio
    text = f"{prompt} <lora:{lora}:{weight:g}>" if lora else prompt

    def run(_ctx):
        private = JobContext(Job(id="eval", description="eval", fn=lambda c: None, kind="generate"))
        params = GenerationParams(prompt=text, seed=0, steps=12, width=64, height=64, cfg_scale=7,
                                  sampler_name="Euler a", batch_size=SEEDS, save_images=False)
        return [g.image for g in engine.txt2img(params, private).images]
    return queue.submit(run, "eval").wait(300)


def _concept_share(studio, lora: str | None) -> float:
    reads = [check_image(im, concepts=True).color for p in PROMPTS for im in _pictures(studio, p, lora)]
    return reads.count(concept_lora.CONCEPT) / len(reads)


def test_the_lora_teaches_the_concept_the_base_model_lacks(studio):
    base = _concept_share(studio, None)
    final = _concept_share(studio, FINAL)
    assert base <= 0.10, base
    assert final >= 0.80, final


def test_later_epochs_score_higher_than_the_first(studio):
    if not (LORA_DIR / f"{FIRST}.safetensors").exists():
        pytest.skip("the first epoch's file is not shipped")
    assert _concept_share(studio, FINAL) > _concept_share(studio, FIRST)


def test_weight_0_is_the_base_model_bitwise(studio):
    prompt = PROMPTS[0]
    plain = [np.asarray(im) for im in _pictures(studio, prompt)]
    zero = [np.asarray(im) for im in _pictures(studio, prompt, FINAL, 0.0)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, zero))


def test_prompts_without_the_trigger_keep_their_colour(studio):
    kept = n = 0
    for prompt, color in concept_lora.prompts_without_trigger():
        for image in _pictures(studio, prompt, FINAL):
            kept += check_image(image, concepts=True).color == color
            n += 1
    assert kept / n >= 0.6, kept / n  # 75 % kept at 5 seeds × 20 steps (README); the base model 100 %
