"""WD14 tagger: postprocessing rules (kohya / wd14-tagger extension) and a real ONNX model run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.dataset.taggers.common import TagOptions, finish_tags, format_tag, parse_tag_list
from core.dataset.taggers.wd14 import (
    Labels,
    WD14Tagger,
    find_model_files,
    mcut_threshold,
    preprocess,
    read_labels,
    select_tags,
)
from core.errors import KilnError


def _labels(*pairs: tuple[str, int]) -> Labels:
    return Labels(tuple(n for n, _ in pairs), np.array([c for _, c in pairs]))


LABELS = _labels(("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
                 ("long_hair", 0), ("smile", 0), ("^_^", 0), ("fate_(series)", 0), ("<o>_<o>", 0),
                 ("saber_(fate)", 4), ("rin", 4))
#                  general sens  quest expl  long  smile ^_^  fate  <o>   saber rin
PROBS = np.array([0.70, 0.20, 0.05, 0.01, 0.90, 0.40, 0.36, 0.80, 0.10, 0.88, 0.50])


def test_thresholds_and_categories():
    result = select_tags(PROBS, LABELS, TagOptions())
    assert [t for t, _ in result.tags] == ["long hair", "saber (fate)", "fate (series)", "smile", "^_^"]
    assert result.ratings == pytest.approx({"general": 0.70, "sensitive": 0.20, "questionable": 0.05,
                                            "explicit": 0.01})
    # Scores travel with the tags, best first
    assert [s for _, s in result.tags] == pytest.approx([0.90, 0.88, 0.80, 0.40, 0.36])
    higher = select_tags(PROBS, LABELS, TagOptions(general_threshold=0.5, character_threshold=0.4))
    assert [t for t, _ in higher.tags] == ["long hair", "saber (fate)", "fate (series)", "rin"]


def test_ratings_off_by_default_and_best_rating_first_when_on():
    assert "general" not in select_tags(PROBS, LABELS, TagOptions()).text
    on = select_tags(PROBS, LABELS, TagOptions(include_ratings=True))
    assert on.tags[0] == ("general", pytest.approx(0.70))


def test_underscores_kaomoji_and_escaping():
    assert format_tag("long_hair", replace_underscore=True, escape_brackets=False) == "long hair"
    assert format_tag("^_^", replace_underscore=True, escape_brackets=False) == "^_^"
    assert format_tag("<o>_<o>", replace_underscore=True, escape_brackets=False) == "<o>_<o>"
    assert format_tag("fate_(series)", replace_underscore=True, escape_brackets=True) == r"fate \(series\)"
    assert format_tag("fate_(series)", replace_underscore=False, escape_brackets=True) == r"fate_\(series\)"
    raw = select_tags(PROBS, LABELS, TagOptions(replace_underscore=False, sort="model"))
    assert raw.text == "long_hair, smile, ^_^, fate_(series), saber_(fate)"


def test_exclude_either_spelling_max_tags_and_sorting():
    opts = TagOptions(exclude=("long hair", "saber_(fate)"))
    assert [t for t, _ in select_tags(PROBS, LABELS, opts).tags] == ["fate (series)", "smile", "^_^"]
    assert len(select_tags(PROBS, LABELS, TagOptions(max_tags=2)).tags) == 2
    alpha = select_tags(PROBS, LABELS, TagOptions(sort="alphabetical", replace_underscore=False))
    assert [t for t, _ in alpha.tags] == ["^_^", "fate_(series)", "long_hair", "saber_(fate)", "smile"]


def test_additional_tags_lead_every_caption_once():
    opts = TagOptions(additional=parse_tag_list("shengcai, smile"))
    result = select_tags(PROBS, LABELS, opts)
    assert result.text.startswith("shengcai, smile, long hair")
    assert result.text.count("smile") == 1
    assert result.tags[0] == ("shengcai", 1.0)


def test_character_first():
    result = select_tags(PROBS, LABELS, TagOptions(character_first=True, character_threshold=0.4))
    assert [t for t, _ in result.tags][:2] == ["saber (fate)", "rin"]


def test_mcut():
    assert mcut_threshold(np.array([0.9, 0.85, 0.2, 0.1])) == pytest.approx(0.525)
    assert mcut_threshold(np.array([0.5])) == 1.0
    # general MCut: the gap between 0.80 and 0.40 among general scores
    result = select_tags(PROBS, LABELS, TagOptions(general_mcut=True, character_threshold=0.99))
    assert [t for t, _ in result.tags] == ["long hair", "fate (series)"]
    # character MCut: floor 0.15, gap between 0.88 and 0.50
    result = select_tags(PROBS, LABELS, TagOptions(general_threshold=0.99, character_mcut=True))
    assert [t for t, _ in result.tags] == ["saber (fate)"]


def test_finish_tags_drops_duplicates_after_formatting():
    out = finish_tags([("red_eyes", 0.9), ("red eyes", 0.8)], TagOptions())
    assert out == [("red eyes", 0.9)]


def test_preprocess_pads_white_and_turns_bgr():
    red = Image.new("RGB", (16, 32), (255, 0, 0))  # tall: padded left and right
    x = preprocess(red, 32)
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    assert x[16, 16].tolist() == [0.0, 0.0, 255.0]  # BGR: red is the last channel
    assert x[16, 0].tolist() == [255.0, 255.0, 255.0]  # padding is white
    assert x[16, 31].tolist() == [255.0, 255.0, 255.0]
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black → white, shrunk
    assert preprocess(clear, 32).min() == 255.0
    small = preprocess(Image.new("RGB", (8, 8), (0, 0, 255)), 32)  # enlarged
    assert small.shape == (32, 32, 3) and small[16, 16].tolist() == [255.0, 0.0, 0.0]


def test_read_labels_refuses_other_csv(tmp_path):
    bad = tmp_path / "selected_tags.csv"
    bad.write_text("id,tag\n1,a\n", encoding="utf-8")
    with pytest.raises(KilnError, match="tag_id,name,category"):
        read_labels(bad)


# ------------------------------------------------------------------- real ONNX model --
@pytest.fixture(scope="module")
def tiny_wd14(tmp_path_factory):
    from core.dataset.taggers.fixtures import write_tiny_wd14

    return write_tiny_wd14(tmp_path_factory.mktemp("tagger") / "wd-tiny-tagger")


def test_real_model_tags_generated_images(tiny_wd14, tmp_path):
    from core.dataset.images import open_image

    tagger = WD14Tagger(tiny_wd14, device="cpu")
    assert tagger.size == 32 and tagger.providers == ["CPUExecutionProvider"]
    path = tmp_path / "red.png"
    Image.new("RGB", (96, 64), (250, 10, 10)).save(path)
    red, white, green = tagger.tag([open_image(path), Image.new("RGB", (40, 40), "white"),
                                    Image.new("RGBA", (48, 48), (0, 255, 0, 255))])
    # Red 96×64 padded to 96² with white: mean BGR = (1/3·255 + ...) so red_theme fires, white_background not
    assert "red theme" in red.text and "white background" not in red.text
    assert "blue theme" not in red.text  # BGR order honoured: red is not read as blue
    assert "white background" in white.text and "red theme" not in white.text
    assert "hatsune miku" in green.text and "green theme" in green.text
    assert "^_^" in red.text and "fate (series)" in red.text  # kaomoji kept
    assert red.ratings["general"] == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-5)


def test_scores_match_the_graph(tiny_wd14):
    from core.dataset.taggers.fixtures import wd14_expected_logits

    tagger = WD14Tagger(tiny_wd14, device="cpu")
    im = Image.new("RGB", (32, 32), (30, 60, 90))
    got = tagger.scores([im])[0]
    want = 1 / (1 + np.exp(-wd14_expected_logits((90, 60, 30))))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fixed_batch_model_runs_any_count(tmp_path):
    from core.dataset.taggers.fixtures import write_tiny_wd14

    folder = write_tiny_wd14(tmp_path / "fixed", batch=2)
    tagger = WD14Tagger(folder, device="cpu")
    out = tagger.tag([Image.new("RGB", (32, 32), c) for c in ("red", "white", "blue")])
    assert ["red theme" in r.text for r in out] == [True, False, False]
    assert "blue theme" in out[2].text


def test_hugging_face_cache_folder(tiny_wd14, tmp_path):
    import shutil

    repo = tmp_path / "models--SmilingWolf--wd-vit-tagger-v3"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_wd14, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123", encoding="utf-8")
    assert find_model_files(repo) == (snap / "model.onnx", snap / "selected_tags.csv")
    assert WD14Tagger(repo, device="cpu").tag([Image.new("RGB", (32, 32), "white")])[0].tags


def test_missing_and_mismatched_files_are_named(tiny_wd14, tmp_path):
    with pytest.raises(KilnError, match="model.onnx and selected_tags.csv"):
        WD14Tagger(tmp_path, device="cpu")
    import shutil

    broken = tmp_path / "mismatch"
    shutil.copytree(tiny_wd14, broken)
    with (broken / "selected_tags.csv").open("a", encoding="utf-8") as f:
        f.write("1,extra_tag,0,1\n")
    with pytest.raises(KilnError, match="scores 11 tags but selected_tags.csv lists 12"):
        WD14Tagger(broken, device="cpu")
    garbage = tmp_path / "garbage"
    shutil.copytree(tiny_wd14, garbage)
    (garbage / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(KilnError, match="onnxruntime cannot load"):
        WD14Tagger(garbage, device="cpu")
