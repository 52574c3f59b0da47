"""The WebUI's server routes: cmd-flags, memory, extensions, face-restorers, realesrgan-models,
unload/reload-checkpoint, and a walk over the WebUI's route list (none of them answers 404)."""

from __future__ import annotations

import threading
import zlib

import pytest
from fastapi.testclient import TestClient

from core.api.cmd_flags import _kiln_values, dest
from core.api.server import create_api_app
from core.cli import build_parser, parse_flags
from core.engine import Engine
from core.jobs import JobQueue
from core.settings import Settings
from core.webui_flags import WEBUI_FLAGS, WEBUI_FLAGS_ACCEPTED, WEBUI_FLAGS_REFUSED

# The WebUI's routes (modules/api/api.py v1.10 and the built-in Lora extension) that Kiln serves.
# Not here: /sdapi/v1/server-kill|restart|stop (only with --api-server-stop, which Kiln declines:
# stop the process) and /sdapi/v1/sd-modules (Forge's, which clients use to detect Forge).
WEBUI_ROUTES = [
    ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img"), ("POST", "/sdapi/v1/extra-single-image"),
    ("POST", "/sdapi/v1/extra-batch-images"), ("POST", "/sdapi/v1/png-info"), ("GET", "/sdapi/v1/progress"),
    ("POST", "/sdapi/v1/interrogate"), ("POST", "/sdapi/v1/interrupt"), ("POST", "/sdapi/v1/skip"),
    ("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/options"), ("GET", "/sdapi/v1/cmd-flags"),
    ("GET", "/sdapi/v1/samplers"), ("GET", "/sdapi/v1/schedulers"), ("GET", "/sdapi/v1/upscalers"),
    ("GET", "/sdapi/v1/latent-upscale-modes"), ("GET", "/sdapi/v1/sd-models"), ("GET", "/sdapi/v1/sd-vae"),
    ("GET", "/sdapi/v1/hypernetworks"), ("GET", "/sdapi/v1/face-restorers"), ("GET", "/sdapi/v1/realesrgan-models"),
    ("GET", "/sdapi/v1/prompt-styles"), ("GET", "/sdapi/v1/embeddings"), ("POST", "/sdapi/v1/refresh-embeddings"),
    ("POST", "/sdapi/v1/refresh-checkpoints"), ("POST", "/sdapi/v1/refresh-vae"),
    ("POST", "/sdapi/v1/create/embedding"), ("POST", "/sdapi/v1/create/hypernetwork"),
    ("POST", "/sdapi/v1/train/embedding"), ("POST", "/sdapi/v1/train/hypernetwork"), ("GET", "/sdapi/v1/memory"),
    ("POST", "/sdapi/v1/unload-checkpoint"), ("POST", "/sdapi/v1/reload-checkpoint"), ("GET", "/sdapi/v1/scripts"),
    ("GET", "/sdapi/v1/script-info"), ("GET", "/sdapi/v1/extensions"), ("GET", "/sdapi/v1/loras"),
    ("POST", "/sdapi/v1/refresh-loras"),
]


def _api(data, *argv: str, devices=None, workers: int = 1):
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--api", *argv]), data)
    settings.paths.ensure_dirs()
    engine = Engine(settings, devices=devices)
    queue = JobQueue(workers=workers)
    return TestClient(create_api_app(engine, queue), raise_server_exceptions=False), engine, queue


@pytest.fixture()
def empty_api(tmp_path):
    client, engine, queue = _api(tmp_path, "--api-auth", "tool:secret", "--no-hashing", "--lowvram")
    try:
        with client:
            client.auth = ("tool", "secret")
            yield client, engine
    finally:
        queue.shutdown()


def test_no_webui_route_that_kiln_serves_answers_404(empty_api):
    client, _engine = empty_api
    bodies = {"/sdapi/v1/img2img": {"init_images": ["bm90IGFuIGltYWdl"]}, "/sdapi/v1/options": {}}
    for method, path in WEBUI_ROUTES:
        response = client.request(method, path, json=bodies.get(path, {}) if method == "POST" else None)
        # A handler may answer 404 itself as the WebUI does ("Image not found"); the router's 404
        # (no such route) and 405 (not with that method) are what must never come.
        unrouted = response.status_code == 405 or (response.status_code == 404
                                                   and response.json() == {"detail": "Not Found"})
        assert not unrouted, (method, path, response.status_code, response.text)


def test_cmd_flags_names_every_webui_flag_with_kilns_value_or_the_webui_default(empty_api, tmp_path):
    client, engine = empty_api
    body = client.get("/sdapi/v1/cmd-flags").json()
    assert {dest(name) for name in WEBUI_FLAGS} <= set(body)
    assert body["api"] is True and body["lowvram"] is True and body["medvram"] is False
    assert body["data_dir"] == str(engine.paths.data_dir) and body["lora_dir"] == str(engine.paths.lora_dir)
    assert body["port"] == 7860 and body["precision"] == "autocast"
    # Passwords stay on the server.
    assert body["api_auth"] == "tool:***" and "secret" not in str(body)
    # A WebUI flag Kiln accepts without effect reads as given; the others keep the WebUI's defaults.
    assert body["no_hashing"] is True and body["share"] is False and body["max_batch_count"] == 16
    assert body["realesrgan_models_path"] == str(tmp_path / "models" / "RealESRGAN")
    assert body["gfpgan_model"] is None and body["f"] is False


def test_every_webui_flag_kiln_parses_itself_is_answered_with_kilns_value():
    own = set()
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option in WEBUI_FLAGS and option not in WEBUI_FLAGS_ACCEPTED and option not in WEBUI_FLAGS_REFUSED:
                own.add(dest(option))
    flags = parse_flags([])
    from core.paths import KilnPaths

    missing = own - set(_kiln_values(flags, KilnPaths.from_flags(flags, __import__("pathlib").Path("."))))
    assert not missing, f"Kiln's own flags missing from cmd-flags: {sorted(missing)}"


def test_memory_has_the_webui_shape(empty_api):
    client, _engine = empty_api
    body = client.get("/sdapi/v1/memory").json()
    ram = body["ram"]
    assert set(ram) == {"free", "used", "total"} and 0 < ram["used"] < ram["total"]
    assert ram["free"] == ram["total"] - ram["used"]
    cuda = body["cuda"]
    assert cuda == {"error": "unavailable"} or {"system", "active", "allocated", "reserved", "inactive",
                                                "events"} <= set(cuda)


def test_extensions_lists_the_folders_in_extensions_with_their_git_data(empty_api):
    client, engine = empty_api
    assert client.get("/sdapi/v1/extensions").json() == []
    ext = engine.paths.extensions_dir / "sd-webui-example"
    (ext / ".git" / "refs" / "heads").mkdir(parents=True)
    (ext / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ext / ".git" / "refs" / "heads" / "main").write_text("0123456789abcdef0123456789abcdef01234567\n")
    (ext / ".git" / "config").write_text('[remote "origin"]\n\turl = https://example.invalid/ext.git\n')
    # The commit as git stores a loose object: zlib("commit <size>\0<text>").
    text = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@b> 1700000000 +0000\n" \
           b"committer C <c@d> 1700000123 +0100\n\nmessage\n"
    loose = ext / ".git" / "objects" / "01" / "23456789abcdef0123456789abcdef01234567"
    loose.parent.mkdir(parents=True)
    loose.write_bytes(zlib.compress(b"commit %d\0" % len(text) + text))
    (engine.paths.extensions_dir / "plain-folder").mkdir()
    items = client.get("/sdapi/v1/extensions").json()
    assert [i["name"] for i in items] == ["plain-folder", "sd-webui-example"]
    item = items[1]
    assert set(item) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
    assert item["branch"] == "main" and item["commit_hash"].startswith("01234567") and item["version"] == "01234567"
    assert item["remote"] == "https://example.invalid/ext.git" and item["enabled"] is False
    assert item["commit_date"] == 1700000123
    assert items[0]["commit_hash"] is None


def test_face_restorers_and_realesrgan_models(empty_api):
    client, engine = empty_api
    assert client.get("/sdapi/v1/face-restorers").json() == []
    assert client.get("/sdapi/v1/realesrgan-models").json() == []
    folder = engine.paths.data_dir / "models" / "RealESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "RealESRGAN_x2plus.pth").write_bytes(b"not read by the listing")
    assert client.get("/sdapi/v1/realesrgan-models").json() == [
        {"name": "R-ESRGAN 2x+", "path": str(folder / "RealESRGAN_x2plus.pth"), "scale": 2}]


def test_unload_and_reload_checkpoint_leave_a_running_job_whole(tmp_path):
    from core.models.fixtures import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path, "sd1")
    client, engine, queue = _api(tmp_path, devices=[None, None], workers=2)
    try:
        with client:
            assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
            assert engine.loaded_checkpoint() is not None
            # One worker holds the model in a job; the unload runs on the other and leaves it be.
            holding, release = threading.Event(), threading.Event()

            def hold(_ctx):
                with engine.lease() as model:
                    holding.set()
                    release.wait(60)
                    return model.unet is not None

            job = queue.submit(hold, description="holds the model", kind="train")
            assert holding.wait(120)
            assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
            busy = [slot for slot in engine.slots if slot.model is not None]
            assert len(busy) == 1  # the job's worker kept its model; the free one dropped it
            release.set()
            assert job.wait(60) is True
            assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
            assert all(slot.model is None for slot in engine.slots)
            assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
            assert engine.loaded_checkpoint() is not None
    finally:
        queue.shutdown()


def test_ram_without_psutil_reads_proc(monkeypatch):
    import sys
    from pathlib import Path

    from core.api.system_routes import ram_info

    with_psutil = ram_info()
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc on this system")
    monkeypatch.setitem(sys.modules, "psutil", None)  # as if it were not installed: import fails
    without = ram_info()
    assert set(without) == {"free", "used", "total"} and without["total"] == with_psutil["total"]
    assert 0 < without["used"] < without["total"]
