"""kohya's color_aug and face_crop_aug_range: the pixel rules, the face from the file name or
OpenCV, and the config switching latent caching off (pure functions, no model)."""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.training.data import face_crop, face_from_name, hue_shift


def test_hue_shift_turns_the_hue_by_opencvs_degrees():
    image = Image.new("RGB", (8, 8), (200, 60, 60))
    shifted = hue_shift(image, 8.0)  # 8 of OpenCV's 180 = 16 degrees
    h0 = colorsys.rgb_to_hsv(*(v / 255 for v in image.getpixel((0, 0))))[0]
    h1 = colorsys.rgb_to_hsv(*(v / 255 for v in shifted.getpixel((0, 0))))[0]
    assert (h1 - h0) * 360 == pytest.approx(16, abs=2.0)
    assert hue_shift(image, -8.0).getpixel((0, 0)) != shifted.getpixel((0, 0))
    grey = Image.new("RGB", (4, 4), (128, 128, 128))
    assert np.abs(np.asarray(hue_shift(grey, 8.0), dtype=int) - 128).max() <= 1  # no hue, nothing to turn


def test_face_info_from_kohyas_file_names():
    assert face_from_name(Path("a/photo_0120_0080_0040_0050.png")) == (120.0, 80.0, 40.0, 50.0)
    assert face_from_name(Path("photo.png")) is None
    assert face_from_name(Path("my_nice_photo_x_y.png")) is None
    assert face_from_name(Path("p_1_2_0_0.png")) is None


def test_face_crop_keeps_the_face_at_the_scale_asked():
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([280, 80, 320, 120], fill=(255, 0, 0))  # the "face": 40 px at (300, 100)
    face = (300.0, 100.0, 40.0, 40.0)
    for seed in range(5):
        out = face_crop(image, face, (64, 64), (2.0, 4.0), random.Random(seed), random_crop=False)
        assert out.size == (64, 64)
        red = np.argwhere((np.asarray(out)[..., 0] > 200) & (np.asarray(out)[..., 1] < 80))
        assert len(red) > 0  # the face is in the crop
        side = red.max(axis=0) - red.min(axis=0) + 1
        assert 64 / 4 - 2 <= side.max() <= 64 / 2 + 2  # 1/4 .. 1/2 of the short side
        centre = red.mean(axis=0)
        assert abs(centre[0] - 32) <= 6 and abs(centre[1] - 32) <= 6
    # min == max: one scale, no jitter, the same crop every time.
    fixed = [np.asarray(face_crop(image, face, (64, 64), (3.0, 3.0), random.Random(s), False)) for s in range(3)]
    assert all((f == fixed[0]).all() for f in fixed)


def test_the_config_turns_latent_caching_off_for_changing_pixels(tmp_path):
    from core.training.config import config_from_dict
    from core.training.from_config import lora_job, unsupported

    base = {"train_data_dir": str(tmp_path), "pretrained_model_name_or_path": "x.safetensors"}
    for extra, cached in (({}, True), ({"color_aug": True}, False), ({"face_crop_aug_range": "2.0,4.0"}, False),
                          ({"face_crop_aug_range": "3,3"}, True)):
        config, _ = config_from_dict({**base, **extra})
        assert unsupported(config) == []
        job = lora_job(config, default_output_dir=tmp_path)
        assert job.loop.cache_latents is cached, extra
    config, _ = config_from_dict({**base, "color_aug": True, "face_crop_aug_range": "2,4"})
    job = lora_job(config, default_output_dir=tmp_path)
    assert job.data.color_aug and job.data.face_crop_aug_range == (2.0, 4.0)
