"""core/serving.py and its use in app.py: --api-log, --theme, CORS, --subpath, TLS / keep-alive
options for uvicorn, --autolaunch (with an injected browser, never the real one)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import app as kiln_app
from core.cli import parse_flags
from core.serving import (
    ApiLog,
    PageScript,
    ThemeRedirect,
    open_browser_when_serving,
    route_path,
    uvicorn_options,
)
from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _tiny_app(*middleware) -> TestClient:
    app = FastAPI()

    @app.get("/")
    def root():
        return {"page": True}

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict):
        return {"ok": True}

    @app.get("/sdapi/v1/fail")
    def fail():
        raise RuntimeError("boom")

    for cls, kwargs in middleware:
        app.add_middleware(cls, **kwargs)
    return TestClient(app, raise_server_exceptions=False)


def test_api_log_line_has_no_secrets(caplog):
    client = _tiny_app((ApiLog, {}))
    with caplog.at_level(logging.INFO, logger="kiln.api"):
        r = client.post("/sdapi/v1/txt2img?token=QUERYSECRET", json={"prompt": "BODYSECRET"},
                        headers={"Authorization": "Basic SEADERSECRET"})
        assert r.status_code == 200
        client.get("/")  # not an API request: not logged
        client.get("/sdapi/v1/fail")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "kiln.api"]
    assert len(lines) == 2
    assert lines[0].startswith("API testclient POST /sdapi/v1/txt2img 200 ") and lines[0].endswith("s")
    assert lines[1].startswith("API testclient GET /sdapi/v1/fail 500 ")
    text = "\n".join(lines)
    assert "SECRET" not in text and "Authorization" not in text


def test_theme_redirect():
    client = _tiny_app((ThemeRedirect, {"theme": "dark"}))
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "?__theme=dark"  # relative: works under --subpath
    r = client.get("/?view=api", follow_redirects=False)
    assert r.headers["location"] == "?view=api&__theme=dark"
    assert client.get("/?__theme=light", follow_redirects=False).status_code == 200  # the user's choice stays
    assert client.get("/").json() == {"page": True}  # followed
    assert client.post("/sdapi/v1/txt2img", json={}).status_code == 200


def test_page_script_goes_first_into_the_page_head():
    from fastapi.responses import HTMLResponse

    from ui.i18n import locale_script

    script = {"now": locale_script("zh-CN")}
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    def page():
        return "<html><head><script>gradio()</script></head><body>Kiln</body></html>"

    @app.get("/other", response_class=HTMLResponse)
    def other():
        return "<html><head></head></html>"

    app.add_middleware(PageScript, script=lambda: script["now"])
    client = TestClient(app)
    r = client.get("/")
    assert r.text.startswith('<html><head><script>(() => { const l = "zh-CN";') and r.text.endswith("<body>Kiln</body></html>")
    assert r.text.index("navigator") < r.text.index("gradio()")  # before Gradio's bundle reads the locale
    assert int(r.headers["content-length"]) == len(r.content)
    assert client.get("/other").text == "<html><head></head></html>"
    script["now"] = ""  # "Follow the browser": the page as Gradio serves it
    assert client.get("/").text == "<html><head><script>gradio()</script></head><body>Kiln</body></html>"


def test_run_time_text_follows_the_chosen_language():
    from types import SimpleNamespace

    from ui import i18n

    chinese_browser = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9"})
    choice = {"now": "auto"}
    i18n.set_language_source(lambda: choice["now"])
    try:
        assert i18n.translate("Generate", chinese_browser) == "生成" and i18n.chosen_locale() is None
        choice["now"] = "en"
        assert i18n.translate("Generate", chinese_browser) == "Generate" and i18n.chosen_locale() == "en"
        choice["now"] = "zh-CN"
        assert i18n.translate("Generate", None) == "生成"
    finally:
        i18n.set_language_source(lambda: None)


def test_route_path_drops_the_subpath():
    assert route_path({"path": "/sd/sdapi/v1/options", "root_path": "/sd"}) == "/sdapi/v1/options"
    assert route_path({"path": "/sd", "root_path": "/sd"}) == "/"
    assert route_path({"path": "/sdx/a", "root_path": "/sd"}) == "/sdx/a"
    assert route_path({"path": "/a"}) == "/a"


def test_uvicorn_options(tmp_path):
    assert uvicorn_options(parse_flags([])) == {"log_level": "warning"}
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    key.write_text("k")
    cert.write_text("c")
    f = parse_flags(["--tls-keyfile", str(key), "--tls-certfile", str(cert), "--timeout-keep-alive", "30",
                     "--subpath", "sd", "--loglevel", "DEBUG"])
    assert uvicorn_options(f) == {"log_level": "debug", "ssl_keyfile": str(key), "ssl_certfile": str(cert),
                                  "timeout_keep_alive": 30, "root_path": "/sd"}
    assert kiln_app.display_url("0.0.0.0", 7860, "https") == "https://127.0.0.1:7860"


def test_autolaunch_waits_for_the_server_and_uses_the_injected_browser():
    opened = []
    polls = []

    class Server:
        should_exit = False

        @property
        def started(self):
            polls.append(1)
            return len(polls) > 2  # answers on the third look

    assert open_browser_when_serving(Server(), "http://127.0.0.1:7860", opened.append, environ={}, poll=0)
    assert opened == ["http://127.0.0.1:7860"]


def test_autolaunch_never_in_ci_nor_when_the_server_stops():
    opened = []
    server = SimpleNamespace(started=True, should_exit=False)
    assert not open_browser_when_serving(server, "http://x", opened.append, environ={"CI": "true"})
    stopped = SimpleNamespace(started=False, should_exit=True)
    assert not open_browser_when_serving(stopped, "http://x", opened.append, environ={})
    assert opened == []


# --- Through create_app (the real page and API) ---------------------------------------------------------

@pytest.fixture()
def make_client(tmp_path):
    queues = []

    def make(*flags: str) -> TestClient:
        settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), *flags]), tmp_path)
        settings.paths.ensure_dirs()
        app, _engine, queue = kiln_app.create_app(settings)
        queues.append(queue)
        return TestClient(app)

    yield make
    for queue in queues:
        queue.shutdown()


def test_page_flags_in_the_app(make_client, caplog):
    client = make_client("--api", "--theme", "dark", "--api-log", "--subpath", "sd",
                         "--cors-allow-origins", "http://localhost:3000")
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "?__theme=dark"
    assert client.get("/?__theme=dark").status_code == 200
    assert client.get("/config").json()["root"].endswith("/sd")  # page links go through the proxy's prefix
    with caplog.at_level(logging.INFO, logger="kiln.api"):
        r = client.get("/sdapi/v1/samplers", headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert any("GET /sdapi/v1/samplers 200" in rec.getMessage() for rec in caplog.records)
    r = client.options("/sdapi/v1/txt2img", headers={"Origin": "http://evil.example",
                                                     "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_any_origin_never_carries_credentials(make_client):
    client = make_client("--api", "--cors-allow-origins", "*")
    r = client.get("/sdapi/v1/samplers", headers={"Origin": "http://any.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


def test_theme_with_a_login_page(make_client):
    client = make_client("--gradio-auth", "alice:secret", "--theme", "light")
    assert client.get("/", follow_redirects=False).headers["location"] == "?__theme=light"
    assert client.get("/?__theme=light").status_code == 200  # the login page, in the theme
    assert client.get("/config").status_code == 401  # the redirect opens nothing


def test_main_autolaunch_and_ui_debug_mode(tmp_path):
    """app.main with --autolaunch opens the URL once the server answers, through the injected
    browser; --ui-debug-mode loads no checkpoint at start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import os, sys, app\n"
        "def browser(url):\n"
        "    import urllib.request\n"
        "    status = urllib.request.urlopen(url).status\n"
        "    print('OPENED', url, status, flush=True)\n"
        "    os._exit(0)\n"
        f"app.main(['--data-dir', {str(tmp_path)!r}, '--nowebui', '--port', '{port}', '--autolaunch',"
        " '--ui-debug-mode', '--skip-torch-cuda-test'], open_browser=browser)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    assert f"OPENED http://127.0.0.1:{port}/docs 200" in text
    assert "--skip-torch-cuda-test: Kiln starts on CPU when there is no GPU; nothing to skip" in text
    assert "--ui-debug-mode: no checkpoint is loaded at start" in text
    assert "loading" not in text.lower().replace("no checkpoint is loaded", "")


def test_tls_serves_https(tmp_path):
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import os, ssl, urllib.request, app\n"
        "def browser(url):\n"
        "    r = urllib.request.urlopen(url, context=ssl._create_unverified_context())\n"
        "    print('OPENED', url, r.status, flush=True)\n"
        "    os._exit(0)\n"
        f"app.main(['--data-dir', {str(tmp_path)!r}, '--nowebui', '--port', '{port}', '--autolaunch',"
        f" '--ui-debug-mode', '--tls-keyfile', {str(key)!r}, '--tls-certfile', {str(cert)!r}],"
        " open_browser=browser)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    assert f"Running on local URL:  https://127.0.0.1:{port}" in text
    assert f"OPENED https://127.0.0.1:{port}/docs 200" in text
