"""The Dataset tab (Preprocess, Tag, Tag editor, Folders & checks) over core/dataset/.

Each sub-tab is a module with ``STRINGS`` ({"en": ..., "zh-CN": ...}, the WebUI's Chinese terms),
``TITLE`` (a key of STRINGS) and ``build(engine, queue)``, which makes its widgets inside the
open ``gr.Tab`` and wires them. Long work runs on the JobQueue, file edits in the handler.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import gradio as gr
from gradio.i18n import I18nData

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue


def subtabs() -> list[ModuleType]:
    """The sub-tab modules, in the order the tab shows them."""
    from ui.dataset import folders, preprocess, tag, tag_editor

    return [preprocess, tag, tag_editor, folders]


def i18n_tables() -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {"en": {"Dataset": "Dataset"}, "zh-CN": {"Dataset": "数据集"}}
    for module in subtabs():
        for locale, table in module.STRINGS.items():
            merged.setdefault(locale, {}).update(table)
    return merged


def build_dataset_tab(engine: Engine, queue: JobQueue) -> None:
    with gr.Tabs(elem_id="dataset-tabs"):
        for module in subtabs():
            name = module.__name__.rsplit(".", 1)[-1]
            with gr.Tab(I18nData(module.TITLE), id=f"dataset-{name}", elem_id=f"tab-dataset-{name}"):
                module.build(engine, queue)
