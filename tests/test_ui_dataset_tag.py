"""Dataset › Tag sub-tab: strings in both locales and the widget → options mapping."""

from __future__ import annotations

from ui.dataset import subtabs, tag


def test_every_string_has_english_and_chinese():
    assert tag in subtabs()
    assert set(tag.STRINGS["en"]) == set(tag.STRINGS["zh-CN"])
    assert tag.STRINGS["zh-CN"]["dataset.tag.interrogate"] == "反推"
    assert "阈值" in tag.STRINGS["zh-CN"]["dataset.tag.general_threshold"]
    assert "附加标签" in tag.STRINGS["zh-CN"]["dataset.tag.additional"]
    assert "排除标签" in tag.STRINGS["zh-CN"]["dataset.tag.exclude"]


def test_widget_values_become_tag_options():
    opts = tag.tag_options(0.4, 0.9, True, False, True, False, False, True, "alphabetical", 12.0, "sls, 1girl",
                           "solo,, smile ", 3.0, False, 0.8, 4.0, 30.0)
    assert (opts.general_threshold, opts.character_threshold, opts.general_mcut, opts.character_mcut) == \
        (0.4, 0.9, True, False)
    assert opts.include_ratings and not opts.replace_underscore and opts.escape_brackets
    assert opts.sort == "alphabetical" and opts.max_tags == 12
    assert opts.additional == ("sls", "1girl") and opts.exclude == ("solo", "smile")
    assert (opts.caption.num_beams, opts.caption.min_length, opts.caption.max_length) == (3, 4, 30)
    assert tag.tag_options(0.35, 0.85, False, False, False, False, True, False, "bogus", None, "", "",
                           1, True, 0.9, 5, 75).sort == "confidence"
