"""Sample extension folders for the tests and bench/bench_extensions_startup.py.

``write_sample_extension`` writes a working extension that adds one of everything (an API
route, an X/Y/Z axis, a sampler, an always-on script and a tab), named after its folder so
several can load side by side; ``write_broken_extension`` one that raises on import (as a WebUI extension would);
``write_extension`` one with any source.
"""

from __future__ import annotations

from pathlib import Path

from core.extensions.loader import ENTRY_POINT

SAMPLE_SOURCE = '''"""A sample Kiln extension: {name}."""

from core.sampling import k_samplers
from core.sampling.samplers import SamplerInfo
from core.xyz.axes import FLOAT, Axis

from . import helpers

NAME = {name!r}


def setup(api):
    engine = api.engine

    def status():
        return {{"extension": NAME, "checkpoints": len(engine.checkpoint_titles()),
                 "greeting": helpers.greeting()}}

    api.add_api_route("/status", status, methods=["GET"])

    def apply_cfg_offset(cell, value, _values):
        cell.params.cfg_scale = cell.params.cfg_scale + value

    api.add_xyz_axis(Axis(f"CFG offset ({{NAME}})", FLOAT, apply_cfg_offset))
    api.add_sampler(SamplerInfo(f"Euler ({{NAME}})", (f"k_euler_{{NAME}}",), k_samplers.sample_euler))

    def build():
        import gradio as gr

        return [gr.Checkbox(label="Enable", value=False), gr.Textbox(label="Append to prompt", value="")]

    def process(params, enabled, suffix):
        if enabled and suffix:
            params.prompt = f"{{params.prompt}}, {{suffix}}"
            params.extra_generation_params["Prompt suffix"] = suffix  # into the infotext, as WebUI scripts do

    api.add_script(f"Prompt suffix ({{NAME}})", build, process)

    def tab():
        import gradio as gr

        gr.Markdown(f"{{NAME}} is loaded")

    api.add_tab(f"Sample ({{NAME}})", tab)
'''

HELPERS_SOURCE = '''def greeting():
    return "hello from a neighbour module"
'''

BROKEN_SOURCE = '''import modules.scripts  # a WebUI extension's first line: Kiln has no modules package


def setup(api):
    pass
'''


def write_sample_extension(extensions_dir: Path, name: str) -> Path:
    folder = Path(extensions_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENTRY_POINT).write_text(SAMPLE_SOURCE.format(name=name), encoding="utf-8")
    (folder / "helpers.py").write_text(HELPERS_SOURCE, encoding="utf-8")
    return folder


def write_extension(extensions_dir: Path, name: str, source: str) -> Path:
    """An extension folder whose entry point is ``source``."""
    folder = Path(extensions_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENTRY_POINT).write_text(source, encoding="utf-8")
    return folder


def write_broken_extension(extensions_dir: Path, name: str) -> Path:
    return write_extension(extensions_dir, name, BROKEN_SOURCE)
