"""The demo dataset: untagged pictures of the new concept, with the planted problems the checks must flag."""

from pathlib import Path

import pytest
from PIL import Image

from core.dataset import demo
from core.dataset.__main__ import main
from core.dataset.checks import CheckOptions, check_layout
from core.dataset.kohya_folders import lay_out_concept, scan_dataset
from core.errors import KilnError
from core.shapes.checker import check_image


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return demo.make_demo(tmp_path_factory.mktemp("demo") / "orange")


def test_pictures_show_the_concept_varied_and_untagged(made):
    folder = made.folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in made.pictures)
    assert not list(folder.glob("*.txt"))  # untagged: tagging is a step of the workflow
    assert 16 <= len(made.pictures) <= 20
    sizes, off_centre = set(), 0
    for path in made.pictures:
        scene = made.scenes[path.name]
        with Image.open(path) as image:
            size = image.size
        if path.name == "small.png":
            continue
        sizes.add(size)
        assert min(size) > 64  # larger than the model's 64 px: preprocessing has work to do
        off_centre += abs(scene.params.cx - size[0] / 2) > 0.1 * size[0] or abs(scene.params.cy - size[1] / 2) > 0.1 * size[1]
        result = check_image(Image.open(path), concepts=True)
        assert (result.color, result.shape, result.background) == ("orange", scene.shape, scene.background), path
    assert len(sizes) >= 10 and any(w != h for w, h in sizes)
    assert off_centre >= 4
    assert {made.scenes[p.name].shape for p in made.pictures} == {"circle", "square", "triangle"}
    assert {p.suffix for p in made.pictures} == {".png", ".jpg"}


def test_the_checks_flag_each_planted_problem_and_nothing_else(made, tmp_path):
    lay_out_concept(made.folder, tmp_path / "train", repeats=10, instance="orange", class_word="shape")
    problems = [p for p in check_layout(scan_dataset(tmp_path / "train"), CheckOptions(resolution=(64, 64)))
                if p.code != "missing-caption"]
    found = {(p.code, tuple(sorted(q.name for q in p.paths))) for p in problems}
    planted = {(code, tuple(sorted(q.name for q in paths))) for code, paths in made.planted.items()}
    assert found == planted
    assert {code for code, _ in planted} == {"duplicate", "small-picture", "shared-caption"}
    missing = [p for p in check_layout(scan_dataset(tmp_path / "train")) if p.code == "missing-caption"]
    assert len(missing) == len(made.pictures)


def test_never_writes_over_existing_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"my own picture")
    with pytest.raises(KilnError, match="a.png"):
        demo.make_demo(folder)
    assert [p.name for p in folder.iterdir()] == ["a.png"]
    assert (folder / "a.png").read_bytes() == b"my own picture"


def test_same_seed_same_files_other_seed_other_pictures(tmp_path, made):
    again = demo.make_demo(tmp_path / "again")
    other = demo.make_demo(tmp_path / "other", seed=1)
    for path in made.pictures:
        assert (again.folder / path.name).read_bytes() == path.read_bytes()
    assert (other.folder / "orange_01.png").read_bytes() != (made.folder / "orange_01.png").read_bytes()


def test_cli_writes_the_demo_and_refuses_a_second_time(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["demo", "--out", str(out)]) == 0
    assert "planted shared-caption: a.jpg, a.png" in capsys.readouterr().out
    assert main(["demo", "--out", str(out)]) == 1
    assert "already there" in capsys.readouterr().err
    assert Path(out / "small.png").is_file()
