"""Extensions: the real loader on sample folders (a good one that adds a route, an X/Y/Z axis, a
sampler, an always-on script and a tab; a broken one; a disabled one; a WebUI one), then what the
good one adds, used through the API on the tiny fixture model."""

from __future__ import annotations

import base64
import io
import json
import sys

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.cli import parse_flags
from core.engine import Engine
from core.extensions import DISABLED, FAILED, LOADED, NOT_RUN, ExtensionAPI
from core.extensions.fixtures import write_broken_extension, write_extension, write_sample_extension
from core.generation.infotext import read_png_infotext
from core.jobs import JobQueue
from core.sampling.samplers import (
    SamplerInfo,
    find_sampler,
    register_sampler,
    sampler_names,
    unregister_sampler,
)
from core.settings import Settings
from core.xyz.axes import FLOAT, Axis, axis_list

OFF_SOURCE = "raise RuntimeError('a disabled extension must not be imported')\n"


def _settings(data, *argv: str) -> Settings:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--api", *argv]), data)
    settings.paths.ensure_dirs()
    return settings


@pytest.fixture(scope="module")
def ext_api(tmp_path_factory):
    from core.api.server import create_api_app
    from core.models.fixtures import write_tiny_checkpoint

    data = tmp_path_factory.mktemp("extensions")
    write_tiny_checkpoint(data, "sd1")
    extensions = data / "extensions"
    write_sample_extension(extensions, "good")
    write_broken_extension(extensions, "broken")
    write_extension(extensions, "off", OFF_SOURCE)
    (extensions / "stable-diffusion-webui-wd14-tagger" / "scripts").mkdir(parents=True)
    # The WebUI's setting, read from config.json as a WebUI install leaves it.
    (data / "config.json").write_text(json.dumps({"disabled_extensions": ["off"]}), encoding="utf-8")
    engine = Engine(_settings(data))
    queue = JobQueue()
    try:
        with TestClient(create_api_app(engine, queue), raise_server_exceptions=False) as client:
            yield client, engine
    finally:
        queue.shutdown()
        engine.extensions.unload()


def _image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_each_folder_is_loaded_failed_disabled_or_not_run(ext_api):
    _client, engine = ext_api
    records = {r.name: r for r in engine.extensions.records}
    assert {name: r.state for name, r in records.items()} == {
        "broken": FAILED, "good": LOADED, "off": DISABLED, "stable-diffusion-webui-wd14-tagger": NOT_RUN}
    good = records["good"]
    assert good.adds == ["tab: Sample (good)", "script: Prompt suffix (good)", "route: GET /kiln/ext/good/status",
                         "X/Y/Z axis: CFG offset (good)", "sampler: Euler (good)"]
    broken = records["broken"]
    assert broken.error == "ModuleNotFoundError: No module named 'modules'"
    assert broken.where == "kiln_extension.py, line 1, in <module>"
    assert "kiln_ext_broken.kiln_extension" not in sys.modules  # forgotten, not half-imported
    assert records["off"].message == "disabled: listed in the setting disabled_extensions"
    assert "kiln_ext_off.kiln_extension" not in sys.modules  # never imported (it would have raised)
    webui = records["stable-diffusion-webui-wd14-tagger"].message
    assert "WebUI extension" in webui and "Dataset › Tag" in webui


def test_the_good_extensions_route_answers_with_the_engine_it_was_given(ext_api):
    client, _engine = ext_api
    r = client.get("/kiln/ext/good/status")
    assert r.status_code == 200
    assert r.json() == {"extension": "good", "checkpoints": 1, "greeting": "hello from a neighbour module"}


def test_the_extension_lists_keep_the_webui_shape_and_kiln_gives_the_details(ext_api):
    client, _engine = ext_api
    items = {i["name"]: i for i in client.get("/sdapi/v1/extensions").json()}
    assert set(items["good"]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
    assert {name: i["enabled"] for name, i in items.items()} == {
        "broken": False, "good": True, "off": False, "stable-diffusion-webui-wd14-tagger": False}
    details = {d["name"]: d for d in client.get("/kiln/v1/extensions").json()}
    assert details["broken"]["state"] == "failed" and "No module named 'modules'" in details["broken"]["message"]
    assert details["good"]["seconds"] >= 0 and details["good"]["problems"] == []


def test_the_extensions_sampler_is_listed_and_generates(ext_api):
    client, _engine = ext_api
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert names[-1] == "Euler (good)" and "Euler (good)" in sampler_names()
    body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3,
            "sampler_name": "k_euler_good"}  # by its alias, as the API allows
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert "Sampler: Euler (good)" in read_png_infotext(_image(r.json()["images"][0]))


def test_the_extensions_axis_plots_through_the_xyz_script(ext_api):
    client, _engine = ext_api
    assert "CFG offset (good)" in axis_list("txt2img").labels()
    info = client.get("/sdapi/v1/script-info").json()
    assert "CFG offset (good)" in info[0]["args"][0]["choices"]
    body = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
            "cfg_scale": 4, "script_name": "x/y/z plot", "script_args": ["CFG offset (good)", "0, 2", [], "Nothing", "", [], "Nothing", "", [],
                                                         True, True, False, False, False, False, False, 0, False]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    cells = [read_png_infotext(_image(text)) for text in r.json()["images"][1:]]  # the grid, then its cells
    assert ["CFG scale: 4" in c for c in cells] == [True, False] and "CFG scale: 6" in cells[1]


def test_the_always_on_script_changes_the_params_before_the_run(ext_api):
    client, _engine = ext_api
    assert "prompt suffix (good)" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    body = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler",
            "alwayson_scripts": {"Prompt Suffix (good)": {"args": [True, "on blue"]}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    infotext = read_png_infotext(_image(r.json()["images"][0]))
    assert infotext.startswith("a red circle, on blue\n")
    assert "Prompt suffix: on blue, Version:" in infotext  # the script's own infotext key, before Version
    body["alwayson_scripts"] = {"No such script": {"args": []}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and r.json()["field"] == "alwayson_scripts"
    assert "Prompt suffix (good)" in r.json()["detail"]  # the hint names the scripts there are


def test_the_flags_and_the_setting_disable_every_extension(tmp_path):
    for argv, options, reason in ((["--disable-all-extensions"], {}, "--disable-all-extensions"),
                                  (["--disable-extra-extensions"], {}, "--disable-extra-extensions"),
                                  ([], {"disable_all_extensions": "extra"}, "setting disable_all_extensions")):
        data = tmp_path / reason.strip("-").replace(" ", "_")
        write_extension(data / "extensions", "off", OFF_SOURCE)
        settings = _settings(data, *argv)
        settings.update(**options)
        engine = Engine(settings)
        records = engine.load_extensions().records
        assert [(r.name, r.state) for r in records] == [("off", DISABLED)]
        assert reason in records[0].message


def test_a_setup_that_adds_a_taken_sampler_fails_and_takes_back_what_it_added(tmp_path):
    source = ("from core.sampling import k_samplers\nfrom core.sampling.samplers import SamplerInfo\n"
              "from core.xyz.axes import FLOAT, Axis\n\n"
              "def setup(api):\n"
              "    api.add_xyz_axis(Axis('Half-added axis', FLOAT, lambda cell, value, values: None))\n"
              "    api.add_sampler(SamplerInfo('euler', (), k_samplers.sample_euler))\n")
    write_extension(tmp_path / "extensions", "clash", source)
    write_extension(tmp_path / "extensions", "quits", "import sys\n\ndef setup(api):\n    sys.exit(3)\n")
    engine = Engine(_settings(tmp_path))
    records = {r.name: r for r in engine.load_extensions().records}
    clash = records["clash"]
    assert clash.state == FAILED and "'euler' is taken by the sampler 'Euler'" in clash.error
    assert clash.where == "kiln_extension.py, line 7, in setup"  # its own line, not register_sampler's
    assert "Half-added axis" not in axis_list("txt2img").labels()  # withdrawn with the failure
    assert records["quits"].state == FAILED and records["quits"].error == "SystemExit: 3"


def test_register_sampler_refuses_names_that_would_be_found_as_another():
    from core.sampling import k_samplers

    for name, aliases in (("DPM++ 2M", ()), ("dpm++ 2m", ()), ("Mine", ("k_euler",)), ("Mine Karras", ()),
                          (" Mine", ())):
        with pytest.raises(ValueError):
            register_sampler(SamplerInfo(name, aliases, k_samplers.sample_euler))
    register_sampler(SamplerInfo("Mine", ("k_mine",), k_samplers.sample_euler))
    try:
        assert find_sampler("K_MINE").name == "Mine"
    finally:
        unregister_sampler("Mine")
    assert find_sampler("Mine") is None
    with pytest.raises(ValueError):
        unregister_sampler("Euler")


def test_extension_api_checks_what_it_is_given(tmp_path):
    engine = Engine(_settings(tmp_path))
    api = ExtensionAPI("my ext", tmp_path, engine)
    with pytest.raises(ValueError, match="cannot be part of a URL"):
        api.add_api_route("/x", lambda: {})
    api = ExtensionAPI("mine", tmp_path, engine)
    assert api.add_api_route("/x", lambda: {}, methods=["post"]) == "/kiln/ext/mine/x"
    for bad in ("x", "//x"):
        with pytest.raises(ValueError):
            api.add_api_route(bad, lambda: {})
    with pytest.raises(ValueError):
        api.add_script("S", lambda: [], lambda p: p, modes=["extras"])
    with pytest.raises(ValueError):
        api.add_xyz_axis(Axis("Steps", FLOAT, lambda cell, value, values: None))  # the WebUI's label
    with pytest.raises(ValueError):
        api.add_tab("", lambda: None)


def test_unloading_takes_the_sampler_and_axis_back(tmp_path):
    write_sample_extension(tmp_path / "extensions", "brief")
    engine = Engine(_settings(tmp_path))
    engine.load_extensions()
    assert find_sampler("Euler (brief)") is not None and "CFG offset (brief)" in axis_list("img2img").labels()
    engine.extensions.unload()
    assert find_sampler("Euler (brief)") is None and "CFG offset (brief)" not in axis_list("img2img").labels()


def test_the_readmes_example_extension_loads_as_documented(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Extensions\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    folder_line, source = code.split("\n", 1)
    name = folder_line.split("extensions/")[1].split("/")[0]
    write_extension(tmp_path / "extensions", name, source)  # the README's text, as it is
    engine = Engine(_settings(tmp_path))
    try:
        record = engine.load_extensions().record(name)
        assert record.state == LOADED, record.message
        assert record.adds == ["script: Prompt suffix", f"route: GET /kiln/ext/{name}/hello", "X/Y/Z axis: CFG offset",
                               "sampler: Euler (mine)"]
    finally:
        engine.extensions.unload()


def test_extension_routes_are_behind_the_api_logins(tmp_path):
    from core.api.server import create_api_app

    write_sample_extension(tmp_path / "extensions", "guarded")
    engine = Engine(_settings(tmp_path, "--api-auth", "tool:secret"))
    queue = JobQueue()
    try:
        client = TestClient(create_api_app(engine, queue))
        assert client.get("/kiln/ext/guarded/status").status_code == 401
        assert client.get("/kiln/ext/guarded/status", auth=("tool", "secret")).json()["extension"] == "guarded"
    finally:
        queue.shutdown()
        engine.extensions.unload()
