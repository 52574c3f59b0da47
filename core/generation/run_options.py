"""The options a job runs with, fixed when it is submitted.

A job waiting in the queue must not change because somebody moves a setting meanwhile, so
every option that affects a job's output (checkpoint, VAE, clip skip, RNG source, ENSD, eta,
sigma churn, output folders, preview period...) is copied into a frozen ``RunOptions`` at
submit time and travels with the job. The API's ``override_settings`` change that snapshot,
for that one job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidParameterError
from core.settings import FIXED_WEBUI_OPTIONS, OPTION_DEFAULTS, Options, checked_option

# Options of the WebUI that name the checkpoint rather than tune it.
CHECKPOINT_KEY = "sd_model_checkpoint"


@dataclass(frozen=True)
class RunOptions:
    """One job's options (the WebUI's names). ``checkpoint`` is the title chosen at submit."""

    checkpoint: str | None = None
    checkpoint_explicit: bool = False  # named by the job (override_settings), not the default choice
    sd_vae: str = "Automatic"
    sd_vae_overrides_per_model_preferences: bool = True
    CLIP_stop_at_last_layers: int = 1
    randn_source: str = "GPU"
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    eta_noise_seed_delta: int = 0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    img2img_fix_steps: bool = False
    initial_noise_multiplier: float = 1.0
    img2img_extra_noise: float = 0.0
    inpainting_mask_weight: float = 1.0
    img2img_background_color: str = "#ffffff"
    samples_save: bool = True
    samples_format: str = "png"
    samples_filename_pattern: str = ""
    save_images_add_number: bool = True
    enable_pnginfo: bool = True
    save_txt: bool = False
    jpeg_quality: int = 80
    webp_lossless: bool = False
    save_to_dirs: bool = True
    directories_filename_pattern: str = "[date]"
    directories_max_prompt_words: int = 8
    grid_save: bool = True
    grid_format: str = "png"
    grid_save_to_dirs: bool = True
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    outdir_img2img_samples: str = "outputs/img2img-images"
    add_model_hash_to_info: bool = True
    add_model_name_to_info: bool = True
    add_vae_hash_to_info: bool = True
    add_vae_name_to_info: bool = True
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 10
    show_progress_type: str = "Approx cheap"
    live_preview_refresh_period: int = 300
    # Kiln's, set by a job and not a setting: more folders `<lora:name>` tags look in, before
    # models/Lora (the evaluation sheet names a run's epoch files where the trainer wrote them).
    lora_folders: tuple[str, ...] = ()

    @property
    def clip_skip(self) -> int:
        return int(self.CLIP_stop_at_last_layers or 1)

    @property
    def preview_every(self) -> int:
        """Steps between live previews (0 = none): the JobQueue reads it per job."""
        if not self.live_previews_enable:
            return 0
        return max(int(self.show_progress_every_n_steps), 0)

    @property
    def sigma_tmax(self) -> float:
        return float(self.s_tmax) if self.s_tmax else float("inf")

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)


RUN_OPTION_KEYS = frozenset(f.name for f in dataclasses.fields(RunOptions)) - {"checkpoint", "checkpoint_explicit",
                                                                              "lora_folders"}


def snapshot(options: Options, checkpoint: str | None, overrides: dict[str, Any] | None = None) -> RunOptions:
    """The job's options: the stored ``options`` with ``overrides`` (``override_settings``) on top.

    Raises InvalidParameterError naming ``override_settings.<key>`` for a bad value, or for a
    key Kiln does not have whose value differs from the stored one (a WebUI extension's
    option: running without it would silently make other pictures).
    """
    values = {key: getattr(options, key) for key in RUN_OPTION_KEYS}
    explicit = False
    for key, value in (overrides or {}).items():
        field = f"override_settings.{key}"
        if key == CHECKPOINT_KEY:
            if value not in (None, ""):
                if not isinstance(value, str):
                    raise InvalidParameterError(field, f"{value!r} is not a checkpoint name")
                checkpoint, explicit = value, True
            continue
        if key not in OPTION_DEFAULTS:
            if options.extra.get(key) == value:
                continue
            fixed = FIXED_WEBUI_OPTIONS.get(key)
            if fixed is not None:
                if value == fixed[0]:
                    continue
                raise InvalidParameterError(field, f"{value!r}: {fixed[1]}", hint=f"Kiln works as {fixed[0]!r}")
            raise InvalidParameterError(field, "Kiln has no such option, so it cannot be changed for one job",
                                        hint="see GET /sdapi/v1/options for the options Kiln has")
        try:
            checked = checked_option(key, value)
        except ValueError as exc:
            raise InvalidParameterError(field, str(exc)) from None
        if key in RUN_OPTION_KEYS:
            values[key] = checked
    return RunOptions(checkpoint=checkpoint, checkpoint_explicit=explicit, **values)
