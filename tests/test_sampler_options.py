"""The WebUI's sampler settings (sigma_min / sigma_max / rho, Beta schedule, always discard
next-to-last sigma, SGM noise multiplier, NGMS): schedules, pictures, infotext, paste, X/Y/Z."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.api.paste import settings_from_infotext
from core.errors import InvalidParameterError
from core.generation.run_options import RunOptions
from core.sampling.plan import sampler_sigmas, txt2img_start
from core.sampling.samplers import find_sampler
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import ScheduleOptions, get_sigmas
from core.settings import Options, checked_option

SCHEDULE = NoiseSchedule.from_config()


def _karras_reference(n: int, lo: float, hi: float, rho: float) -> list[float]:
    # Karras et al. (2022) eq. 5, written out here independently of core.sampling.schedulers.
    out = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    return out + [0.0]


def test_karras_uses_the_settings_sigma_range_and_rho():
    opts = ScheduleOptions(sigma_min=0.1, sigma_max=5.0, rho=3.0)
    sigmas = get_sigmas("Karras", 6, SCHEDULE, **opts.sigma_kwargs())
    assert sigmas.tolist() == pytest.approx(_karras_reference(6, 0.1, 5.0, 3.0), rel=1e-5)
    default = get_sigmas("Karras", 6, SCHEDULE, **ScheduleOptions().sigma_kwargs())
    lo, hi = float(SCHEDULE.sigmas[0]), float(SCHEDULE.sigmas[-1])
    assert default.tolist() == pytest.approx(_karras_reference(6, lo, hi, 7.0), rel=1e-5)


def test_the_options_map_to_schedule_options_and_zero_means_the_models():
    opts = ScheduleOptions.from_options(RunOptions(sigma_min=0.0, sigma_max=8.0, rho=0.0, beta_dist_alpha=0.5,
                                                   always_discard_next_to_last_sigma=True))
    assert opts.sigma_kwargs() == {"sigma_min": None, "sigma_max": 8.0, "rho": None, "beta_alpha": 0.5,
                                   "beta_beta": 0.6}
    assert opts.always_discard_penultimate


def test_always_discard_drops_the_next_to_last_sigma():
    euler = find_sampler("Euler")
    plain = sampler_sigmas(euler, "Karras", 5, SCHEDULE)
    discarded = sampler_sigmas(euler, "Karras", 5, SCHEDULE, always_discard_penultimate=True)
    longer = get_sigmas("Karras", 6, SCHEDULE)
    assert len(plain) == len(discarded) == 6
    assert discarded.tolist() == torch.cat([longer[:-2], longer[-1:]]).tolist()


def test_sgm_noise_multiplier_scales_the_start_noise():
    noise = torch.ones(1, 4, 2, 2)
    sigmas = torch.tensor([10.0, 1.0, 0.0])
    euler = find_sampler("Euler")
    assert float(txt2img_start(euler, noise, sigmas)[0, 0, 0, 0]) == 10.0
    assert float(txt2img_start(euler, noise, sigmas, sgm_noise_multiplier=True)[0, 0, 0, 0]) == \
        pytest.approx(101 ** 0.5)


def test_schedule_infotext_names_only_what_changed_the_schedule():
    opts = ScheduleOptions(sigma_min=0.2, sigma_max=9.0, rho=4.0, always_discard_penultimate=True)
    assert opts.infotext("Karras", sampler_discards=False) == {
        "Schedule min sigma": 0.2, "Schedule max sigma": 9.0, "Schedule rho": 4.0, "Discard penultimate sigma": True}
    # Exponential has no rho; DPM2 discards by itself; Automatic without a schedule function uses none.
    assert opts.infotext("Exponential", sampler_discards=True) == {"Schedule min sigma": 0.2,
                                                                  "Schedule max sigma": 9.0}
    assert ScheduleOptions().infotext("Beta", sampler_discards=False) == {"Beta schedule alpha": 0.6,
                                                                         "Beta schedule beta": 0.6}
    assert ScheduleOptions().infotext("Karras", sampler_discards=False) == {}


@pytest.mark.parametrize("key, bad", [("s_min_uncond", 16.0), ("sigma_max", -1.0), ("beta_dist_alpha", 0.0),
                                      ("always_discard_next_to_last_sigma", "yes")])
def test_bad_values_are_refused_with_the_key(key, bad):
    with pytest.raises(ValueError):
        checked_option(key, bad)
    assert getattr(Options(), key) == checked_option(key, getattr(Options(), key))


def test_paste_maps_infotext_keys_to_settings():
    parsed = {"Schedule max sigma": "5.0", "Schedule rho": "3", "Discard penultimate sigma": "True",
              "SGM noise multiplier": "True", "Clip skip": "2", "Beta schedule alpha": "x"}
    assert settings_from_infotext(parsed) == {"sigma_max": 5.0, "rho": 3.0,
                                              "always_discard_next_to_last_sigma": True,
                                              "sgm_noise_multiplier": True, "CLIP_stop_at_last_layers": 2}


# --- through the API, on the tiny checkpoint -------------------------------------------------------
BODY = {"prompt": "a red circle", "negative_prompt": "blue", "steps": 4, "width": 64, "height": 64, "seed": 11,
        "sampler_name": "Euler", "scheduler": "Karras", "cfg_scale": 5.0}


def _run(client, **extra) -> tuple[np.ndarray, str]:
    r = client.post("/sdapi/v1/txt2img", json={**BODY, **extra})
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    return np.asarray(image.convert("RGB")), image.info["parameters"]


def test_schedule_settings_change_the_picture_write_the_infotext_and_paste_back(model_api):
    client, _engine = model_api
    plain, plain_text = _run(client)
    assert "Schedule" not in plain_text.replace("Schedule type", "") and "NGMS" not in plain_text
    changed, text = _run(client, override_settings={"sigma_max": 3.0, "rho": 2.0,
                                                    "always_discard_next_to_last_sigma": True,
                                                    "sgm_noise_multiplier": True})
    assert not np.array_equal(plain, changed)
    for key in ("Schedule max sigma: 3.0", "Schedule rho: 2.0", "Discard penultimate sigma: True",
                "SGM noise multiplier: True"):
        assert key in text, text
    # The infotext alone makes the same picture again: its keys become the job's override_settings.
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    again = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.array_equal(np.asarray(again.convert("RGB")), changed)


def test_ngms_skips_the_negative_prompt_at_low_sigmas(model_api):
    client, _engine = model_api
    plain, _ = _run(client)
    skipped, text = _run(client, s_min_uncond=15.0)
    assert "NGMS: 15.0" in text and not np.array_equal(plain, skipped)
    from_option, option_text = _run(client, override_settings={"s_min_uncond": 15.0})
    assert np.array_equal(from_option, skipped) and "NGMS: 15.0" in option_text
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "s_min_uncond": -1})
    assert r.status_code == 422 and r.json()["field"] == "s_min_uncond"


def test_xyz_schedule_axes_apply_per_cell_and_refuse_bad_values(model_api):
    client, _engine = model_api
    body = {**BODY, "script_name": "x/y/z plot",
            "script_args": ["Schedule max sigma", "2, 6", [], "Always discard next-to-last sigma", "False, True", [],
                            "Nothing", "", [], True, True, False, False]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    cells = json.loads(r.json()["info"])["infotexts"][1:]
    assert len(cells) == 4
    assert "Schedule max sigma: 2.0" in cells[0] and "Discard penultimate sigma" not in cells[0]
    assert "Schedule max sigma: 6.0" in cells[3] and "Discard penultimate sigma: True" in cells[3]
    body["script_args"] = ["SGM noise multiplier", "maybe", []]
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and "maybe" in r.json()["detail"]


def test_settings_store_the_new_options(model_api):
    _client, engine = model_api
    with pytest.raises(InvalidParameterError) as caught:
        engine.settings.check_user_changes({"rho": -2})
    assert caught.value.field == "rho"
    assert engine.settings.check_user_changes({"rho": 3, "sgm_noise_multiplier": True}) == \
        {"rho": 3.0, "sgm_noise_multiplier": True}


def test_infotext_leaves_out_the_model_facts_the_options_say(model_api):
    client, _engine = model_api
    _image, text = _run(client)
    assert "Model hash: " in text and "Model: " in text
    _image, text = _run(client, override_settings={"add_model_hash_to_info": False})
    assert "Model hash: " not in text and "Model: " in text
    _image, text = _run(client, override_settings={"add_model_hash_to_info": False, "add_model_name_to_info": False})
    assert "Model hash: " not in text and "Model: " not in text


# --- UniPC (the WebUI's uni_pc_* settings) ------------------------------------------------------------
def test_unipc_skip_types_space_the_grid_as_unipc_does():
    from core.sampling.timestep_samplers import unipc_log_alpha, unipc_sigmas

    n = len(SCHEDULE)

    def sigma_at(t: torch.Tensor) -> torch.Tensor:
        la = unipc_log_alpha(t.double(), SCHEDULE)
        return torch.sqrt(1 - torch.exp(2 * la)) / torch.exp(la)

    uniform = unipc_sigmas(5, SCHEDULE)
    assert uniform.tolist() == pytest.approx(sigma_at(torch.linspace(1.0, 1 / n, 6)).tolist(), rel=1e-5)
    quadratic = unipc_sigmas(5, SCHEDULE, skip_type="time_quadratic")
    t = torch.linspace(1.0, (1 / n) ** 0.5, 6) ** 2
    assert quadratic.tolist() == pytest.approx(sigma_at(t).tolist(), rel=1e-5)
    log_snr = unipc_sigmas(5, SCHEDULE, skip_type="logSNR")
    steps = torch.log(log_snr.double()).diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)  # even in lambda = -log(sigma)
    assert log_snr[0] == pytest.approx(float(uniform[0]), rel=1e-5)
    assert log_snr[-1] == pytest.approx(float(uniform[-1]), rel=1e-5)
    with pytest.raises(ValueError):
        unipc_sigmas(5, SCHEDULE, skip_type="nope")


def test_unipc_settings_change_the_picture_and_write_the_webui_keys(model_api):
    client, _engine = model_api
    unipc = {"sampler_name": "UniPC", "scheduler": "Automatic", "steps": 6}
    plain, plain_text = _run(client, **unipc)
    assert "UniPC" not in plain_text.replace("Sampler: UniPC", "")
    seen = {plain.tobytes()}
    for overrides, key in (({"uni_pc_variant": "bh2"}, "UniPC variant: bh2"),
                           ({"uni_pc_skip_type": "logSNR"}, "UniPC skip type: logSNR"),
                           ({"uni_pc_order": 1}, "UniPC order: 1"),
                           ({"uni_pc_lower_order_final": False}, "UniPC lower order final: False")):
        image, text = _run(client, **unipc, override_settings=overrides)
        assert key in text, text
        assert image.tobytes() not in seen, overrides  # each setting makes a different picture
        seen.add(image.tobytes())
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "width": 64, "height": 64})
    again = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.array_equal(np.asarray(again.convert("RGB")), image)  # pasted back: the same picture
    r = client.post("/sdapi/v1/txt2img", json={**BODY, **unipc, "override_settings": {"uni_pc_variant": "vary_coeff"}})
    assert r.status_code == 422 and "uni_pc_variant" in r.text


def test_img2img_extra_noise_adds_the_noise_again_and_writes_extra_noise(model_api):
    from core.sampling.plan import img2img_plan

    plan = img2img_plan(find_sampler("Euler"), "Karras", 10, 0.5, SCHEDULE)
    init, noise = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    assert float(plan.start(init, noise, 0.3)[0, 0, 0, 0]) == pytest.approx(plan.noise_sigma + 0.3)
    client, _engine = model_api
    base = {**BODY, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    plain, plain_text = _run(client, **base)
    noisy, text = _run(client, **base, override_settings={"img2img_extra_noise": 0.5})
    assert "Extra noise" not in plain_text and "Extra noise: 0.5" in text
    assert not np.array_equal(plain, noisy)
    _image, without_hires = _run(client, override_settings={"img2img_extra_noise": 0.5})
    assert "Extra noise" not in without_hires  # no init latent, nothing was added
