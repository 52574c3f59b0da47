"""CFG: composable AND weights, batching cond+uncond, padding, step lookup, interrupts, masks."""

from __future__ import annotations

import pytest
import torch

from core.sampling.cfg import CFGDenoiser, StepConditioning, step_index
from core.sampling.denoiser import DiscreteDenoiser
from core.sampling.k_samplers import sample_euler, sample_heun
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import get_sigmas
from tests.test_sampling_toys import ToyModel, context, ideal_denoised

SCHEDULE = NoiseSchedule.from_config()
SIGMAS = get_sigmas("Karras", 4, SCHEDULE)


def make_cfg(conditioning, cfg_scale, **kwargs):
    model = ToyModel(SCHEDULE)
    cfg = CFGDenoiser(DiscreteDenoiser(model, SCHEDULE), lambda i: conditioning, cfg_scale, sigmas=SIGMAS, **kwargs)
    return cfg, model


def test_cond_equal_uncond_makes_cfg_scale_irrelevant():
    cond = StepConditioning([({"context": context(0.2)}, 1.0)], {"context": context(0.2)})
    x = torch.randn(2, 4, 3, 3) * 3
    sigma = torch.full((2,), 2.0)
    outs = [make_cfg(cond, scale)[0](x, sigma) for scale in (1.0, 3.0, 7.5, 15.0)]
    for out in outs[1:]:
        assert torch.allclose(out, outs[0], atol=1e-5)


def test_and_weights_combine_linearly_like_the_webui():
    cond = StepConditioning(
        [({"context": context(0.5)}, 0.7), ({"context": context(-0.3)}, 0.4)], {"context": context(0.1)}
    )
    x = torch.randn(2, 4, 3, 3) * 3
    sigma = torch.full((2,), 1.5)
    cfg, model = make_cfg(cond, 6.0)
    got = cfg(x, sigma)
    d = {mu: ideal_denoised(x, sigma, torch.full((2,), mu)) for mu in (0.5, -0.3, 0.1)}
    expected = d[0.1] + 0.7 * 6.0 * (d[0.5] - d[0.1]) + 0.4 * 6.0 * (d[-0.3] - d[0.1])
    assert torch.allclose(got, expected, atol=1e-4)
    assert model.batch_sizes == [6]  # two sub-prompts + uncond for 2 images, one model call


def test_cfg_scale_one_skips_the_uncond_pass():
    cond = StepConditioning([({"context": context(0.5)}, 1.0)], {"context": context(0.1)})
    x = torch.randn(2, 4, 3, 3)
    sigma = torch.full((2,), 1.0)
    cfg, model = make_cfg(cond, 1.0)
    out = cfg(x, sigma)
    assert model.batch_sizes == [2]
    assert torch.allclose(out, ideal_denoised(x, sigma, torch.full((2,), 0.5)), atol=1e-5)


def test_different_token_counts_run_separately_or_padded_with_the_empty_chunk():
    long_cond = torch.cat([context(0.5, tokens=77), context(0.5, tokens=77)], dim=1)  # 154 tokens
    cond = StepConditioning([({"context": long_cond}, 1.0)], {"context": context(0.1, tokens=77)})
    x = torch.randn(2, 4, 3, 3)
    sigma = torch.full((2,), 1.0)

    cfg, model = make_cfg(cond, 5.0)
    cfg(x, sigma)
    assert model.batch_sizes == [2, 2] and not cfg.padded_cond_uncond

    empty = torch.full((1, 77, 8), 0.1)
    padded, padded_model = make_cfg(cond, 5.0, pad_with=empty)
    seen = []
    original = padded_model.__call__

    def spy(x_in, t, context=None, **kw):
        seen.append(context.shape)
        return original(x_in, t, context=context, **kw)

    padded.denoiser.model_fn = spy
    padded(x, sigma)
    assert seen == [torch.Size([4, 154, 8])] and padded.padded_cond_uncond


def test_sub_prompts_of_different_length_pad_with_their_last_token():
    short = context(0.5, tokens=77)
    long = torch.cat([context(0.5, tokens=77), context(0.5, tokens=77)], dim=1)
    cond = StepConditioning([({"context": short}, 0.5), ({"context": long}, 0.5)], {"context": long})
    cfg, model = make_cfg(cond, 5.0)
    cfg(torch.randn(2, 4, 3, 3), torch.full((2,), 1.0))
    assert model.batch_sizes == [6]


def test_step_index_of_grid_points_midpoints_and_churn():
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.0]
    assert [step_index(sigmas, s) for s in (10.0, 5.0, 2.0, 1.0)] == [0, 1, 2, 3]
    assert step_index(sigmas, 7.0) == 1  # second-order midpoint: next step's conditioning
    assert step_index(sigmas, 12.0) == 0  # churned above the first sigma
    assert step_index(sigmas, 0.5) == 3  # never past the last step
    assert step_index(sigmas, 5.0 * (1 + 1e-6)) == 1  # float noise on a grid point


def test_conditioning_follows_the_steps_for_first_and_second_order_samplers():
    conditioning = StepConditioning([({"context": context(0.5)}, 1.0)], {"context": context(0.0)})
    for fn, expected in ((sample_euler, [0, 1, 2, 3]), (sample_heun, [0, 1, 1, 2, 2, 3, 3])):
        asked: list[int] = []

        def conditioning_at(i, asked=asked):
            asked.append(i)
            return conditioning

        cfg = CFGDenoiser(DiscreteDenoiser(ToyModel(SCHEDULE), SCHEDULE), conditioning_at, 7.0, sigmas=SIGMAS)
        fn(cfg, torch.randn(2, 4, 3, 3) * float(SIGMAS[0]), SIGMAS)
        assert asked == expected, fn.__name__


def test_prompt_editing_switches_at_the_requested_step():
    before = StepConditioning([({"context": context(0.5)}, 1.0)], {"context": context(0.0)})
    after = StepConditioning([({"context": context(-0.5)}, 1.0)], {"context": context(0.0)})
    used = []

    def conditioning_at(i):
        chosen = before if i < 2 else after
        used.append(chosen is after)
        return chosen

    cfg = CFGDenoiser(DiscreteDenoiser(ToyModel(SCHEDULE), SCHEDULE), conditioning_at, 7.0, sigmas=SIGMAS)
    sample_euler(cfg, torch.randn(2, 4, 3, 3) * float(SIGMAS[0]), SIGMAS)
    assert used == [False, False, True, True]


def test_callback_exceptions_interrupt_sampling():
    class Stop(Exception):
        pass

    conditioning = StepConditioning([({"context": context(0.5)}, 1.0)], {"context": context(0.0)})
    cfg, model = make_cfg(conditioning, 7.0)

    def callback(d):
        if d["i"] == 1:
            raise Stop

    with pytest.raises(Stop):
        sample_euler(cfg, torch.randn(2, 4, 3, 3) * float(SIGMAS[0]), SIGMAS, callback=callback)
    assert model.calls == 2


def test_inpaint_mask_keeps_the_masked_latent():
    conditioning = StepConditioning([({"context": context(0.5)}, 1.0)], {"context": context(0.0)})
    init = torch.full((2, 4, 3, 3), 0.9)
    mask = torch.zeros(2, 1, 3, 3)
    mask[..., 0] = 1.0
    cfg, _ = make_cfg(conditioning, 7.0, mask=mask, init_latent=init)
    out = cfg(torch.randn(2, 4, 3, 3), torch.full((2,), 1.0))
    assert torch.all(out[..., 0] == 0.9) and not torch.allclose(out[..., 1], torch.full_like(out[..., 1], 0.9))
