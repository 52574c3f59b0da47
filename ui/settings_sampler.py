"""The Settings tab's sampler parameters (the WebUI's "Sampler parameters" section, and NGMS from
its "Optimizations"): the WebUI's labels and option keys, with the Chinese terms of its zh_CN pack."""

from __future__ import annotations

from typing import Any

import gradio as gr

from core.sampling.timestep_samplers import UNIPC_SKIP_TYPES, UNIPC_VARIANTS
from core.settings import Options
from ui.dataset.strings import Strings

ZH = {
    "Sampler parameters": "采样器参数",
    "Eta for DDIM": "DDIM 的 Eta 值",
    "Eta for k-diffusion samplers": "k-diffusion 采样器的 Eta 值",
    "Eta noise seed delta": "Eta 噪声种子偏移 (ENSD)",
    "sigma churn": "sigma churn",
    "sigma tmin": "sigma tmin",
    "sigma tmax (0 = infinity)": "sigma tmax（0 = 无穷大）",
    "sigma noise": "sigma noise",
    "sigma min (0 = the model's, ~0.03)": "sigma 最小值（0 = 模型默认，约 0.03）",
    "sigma max (0 = the model's, ~14.6)": "sigma 最大值（0 = 模型默认，约 14.6）",
    "rho (0 = the schedule's: 7 Karras, 1 Polyexponential)": "rho（0 = 调度器默认：Karras 为 7，Polyexponential 为 1）",
    "Beta scheduler - alpha": "Beta 调度器 - alpha",
    "Beta scheduler - beta": "Beta 调度器 - beta",
    "Always discard next-to-last sigma": "始终舍弃倒数第二个 sigma",
    "SGM noise multiplier": "SGM 噪声倍增",
    "Negative Guidance minimum sigma (NGMS; 0 = off)": "负面引导最小 sigma (NGMS；0 = 关闭)",
    "Extra noise multiplier for img2img and hires fix": "图生图和高分辨率修复的额外噪声倍率",
    "UniPC variant": "UniPC 变体",
    "UniPC skip type": "UniPC 跳步类型",
    "UniPC order (clamped to the steps)": "UniPC 阶数（不超过迭代步数）",
    "UniPC lower order final": "UniPC 最后几步降阶",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)


def build_sampler_settings(o: Options) -> dict[str, Any]:
    """The components, by WebUI option key (``apply_settings`` stores them like the others)."""
    f: dict[str, Any] = {}
    with gr.Accordion(S.tr("Sampler parameters"), open=False, elem_id="settings-sampler"):
        with gr.Row():
            f["eta_ddim"] = gr.Slider(0.0, 1.0, value=o.eta_ddim, step=0.01, label=S.tr("Eta for DDIM"))
            f["eta_ancestral"] = gr.Slider(0.0, 1.0, value=o.eta_ancestral, step=0.01,
                                           label=S.tr("Eta for k-diffusion samplers"))
            f["eta_noise_seed_delta"] = gr.Number(value=o.eta_noise_seed_delta, precision=0,
                                                  label=S.tr("Eta noise seed delta"))
        with gr.Row():
            f["s_churn"] = gr.Slider(0.0, 100.0, value=o.s_churn, step=0.01, label=S.tr("sigma churn"))
            f["s_tmin"] = gr.Slider(0.0, 10.0, value=o.s_tmin, step=0.01, label=S.tr("sigma tmin"))
            f["s_tmax"] = gr.Slider(0.0, 999.0, value=o.s_tmax, step=0.01, label=S.tr("sigma tmax (0 = infinity)"))
            f["s_noise"] = gr.Slider(0.0, 1.1, value=o.s_noise, step=0.001, label=S.tr("sigma noise"))
        with gr.Row():
            f["sigma_min"] = gr.Number(value=o.sigma_min, minimum=0, label=S.tr("sigma min (0 = the model's, ~0.03)"),
                                       elem_id="settings-sigma-min")
            f["sigma_max"] = gr.Number(value=o.sigma_max, minimum=0, label=S.tr("sigma max (0 = the model's, ~14.6)"),
                                       elem_id="settings-sigma-max")
            f["rho"] = gr.Number(value=o.rho, minimum=0,
                                 label=S.tr("rho (0 = the schedule's: 7 Karras, 1 Polyexponential)"))
        with gr.Row():
            f["beta_dist_alpha"] = gr.Slider(0.01, 1.0, value=o.beta_dist_alpha, step=0.01,
                                             label=S.tr("Beta scheduler - alpha"))
            f["beta_dist_beta"] = gr.Slider(0.01, 1.0, value=o.beta_dist_beta, step=0.01,
                                            label=S.tr("Beta scheduler - beta"))
        with gr.Row():
            f["always_discard_next_to_last_sigma"] = gr.Checkbox(value=o.always_discard_next_to_last_sigma,
                                                                 label=S.tr("Always discard next-to-last sigma"))
            f["sgm_noise_multiplier"] = gr.Checkbox(value=o.sgm_noise_multiplier, label=S.tr("SGM noise multiplier"))
        with gr.Row():
            f["uni_pc_variant"] = gr.Radio(list(UNIPC_VARIANTS), value=o.uni_pc_variant, label=S.tr("UniPC variant"))
            f["uni_pc_skip_type"] = gr.Radio(list(UNIPC_SKIP_TYPES), value=o.uni_pc_skip_type,
                                             label=S.tr("UniPC skip type"))
            f["uni_pc_order"] = gr.Slider(1, 50, value=o.uni_pc_order, step=1,
                                          label=S.tr("UniPC order (clamped to the steps)"))
            f["uni_pc_lower_order_final"] = gr.Checkbox(value=o.uni_pc_lower_order_final,
                                                        label=S.tr("UniPC lower order final"))
        f["img2img_extra_noise"] = gr.Slider(0.0, 1.0, value=o.img2img_extra_noise, step=0.01,
                                             label=S.tr("Extra noise multiplier for img2img and hires fix"))
        f["s_min_uncond"] = gr.Slider(0.0, 15.0, value=o.s_min_uncond, step=0.01,
                                      label=S.tr("Negative Guidance minimum sigma (NGMS; 0 = off)"),
                                      elem_id="settings-s-min-uncond")
    return f
