"""BLIP / GIT captioning from local transformers folders (tiny models built from configs, no hub)."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from core.dataset.taggers.blip import CaptionModel, model_type
from core.dataset.taggers.common import CaptionOptions, TagOptions
from core.dataset.taggers.fixtures import TINY_VOCAB
from core.errors import KilnError


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    from core.dataset.taggers.fixtures import write_tiny_blip

    return write_tiny_blip(tmp_path_factory.mktemp("BLIP") / "tiny-blip")


@pytest.fixture(scope="module")
def tiny_git(tmp_path_factory):
    from core.dataset.taggers.fixtures import write_tiny_git

    return write_tiny_git(tmp_path_factory.mktemp("BLIP") / "tiny-git")


PICTURES = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGBA", (20, 20), (0, 0, 255, 128))]


@pytest.mark.parametrize("which", ["tiny_blip", "tiny_git"])
def test_captions_from_a_local_folder(which, request, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub lookup would fail loudly
    folder = request.getfixturevalue(which)
    model = CaptionModel(folder)
    assert model.kind == which.removeprefix("tiny_")
    greedy = CaptionOptions(min_length=3, max_length=8)
    batch = model.captions(PICTURES, greedy)
    assert len(batch) == 2
    words = set(TINY_VOCAB) - {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for text in batch:
        assert text and set(text.split()) <= words  # decoded with the folder's tokenizer, specials dropped
        assert len(text.split()) <= 8
    assert model.captions(PICTURES[:1], greedy) == batch[:1]  # greedy is deterministic, batch = single
    beams = model.captions(PICTURES, CaptionOptions(num_beams=3, min_length=3, max_length=8))
    nucleus = model.captions(PICTURES, CaptionOptions(nucleus=True, top_p=0.9, min_length=3, max_length=8))
    assert all(beams) and all(nucleus)
    short = model.captions(PICTURES[:1], CaptionOptions(min_length=1, max_length=3))[0]
    assert 1 <= len(short.split()) <= 3


def test_trigger_word_leads_the_caption(tiny_blip):
    model = CaptionModel(tiny_blip)
    (result,) = model.tag(PICTURES[:1], TagOptions(additional=("shengcai",), caption=CaptionOptions(max_length=6)))
    assert result.text.startswith("shengcai, ") and len(result.text) > len("shengcai, ")
    assert result.tags == []


def test_min_above_max_is_refused(tiny_blip):
    with pytest.raises(KilnError, match="min length 9 is above max length 5"):
        CaptionModel(tiny_blip).captions(PICTURES[:1], CaptionOptions(min_length=9, max_length=5))


def test_folders_that_are_not_captioners(tmp_path, tiny_blip):
    with pytest.raises(KilnError, match="no BLIP or GIT captioning model"):
        CaptionModel(tmp_path)
    other = tmp_path / "clip"
    shutil.copytree(tiny_blip, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "clip"
    (other / "config.json").write_text(json.dumps(config))
    assert model_type(other) is None
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_blip, incomplete)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "processor_config.json"):
        (incomplete / name).unlink(missing_ok=True)
    with pytest.raises(KilnError, match="cannot load"):
        CaptionModel(incomplete)
