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


# --- Rescale CFG ---------------------------------------------------------------------------------


class PatternDenoiser:
    """A tiny x0 predictor whose picture contrast follows the prompt value: CFG's extrapolation
    between two prompt values exaggerates the contrast, which is what Rescale CFG pulls back."""

    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(self, x, sigma, context=None, **_):
        self.batch_sizes.append(x.shape[0])
        value = context.float().mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        ramp = torch.linspace(-1.0, 1.0, x.shape[-2] * x.shape[-1]).reshape(1, 1, *x.shape[-2:])
        scale = 1 / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1)
        return 0.1 * x * scale + value * ramp + 0.3 * value


def v_space(x, sigma, denoised):
    """The paper's v from a k-diffusion x0 prediction, written out plainly (finite sigma only)."""
    sigma = sigma.reshape(-1, 1, 1, 1).double()
    alpha, s = 1 / (sigma**2 + 1).sqrt(), sigma / (sigma**2 + 1).sqrt()
    return alpha * (x.double() - denoised.double()) / sigma - s * denoised.double()


def per_sample_std(v):
    return v.flatten(1).std(dim=1)


AND_COND = StepConditioning([({"context": context(0.5)}, 0.7), ({"context": context(-0.3)}, 0.4)],
                            {"context": context(0.1)})


def pattern_cfg(conditioning, cfg_scale, **kwargs):
    model = PatternDenoiser()
    return CFGDenoiser(model, lambda i: conditioning, cfg_scale, sigmas=SIGMAS, **kwargs), model


def test_rescale_cfg_zero_and_below_the_minimum_is_plain_cfg_bit_for_bit():
    from core.sampling.cfg import rescale_guidance

    x = torch.randn(2, 4, 3, 3) * 3
    sigma = torch.full((2,), 1.5)
    plain = pattern_cfg(AND_COND, 7.0)[0](x, sigma)
    for phi in (0.0, 0.04):  # Forge: values under 0.05 count as off
        assert torch.equal(pattern_cfg(AND_COND, 7.0, rescale_cfg=phi)[0](x, sigma), plain)
    guided = torch.randn(2, 4, 3, 3)
    assert rescale_guidance(x, sigma, guided, torch.randn(2, 4, 3, 3), 0.0) is guided


def test_rescale_cfg_one_gives_the_unguided_spread_in_v_space_with_and_weights():
    x = torch.randn(2, 4, 3, 3) * 0.3
    sigma = torch.tensor([0.8, 3.0])  # per-sample sigmas
    cond = StepConditioning(
        [({"context": torch.cat([context(0.5, 1), context(0.9, 1)])}, 0.7), ({"context": context(-0.3)}, 0.4)],
        {"context": context(0.1)})
    plain_cfg, _ = pattern_cfg(cond, 7.0)
    rescaled_cfg, model = pattern_cfg(cond, 7.0, rescale_cfg=1.0)
    plain, rescaled = plain_cfg(x, sigma), rescaled_cfg(x, sigma)
    assert model.batch_sizes == [6]  # the rescale needs no extra model pass
    d = {mu: PatternDenoiser()(x, sigma, context(mu)) for mu in (0.5, -0.3, 0.1)}
    d[0.5][1] = PatternDenoiser()(x[1:], sigma[1:], context(0.9, 1))[0]
    unguided = d[0.1] + 0.7 * (d[0.5] - d[0.1]) + 0.4 * (d[-0.3] - d[0.1])
    v_pos, v_cfg, v_final = (v_space(x, sigma, t) for t in (unguided, plain, rescaled))
    assert (per_sample_std(v_cfg) > 1.5 * per_sample_std(v_pos)).all()  # CFG 7 overshoots
    assert torch.allclose(per_sample_std(v_final), per_sample_std(v_pos), rtol=1e-4)
    # phi 0.7: v_final = 0.7 * factor * v_cfg + 0.3 * v_cfg, the paper's blend
    blended = pattern_cfg(cond, 7.0, rescale_cfg=0.7)[0](x, sigma)
    factor = (per_sample_std(v_pos) / per_sample_std(v_cfg)).reshape(-1, 1, 1, 1)
    assert torch.allclose(v_space(x, sigma, blended), (0.7 * factor + 0.3) * v_cfg, rtol=1e-4, atol=1e-4)


def test_rescale_cfg_stays_finite_at_huge_and_infinite_sigma():
    from core.sampling.cfg import rescale_guidance

    x = torch.randn(2, 4, 3, 3)
    guided, unguided = torch.randn(2, 4, 3, 3) * 4, torch.randn(2, 4, 3, 3)
    big = rescale_guidance(x * 1e4, torch.full((2,), 1e4), guided, unguided, 0.7)
    inf = rescale_guidance(x, torch.full((2,), float("inf")), guided, unguided, 0.7)
    assert torch.isfinite(big).all() and torch.isfinite(inf).all()
    # sigma -> inf: v -> -x0, so the rescale is a plain per-sample scaling of the x0 prediction
    factor = (per_sample_std(unguided) / per_sample_std(guided)).reshape(-1, 1, 1, 1)
    assert torch.allclose(inf, (0.7 * factor + 0.3) * guided, atol=1e-5)
    assert torch.allclose(big, inf, atol=1e-3)
    # and through the denoiser at zero-terminal-SNR's first sigma
    cfg, _ = pattern_cfg(AND_COND, 7.0, rescale_cfg=0.7)
    assert torch.isfinite(cfg(torch.randn(2, 4, 3, 3) * 4500, torch.full((2,), 4500.0))).all()


def test_rescale_cfg_is_skipped_when_the_uncond_pass_is():
    x = torch.randn(2, 4, 3, 3)
    sigma = torch.full((2,), 1.0)
    one = StepConditioning([({"context": context(0.5)}, 1.0)], {"context": context(0.1)})
    plain, _ = pattern_cfg(one, 1.0)
    rescaled, model = pattern_cfg(one, 1.0, rescale_cfg=0.7)
    assert torch.equal(rescaled(x, sigma), plain(x, sigma)) and model.batch_sizes == [2]
    # negative guidance minimum sigma: every other call below it runs the cond pass alone
    skipping, model = pattern_cfg(one, 7.0, rescale_cfg=0.7, s_min_uncond=2.0)
    skipping(x, sigma)
    second = skipping(x, sigma)
    assert model.batch_sizes == [4, 2]
    assert torch.equal(second, PatternDenoiser()(x, sigma, context(0.5)))
