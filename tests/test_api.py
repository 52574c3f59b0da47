"""The API's translation layer: WebUI request fields → GenerationParams, results → info JSON."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image

from core.api import convert
from core.api.models import Txt2ImgRequest
from core.api.paste import fields_from_infotext
from core.errors import InvalidParameterError
from core.generation.params import GeneratedImage, GenerationParams, GenerationResult, HiresParams
from core.generation.run_options import snapshot
from core.jobs import JobQueue, ProgressSnapshot
from core.settings import Options


def test_webui_defaults_carry_over():
    values = Txt2ImgRequest().model_dump()
    p = convert.params_from_request(values)
    # The WebUI's API defaults: 50 steps, sampler_index "Euler", 512x512, cfg 7, no saving.
    assert (p.steps, p.sampler_name, p.width, p.height, p.cfg_scale) == (50, "Euler", 512, 512, 7.0)
    assert p.seed == -1 and p.subseed == -1 and p.seed_resize_from_w == 0 and p.seed_resize_from_h == 0
    assert p.save_images is False and p.hires.enabled is False and p.hires.upscaler == "Latent"


def test_fields_map_one_to_one():
    req = Txt2ImgRequest(prompt="a cat", negative_prompt="blurry", sampler_name="Euler a", scheduler="Karras",
                         steps=12, cfg_scale=5.5, width=320, height=256, seed=7, subseed=9, subseed_strength=0.3,
                         seed_resize_from_w=64, seed_resize_from_h=96, n_iter=3, batch_size=2, enable_hr=True,
                         hr_scale=1.5, hr_upscaler="Lanczos", hr_second_pass_steps=4, denoising_strength=0.4,
                         hr_sampler_name="Use same sampler", hr_scheduler="Karras", save_images=True,
                         override_settings={"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "m [abc]"})
    p = convert.params_from_request(req.model_dump())
    assert (p.prompt, p.negative_prompt, p.sampler_name, p.scheduler) == ("a cat", "blurry", "Euler a", "Karras")
    assert (p.steps, p.cfg_scale, p.width, p.height) == (12, 5.5, 320, 256)
    assert (p.seed, p.subseed, p.subseed_strength) == (7, 9, 0.3)
    assert (p.seed_resize_from_w, p.seed_resize_from_h, p.batch_count, p.batch_size) == (64, 96, 3, 2)
    assert p.save_images is True and p.checkpoint is None
    # override_settings belong to the job's options, not to its parameters.
    options = snapshot(Options(), "base.safetensors", convert.overrides_from_request(req.model_dump()))
    assert options.clip_skip == 2 and options.checkpoint == "m [abc]" and options.checkpoint_explicit
    h = p.hires
    assert (h.enabled, h.scale, h.upscaler, h.steps, h.denoising_strength) == (True, 1.5, "Lanczos", 4, 0.4)
    assert h.sampler_name is None and h.scheduler == "Karras"


def test_sampler_name_wins_over_sampler_index():
    assert convert.params_from_request({"sampler_index": "DDIM"}).sampler_name == "DDIM"
    assert convert.params_from_request({"sampler_name": "Heun", "sampler_index": "DDIM"}).sampler_name == "Heun"


@pytest.mark.parametrize("values, sampler, scheduler", [
    ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "DPM++ 2M Karras", "scheduler": "Automatic"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "Euler a Karras", "scheduler": "Exponential"}, "Euler a", "Exponential"),  # request wins
    ({"sampler_index": "DPM++ 2M SDE Exponential"}, "DPM++ 2M SDE", "Exponential"),
    ({"sampler_name": "k_euler_a"}, "Euler a", "Automatic"),
    ({"sampler_name": "k_euler_a", "scheduler": "Karras"}, "Euler a", "Karras"),
    ({"sampler_name": "k_dpmpp_2m_ka"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "euler a"}, "Euler a", "Automatic"),
])
def test_sampler_names_with_a_schedule_and_aliases_split_like_the_webui(values, sampler, scheduler):
    p = convert.params_from_request(values)
    assert (p.sampler_name, p.scheduler) == (sampler, scheduler)


@pytest.mark.parametrize("name", ["No Such Sampler", "No Such Sampler Karras", "Karras"])
def test_unknown_sampler_names_are_refused_naming_sampler_name(name):
    with pytest.raises(InvalidParameterError) as caught:
        convert.params_from_request({"sampler_name": name})
    assert caught.value.field == "sampler_name" and name in caught.value.message


@pytest.mark.parametrize("values, field", [
    ({"restore_faces": True}, "restore_faces"),
    ({"tiling": True}, "tiling"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"alwayson_scripts": {"controlnet": {"args": []}}}, "alwayson_scripts"),
    ({"hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
])
def test_missing_features_are_refused_with_the_field_named(values, field):
    with pytest.raises(InvalidParameterError) as info:
        convert.params_from_request(values)
    assert info.value.field == field


@pytest.mark.parametrize("overrides, field", [
    ({"CLIP_stop_at_last_layers": "two"}, "override_settings.CLIP_stop_at_last_layers"),
    ({"CLIP_stop_at_last_layers": 1e308}, "override_settings.CLIP_stop_at_last_layers"),
    ({"eta_ancestral": float("nan")}, "override_settings.eta_ancestral"),
    ({"randn_source": "TPU"}, "override_settings.randn_source"),
    ({"some_extension_option": 3}, "override_settings.some_extension_option"),
])
def test_bad_overrides_are_refused_with_the_key_named(overrides, field):
    with pytest.raises(InvalidParameterError) as info:
        snapshot(Options(), None, overrides)
    assert info.value.field == field


def test_every_option_that_changes_output_can_be_overridden_for_one_job():
    stored = Options()
    overrides = {"sd_vae": "other.vae.pt", "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337,
                 "randn_source": "CPU", "eta_ddim": 0.5, "eta_ancestral": 0.8, "s_churn": 1.0, "s_tmin": 0.1,
                 "s_noise": 0.9, "outdir_txt2img_samples": "outputs/elsewhere", "samples_save": False}
    options = snapshot(stored, "base.safetensors", overrides)
    for key, value in overrides.items():
        assert getattr(options, key) == value, key
    assert options.checkpoint == "base.safetensors" and not options.checkpoint_explicit
    assert Options().to_json() == stored.to_json()  # the stored options did not change
    # An option Kiln lacks is accepted when it asks for nothing different.
    stored.extra["some_extension_option"] = 3
    assert snapshot(stored, None, {"some_extension_option": 3}).checkpoint is None


def test_infotext_fills_fields_the_client_left_out():
    parsed = {"Prompt": "from text", "Steps": "9", "Sampler": "Heun", "Seed": "42", "Size-1": "320",
              "Size-2": "192", "Clip skip": "2", "Hires upscale": "2", "Hires upscaler": "Latent"}
    req = Txt2ImgRequest(infotext="ignored by the stand-in parser", steps=30)
    values = convert.request_fields(req, lambda _text: parsed)
    assert values["prompt"] == "from text" and values["steps"] == 30  # explicit field wins
    assert (values["seed"], values["width"], values["height"]) == (42, 320, 192)
    assert values["enable_hr"] is True and values["override_settings"]["CLIP_stop_at_last_layers"] == 2


def test_paste_mapping_reads_webui_keys():
    fields = fields_from_infotext({"Negative prompt": "ugly", "CFG scale": "6.5", "Variation seed": "11",
                                   "Variation seed strength": "0.25", "Hires resize-1": 0, "Hires resize-2": 0,
                                   "Hires sampler": "Use same sampler", "Steps": "not a number"})
    assert fields["negative_prompt"] == "ugly" and fields["cfg_scale"] == 6.5
    assert fields["subseed"] == 11 and fields["subseed_strength"] == 0.25
    assert fields["hr_sampler_name"] is None and fields["enable_hr"] is False and "steps" not in fields


def test_extra_generation_params_keeps_only_extras():
    parsed = {"Prompt": "p", "Steps": "20", "Size-1": "64", "Size-2": "64", "Model hash": "0123456789",
              "Hires upscale": "2", "Hires upscaler": "Latent", "Denoising strength": "0.7",
              "Hires resize-1": 0, "Hires resize-2": 0, "Lora hashes": "a: 0123456789ab"}
    extra = convert.extra_generation_params(parsed)
    assert extra == {"Hires upscale": 2, "Hires upscaler": "Latent", "Denoising strength": 0.7,
                     "Lora hashes": "a: 0123456789ab"}
    # Keys the parser adds as defaults are not in the text, so they are not extra parameters.
    text = 'p\nSteps: 20, Size: 64x64, Hires upscale: 2, Lora hashes: "a: 0123456789ab"'
    assert convert.extra_generation_params(parsed, text) == {"Hires upscale": 2, "Lora hashes": "a: 0123456789ab"}


def test_result_info_has_the_webui_keys():
    params = GenerationParams(prompt="p", negative_prompt="n", steps=3, width=64, height=64, batch_size=2,
                              hires=HiresParams(enabled=True, denoising_strength=0.5))
    images = [GeneratedImage(Image.new("RGB", (8, 8)), seed=5 + i, subseed=100 + i,
                             infotext=f"p\nNegative prompt: n\nSteps: 3, Seed: {5 + i}, Hires upscale: 2")
              for i in range(2)]
    parsed = {"Sampler": "Euler", "Schedule type": "Karras", "Model": "tiny", "Model hash": "0123456789",
              "Clip skip": "2", "Hires upscale": "2"}
    info = convert.result_info(GenerationResult(images, params), 0.0, lambda _t: parsed)
    for key in ("prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "subseed", "all_subseeds",
                "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
                "sd_model_name", "sd_model_hash", "seed_resize_from_w", "seed_resize_from_h",
                "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts", "styles",
                "job_timestamp", "clip_skip"):
        assert key in info, key
    assert info["all_seeds"] == [5, 6] and info["all_subseeds"] == [100, 101] and info["seed"] == 5
    assert info["sd_model_name"] == "tiny" and info["sd_model_hash"] == "0123456789"
    assert info["clip_skip"] == 2 and info["denoising_strength"] == 0.5
    assert info["extra_generation_params"] == {"Hires upscale": 2}
    assert info["seed_resize_from_w"] == -1 and info["infotexts"] == [g.infotext for g in images]
    assert len(info["job_timestamp"]) == 14


def test_png_base64_round_trip_keeps_parameters():
    text = "a prompt\nSteps: 20, Sampler: Euler, Seed: 1"
    encoded = convert.encode_png_base64(Image.new("RGB", (4, 4), "red"), text)
    image = convert.decode_base64_image("data:image/png;base64," + encoded)
    assert image.info["parameters"] == text and image.size == (4, 4)
    raw = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert raw.format == "PNG"


def test_bad_base64_names_the_field():
    with pytest.raises(InvalidParameterError) as info:
        convert.decode_base64_image("this is not an image")
    assert info.value.field == "image"


def test_a_png_declaring_a_huge_size_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buffer, format="PNG", optimize=True)  # ~20 KB, 20 MP
    bomb = base64.b64encode(buffer.getvalue()).decode("ascii")
    assert len(bomb) < 200_000
    with pytest.raises(InvalidParameterError) as info:
        convert.decode_base64_image(bomb, field="init_images")
    assert info.value.field == "init_images" and "5000×4000" in str(info.value)


def test_progress_idle_matches_webui_idle():
    body = convert.progress_body(ProgressSnapshot(), lambda _i: "x", False)
    assert body["progress"] == 0 and body["eta_relative"] == 0 and body["current_image"] is None
    assert body["state"]["job_count"] == 0
    assert set(body["state"]) >= {"skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no",
                                  "sampling_step", "sampling_steps"}


def test_progress_while_running_reports_steps_and_preview():
    queue = JobQueue()
    started, release = threading.Event(), threading.Event()

    def job(ctx):
        ctx.set_total(10, job_count=2)
        ctx.advance(4)
        ctx.set_preview(Image.new("RGB", (8, 8), "blue"))
        started.set()
        release.wait(5)
        return "ok"

    try:
        handle = queue.submit(job, description="txt2img")
        assert started.wait(5)
        body = convert.progress_body(queue.progress(), convert.encode_png_base64, False)
        assert body["progress"] == pytest.approx(0.4)
        assert body["state"]["sampling_step"] == 4 and body["state"]["sampling_steps"] == 10
        assert body["state"]["job_count"] == 2 and body["state"]["job"] == "txt2img"
        assert Image.open(io.BytesIO(base64.b64decode(body["current_image"]))).size == (8, 8)
        skipped = convert.progress_body(queue.progress(), convert.encode_png_base64, True)
        assert skipped["current_image"] is None
        release.set()
        assert handle.wait(5) == "ok"
    finally:
        release.set()
        queue.shutdown()


# ----------------------------------------------------------------- routes, real Engine --
@pytest.fixture()
def empty_api(tmp_path):
    """The API over an empty data folder (no checkpoint), as a TestClient."""
    from fastapi.testclient import TestClient

    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), "--api"]), tmp_path)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    queue = JobQueue()
    try:
        with TestClient(create_api_app(engine, queue), raise_server_exceptions=False) as client:
            yield client, engine
    finally:
        queue.shutdown()


def test_listing_routes_have_webui_shapes(empty_api):
    client, _engine = empty_api
    samplers = client.get("/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert "DPM++ 2M" in names and "Euler a" in names
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert {"name": "karras", "label": "Karras"}.items() <= next(s for s in schedulers if s["name"] == "karras").items()
    assert set(schedulers[0]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers[:3]] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes
    assert client.get("/sdapi/v1/sd-models").json() == []
    assert client.get("/sdapi/v1/sd-vae").json() == []
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/hypernetworks").json() == []
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_progress_interrupt_skip_when_idle(empty_api):
    client, _engine = empty_api
    body = client.get("/sdapi/v1/progress").json()
    assert body["progress"] == 0 and body["state"]["job_count"] == 0 and body["current_image"] is None
    assert client.post("/sdapi/v1/interrupt").json() == {}
    assert client.post("/sdapi/v1/skip").json() == {}


def test_options_round_trip_and_persist(empty_api, tmp_path):
    client, engine = empty_api
    options = client.get("/sdapi/v1/options").json()
    assert options["CLIP_stop_at_last_layers"] == 1 and options["sd_vae"] == "Automatic"
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"}
                       ).status_code == 200
    assert engine.settings.options.CLIP_stop_at_last_layers == 2
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["randn_source"] == "CPU"
    bad = client.post("/sdapi/v1/options", json={"randn_source": "TPU"})
    assert bad.status_code == 422 and bad.json()["field"] == "randn_source"
    # All or nothing, and nothing Kiln lacks is stored to be ignored later.
    unknown = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3, "some_extension_key": [1, 2]})
    assert unknown.status_code == 422 and unknown.json()["field"] == "some_extension_key"
    assert engine.settings.options.CLIP_stop_at_last_layers == 2
    assert "some_extension_key" not in json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    missing = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nowhere.safetensors"})
    assert missing.status_code == 422 and "nowhere.safetensors" in missing.json()["detail"]


def test_bad_txt2img_requests_get_422_naming_the_field(empty_api):
    client, _engine = empty_api
    typed = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": "many"})
    assert typed.status_code == 422 and typed.json()["detail"][0]["loc"][-1] == "steps"
    ranged = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 0})
    assert ranged.status_code == 422 and ranged.json()["field"] == "steps"
    huge = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 100000})
    assert huge.status_code == 422 and huge.json()["field"] == "width"
    faces = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "restore_faces": True})
    assert faces.status_code == 422 and faces.json()["field"] == "restore_faces"


def test_failed_job_is_a_json_error_and_the_server_stays_up(empty_api):
    client, engine = empty_api
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
    assert response.status_code == 500
    assert str(engine.paths.ckpt_dir) in response.json()["detail"]  # says where to put a checkpoint
    assert client.get("/sdapi/v1/progress").status_code == 200


def test_png_info_reads_parameters(empty_api):
    client, _engine = empty_api
    text = "a red circle\nNegative prompt: blur\nSteps: 9, Sampler: Euler a, CFG scale: 6, Seed: 3, Size: 64x48"
    body = client.post("/sdapi/v1/png-info",
                       json={"image": convert.encode_png_base64(Image.new("RGB", (64, 48)), text)}).json()
    assert body["info"] == text
    assert body["parameters"]["Prompt"] == "a red circle" and body["parameters"]["Negative prompt"] == "blur"
    assert str(body["parameters"]["Steps"]) == "9" and str(body["parameters"]["Size-1"]) == "64"
    assert client.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""
    bad = client.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"})
    assert bad.status_code == 422 and bad.json()["field"] == "image"


def test_models_are_listed_and_switched_through_the_queue(model_api):
    client, engine = model_api
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors [")
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["tiny-sd1"]
    assert models[0]["filename"].endswith("tiny-sd1.safetensors")
    assert [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").json()] == ["tiny-vae.safetensors"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1"}).status_code == 200
    loaded = engine.loaded_checkpoint()
    assert loaded is not None and loaded.name == "tiny-sd1.safetensors"
    title = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert title.startswith("tiny-sd1.safetensors [") and len(title.split("[")[1]) == 11


def test_txt2img_returns_pngs_with_infotext_and_webui_info(model_api):
    client, _engine = model_api
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a red circle", "negative_prompt": "blue", "steps": 2, "width": 64, "height": 64,
        "seed": 5, "batch_size": 2, "sampler_name": "Euler", "cfg_scale": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2 and body["parameters"]["prompt"] == "a red circle"
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (64, 64)
    text = image.info["parameters"]
    assert text.startswith("a red circle\nNegative prompt: blue\nSteps: 2, Sampler: Euler")
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5, 6] and info["seed"] == 5 and info["sd_model_name"] == "tiny-sd1"
    assert info["infotexts"][0] == text and info["steps"] == 2 and info["width"] == 64
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_unknown_sampler_is_a_422(model_api):
    client, _engine = model_api
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                      "sampler_name": "No Such Sampler"})
    assert response.status_code == 422 and response.json()["field"] == "sampler_name"


def test_progress_and_interrupt_while_generating(model_api):
    client, _engine = model_api
    result: dict[str, object] = {}

    def generate():
        result["response"] = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a long one", "steps": 150, "width": 64, "height": 64, "sampler_name": "Euler"})

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        body = client.get("/sdapi/v1/progress").json()
        # Until this job runs (the caller's last job, finished, is what /progress shows before it).
        while (body["state"]["job_count"] < 1 or body["state"]["sampling_step"] < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
            body = client.get("/sdapi/v1/progress").json()
        assert body["state"]["job_count"] >= 1 and body["state"]["sampling_steps"] == 150
        assert 0 < body["progress"] < 1 and body["eta_relative"] > 0
        assert client.post("/sdapi/v1/interrupt").json() == {}
    finally:
        worker.join(60)
    response = result["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) <= 1
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_rescale_cfg_api_field_infotext_and_paste_round_trip(model_api):
    client, _engine = model_api
    assert convert.params_from_request(Txt2ImgRequest().model_dump()).rescale_cfg == 0.0
    request = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
               "cfg_scale": 7}
    plain = client.post("/sdapi/v1/txt2img", json=request).json()
    assert "Rescale CFG" not in plain["info"]  # written only when on
    response = client.post("/sdapi/v1/txt2img", json={**request, "rescale_cfg": 0.7})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    text = info["infotexts"][0]
    assert "Rescale CFG: 0.7" in text and info["extra_generation_params"]["Rescale CFG"] == 0.7
    assert response.json()["images"][0] != plain["images"][0]
    # Pasting the infotext alone brings the setting back (and the same picture).
    pasted = client.post("/sdapi/v1/txt2img", json={"infotext": text}).json()
    assert json.loads(pasted["info"])["infotexts"][0] == text and pasted["images"] == response.json()["images"]
    ranged = client.post("/sdapi/v1/txt2img", json={**request, "rescale_cfg": 1.5})
    assert ranged.status_code == 422 and ranged.json()["field"] == "rescale_cfg"


def test_override_settings_apply_to_the_request_and_restore_afterwards(model_api):
    client, engine = model_api
    request = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler a"}
    overrides = {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "sd_vae": "tiny-vae.safetensors"}
    body = client.post("/sdapi/v1/txt2img", json={**request, "override_settings": overrides}).json()
    text = json.loads(body["info"])["infotexts"][0]
    assert "Clip skip: 2" in text and "ENSD: 31337" in text and "VAE: tiny-vae.safetensors" in text
    assert engine.settings.options.CLIP_stop_at_last_layers == 1  # restored (the default)
    plain = json.loads(client.post("/sdapi/v1/txt2img", json=request).json()["info"])["infotexts"][0]
    assert "Clip skip" not in plain and "ENSD" not in plain and "VAE:" not in plain
    kept = client.post("/sdapi/v1/txt2img", json={**request, "override_settings": {"CLIP_stop_at_last_layers": 2},
                                                   "override_settings_restore_afterwards": False})
    assert kept.status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    bad = client.post("/sdapi/v1/txt2img", json={**request, "override_settings": {"no_such_option": 5}})
    assert bad.status_code == 422 and bad.json()["field"] == "override_settings.no_such_option"


@pytest.mark.parametrize("body, field, words", [
    ({"CLIP_stop_at_last_layers": 1e308}, "CLIP_stop_at_last_layers", "outside"),
    ({"eta_ancestral": "NaN"}, "eta_ancestral", "not a number"),
    ({"outdir_txt2img_samples": "/anywhere"}, "outdir_txt2img_samples", "outside"),
    ({"outdir_txt2img_samples": "outputs/../../up"}, "outdir_txt2img_samples", "outside"),
    ({"outdir_txt2img_samples": "../../anywhere"}, "outdir_txt2img_samples", "outside"),
    ({"outdir_img2img_samples": "outputs/\0x"}, "outdir_img2img_samples", "NUL"),
    ({"sd_model_checkpoint": "../../etc/passwd"}, "sd_model_checkpoint", "outside its folder"),
    ({"sd_vae": "/etc/passwd"}, "sd_vae", "outside its folder"),
    ({"sd_vae": "no-such-vae.pt"}, "sd_vae", "not found"),
])
def test_options_that_would_escape_or_break_are_refused(empty_api, tmp_path, body, field, words):
    client, engine = empty_api
    before = engine.settings.options.to_json()
    response = client.post("/sdapi/v1/options", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and words in response.json()["detail"]
    assert engine.settings.options.to_json() == before


def test_an_output_folder_that_is_a_file_is_refused(empty_api, tmp_path):
    client, _engine = empty_api
    (tmp_path / "outputs").mkdir(exist_ok=True)
    (tmp_path / "outputs" / "afile").write_text("x")
    response = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/afile"})
    assert response.status_code == 422 and "is a file" in response.json()["detail"]
    ok = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/mine"})
    assert ok.status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"enable_hr": True, "hr_scale": float("inf")}, "hr_scale"),
    ({"enable_hr": True, "hr_scale": float("nan")}, "hr_scale"),
    ({"seed": 2**70}, "seed"),
    ({"subseed": 2**70}, "subseed"),
    ({"eta": float("nan")}, "eta"),
    ({"s_noise": float("nan")}, "s_noise"),
    ({"prompt": "x" * 40_000}, "prompt"),
    ({"n_iter": 1000, "batch_size": 64}, "n_iter"),
    ({"width": 4096, "height": 4096, "steps": 500, "n_iter": 100, "batch_size": 8}, "steps"),
])
def test_values_that_used_to_500_are_422_naming_the_field(empty_api, body, field):
    client, _engine = empty_api
    response = client.post("/sdapi/v1/txt2img", content=json.dumps({"prompt": "x", **body}),
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_a_huge_body_is_refused_before_it_is_read(empty_api):
    client, _engine = empty_api
    response = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "' + b"x" * (40 * 1024 * 1024) + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and len(response.content) < 1000


def test_the_queue_routes_show_each_caller_their_own_jobs(tmp_path):
    from fastapi.testclient import TestClient

    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.settings import Settings

    flags = parse_flags(["--data-dir", str(tmp_path), "--nowebui", "--api-auth", "alice:a,bob:b,boss:c",
                         "--operator", "boss"])
    settings = Settings.from_flags(flags, tmp_path)
    settings.paths.ensure_dirs()
    queue = JobQueue()
    gate = threading.Event()
    try:
        running = queue.submit(lambda ctx: gate.wait(10), description="alice's picture", owner="user:alice")
        queued = queue.submit(lambda ctx: None, description="bob's picture", owner="user:bob")
        with TestClient(create_api_app(Engine(settings), queue)) as client:
            alice = client.get("/kiln/v1/jobs", auth=("alice", "a")).json()
            assert [j["id"] for j in alice] == [running.id] and alice[0]["position"] == 0
            assert [j["id"] for j in client.get("/kiln/v1/jobs", auth=("bob", "b")).json()] == [queued.id]
            assert {j["id"] for j in client.get("/kiln/v1/jobs", auth=("boss", "c")).json()} == {running.id, queued.id}
            # bob cannot cancel alice's job; it is not even visible to him
            assert client.post(f"/kiln/v1/jobs/{running.id}/cancel", auth=("bob", "b")).status_code == 404
            assert not running.interrupt_event.is_set()
            assert client.post(f"/kiln/v1/jobs/{queued.id}/cancel", auth=("boss", "c")).json()["accepted"]
            assert client.get("/kiln/v1/jobs").status_code == 401
    finally:
        gate.set()
        queue.shutdown()
