"""DeepBooru: the WebUI's DeepDanbooru layout, its pre/post-processing, a real (narrow) model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.dataset.taggers import deepbooru as db
from core.dataset.taggers.common import TagOptions
from core.errors import KilnError


def test_published_layout_matches_the_webui_module():
    shapes = db.published_shapes()
    assert len(shapes) == 179
    # Facts from modules/deepbooru_model.py
    assert shapes[0] == (64, 3, 7, True)
    assert shapes[1] == (256, 64, 1, True) and shapes[4] == (256, 64, 1, True)
    assert shapes[11] == (512, 256, 1, True) and shapes[13] == (128, 128, 3, True)
    assert shapes[36] == (1024, 512, 1, True) and shapes[97] == (256, 1024, 1, True)
    assert shapes[100] == (1024, 1024, 1, True)
    assert shapes[158] == (2048, 1024, 1, True) and shapes[160] == (512, 512, 3, True)
    assert shapes[168] == (4096, 2048, 1, True) and shapes[177] == (4096, 1024, 1, True)
    assert shapes[178] == (9176, 4096, 1, False)
    with torch.device("meta"):
        model = db.build_model(shapes)
    strided = sorted(int(n.split("_")[-1]) for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2))
    assert strided == [0, 11, 13, 36, 38, 98, 100, 158, 160, 168, 170]
    keys = set(model.state_dict())
    assert keys == db.expected_keys()
    assert sum(p.numel() for p in model.parameters()) > 150_000_000  # the real one: ~614 MB of float32


def test_resize_and_fill_stretches_edges_into_the_bands():
    wide = Image.new("RGB", (100, 50), (200, 0, 0))
    wide.paste((0, 0, 200), (0, 0, 100, 2))  # a blue top row: the top band copies it
    out = db.resize_and_fill(wide)
    assert out.size == (512, 512)
    a = np.asarray(out)
    assert a[5, 256, 2] > 150 and a[5, 256, 0] < 60  # top band: blue (stretched first row)
    assert a[506, 256, 0] > 150  # bottom band: red (last row), never black
    assert a[256, 256, 0] > 150
    tall = db.resize_and_fill(Image.new("RGB", (20, 80), (0, 180, 0)))
    assert np.asarray(tall)[256, 3, 1] > 150  # side bands filled too
    x = db.preprocess(Image.new("RGBA", (30, 30), (0, 0, 0, 0)))
    assert x.shape == (512, 512, 3) and x.dtype == np.float32 and x.min() == pytest.approx(1.0)


def test_select_tags_as_the_webui():
    tags = ["solo", "1girl", "rating:safe", "long_hair", "fate_(series)"]
    probs = np.array([0.6, 0.9, 0.95, 0.4, 0.7])
    webui = TagOptions(general_threshold=0.5, sort="alphabetical", escape_brackets=True)
    result = db.select_tags(probs, tags, webui)
    assert result.text == r"1girl, fate \(series\), solo"  # rating:* never a tag, alphabetical
    assert result.ratings == {"rating:safe": 0.95}
    by_score = db.select_tags(probs, tags, TagOptions(general_threshold=0.35, replace_underscore=False))
    assert by_score.text == "1girl, fate_(series), solo, long_hair"
    assert db.select_tags(probs, tags, TagOptions(exclude=("long hair",), general_threshold=0.3)).text == \
        "1girl, fate (series), solo"


@pytest.fixture(scope="module")
def tiny_deepbooru(tmp_path_factory):
    from core.dataset.taggers.fixtures import write_tiny_deepbooru

    return write_tiny_deepbooru(tmp_path_factory.mktemp("torch_deepdanbooru"))


def test_real_file_loads_with_weights_only_and_scores(tiny_deepbooru):
    from core.dataset.taggers.fixtures import DEEPBOORU_REFERENCE, DEEPBOORU_TAGS

    tagger = db.DeepBooruTagger(tiny_deepbooru)
    assert tagger.tags == [t for t, _ in DEEPBOORU_TAGS]
    grey = Image.new("RGB", (64, 48), DEEPBOORU_REFERENCE)
    got = tagger.scores([grey])[0]
    want = 1 / (1 + np.exp(-np.array([logit for _, logit in DEEPBOORU_TAGS])))
    np.testing.assert_allclose(got, want, atol=1e-4)
    (result,) = tagger.tag([grey])  # WebUI defaults: 0.5, alphabetical, spaces, escaped
    assert result.text == r"1girl, fate \(series\), long hair, solo"
    assert set(result.ratings) == {"rating:safe", "rating:explicit"}
    two = tagger.tag([grey, Image.new("RGB", (50, 90), (20, 20, 20))], TagOptions(general_threshold=0.9,
                                                                                  additional=("sls",)))
    assert two[0].text == "sls, 1girl" and two[1].text.startswith("sls")


def test_bad_files_are_refused_with_the_reason(tmp_path, tiny_deepbooru):
    with pytest.raises(KilnError, match="model-resnet_custom_v3.pt"):
        db.DeepBooruTagger(tmp_path)
    wrong = tmp_path / "wrong" / db.MODEL_FILE
    wrong.parent.mkdir()
    state = torch.load(tiny_deepbooru / db.MODEL_FILE, weights_only=True)
    del state["n_Conv_12.weight"]
    torch.save(state, wrong)
    with pytest.raises(KilnError, match="missing n_Conv_12.weight"):
        db.DeepBooruTagger(wrong.parent)
    pickled = tmp_path / "pickled" / db.MODEL_FILE
    pickled.parent.mkdir()
    torch.save({"tags": ["a"], "obj": Image.new("RGB", (1, 1))}, pickled)  # needs pickle code to load
    with pytest.raises(KilnError, match="weights-only"):
        db.DeepBooruTagger(pickled.parent)
