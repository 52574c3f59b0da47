"""kill -9 while images and config.json are being written: every file under a final name is whole,
and the temp files a crash leaves are recognised and removed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from core.fileio import remove_stale_temp_files

REPO = Path(__file__).resolve().parents[1]
TRIALS = 30

SAVE_PNGS = """
import os, sys
from pathlib import Path
from PIL import Image
from core.generation.saving import save_png, save_png_named
folder = Path(sys.argv[1])
image = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))  # ~200 KB that does not compress
save_png(image, folder, 0, "a cat", "p\\nSteps: 1, Seed: 1, Size: 256x256")  # one whole file before any kill
print("ready", flush=True)
for n in range(1, 10**9):
    if n % 4 == 3:
        save_png_named(image, folder, "named", "p\\nSteps: 1, Seed: 1, Size: 256x256")
    else:
        save_png(image, folder, n, "a cat", "p\\nSteps: 1, Seed: 1, Size: 256x256")
"""

SAVE_CONFIG = """
import sys
from pathlib import Path
from core.cli import parse_flags
from core.paths import KilnPaths
from core.settings import Settings
flags = parse_flags(["--data-dir", sys.argv[1]])
settings = Settings.load(flags, KilnPaths.from_flags(flags, Path(sys.argv[1])))
settings.options.extra["padding"] = "x" * 200_000  # a larger file: longer writes
settings.options.extra["n"] = -1
settings.save()  # one whole file before any kill, however slow the machine
print("ready", flush=True)
for n in range(10**9):
    settings.options.extra["n"] = n
    settings.save()
"""


def _kill_mid_run(script: str, folder: Path, rng: random.Random) -> None:
    child = subprocess.Popen([sys.executable, "-c", script, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline() == b"ready\n"
    time.sleep(rng.uniform(0.02, 0.3))
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


def _temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.name.endswith(".tmp"))


def test_kill_9_while_saving_pngs_never_leaves_a_broken_image(tmp_path):
    rng = random.Random(22)
    folder = tmp_path / "outputs"
    temps_seen: set[Path] = set()
    checked: set[Path] = set()
    for _ in range(TRIALS):
        _kill_mid_run(SAVE_PNGS, folder, rng)
        temps_seen.update(_temp_files(folder))
        for path in set(folder.glob("*.png")) - checked:
            checked.add(path)
            assert path.stat().st_size > 0, f"{path.name} is empty"
            with Image.open(path) as image:
                image.load()
                assert image.info["parameters"].endswith("Size: 256x256")
    pngs = sorted(folder.glob("*.png"))
    print(f"\n{TRIALS} kills: {len(pngs)} whole PNGs, {len(temps_seen)} kills left a temp file")
    assert len(pngs) >= TRIALS  # every child saved some before its kill
    removed = remove_stale_temp_files(folder, "*.png", older_than_s=0)
    # Each save also sweeps temps older than STALE_TEMP_AGE_S, so on a slow machine a later child
    # removed some already: the final sweep takes the rest, every temp seen is gone, nothing else went.
    assert set(removed) <= temps_seen and not any(p.exists() for p in temps_seen)
    assert _temp_files(folder) == []
    assert sorted(folder.glob("*.png")) == pngs  # cleanup never touches an image


def test_kill_9_while_saving_config_json(tmp_path):
    rng = random.Random(23)
    temps_seen: set[Path] = set()
    for _ in range(TRIALS // 2):
        _kill_mid_run(SAVE_CONFIG, tmp_path, rng)
        temps_seen.update(_temp_files(tmp_path))
        assert "n" in json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    print(f"\n{TRIALS // 2} kills: {len(temps_seen)} left a config temp file")
    # Loading settings removes a dead writer's temp files (older than a minute; here made old).
    old = time.time() - 120
    for temp in _temp_files(tmp_path):
        os.utime(temp, (old, old))
    subprocess.run([sys.executable, "-c", SAVE_CONFIG.split("settings.options")[0], str(tmp_path)], cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    assert _temp_files(tmp_path) == []


# --- the pieces -------------------------------------------------------------------------------


def _make_old(path: Path, age_s: float = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_stale_temp_cleanup_removes_only_old_temp_files_of_the_kind_asked(tmp_path):
    ours = [_make_old(tmp_path / ".00001-5-a cat.png.ab12cd34.tmp"), _make_old(tmp_path / ".00002-5-a.png.tmp"),
            _make_old(tmp_path / "2024-01-01" / ".named.png.zz99yy88.tmp")]
    kept = [_make_old(tmp_path / ".config.json.ab12cd34.tmp"), _make_old(tmp_path / "notes.tmp"),
            _make_old(tmp_path / ".hidden.png"), _make_old(tmp_path / "00001-5-a cat.png"),
            _make_old(tmp_path / ".fresh.png.ab12cd34.tmp", age_s=0)]
    (tmp_path / ".dir.png.tmp").mkdir()
    (tmp_path / ".link.png.tmp").symlink_to(tmp_path / "00001-5-a cat.png")
    assert sorted(remove_stale_temp_files(tmp_path, "*.png")) == sorted(ours[:2])  # not below, unless asked
    assert sorted(remove_stale_temp_files(tmp_path, "*.png", recursive=True)) == ours[2:]
    assert all(p.exists() for p in kept) and (tmp_path / ".dir.png.tmp").is_dir()
    assert (tmp_path / ".link.png.tmp").is_symlink()
    assert remove_stale_temp_files(tmp_path, "config.json") == [kept[0]]
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_start_up_cleanup_walks_every_output_folder(tmp_path):
    from core.generation.saving import remove_stale_output_temps

    stale = [_make_old(tmp_path / "txt2img-images" / "2024-01-01" / ".00001-1-x.png.ab12cd34.tmp"),
             _make_old(tmp_path / "img2img-images" / ".00001-1-x.png.tmp")]
    folders = [tmp_path / "txt2img-images", tmp_path / "img2img-images", tmp_path / "txt2img-images",
               tmp_path / "not-there"]
    assert sorted(remove_stale_output_temps(folders)) == sorted(stale)


def test_names_are_never_shared_by_concurrent_writers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from core.fileio import write_new_file

    def write(n: int) -> Path:
        return write_new_file(tmp_path, (f"{i:05}.bin" for i in range(1000)), b"%d" % n)

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(write, range(64)))
    assert len(set(paths)) == 64
    assert sorted(int(p.read_bytes()) for p in paths) == list(range(64))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:05}.bin" for i in range(64)]


def test_without_hard_links_names_are_claimed_exclusively(tmp_path, monkeypatch):
    import errno

    from core.fileio import write_new_file

    def no_links(*_args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a.bin").write_bytes(b"old")
    assert write_new_file(tmp_path, ["a.bin", "b.bin"], b"new") == tmp_path / "b.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"old" and (tmp_path / "b.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_long_non_latin_prompts_fit_a_file_name(tmp_path):
    from core.generation.saving import MAX_FILENAME_BYTES, save_png, save_png_named

    image = Image.new("RGB", (8, 8))
    path = save_png(image, tmp_path, 123, "猫" * 300, "p")
    assert path.name.startswith("00000-123-猫") and len(path.stem.encode()) <= MAX_FILENAME_BYTES
    named = save_png_named(image, tmp_path, "画" * 300, None)
    assert len(named.stem.encode()) <= MAX_FILENAME_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, named.name])
