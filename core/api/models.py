"""Request and response bodies of the WebUI-compatible REST API (pydantic).

Field names, defaults and types follow AUTOMATIC1111 v1.10.1 ``modules/api/models.py``, whose
txt2img model is generated from ``StableDiffusionProcessingTxt2Img``: every field is optional
(``null`` means the default), ``steps`` defaults to 50 and ``sampler_index`` to "Euler". Clients
such as the ``webuiapi`` package and the Krita/Photoshop plugins send these names unchanged.
Fields that only exist for WebUI features Kiln lacks (face restoration, refiner, scripts) are
accepted so such requests still validate; routes.py says which ones change nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0.0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    rescale_cfg: float | None = 0.0  # Forge's built-in "Rescale CFG" (its API name)
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    """``/sdapi/v1/img2img``: the txt2img fields plus the WebUI's img2img ones, API defaults
    (Masked content "fill", Only masked, padding 0: they differ from the UI's)."""

    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, title="Image",
                                     description="The generated images, base64 PNG with the infotext inside.")
    parameters: dict[str, Any]
    info: str


class ImageToImageResponse(TextToImageResponse):
    pass


class PNGInfoRequest(BaseModel):
    image: str = Field(title="Image", description="The base64 encoded PNG image")


class PNGInfoResponse(BaseModel):
    info: str = Field(title="Image info", description="A string with the parameters used to generate the image")
    items: dict[str, Any] = Field(default_factory=dict, title="Items",
                                  description="A dictionary containing all the other fields the image had")
    parameters: dict[str, Any] = Field(default_factory=dict, title="Parameters",
                                       description="A dictionary with parsed generation info fields")


class ProgressResponse(BaseModel):
    progress: float = Field(title="Progress", description="The progress with a range of 0 to 1")
    eta_relative: float = Field(title="ETA in secs")
    state: dict[str, Any] = Field(title="State", description="The current state snapshot")
    current_image: str | None = Field(default=None, title="Current image",
                                      description="The live preview in base64 PNG, if any.")
    textinfo: str | None = Field(default=None, title="Info text")


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class LoraItem(BaseModel):
    """The WebUI's built-in Lora extension route (/sdapi/v1/loras)."""

    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """Body of a 422 (bad parameter) or 500 (failed job); the WebUI uses the same keys."""

    error: str
    detail: str
    errors: str = ""
    field: str | None = None
