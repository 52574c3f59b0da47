"""Tagging a folder: the model registry, modes, backups, broken files, progress, and the CLI."""

from __future__ import annotations

import pytest
from PIL import Image

from core.dataset.captions import BACKUP_FOLDER, read_caption
from core.dataset.tag_folder import TagFolderOptions, merge_caption, tag_folder
from core.dataset.taggers import TaggerCache, list_models, load_tagger, resolve_model
from core.dataset.taggers.common import TagOptions
from core.errors import KilnError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder with a tiny WD14 (plain and as a Hugging Face cache), DeepBooru and BLIP."""
    import shutil

    from core.dataset.taggers.fixtures import write_tiny_blip, write_tiny_deepbooru, write_tiny_wd14

    root = tmp_path_factory.mktemp("data")
    wd = write_tiny_wd14(root / "models" / "tagger" / "wd-tiny")
    snap = root / "models" / "tagger" / "models--SmilingWolf--wd-cache-v3" / "snapshots" / "0123abc"
    shutil.copytree(wd, snap)
    write_tiny_deepbooru(root / "models" / "torch_deepdanbooru")
    write_tiny_blip(root / "models" / "BLIP" / "tiny-blip")
    (root / "models" / "tagger" / "empty-folder").mkdir()
    return root


@pytest.fixture()
def paths(data_dir):
    from core.cli import parse_flags
    from core.paths import KilnPaths

    return KilnPaths.from_flags(parse_flags(["--data-dir", str(data_dir)]), data_dir)


def _pictures(folder, colours=("red", "white", "blue")):
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", (48, 32), colour).save(folder / f"{i:02d}_{colour}.png")
    return folder


def test_registry_lists_and_resolves(paths, data_dir):
    models = list_models(paths)
    assert [(m.name, m.kind) for m in models] == [
        ("wd-cache-v3", "wd14"), ("wd-tiny", "wd14"), ("model-resnet_custom_v3", "deepbooru"), ("tiny-blip", "blip")]
    assert resolve_model("deepdanbooru", paths).kind == "deepbooru"
    assert resolve_model("clip", paths).name == "tiny-blip"
    assert resolve_model("wd-tiny (WD14)", paths).name == "wd-tiny"
    by_path = resolve_model(str(data_dir / "models" / "tagger" / "wd-tiny"), paths)
    assert by_path.kind == "wd14"
    tagger = load_tagger("wd-cache-v3", paths)
    assert tagger.kind == "wd14" and "white background" in tagger.tag([Image.new("RGB", (8, 8), "white")])[0].text


def test_missing_model_names_the_files_and_folders(paths, tmp_path):
    with pytest.raises(KilnError) as err:
        resolve_model("wd-v1-4-moat-tagger-v2", paths)
    text = str(err.value)
    assert "no tagger named 'wd-v1-4-moat-tagger-v2'" in text
    assert f"model.onnx and selected_tags.csv into {paths.tagger_dir}/<name>/" in text
    assert f"model-resnet_custom_v3.pt (AUTOMATIC1111/TorchDeepDanbooru) into {paths.deepbooru_dir}/" in text
    assert str(paths.blip_dir) in text and "installed: wd-cache-v3" in text
    with pytest.raises(KilnError, match="not a tagger"):
        resolve_model(str(tmp_path), paths)


def test_cache_keeps_one_model(paths):
    cache = TaggerCache(paths)
    a = cache.get("wd-tiny")
    assert cache.get("wd-tiny") is a
    b = cache.get("deepdanbooru")
    assert b is not a and b.kind == "deepbooru"
    assert cache.unload() == 1 and cache.unload() == 0


def test_merge_modes():
    assert merge_caption("old, b", "b, c", "overwrite") == "b, c"
    assert merge_caption("old, b", "b, c", "append") == "old, b, c"
    assert merge_caption("old, b", "b, c", "prepend") == "b, c, old"
    assert merge_caption("old, sls", "c", "append", lead=("sls",)) == "sls, old, c"
    assert merge_caption("", "c", "append", lead=("sls",)) == "sls, c"


def test_tag_folder_modes_backup_and_progress(paths, tmp_path):
    folder = _pictures(tmp_path / "train")
    (folder / "00_red.txt").write_text("my, own", encoding="utf-8")
    (folder / "01_white.txt").write_text("", encoding="utf-8")
    tagger = load_tagger("wd-tiny", paths)
    events = []
    opts = TagFolderOptions(mode="skip", batch_size=2, tags=TagOptions(additional=("shengcai",)))
    report = tag_folder(folder, tagger, opts, on_progress=events.append)
    assert [p.name for p in report.kept] == ["00_red.png"]  # the empty caption was not worth keeping
    assert read_caption(folder / "00_red.txt").text == "my, own"
    white = read_caption(folder / "01_white.txt").text
    assert white.startswith("shengcai, white background") and "red theme" not in white
    assert read_caption(folder / "02_blue.txt").text.startswith("shengcai, blue theme")
    assert report.backup is None and not (folder / BACKUP_FOLDER).exists()
    assert [e.done for e in events] == [1, 2, 3] and events[-1].total == 3
    assert events[-1].image.name == "02_blue.png" and "blue theme" in events[-1].result.text

    report = tag_folder(folder, tagger, TagFolderOptions(mode="append", tags=TagOptions(exclude=("^_^",))))
    red = read_caption(folder / "00_red.txt").text
    assert red.startswith("my, own, red theme") and "^_^" not in red
    assert report.backup is not None and (report.backup / "00_red.txt").read_text() == "my, own"
    report = tag_folder(folder, tagger, TagFolderOptions(mode="overwrite", extension=".caption"))
    assert (folder / "00_red.caption").is_file() and read_caption(folder / "00_red.txt").text.startswith("my, own")


def test_broken_files_are_reported_and_the_rest_tagged(paths, tmp_path):
    folder = _pictures(tmp_path / "mixed", ("red",))
    (folder / "empty.png").write_bytes(b"")
    (folder / "junk.jpg").write_bytes(b"not a jpeg")
    report = tag_folder(folder, load_tagger("wd-tiny", paths), TagFolderOptions(batch_size=8))
    assert [p.name for p in report.written] == ["00_red.txt"]
    reasons = {s.path.name: s.reason for s in report.broken}
    assert set(reasons) == {"empty.png", "junk.jpg"} and "0 bytes" in reasons["empty.png"]
    assert not (folder / "empty.txt").exists()
    assert "2 unreadable skipped" in report.summary()


def test_stop_keeps_what_was_written(paths, tmp_path):
    folder = _pictures(tmp_path / "stop")
    calls = []
    report = tag_folder(folder, load_tagger("wd-tiny", paths), TagFolderOptions(batch_size=1),
                        should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert report.stopped and len(report.written) == 2
    assert (folder / "01_white.txt").exists() and not (folder / "02_blue.txt").exists()


def test_bad_folders(paths, tmp_path):
    tagger = load_tagger("wd-tiny", paths)
    with pytest.raises(KilnError, match="folder not found"):
        tag_folder(tmp_path / "nope", tagger)
    with pytest.raises(KilnError, match="no pictures"):
        tag_folder(tmp_path, tagger)


def test_deepbooru_and_blip_write_captions(paths, tmp_path):
    folder = _pictures(tmp_path / "both", ("grey",))
    tag_folder(folder, load_tagger("deepdanbooru", paths),
               TagFolderOptions(tags=TagOptions(general_threshold=0.5, sort="alphabetical")))
    assert read_caption(folder / "00_grey.txt").text.startswith("1girl, ")
    tag_folder(folder, load_tagger("tiny-blip", paths),
               TagFolderOptions(mode="prepend", extension=".caption", tags=TagOptions(additional=("sls",))))
    text = read_caption(folder / "00_grey.caption").text
    assert text.startswith("sls, ") and len(text) > 6


# --------------------------------------------------------------------------- the CLI --
def test_cli_tags_a_folder(data_dir, tmp_path, capsys):
    from core.dataset.__main__ import main

    folder = _pictures(tmp_path / "cli")
    code = main(["--data-dir", str(data_dir), "tag", str(folder), "--model", "wd-tiny", "--threshold", "0.5",
                 "--trigger", "shengcai", "--mode", "overwrite"])
    err = capsys.readouterr().err
    assert code == 0
    assert "3/3" in err and "02_blue.png: shengcai, blue theme" in err and "3 of 3 captions written" in err
    caption = read_caption(folder / "00_red.txt").text
    assert caption.startswith("shengcai, red theme") and "fate (series)" not in caption  # 0.45 < 0.5


def test_cli_list_models_and_failures(data_dir, tmp_path, capsys):
    from core.dataset.__main__ import main

    assert main(["--data-dir", str(data_dir), "tag", "--list-models"]) == 0
    out = capsys.readouterr().out
    assert "wd-tiny\twd14\t" in out and "tiny-blip\tblip" in out
    assert main(["--data-dir", str(tmp_path), "tag", "--list-models"]) == 1
    assert "no tagger or captioner is installed" in capsys.readouterr().err
    folder = _pictures(tmp_path / "f", ("red",))
    assert main(["--data-dir", str(data_dir), "tag", str(folder), "--model", "nope"]) == 1
    assert "no tagger named 'nope'" in capsys.readouterr().err
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    assert main(["--data-dir", str(data_dir), "tag", str(folder), "--model", "wd-tiny"]) == 1
    assert "skipped" in capsys.readouterr().err and (folder / "00_red.txt").exists()


def test_pictures_sharing_a_caption_file_are_listed_not_overwritten(paths, tmp_path):
    folder = tmp_path / "pair"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "a.jpg")
    Image.new("RGB", (32, 32), "blue").save(folder / "a.png")
    report = tag_folder(folder, load_tagger("wd-tiny", paths))
    assert [p.name for p in report.written] == ["a.txt"]
    assert "red theme" in read_caption(folder / "a.txt").text  # the first one (a.jpg) only
    (skipped,) = report.broken
    assert skipped.path.name == "a.png" and "shares a.txt with a.jpg" in skipped.reason


def test_cli_takes_data_dir_after_the_command(data_dir, tmp_path, capsys):
    from core.dataset.__main__ import main

    folder = _pictures(tmp_path / "after", ("white",))
    assert main(["tag", str(folder), "--data-dir", str(data_dir), "--model", "wd-tiny"]) == 0
    assert read_caption(folder / "00_white.txt").text.startswith("white background")


def test_folder_job_on_the_queue_reports_progress_and_stops(data_dir, tmp_path):
    from core.cli import parse_flags
    from core.dataset.taggers.service import submit_tag_folder, tag_images
    from core.engine import Engine
    from core.errors import JobInterrupted
    from core.jobs import JobQueue
    from core.settings import Settings

    engine = Engine(Settings.from_flags(parse_flags(["--data-dir", str(data_dir), "--use-cpu", "all"]), data_dir))
    queue = JobQueue()
    try:
        folder = _pictures(tmp_path / "job")
        job = submit_tag_folder(engine, queue, "wd-tiny", folder, TagFolderOptions(batch_size=1), owner="ui:t")
        report = job.wait(60)
        assert job.kind == "tag" and len(report.written) == 3
        assert job.progress.step == 3 and job.progress.total_steps == 3
        assert "3 of 3 captions written" in job.progress.textinfo
        (one,) = tag_images(engine, queue, "wd-tiny", [Image.new("RGB", (8, 8), "red")], owner="ui:t")
        assert "red theme" in one.text

        import threading

        stopped = _pictures(tmp_path / "job2")
        release = threading.Event()
        blocker = queue.submit(lambda _ctx: release.wait(30), "hold the worker", owner="ui:t", kind="tag")
        job = submit_tag_folder(engine, queue, "wd-tiny", stopped, TagFolderOptions(batch_size=1), owner="ui:t")
        # Stop as a running job sees it (queue.stop sets this once the job runs): checked before each batch
        job.stop_event.set()
        never = submit_tag_folder(engine, queue, "wd-tiny", stopped, TagFolderOptions(), owner="ui:t")
        assert queue.stop(never.id, owner="ui:t")  # still queued: it never starts
        release.set()
        blocker.wait(30)
        report = job.wait(60)
        assert report.stopped and report.written == [] and not list(stopped.glob("*.txt"))
        with pytest.raises(JobInterrupted):
            never.wait(30)
    finally:
        queue.shutdown()
