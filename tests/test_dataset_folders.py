"""kohya folders (core/dataset/kohya_folders.py) and the checks before training (core/dataset/checks.py).

The seeds' examples are the cases: ``10_sls 1girl``, ``reg/1_1girl``, ``./train`` holding ``10_ron``,
110 images × 100 repeats ÷ batch 2 = 5500 steps (seed 000's LoRA metadata)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from core.dataset.checks import CheckOptions, blocking, check_dataset
from core.dataset.kohya_folders import (
    folder_name,
    lay_out_concept,
    parse_folder_name,
    plan_layout,
    plan_steps,
    scan_dataset,
    suggest_repeats,
)
from core.errors import KilnError


def picture(path, kind: int = 0, size=(64, 64), fmt=None):
    """A distinct picture per ``kind``: a shape at a place and colour of its own."""
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    w, h = size
    x0, y0 = (kind * 7) % (w // 2), (kind * 11) % (h // 2)
    colour = ((kind * 53) % 256, (kind * 97) % 256, (kind * 151) % 256)
    if kind % 3 == 0:
        d.ellipse([x0, y0, x0 + w // 2, y0 + h // 2], fill=colour)
    elif kind % 3 == 1:
        d.rectangle([x0, y0, x0 + w // 3, y0 + h // 2], fill=colour)
    else:
        d.polygon([(x0, y0 + h // 2), (x0 + w // 2, y0 + h // 2), (x0 + w // 4, y0)], fill=colour)
    d.line([(0, h - 1 - kind % h), (w - 1, kind % h)], fill=(0, 0, 0), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


def test_folder_names_as_kohya_reads_them():
    sls = parse_folder_name("10_sls 1girl")
    assert (sls.repeats, sls.class_tokens, sls.instance, sls.class_word) == (10, "sls 1girl", "sls", "1girl")
    reg = parse_folder_name("1_1girl")
    assert (reg.repeats, reg.class_tokens, reg.class_word) == (1, "1girl", "")
    assert parse_folder_name("10_ron").instance == "ron"
    assert parse_folder_name("20_my_char girl").class_tokens == "my_char girl"  # rest re-joined with "_"
    assert parse_folder_name("10").class_tokens == ""  # seed 002: "纯数字的目录" works
    assert parse_folder_name("train_1_person") is None  # kohya skips it: no repeats first
    assert parse_folder_name("0_x") is None
    assert folder_name(10, "sls", "1girl") == "10_sls 1girl"
    with pytest.raises(KilnError, match="repeats"):
        folder_name(0, "sls")
    with pytest.raises(KilnError, match="folder name"):
        folder_name(3, "a/b")


def test_seed_layout_is_scanned_with_repeats_classes_and_skipped_folders(tmp_path):
    for k in range(3):
        picture(tmp_path / "train_girls" / "10_sls 1girl" / f"{k}.png", k)
        picture(tmp_path / "train_girls" / "10_cpc 1girl" / f"{k}.png", 10 + k)
    picture(tmp_path / "train_girls" / "train_1_person" / "x.png", 30)
    picture(tmp_path / "reg_girls" / "1_1girl" / "r.png", 40)
    layout = scan_dataset(tmp_path / "train_girls", tmp_path / "reg_girls")
    assert [c.path.name for c in layout.concepts] == ["10_cpc 1girl", "10_sls 1girl"]
    assert [c.path.name for c in layout.reg_concepts] == ["1_1girl"]
    assert layout.train_images == 60 and layout.reg_images == 1
    assert [i.path.name for i in layout.ignored] == ["train_1_person"]
    assert "repeats" in layout.ignored[0].reason


def test_a_concept_folder_given_directly_is_read_as_its_parent(tmp_path):
    """Seed 002: data in ./train/10_ron, the script gets ./train; a user who picks 10_ron itself
    gets the same reading instead of "no folders"."""
    for k in range(2):
        picture(tmp_path / "train" / "10_ron" / f"{k}.jpg", k, fmt="JPEG")
    assert scan_dataset(tmp_path / "train").concepts[0].weighted_count == 20
    direct = scan_dataset(tmp_path / "train" / "10_ron")
    assert [c.path.name for c in direct.concepts] == ["10_ron"] and direct.train_dir == tmp_path / "train"


def test_seed_000_step_arithmetic_and_repeats_suggestion():
    plan = plan_steps(110 * 100, batch_size=2, epochs=1)
    assert plan.batches_per_epoch == 5500 and plan.total_steps == 5500
    assert plan.explain(110, 100) == "110 images × 100 repeats ÷ batch 2 × 1 epoch = 5500 steps"
    assert plan_steps(11, batch_size=2, epochs=3).total_steps == 18  # ceil(11/2) = 6 a epoch
    assert plan_steps(10, batch_size=1, epochs=1, with_reg=True).total_steps == 20  # reg balanced: doubled
    assert plan_steps(10, batch_size=1, epochs=2, gradient_accumulation=4).total_steps == 6
    assert suggest_repeats(110, 5500, batch_size=2) == 100
    assert suggest_repeats(23, 1500, batch_size=1, epochs=10) == 7
    assert suggest_repeats(500, 10, batch_size=1) == 1
    with pytest.raises(KilnError):
        suggest_repeats(0, 100)


def test_plan_of_a_scanned_layout_with_reg(tmp_path):
    for k in range(4):
        picture(tmp_path / "t" / "5_a cat" / f"{k}.png", k)
    picture(tmp_path / "r" / "1_cat" / "r.png", 20)
    plan = plan_layout(scan_dataset(tmp_path / "t", tmp_path / "r"), batch_size=2, epochs=2)
    assert (plan.train_images, plan.reg_images, plan.total_steps) == (20, 20, 40)
    assert "reg images" in plan.explain()


def test_lay_out_copies_pictures_and_captions_and_never_overwrites(tmp_path):
    src = tmp_path / "raw"
    for k in range(3):
        picture(src / f"{k}.png", k)
    (src / "0.txt").write_text("sls, 1girl", encoding="utf-8")
    result = lay_out_concept(src, tmp_path / "train", repeats=10, instance="sls", class_word="1girl")
    assert result.folder == tmp_path / "train" / "10_sls 1girl" and result.copied == 4
    assert (result.folder / "0.txt").read_text(encoding="utf-8") == "sls, 1girl"
    assert sorted(p.name for p in src.iterdir()) == ["0.png", "0.txt", "1.png", "2.png"]  # originals stay
    again = lay_out_concept(src, tmp_path / "train", repeats=10, instance="sls", class_word="1girl")
    assert (again.copied, again.already_there) == (0, 4)
    (result.folder / "1.png").write_bytes(b"other")
    with pytest.raises(KilnError, match="already in the kohya folder"):
        lay_out_concept(src, tmp_path / "train", repeats=10, instance="sls", class_word="1girl")
    assert (result.folder / "1.png").read_bytes() == b"other"
    with pytest.raises(KilnError, match="inside the source"):
        lay_out_concept(src, src, repeats=1, instance="x")
    with pytest.raises(KilnError, match="no pictures"):
        lay_out_concept(tmp_path / "train" / "10_sls 1girl" / "..", tmp_path / "o", repeats=1, instance="x")


def codes(problems):
    return sorted({p.code for p in problems})


def test_a_clean_dataset_has_no_problems(tmp_path):
    for k in range(3):
        picture(tmp_path / "t" / "10_sls 1girl" / f"{k}.png", k, size=(64, 64))
        (tmp_path / "t" / "10_sls 1girl" / f"{k}.txt").write_text("sls, 1girl", encoding="utf-8")
    picture(tmp_path / "r" / "1_1girl" / "r.png", 50)
    _, problems = check_dataset(tmp_path / "t", tmp_path / "r", CheckOptions(resolution=(64, 64)))
    assert problems == []


def test_the_seeds_pitfalls_are_each_found(tmp_path):
    concept = tmp_path / "t" / "10_sls 1girl"
    picture(concept / "a.png", 1)
    picture(concept / "a.jpg", 2, fmt="JPEG")  # seed 002: a.png + a.jpg share a.txt
    (concept / "a.txt").write_text("sls", encoding="utf-8")
    picture(concept / "b.png", 3)
    (concept / "b.txt").write_bytes("少女, 微笑".encode("gb18030"))  # not UTF-8
    picture(concept / "c.png", 4)
    (concept / "c.txt").write_text("", encoding="utf-8")
    picture(concept / "d.png", 5)  # no caption at all
    picture(concept / "small.png", 6, size=(32, 32))
    (concept / "small.txt").write_text("sls\nsecond line", encoding="utf-8")
    picture(concept / "anim.gif", 7, fmt="GIF")
    (concept / "broken.png").write_bytes(b"")
    same = picture(tmp_path / "r" / "1_1girl" / "same.png", 3)  # seed 001: b.png again, other name
    same.write_bytes((concept / "b.png").read_bytes())
    reencoded = Image.open(concept / "d.png")
    reencoded.save(tmp_path / "r" / "1_1girl" / "d_copy.jpg", quality=90)  # same picture, other bytes
    _, problems = check_dataset(tmp_path / "t", tmp_path / "r", CheckOptions(resolution=(64, 64)))
    found = {(p.code, p.paths[0].name) for p in problems}
    shared = next(p for p in problems if p.code == "shared-caption")
    assert {p.name for p in shared.paths} == {"a.png", "a.jpg"} and "a.txt" in shared.message
    assert ("caption-not-utf8", "b.txt") in found
    assert ("empty-caption", "c.txt") in found
    assert ("missing-caption", "d.png") in found
    assert ("multiline-caption", "small.txt") in found
    assert ("small-picture", "small.png") in found
    assert ("unused-picture", "anim.gif") in found
    assert ("unreadable", "broken.png") in found
    dupes = [p for p in problems if p.code == "train-reg-duplicate"]
    assert {(p.paths[0].name, p.paths[1].name) for p in dupes} == {("b.png", "same.png"), ("d.png", "d_copy.jpg")}
    assert "gb18030" in next(p.message for p in problems if p.code == "caption-not-utf8")
    assert (concept / "b.txt").read_bytes() == "少女, 微笑".encode("gb18030")  # reported, never rewritten
    assert all(p.severity == "error" for p in blocking(problems))
    assert problems[0].severity == "error" and problems[-1].severity == "warning"


def test_near_duplicates_are_found_and_distinct_pictures_are_not(tmp_path):
    concept = tmp_path / "t" / "3_x"
    base = picture(concept / "base.png", 1, size=(96, 96))
    variant = Image.open(base).copy()
    ImageDraw.Draw(variant).rectangle([80, 80, 84, 84], fill=(255, 0, 0))  # a 差分: one small change
    variant.save(concept / "variant.png")
    for k in (2, 3, 4, 5):
        picture(concept / f"other{k}.png", k, size=(96, 96))
    _, problems = check_dataset(tmp_path / "t", None, CheckOptions(resolution=(64, 64)))
    near = [p for p in problems if p.code == "near-duplicate"]
    assert [(p.paths[0].name, p.paths[1].name) for p in near] == [("base.png", "variant.png")]
    _, off = check_dataset(tmp_path / "t", None, CheckOptions(resolution=(64, 64), check_near_duplicates=False))
    assert "near-duplicate" not in codes(off)


def test_unbalanced_repeats_reg_class_and_empty_folders(tmp_path):
    for k in range(8):
        picture(tmp_path / "t" / "10_a 1girl" / f"{k}.png", k)
    picture(tmp_path / "t" / "1_b 1girl" / "0.png", 20)
    (tmp_path / "t" / "5_empty").mkdir()
    picture(tmp_path / "r" / "1_1boy" / "r.png", 30)
    _, problems = check_dataset(tmp_path / "t", tmp_path / "r", CheckOptions(resolution=(64, 64)))
    assert {"unbalanced-repeats", "reg-class-unused", "empty-folder"} <= set(codes(problems))
    unbalanced = next(p for p in problems if p.code == "unbalanced-repeats")
    assert "80" in unbalanced.message and "1_b 1girl" in unbalanced.message


def test_missing_or_empty_train_folder(tmp_path):
    with pytest.raises(KilnError, match="folder not found"):
        check_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    _, problems = check_dataset(tmp_path / "empty")
    assert codes(problems) == ["no-concepts"] and "10_sls 1girl" in problems[0].message


def test_check_command_prints_the_plan_and_one_line_per_problem(tmp_path, capsys):
    from core.dataset.__main__ import main

    concept = tmp_path / "train" / "100_GiniS2"
    for k in range(3):
        picture(concept / f"{k}.png", k)
        (concept / f"{k}.txt").write_text("gini", encoding="utf-8")
    assert main(["check", str(tmp_path / "train"), "--resolution", "64", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "train 100_GiniS2: 3 images × 100 repeats = 300" in out
    assert "3 images × 100 repeats ÷ batch 2 × 1 epoch = 150 steps" in out
    (concept / "0.txt").unlink()
    assert main(["check", str(tmp_path / "train"), "--resolution", "64"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert len(lines) == 1 and "0.png" in lines[0] and "no .txt caption" in lines[0]
    assert main(["check", str(tmp_path / "missing")]) == 1
    assert "folder not found" in capsys.readouterr().err


def test_folders_command_lays_out_a_concept(tmp_path, capsys):
    from core.dataset.__main__ import main

    picture(tmp_path / "raw" / "a.png", 1)
    assert main(["folders", str(tmp_path / "raw"), str(tmp_path / "train"), "--repeats", "10",
                 "--name", "sls", "--class", "1girl"]) == 0
    assert (tmp_path / "train" / "10_sls 1girl" / "a.png").is_file()
    assert main(["folders", str(tmp_path / "raw"), str(tmp_path / "train"), "--repeats", "0", "--name", "x"]) == 1
