"""Settings: the options users change most, saved atomically to config.json (WebUI keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.settings import PREVIEW_METHODS, RANDN_SOURCES, UI_LANGUAGES
from ui.common import CheckpointRow, checkpoint_choices, checkpoint_value
from ui.i18n import t, translate
from ui.settings_infotext import build_infotext_settings
from ui.settings_sampler import build_sampler_settings
from ui.settings_saving import build_saving_settings

if TYPE_CHECKING:
    from core.engine import Engine

VAE_CHOICES = ("Automatic", "None")
# The choices of "Language of the page", by ui_language value: each language under its own name.
LANGUAGE_TITLES = {"auto": "Follow the browser", "en": "English", "zh-CN": "简体中文"}


@dataclass
class SettingsTab:
    fields: dict[str, Any]  # WebUI option key → component
    apply: gr.Button
    result: gr.Markdown


def vae_choices(engine: Engine) -> list[str | tuple[Any, str]]:
    """The SD VAE list: "Automatic" and "None" (translated), then the VAE files by name."""
    return [(t(c), c) for c in VAE_CHOICES] + [e.name for e in engine.registry.vaes()]


def build_settings_tab(engine: Engine) -> SettingsTab:
    o = engine.settings.options
    f: dict[str, Any] = {}
    with gr.Column(elem_id="settings-column"):
        apply = gr.Button(t("Apply settings"), variant="primary", elem_id="settings-apply")
        result = gr.Markdown("", elem_id="settings-result")
        f["ui_language"] = gr.Radio([(t(LANGUAGE_TITLES[code]), code) for code in UI_LANGUAGES],
                                    value=o.ui_language, label=t("Language of the page"),
                                    info=t("Takes effect when the page is reloaded."), elem_id="settings-ui-language")
        f["sd_model_checkpoint"] = gr.Dropdown(label=t("Stable Diffusion checkpoint"),
                                               choices=engine.checkpoint_titles(), value=checkpoint_value(engine),
                                               elem_id="settings-checkpoint",
                                               # the title shown may predate the hash the first load adds:
                                               # Apply must not fail on it (apply_settings finds either)
                                               allow_custom_value=True)
        f["sd_checkpoints_limit"] = gr.Slider(1, 10, value=o.sd_checkpoints_limit, step=1,
                                              label=t("Maximum number of checkpoints loaded at the same time"),
                                              elem_id="settings-checkpoints-limit")
        vaes = vae_choices(engine)
        known = {c[1] if isinstance(c, tuple) else c for c in vaes}
        f["sd_vae"] = gr.Dropdown(label=t("SD VAE"), choices=vaes, value=o.sd_vae if o.sd_vae in known else "Automatic",
                                  elem_id="settings-sd-vae")
        f["sd_vae_overrides_per_model_preferences"] = gr.Checkbox(
            value=o.sd_vae_overrides_per_model_preferences, label=t("Selected VAE overrides per-model preferences"),
            elem_id="settings-vae-overrides")
        f["CLIP_stop_at_last_layers"] = gr.Slider(1, 12, value=o.CLIP_stop_at_last_layers, step=1,
                                                  label=t("Clip skip"), elem_id="settings-clip-skip")
        f["randn_source"] = gr.Radio(list(RANDN_SOURCES), value=o.randn_source,
                                     label=t("Random number generator source."), elem_id="settings-randn-source")
        f["live_previews_enable"] = gr.Checkbox(value=o.live_previews_enable,
                                                label=t("Show live previews of the created image"))
        f["show_progress_every_n_steps"] = gr.Slider(
            -1, 32, value=o.show_progress_every_n_steps, step=1,
            label=t("Live preview display period (steps; -1 = only at the end)"))
        f["live_preview_refresh_period"] = gr.Slider(
            50, 10000, value=o.live_preview_refresh_period, step=50,
            label=t("Progressbar and preview update period (milliseconds)"), elem_id="settings-preview-period")
        f["show_progress_type"] = gr.Radio([(t(m), m) for m in PREVIEW_METHODS], value=o.show_progress_type,
                                           label=t("Live preview method"), elem_id="settings-preview-method")
        f["samples_save"] = gr.Checkbox(value=o.samples_save, label=t("Always save all generated images"))
        f.update(build_sampler_settings(o))  # eta, sigma churn, the schedule's sigmas, NGMS
        f.update(build_saving_settings(o))  # formats, name patterns, folders, infotext styles
        f.update(build_infotext_settings(o))  # model facts in the infotext, the cards' default weight
        f["quicksettings_list"] = gr.Dropdown(
            choices=list(f), value=[k for k in o.quicksettings_list if k in f], multiselect=True,
            label=t("Quicksettings list (settings shown at the top of the page; at the next start)"),
            elem_id="settings-quicksettings-list")
    return SettingsTab(fields=f, apply=apply, result=result)


def current_values(engine: Engine, keys: list[str]) -> list[Any]:
    """The stored options for the Settings fields ``keys`` (not the checkpoint), for each page load:
    Gradio would otherwise show the values the page was built with, before any Apply."""
    o = engine.settings.options
    known = {c[1] if isinstance(c, tuple) else c for c in vae_choices(engine)}
    return [(o.sd_vae if o.sd_vae in known else "Automatic") if key == "sd_vae" else getattr(o, key) for key in keys]


def apply_settings(engine: Engine, values: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Set the options that differ from the current ones and save config.json once.

    Returns (changed keys, rejected keys): every change is checked first (types, ranges, frozen
    settings), and a rejected one is named with why, nothing stored. The checkpoint goes through
    ``engine.select_checkpoint`` (which checks that it exists); it is loaded by the next job.
    """
    from core.errors import InvalidParameterError

    current = engine.settings.options.to_json()
    changes = {k: _plain(v) for k, v in values.items() if k != "sd_model_checkpoint" and current.get(k) != _plain(v)}
    try:
        changed = engine.settings.apply_user_changes(changes)
    except InvalidParameterError as exc:
        return [], [exc.message]
    wanted = values.get("sd_model_checkpoint")
    current = engine.selected_checkpoint()
    if wanted and (current is None or engine.registry.find_checkpoint(wanted) is not current):
        engine.select_checkpoint(wanted)  # saves config.json itself
        changed.append("sd_model_checkpoint")
    return changed, []


def _plain(value: Any) -> Any:
    # Sliders hand back floats; the options that are whole numbers must stay ints in config.json.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def result_text(changed: list[str], rejected: list[str], request: Any = None) -> str:
    if not changed and not rejected:
        return translate("Nothing changed.", request)
    text = f"{len(changed)} {translate('settings changed:', request)} {', '.join(changed)}" if changed else ""
    if rejected:
        text += f"{'; ' if text else ''}{translate('rejected:', request)} {', '.join(rejected)}"
    return text


def wire_settings(tab: SettingsTab, engine: Engine, top: CheckpointRow) -> None:
    fields = tab.fields

    def apply(data: dict[Any, Any], request: gr.Request):
        from core.errors import KilnError

        try:
            changed, rejected = apply_settings(engine, {k: data[c] for k, c in fields.items()})
        except KilnError as exc:
            gr.Warning(exc.message)
            return exc.message, gr.skip()
        return result_text(changed, rejected, request), checkpoint_choices(engine)

    tab.apply.click(apply, inputs=set(fields.values()), outputs=[tab.result, top.dropdown],
                    show_progress="hidden")
