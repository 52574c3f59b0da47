"""Extensions on the page: their tabs and always-on accordions, a tab that fails to build, and the
Extensions tab's report (in English and 简体中文) and its enable / disable choice."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest

from core.api.convert import params_from_request
from core.cli import parse_flags
from core.engine import Engine
from core.extensions.fixtures import write_broken_extension, write_extension, write_sample_extension
from core.jobs import JobQueue
from core.settings import Settings
from ui.extensions import alwayson_values, apply_choice, table_html

ZH_REQUEST = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"})
BAD_TAB = "def setup(api):\n    api.add_tab('Bad tab', lambda: 1 / 0)\n"


@pytest.fixture()
def page(tmp_path):
    import ui

    extensions = tmp_path / "extensions"
    write_sample_extension(extensions, "good")
    write_broken_extension(extensions, "broken")
    write_extension(extensions, "badtab", BAD_TAB)
    write_extension(extensions, "off", "raise RuntimeError('not to be imported')\n")
    (tmp_path / "config.json").write_text(json.dumps({"disabled_extensions": ["off", "gone-since"]}), encoding="utf-8")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    queue = JobQueue()
    try:
        engine.load_extensions(queue)
        demo = ui.build(engine, queue)
        yield demo, engine
    finally:
        queue.shutdown()
        engine.extensions.unload()


def _blocks(demo: gr.Blocks, kind: type) -> dict[str, gr.components.Component]:
    return {b.elem_id: b for b in demo.blocks.values() if isinstance(b, kind) and b.elem_id}


def test_the_extensions_tabs_and_accordions_are_on_the_page(page):
    demo, engine = page
    tabs = _blocks(demo, gr.Tab)
    assert tabs["tab-ext-good-1"].label == "Sample (good)" and "tab-extensions" in tabs
    order = list(tabs)
    assert order.index("tab-pnginfo") < order.index("tab-ext-good-1") < order.index("tab-settings") \
        < order.index("tab-extensions")
    accordions = _blocks(demo, gr.Accordion)
    for mode in ("txt2img", "img2img"):
        assert accordions[f"{mode}-ext-script-good"].label == "Prompt suffix (good)"
    # The tab that raised while it was built is there with the error, and reported.
    assert "tab-ext-badtab-0" in tabs
    assert engine.extensions.record("badtab").problems == ["tab 'Bad tab': ZeroDivisionError: division by zero"]


def test_the_accordions_values_run_the_script_as_the_api_does(page):
    _demo, engine = page
    scripts = _tab_scripts(engine)
    enabled, suffix = scripts[0].inputs
    values = {"prompt": "a red circle", "sampler_name": "Euler",
              "alwayson_scripts": alwayson_values(scripts, {enabled: True, suffix: "on blue"})}
    assert values["alwayson_scripts"] == {"Prompt suffix (good)": {"args": [True, "on blue"]}}
    assert params_from_request(values, scripts=engine.extensions).prompt == "a red circle, on blue"
    values["alwayson_scripts"] = alwayson_values(scripts, {enabled: False, suffix: "on blue"})
    assert params_from_request(values, scripts=engine.extensions).prompt == "a red circle"


def _tab_scripts(engine):
    from ui.extensions import build_script_accordions

    with gr.Blocks():
        return build_script_accordions(engine, "txt2img")


def test_the_extensions_tab_reports_each_folder_in_the_browsers_language(page):
    _demo, engine = page
    english = table_html(engine)
    assert "Failed to load" in english and "No module named &#x27;modules&#x27;" in english
    assert "kiln_extension.py, line 1, in &lt;module&gt;" in english
    assert "listed in the setting disabled_extensions" in english and "route: GET /kiln/ext/good/status" in english
    assert "division by zero" in english  # the tab's problem, found while the page was built
    chinese = table_html(engine, ZH_REQUEST)
    assert "加载失败" in chinese and "已启用" in chinese and "已禁用" in chinese


def test_the_choice_is_stored_in_the_webuis_settings(page):
    _demo, engine = page
    options = engine.settings.options
    message = apply_choice(engine, ["good", "broken", "off"], "none")
    # "badtab" is switched off; a name whose folder is gone stays listed, as in the WebUI.
    assert options.disabled_extensions == ["gone-since", "badtab"] and message.startswith("Saved.")
    saved = json.loads(engine.paths.config_path.read_text(encoding="utf-8"))
    assert saved["disabled_extensions"] == ["gone-since", "badtab"] and saved["disable_all_extensions"] == "none"
    assert apply_choice(engine, ["good", "broken", "off"], "none", ZH_REQUEST) == "没有更改。"
    apply_choice(engine, ["good"], "all")
    assert options.disable_all_extensions == "all"


def test_the_top_notice_names_the_broken_extensions(page):
    from ui.common import notice_html

    _demo, engine = page
    assert "Extensions that failed to load (see the Extensions tab): broken" in notice_html(engine)
    assert "加载失败的扩展" in notice_html(engine, ZH_REQUEST)


def test_generate_on_the_page_runs_the_accordion_and_offers_the_sampler(tmp_path):
    from core.models.fixtures import write_tiny_checkpoint
    from ui.txt2img import build_txt2img_tab, generate_updates

    write_tiny_checkpoint(tmp_path, "sd1")
    write_sample_extension(tmp_path / "extensions", "good")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    queue = JobQueue()
    try:
        engine.load_extensions(queue)
        with gr.Blocks():
            tab = build_txt2img_tab(engine)
        assert "Euler (good)" in [value for _label, value in tab.fields["sampler_name"].choices]
        (script,) = tab.ext_scripts
        enabled, suffix = script.inputs
        values = {name: component.value for name, component in tab.fields.items()}
        values.update(prompt="a red circle", steps=1, width=64, height=64, seed=11, sampler_name="Euler (good)",
                      alwayson_scripts=alwayson_values(tab.ext_scripts, {enabled: True, suffix: "on blue"}))
        final = list(generate_updates(tab, engine, queue, values))[-1]
    finally:
        queue.shutdown()
        engine.extensions.unload()
    parameters = final[tab.gallery][0].info["parameters"]
    assert parameters.startswith("a red circle, on blue\nSteps: 1, Sampler: Euler (good)")
