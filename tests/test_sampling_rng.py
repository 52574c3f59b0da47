"""Seeds as the WebUI makes them: per-image generators, variations, resize-from, NV Philox, Brownian trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InvalidParameterError
from core.sampling.cfg import CFGDenoiser
from core.sampling.plan import make_denoiser, noise_for, sampler_kwargs, sampler_sigmas, txt2img_start
from core.sampling.rng import ImageRNG, PhiloxGenerator, slerp
from core.sampling.samplers import find_sampler
from core.sampling.schedule import NoiseSchedule
from tests.test_sampling_toys import ToyModel, constant_conditioning

SHAPE = (4, 8, 8)


def test_same_seed_same_noise_and_torch_semantics():
    a = ImageRNG(SHAPE, [1234]).first()
    b = ImageRNG(SHAPE, [1234]).first()
    assert torch.equal(a, b) and a.shape == (1, *SHAPE)
    assert torch.equal(a[0], torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234)))
    assert not torch.equal(a, ImageRNG(SHAPE, [1235]).first())


def test_batch_image_k_equals_single_run_with_seed_k():
    batch = ImageRNG(SHAPE, [100, 101, 102])
    first, second, third = batch.first(), batch.next(), batch.next()
    for k in range(3):
        single = ImageRNG(SHAPE, [100 + k])
        assert torch.equal(first[k], single.first()[0])
        assert torch.equal(second[k], single.next()[0])
        assert torch.equal(third[k], single.next()[0])


def test_next_before_first_returns_the_starting_noise():
    assert torch.equal(ImageRNG(SHAPE, [5]).next(), ImageRNG(SHAPE, [5]).first())


def test_four_dimensional_shape_is_accepted_and_checked():
    assert ImageRNG((2, *SHAPE), [1, 2]).first().shape == (2, *SHAPE)
    with pytest.raises(InvalidParameterError, match="seeds"):
        ImageRNG((3, *SHAPE), [1, 2])


def test_subseed_strength_zero_is_no_variation_and_one_is_the_subseed():
    plain = ImageRNG(SHAPE, [7]).first()
    assert torch.equal(ImageRNG(SHAPE, [7], subseeds=[99], subseed_strength=0.0).first(), plain)
    varied = ImageRNG(SHAPE, [7], subseeds=[99], subseed_strength=0.3).first()
    assert not torch.allclose(varied, plain)
    full = ImageRNG(SHAPE, [7], subseeds=[99], subseed_strength=1.0).first()
    assert torch.allclose(full, ImageRNG(SHAPE, [99]).first(), atol=1e-5)
    # the variation must not shift the sampler noise that follows
    rng = ImageRNG(SHAPE, [7], subseeds=[99], subseed_strength=0.3)
    rng.first()
    single = ImageRNG(SHAPE, [7])
    single.first()
    assert torch.equal(rng.next(), single.next())


def test_slerp_keeps_the_norm_of_unit_noise():
    low, high = torch.randn(4, 64, 64), torch.randn(4, 64, 64)
    mixed = slerp(0.5, low, high)
    assert float(mixed.std()) == pytest.approx(1.0, abs=0.05)


def test_seed_resize_from_places_the_original_noise_in_the_centre():
    small = ImageRNG((4, 8, 8), [42]).first()[0]
    big = ImageRNG((4, 12, 16), [42], seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.equal(big[:, 2:10, 4:12], small)
    cropped = ImageRNG((4, 4, 4), [42], seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.equal(cropped, small[:, 2:6, 2:6])
    same = ImageRNG((4, 8, 8), [42], seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.equal(same, small)


def test_ensd_moves_only_the_sampler_noise():
    plain, delta = ImageRNG(SHAPE, [10]), ImageRNG(SHAPE, [10], eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), delta.first())
    assert torch.equal(delta.next()[0], torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 + 31337)))
    assert not torch.equal(plain.next(), delta.next())


def test_cpu_and_gpu_sources_agree_on_a_cpu_device():
    assert torch.equal(ImageRNG(SHAPE, [3], source="CPU").first(), ImageRNG(SHAPE, [3], source="GPU").first())
    with pytest.raises(InvalidParameterError):
        ImageRNG(SHAPE, [3], source="TPU")


def test_philox_reproduces_cuda_randn():
    """The values the WebUI documents for its NV generator (torch.randn on CUDA, seed 0)."""
    expected = np.array([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                         [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                         [-1.07454231, -0.36314407, -1.67105067, 2.26550497]], dtype=np.float32)
    assert np.allclose(PhiloxGenerator(0).randn((3, 4)), expected, atol=1e-6)
    nv = ImageRNG((3, 4), [0], source="NV").first()[0]
    assert np.allclose(nv.numpy(), expected, atol=1e-6)


def test_philox_offsets_advance_per_draw():
    g = PhiloxGenerator(123)
    a, b = g.randn((2, 5)), g.randn((2, 5))
    assert not np.allclose(a, b)
    assert np.allclose(PhiloxGenerator(123).randn((2, 5)), a)
    assert abs(float(PhiloxGenerator(7).randn((64, 64)).std()) - 1.0) < 0.05


@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_ancestral_and_sde_images_do_not_depend_on_the_batch(name):
    schedule = NoiseSchedule.from_config()
    info = find_sampler(name)
    sigmas = sampler_sigmas(info, "Automatic", 6, schedule)

    def generate(seeds):
        rng = ImageRNG(SHAPE, seeds)
        x = txt2img_start(info, rng.first(), sigmas)
        conditioning = constant_conditioning(mu=0.2, uncond_mu=0.0, batch=len(seeds))
        cfg = CFGDenoiser(make_denoiser(info, ToyModel(schedule), schedule), lambda i: conditioning, 5.0,
                          sigmas=sigmas)
        return info.function(cfg, x, sigmas, noise_sampler=noise_for(info, rng, x, sigmas), **sampler_kwargs(info))

    batch = generate([500, 501])
    assert torch.allclose(batch[1], generate([501])[0], atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])
