"""``GET /sdapi/v1/cmd-flags``: every WebUI flag by its argparse name (``vars(cmd_opts)``).

Each of the WebUI's flags (core.webui_flags.WEBUI_FLAGS) is answered with Kiln's value where Kiln
has one (its folders resolved, as the WebUI reports resolved defaults), else with the WebUI's own
default, so a tool that reads e.g. ``lora_dir`` or ``api`` finds the key. Passwords never leave
the server: logins are sent as ``user:***``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.webui_flags import WEBUI_FLAGS, WEBUI_FLAGS_ACCEPTED, WEBUI_FLAGS_REFUSED

if TYPE_CHECKING:
    from core.cli import Flags
    from core.paths import KilnPaths

# The WebUI's defaults that are not False / None (modules/cmd_args.py v1.10, the Lora and LDSR
# extensions' preload.py); folder defaults are below the data folder, filled in by cmd_flags().
_WEBUI_DEFAULTS: dict[str, Any] = {
    "max_batch_count": 16,
    "sub_quad_q_chunk_size": 1024,
    "ngrok_region": "",
    "gradio_allowed_path": [],
    "styles_file": [],
    "use_cpu": [],
    "timeout_keep_alive": 30,
    "filenames_max_length": 128,
    "precision": "autocast",
    "controlnet_preprocessor_cache_size": 16,
    "controlnet_loglevel": "INFO",
}
_WEBUI_MODEL_FOLDERS = {
    "codeformer_models_path": "models/Codeformer", "gfpgan_models_path": "models/GFPGAN",
    "bsrgan_models_path": "models/BSRGAN", "realesrgan_models_path": "models/RealESRGAN",
    "scunet_models_path": "models/ScuNET", "swinir_models_path": "models/SwinIR", "ldsr_models_path": "models/LDSR",
    "lyco_dir_backcompat": "models/LyCORIS", "localizations_dir": "localizations",
    "textual_inversion_templates_dir": "textual_inversion_templates", "ui_config_file": "ui-config.json",
}


def dest(name: str) -> str:
    """argparse's attribute name of a flag: ``--ckpt-dir`` → ``ckpt_dir``, ``-f`` → ``f``."""
    return name.lstrip("-").replace("-", "_")


def _logins(pairs: list[tuple[str, str]]) -> str | None:
    return ",".join(f"{user}:***" for user, _ in pairs) or None


def _kiln_values(flags: Flags, paths: KilnPaths) -> dict[str, Any]:
    """Kiln's own flags under the WebUI's names, as the WebUI's types (str paths, comma lists)."""
    device = "all" if flags.all_devices else (",".join(map(str, flags.device_ids)) or None)
    return {
        "listen": flags.listen, "port": flags.port, "server_name": flags.server_name, "api": flags.api_enabled,
        "nowebui": flags.nowebui, "gradio_auth": _logins(flags.auth),
        "gradio_auth_path": str(flags.gradio_auth_path) if flags.gradio_auth_path else None,
        "data_dir": str(paths.data_dir), "ckpt_dir": str(paths.ckpt_dir), "vae_dir": str(paths.vae_dir),
        "lora_dir": str(paths.lora_dir), "embeddings_dir": str(paths.embeddings_dir),
        "hypernetwork_dir": str(paths.hypernetwork_dir), "esrgan_models_path": str(paths.esrgan_dir),
        "ckpt": flags.ckpt, "xformers": flags.xformers, "opt_sdp_attention": flags.opt_sdp_attention,
        "medvram": flags.medvram, "lowvram": flags.lowvram, "no_half": flags.no_half,
        "no_half_vae": flags.no_half_vae, "precision": flags.precision, "device_id": device,
        "use_cpu": list(flags.use_cpu), "autolaunch": flags.autolaunch, "theme": flags.theme,
        "api_auth": _logins(flags.api_auth), "api_log": flags.api_log,
        "hide_ui_dir_config": flags.hide_ui_dir_config, "freeze_settings": flags.freeze_settings,
        "tls_keyfile": str(flags.tls_keyfile) if flags.tls_keyfile else None,
        "tls_certfile": str(flags.tls_certfile) if flags.tls_certfile else None,
        "cors_allow_origins": ",".join(flags.cors_allow_origins) or None,
        "cors_allow_origins_regex": flags.cors_allow_origins_regex, "subpath": flags.subpath,
        # Kiln leaves uvicorn's own keep-alive (5 s) unless the flag is given.
        "timeout_keep_alive": flags.timeout_keep_alive if flags.timeout_keep_alive is not None else 5,
        "loglevel": flags.loglevel, "ui_debug_mode": flags.skip_load_model,
        "skip_load_model_at_start": flags.skip_load_model,
        "disable_all_extensions": flags.disable_all_extensions,
        "disable_extra_extensions": flags.disable_extra_extensions,
        "ui_settings_file": str(paths.config_path), "styles_file": [str(f) for f in paths.styles_files],
        "force_enable_xformers": flags.xformers and "--force-enable-xformers" in flags.webui_accepted,
        # Kiln's own flags, which the WebUI lacks.
        "insecure": flags.insecure, "operator": list(flags.operators),
    }


def cmd_flags(flags: Flags, paths: KilnPaths) -> dict[str, Any]:
    """Every WebUI flag's argparse name with Kiln's value or the WebUI's default, plus Kiln's own."""
    kiln = _kiln_values(flags, paths)
    out: dict[str, Any] = {}
    for name in WEBUI_FLAGS:
        key = dest(name)
        if key in kiln:
            out[key] = kiln[key]
            continue
        spec = WEBUI_FLAGS_ACCEPTED.get(name) or WEBUI_FLAGS_REFUSED.get(name)
        if key in _WEBUI_MODEL_FOLDERS:
            value: Any = str(paths.data_dir / _WEBUI_MODEL_FOLDERS[key])
        elif key in _WEBUI_DEFAULTS:
            value = _WEBUI_DEFAULTS[key]
        else:
            value = None if spec is not None and spec.value is not None else False
        if spec is not None and spec.value is None and name in flags.webui_accepted:
            value = True  # given on the command line (accepted, without effect: see the start-up log)
        out[key] = value
    for key, value in kiln.items():
        out.setdefault(key, value)
    return out
