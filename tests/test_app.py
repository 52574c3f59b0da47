"""app.py: one FastAPI app with the UI at "/" and the API beside it, per the WebUI's flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import app as kiln_app
from core.cli import parse_flags
from core.settings import Options, Settings

REPO = Path(__file__).resolve().parents[1]


def _settings(tmp_path: Path, *flags: str) -> Settings:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), *flags]), tmp_path)
    settings.paths.ensure_dirs()
    return settings


@pytest.fixture()
def make_client(tmp_path):
    queues = []

    def make(*flags: str) -> TestClient:
        app, _engine, queue = kiln_app.create_app(_settings(tmp_path, *flags))
        queues.append(queue)
        return TestClient(app)

    yield make
    for queue in queues:
        queue.shutdown()


def test_ui_and_api_share_one_port(make_client):
    client = make_client("--api")
    page = client.get("/")
    assert page.status_code == 200 and "gradio" in page.text.lower()
    assert client.get("/sdapi/v1/samplers").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/sdapi/v1/txt2img" in client.get("/openapi.json").json()["paths"]
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_without_api_flag_only_the_ui_is_served(make_client):
    client = make_client()
    assert client.get("/").status_code == 200
    assert client.get("/sdapi/v1/samplers").status_code in (404, 405)


def test_nowebui_serves_the_api_alone(make_client):
    client = make_client("--nowebui")
    assert client.get("/sdapi/v1/options").status_code == 200
    assert client.get("/").status_code == 404


def test_gradio_auth_locks_the_page_and_the_api_with_the_same_logins(make_client):
    client = make_client("--api", "--gradio-auth", "alice:secret")
    assert client.get("/config").status_code == 401
    assert client.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": "alice", "password": "secret"}).status_code == 200
    assert client.get("/config").status_code == 200
    api = TestClient(client.app)
    refused = api.get("/sdapi/v1/options")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert "secret" not in refused.text
    assert api.get("/sdapi/v1/options", auth=("alice", "wrong")).status_code == 401
    assert api.post("/sdapi/v1/txt2img", json={"prompt": "x"}, auth=("mallory", "secret")).status_code == 401
    assert api.get("/sdapi/v1/options", auth=("alice", "secret")).status_code == 200


def test_api_auth_has_its_own_logins(make_client):
    client = make_client("--nowebui", "--api-auth", "bot:token1,ci:token2")
    assert client.get("/sdapi/v1/samplers").status_code == 401
    assert client.get("/sdapi/v1/samplers", auth=("ci", "token2")).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers={"Authorization": "Basic !!not-base64"}).status_code == 401


@pytest.mark.parametrize("argv, refused", [
    (["--listen"], True),
    (["--server-name", "192.168.1.20"], True),
    (["--listen", "--gradio-auth", "a:b"], False),
    (["--listen", "--api-auth", "a:b", "--nowebui"], False),
    (["--listen", "--insecure"], False),
    (["--server-name", "127.0.0.1"], False),
    (["--server-name", "localhost"], False),
    ([], False),
])
def test_serving_the_network_without_a_login_is_refused(argv, refused):
    from core.api.auth import network_refusal
    from core.cli import parse_flags

    message = network_refusal(parse_flags(argv))
    assert (message is not None) == refused
    if refused:
        for name in ("--gradio-auth", "--gradio-auth-path", "--api-auth", "--insecure"):
            assert name in message


def test_main_exits_before_serving_when_refused(tmp_path, capsys):
    assert kiln_app.main(["--listen", "--data-dir", str(tmp_path)]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_preview_period_follows_the_options():
    assert kiln_app.preview_period(Options(show_progress_every_n_steps=5)) == 5
    assert kiln_app.preview_period(Options(show_progress_every_n_steps=-1)) == 0
    assert kiln_app.preview_period(Options(live_previews_enable=False, show_progress_every_n_steps=5)) == 0


def test_display_url():
    assert kiln_app.display_url("0.0.0.0", 7860) == "http://127.0.0.1:7860"
    assert kiln_app.display_url("192.168.1.5", 80) == "http://192.168.1.5:80"
    assert kiln_app.display_url("::1", 7860) == "http://[::1]:7860"


@pytest.mark.slow
def test_building_the_app_loads_no_model_library(tmp_path):
    """The page must serve before diffusers/transformers load (they come with the first job)."""
    code = (
        "import sys, app\n"
        "from core.cli import parse_flags\n"
        "from core.settings import Settings\n"
        f"s = Settings.from_flags(parse_flags(['--data-dir', {str(tmp_path)!r}, '--api']), __import__('pathlib').Path({str(tmp_path)!r}))\n"
        "s.paths.ensure_dirs()\n"
        "fastapi_app, engine, queue = app.create_app(s)\n"
        "print(sorted(m for m in ('diffusers', 'transformers', 'accelerate', 'peft') if m in sys.modules))\n"
        "queue.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_start_up_removes_temp_files_left_by_a_crashed_save(tmp_path):
    import os
    import time

    from core.cli import parse_flags
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    day = tmp_path / "outputs" / "txt2img-images" / "2026-12-02"
    day.mkdir(parents=True)
    whole = day / "00000-1-a cat.png"
    whole.write_bytes(b"\x89PNG whole")
    stale = day / ".00001-2-a cat.png.tmp"
    stale.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    removed = kiln_app.clean_crashed_saves(settings)
    assert removed == [stale] and not stale.exists() and whole.exists()
