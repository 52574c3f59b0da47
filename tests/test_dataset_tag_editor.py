"""The tag editor's operations (core/dataset/tag_editor.py) and kohya's caption rules (caption_rules.py)."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from core.dataset.caption_rules import CaptionRules, preview_caption, process_caption
from core.dataset.tag_editor import TagEditor
from core.errors import KilnError

SEED_001 = ("1boy, cooking, frying pan, male focus, solo, gloves, apron, fire, brown footwear, black gloves, "
            "boots, stove, kitchen, holding, facial hair, bandana, blue shirt, shirt")
SEED_001_MERGED = ("Smith, cooking, frying pan, male focus, solo, gloves, apron, fire, brown footwear, black gloves, "
                   "boots, stove, kitchen, holding, bandana, blue shirt, shirt")


def dataset(folder, captions: dict[str, str | bytes | None]):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, caption in captions.items():
        Image.new("RGB", (8, 8)).save(folder / f"{stem}.png")
        if isinstance(caption, bytes):
            (folder / f"{stem}.txt").write_bytes(caption)
        elif caption is not None:
            (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    return folder


def test_tag_table_counts_files_and_sorts_and_filters(tmp_path):
    editor = TagEditor.load(dataset(tmp_path, {"a": "1girl, solo, smile", "b": "1girl, solo, 1girl", "c": "1girl",
                                               "d": None}))
    assert len(editor) == 4 and editor.tags[3] == ()
    assert editor.tag_table() == [("1girl", 3), ("solo", 2), ("smile", 1)]  # "1girl 3": files, not mentions
    assert editor.tag_table(sort="name") == [("1girl", 3), ("smile", 1), ("solo", 2)]
    assert editor.tag_table(sort="rarest")[0] == ("smile", 1)
    assert editor.tag_table(filter_text="SO") == [("solo", 2)]
    assert editor.tag_table(indices=[0]) == [("1girl", 1), ("smile", 1), ("solo", 1)]


def test_selection_by_tags_and_or_not(tmp_path):
    editor = TagEditor.load(dataset(tmp_path, {"a": "1girl, solo, smile", "b": "1girl, solo", "c": "1boy, smile"}))
    assert editor.select(["1girl", "smile"]) == [0]
    assert editor.select(["1girl", "smile"], mode="OR") == [0, 1, 2]
    assert editor.select(["smile"], exclude=["1boy"]) == [0]
    assert editor.select(exclude=["solo"]) == [2]
    with pytest.raises(KilnError):
        editor.select(["x"], mode="XOR")


def test_seed_001_merge_gives_the_seeds_caption(tmp_path):
    editor = TagEditor.load(dataset(tmp_path, {"smith": SEED_001, "other": "1girl, kitchen"}))
    assert editor.merge_tags(["1boy", "facial hair"], "Smith") == 1
    assert editor.caption_text(0) == "1girl, kitchen" and editor.caption_text(1) == SEED_001_MERGED


def test_batch_operations_on_all_or_a_selection(tmp_path):
    editor = TagEditor.load(dataset(tmp_path, {"a": "1girl, solo, smile, short hair", "b": "1girl, solo, smile",
                                               "c": "1girl, rare tag"}))
    assert editor.remove_by_frequency(below=2) == 2  # "short hair" and "rare tag" are in one file each
    assert editor.caption_text(0) == "1girl, solo, smile" and editor.caption_text(2) == "1girl"
    assert editor.remove_by_frequency(above=2) == 3  # 1girl is in all 3
    assert editor.undo() == "remove by frequency" and editor.caption_text(2) == "1girl"
    assert editor.replace_tags({"smile": "grin", "solo": ""}) == 2
    assert editor.caption_text(0) == "1girl, grin"
    assert editor.add_tags("masterpiece, best quality", position="front", indices=[2]) == 1
    assert editor.caption_text(2) == "masterpiece, best quality, 1girl"
    assert editor.add_tags(["looking at viewer"], position="back") == 3
    assert editor.move_to_front("1girl", indices=[2]) == 1
    assert editor.caption_text(2) == "1girl, masterpiece, best quality, looking at viewer"
    assert editor.put_trigger_first("shengcai") == 3  # seed 000's trigger leads every caption
    assert all(tags[0] == "shengcai" for tags in editor.tags)
    assert editor.sort_tags(key="name", keep_first=1, indices=[2]) == 1
    assert editor.caption_text(2) == "shengcai, 1girl, best quality, looking at viewer, masterpiece"
    assert editor.remove_tags(["looking at viewer"], indices=editor.select(["grin"])) == 2
    assert editor.set_caption(0, "a, b, a") == 1 and editor.caption_text(0) == "a, b"
    assert editor.changed == [0, 1, 2]
    while editor.undo():
        pass
    assert editor.changed == [] and editor.caption_text(0) == "1girl, solo, smile, short hair"


def test_save_backs_up_writes_only_changed_files_and_never_loses_text(tmp_path):
    folder = dataset(tmp_path / "set", {"a": "1girl, solo", "b": "1girl,solo", "gbk": "少女, 微笑".encode("gb18030"),
                                        "junk": b"bad \x81", "none": None})
    editor = TagEditor.load(folder)
    assert editor.tags[2] == ("少女", "微笑")
    editor.remove_tags(["solo"], indices=[0])
    editor.add_tags("x", indices=[2, 3, 4])
    result = editor.save()
    assert result.written == 3 and len(result.skipped) == 1 and "junk.txt" in result.skipped[0]
    assert (folder / "a.txt").read_text(encoding="utf-8") == "1girl"
    assert (folder / "b.txt").read_text(encoding="utf-8") == "1girl,solo"  # untouched: not changed
    assert (folder / "gbk.txt").read_text(encoding="utf-8") == "x, 少女, 微笑"  # re-encoded losslessly
    assert (folder / "none.txt").read_text(encoding="utf-8") == "x"
    assert (folder / "junk.txt").read_bytes() == b"bad \x81"
    backed = sorted(p.name for p in result.backup.iterdir())
    assert backed == ["a.txt", "gbk.txt"]  # none.txt did not exist before
    assert (result.backup / "gbk.txt").read_bytes() == "少女, 微笑".encode("gb18030")
    assert editor.changed == [3]  # the undecodable one stays marked
    assert TagEditor.load(folder).caption_text(0) == "1girl"


def test_a_failed_save_changes_no_caption_and_keeps_the_edits(tmp_path, monkeypatch):
    folder = dataset(tmp_path, {"a": "one", "b": "two"})
    editor = TagEditor.load(folder)
    editor.add_tags("new")
    real_fdopen = __import__("os").fdopen
    opened = []

    def full_disk(fd, *args, **kwargs):  # the second temp file hits a full disk
        f = real_fdopen(fd, *args, **kwargs)
        opened.append(f)
        if len(opened) == 2:
            f.close()
            raise OSError(28, "No space left on device")
        return f
    monkeypatch.setattr("core.fileio.os.fdopen", full_disk)
    with pytest.raises(KilnError, match="no caption was changed"):
        editor.save()
    monkeypatch.undo()
    assert (folder / "a.txt").read_text() == "one" and (folder / "b.txt").read_text() == "two"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["a.png", "a.txt", "b.png", "b.txt"]
    assert editor.changed == [0, 1]
    assert editor.save().written == 2 and (folder / "b.txt").read_text() == "new, two"


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(KilnError, match="folder not found"):
        TagEditor.load(tmp_path / "nope")
    with pytest.raises(KilnError, match="no pictures"):
        TagEditor.load(tmp_path)


def test_kohya_keep_tokens_shuffle_and_dropout():
    caption = "sls, 1girl, smile, outdoors, hat"
    plain = CaptionRules()
    assert process_caption(caption + "\nsecond line", plain, random.Random(0)) == caption
    rules = CaptionRules(shuffle_caption=True, keep_tokens=2)
    rng = random.Random(1)
    seen = {process_caption(caption, rules, rng) for _ in range(30)}
    assert len(seen) > 1 and all(s.startswith("sls, 1girl, ") for s in seen)
    assert all(sorted(s.split(", ")[2:]) == ["hat", "outdoors", "smile"] for s in seen)
    sep = CaptionRules(shuffle_caption=True, keep_tokens_separator="|||")
    for _ in range(10):
        out = process_caption("sls, 1girl ||| smile, hat ||| masterpiece", sep, rng)
        assert out.startswith("sls, 1girl, ") and out.endswith(", masterpiece")
    every2 = CaptionRules(caption_dropout_every_n_epochs=2)
    assert [process_caption(caption, every2, rng, epoch) for epoch in (1, 2, 3, 4)] == [caption, "", caption, ""]
    tagdrop = CaptionRules(caption_tag_dropout_rate=0.5, keep_tokens=1)
    outs = [process_caption(caption, tagdrop, random.Random(s)) for s in range(20)]
    assert all(o.startswith("sls") for o in outs) and min(len(o.split(", ")) for o in outs) < 5
    assert process_caption("a, b", CaptionRules(caption_prefix="photo of", caption_suffix="end"),
                           rng) == "photo of a, b end"
    wild = CaptionRules(enable_wildcard=True)
    assert process_caption("{red|red} hat, {{literal}}", wild, rng) == "red hat, {literal}"


def test_preview_is_stable_and_warns_where_kohya_bites():
    rules = CaptionRules(shuffle_caption=True, keep_tokens=1)
    a = preview_caption("sls, 1girl, smile, hat", rules, epochs=3, seed=5)
    assert a == preview_caption("sls, 1girl, smile, hat", rules, epochs=3, seed=5)
    assert len(a.epochs) == 3 and a.fixed == ("sls",) and a.warnings == ()
    torn = preview_caption("(red, blue:1.2), 1girl, hat", CaptionRules(shuffle_caption=True, keep_tokens=1))
    assert any("ends inside the tag '(red, blue:1.2)'" in w for w in torn.warnings)
    words = ", ".join(f"tag{i}" for i in range(40))
    long = preview_caption(words, CaptionRules(), count_tokens=lambda s: len(s.split()) * 2, max_token_length=75)
    assert any("more than max_token_length 75" in w and "'tag37'" in w for w in long.warnings)


def test_tags_command_lists_edits_and_backs_up(tmp_path, capsys):
    from core.dataset.__main__ import main

    folder = dataset(tmp_path, {"a": SEED_001, "b": "1boy, kitchen, rare", "c": "1boy, kitchen"})
    assert main(["tags", str(folder), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["1boy\t3", "kitchen\t3"] and "rare\t1" in lines
    assert main(["tags", str(folder), "--merge", "1boy,facial hair=Smith", "--below", "2",
                 "--trigger", "shengcai"]) == 0
    assert (folder / "a.txt").read_text(encoding="utf-8") == "shengcai, Smith, kitchen"
    assert "previous ones are in" in capsys.readouterr().err
    backups = list((folder / ".kiln-caption-backups").iterdir())
    assert len(backups) == 1 and (backups[0] / "a.txt").read_text(encoding="utf-8") == SEED_001
    assert main(["tags", str(folder), "--replace", "Smith=John", "--remove", "kitchen"]) == 0
    assert (folder / "b.txt").read_text(encoding="utf-8") == "shengcai, John"
    assert main(["tags", str(folder), "--replace", "nope"]) == 1
    assert "OLD=NEW" in capsys.readouterr().err
