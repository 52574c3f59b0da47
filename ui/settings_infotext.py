"""The Settings tab's infotext and extra-network options (the WebUI's "Infotext" and "Extra
Networks" sections): which model facts a picture's parameters name, and the weight a clicked
LoRA / hypernetwork card writes."""

from __future__ import annotations

from typing import Any

import gradio as gr

from core.settings import Options
from ui.dataset.strings import Strings

ZH = {
    "Infotext": "生成参数信息",
    "Add model hash to infotext": "将模型哈希值添加到生成参数",
    "Add model name to infotext": "将模型名称添加到生成参数",
    "Add VAE hash to infotext": "将 VAE 哈希值添加到生成参数",
    "Add VAE name to infotext": "将 VAE 名称添加到生成参数",
    "Extra Networks": "扩展模型",
    "Default multiplier for extra networks": "扩展模型的默认权重",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)


def build_infotext_settings(o: Options) -> dict[str, Any]:
    """The components, by WebUI option key (``apply_settings`` stores them like the others)."""
    f: dict[str, Any] = {}
    with gr.Accordion(S.tr("Infotext"), open=False, elem_id="settings-infotext"):
        with gr.Row():
            f["add_model_hash_to_info"] = gr.Checkbox(value=o.add_model_hash_to_info,
                                                      label=S.tr("Add model hash to infotext"))
            f["add_model_name_to_info"] = gr.Checkbox(value=o.add_model_name_to_info,
                                                      label=S.tr("Add model name to infotext"))
            f["add_vae_hash_to_info"] = gr.Checkbox(value=o.add_vae_hash_to_info, label=S.tr("Add VAE hash to infotext"))
            f["add_vae_name_to_info"] = gr.Checkbox(value=o.add_vae_name_to_info, label=S.tr("Add VAE name to infotext"))
    with gr.Accordion(S.tr("Extra Networks"), open=False, elem_id="settings-extra-networks"):
        f["extra_networks_default_multiplier"] = gr.Slider(
            0.0, 2.0, value=o.extra_networks_default_multiplier, step=0.01,
            label=S.tr("Default multiplier for extra networks"), elem_id="settings-en-default-multiplier")
    return f
