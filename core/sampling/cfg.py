"""Classifier-free guidance with composable diffusion (AND), per-step conditioning and inpaint masking.

The samplers call ``CFGDenoiser(x, sigma)``. For each call it looks up which sampling step ``sigma``
belongs to, asks ``conditioning_at(step)`` for that step's conditioning (prompt editing / alternation
change it between steps), runs the model once on [cond_1..cond_K, uncond] stacked on the batch axis, and
combines like the WebUI's CFGDenoiser.combine_denoised:

    denoised = uncond + sum_i weight_i * cfg_scale * (cond_i - uncond)

With ``rescale_cfg`` (Forge's "Rescale CFG"; Lin et al. 2023, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Algorithm 2) the guided result is pulled back towards the spread of the
unguided one in v-space, which keeps v-prediction / zero-terminal-SNR models from over-saturating.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from core.sampling.denoiser import DiscreteDenoiser

Cond = dict[str, Tensor]
CONTEXT_KEY = "context"

# A sigma within this relative distance of a grid sigma counts as that grid point.
GRID_TOLERANCE = 1e-4
# Forge applies Rescale CFG only from this value on (smaller ones are still written to the infotext).
RESCALE_CFG_MINIMUM = 0.05


@dataclass
class StepConditioning:
    """Conditioning of one sampling step for the whole batch.

    ``conds``: the AND sub-prompts with their weights; each dict holds batched tensors ([B, ...]),
    at least "context" [B, T, D]; every key is passed to the model function as a keyword argument.
    ``uncond``: the negative prompt, same keys.
    """

    conds: list[tuple[Cond, float]]
    uncond: Cond


def step_index(sigmas_desc: list[float], sigma: float) -> int:
    """Position of ``sigma`` in the sampler's descending sigma list.

    A grid sigma maps to its own index; a sigma between two grid points (second-order midpoints) maps to
    the next (lower-sigma) step, and a sigma above the first grid point (churn) to the step it started.
    """
    return _StepLookup(sigmas_desc).index(sigma)


class _StepLookup:
    """Binary search over the negated (so ascending) sigma list."""

    def __init__(self, sigmas_desc: list[float]):
        self.negated = [-s for s in sigmas_desc]
        self.last_step = max(len(sigmas_desc) - 2, 0)

    def index(self, sigma: float) -> int:
        # number of grid sigmas strictly above sigma * (1 + tolerance)
        above = bisect.bisect_left(self.negated, -sigma * (1 + GRID_TOLERANCE))
        return min(above, self.last_step)


def pad_tokens_with_last(context: Tensor, tokens: int) -> Tensor:
    """Pad [B, T, D] to ``tokens`` by repeating the last vector (prompt_parser.reconstruct_multicond_batch)."""
    missing = tokens - context.shape[1]
    if missing <= 0:
        return context
    return torch.cat([context, context[:, -1:].expand(-1, missing, -1)], dim=1)


def pad_with_empty_chunks(context: Tensor, repeats: int, empty_chunk: Tensor) -> Tensor:
    """Append ``repeats`` copies of the empty prompt's 77-token encoding (the WebUI's pad_cond_uncond)."""
    empty = empty_chunk.reshape(1, -1, empty_chunk.shape[-1]).to(context)
    return torch.cat([context, empty.repeat(context.shape[0], repeats, 1)], dim=1)


def concat_conds(conds: list[Cond]) -> Cond:
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


@dataclass
class _PreparedBatch:
    """Step conditioning stacked for the model: [cond_1..cond_K] (+ uncond) along the batch axis."""

    source: StepConditioning
    cond_batch: Cond
    uncond: Cond
    weights: list[float]
    joint: Cond | None  # cond_batch + uncond in one dict when token counts match


class CFGDenoiser:
    """k-diffusion model ``model(x, sigma, **extra_args) -> denoised`` with CFG over a DiscreteDenoiser."""

    def __init__(
        self,
        denoiser: DiscreteDenoiser | Callable[..., Tensor],
        conditioning_at: Callable[[int], StepConditioning],
        cfg_scale: float,
        *,
        sigmas: Tensor | list[float],
        pad_with: Tensor | None = None,
        mask: Tensor | None = None,
        init_latent: Tensor | None = None,
        s_min_uncond: float = 0.0,
        rescale_cfg: float = 0.0,
    ):
        self.denoiser = denoiser
        self.conditioning_at = conditioning_at
        self.cfg_scale = float(cfg_scale)
        self.sigmas = [float(s) for s in sigmas]
        self._lookup = _StepLookup(self.sigmas)
        self.pad_with = pad_with
        self.mask = mask
        self.init_latent = init_latent
        self.s_min_uncond = float(s_min_uncond)
        self.rescale_cfg = float(rescale_cfg) if rescale_cfg >= RESCALE_CFG_MINIMUM else 0.0
        # Set by samplers that guide with the unconditional prediction (DDIM CFG++).
        self.scale_multiplier = 1.0
        self.keep_uncond = False
        self.last_uncond_denoised: Tensor | None = None
        self.calls = 0
        self.padded_cond_uncond = False
        self._prepared: _PreparedBatch | None = None

    def step_index(self, sigma: Tensor) -> int:
        return self._lookup.index(float(sigma.reshape(-1)[0]))

    def prepare(self, conditioning: StepConditioning) -> _PreparedBatch:
        """Stack the sub-prompts once per distinct StepConditioning object (they repeat across steps)."""
        if self._prepared is not None and self._prepared.source is conditioning:
            return self._prepared
        conds = [c for c, _ in conditioning.conds]
        tokens = max(c[CONTEXT_KEY].shape[1] for c in conds)
        conds = [{**c, CONTEXT_KEY: pad_tokens_with_last(c[CONTEXT_KEY], tokens)} for c in conds]
        cond_batch = concat_conds(conds)
        uncond = dict(conditioning.uncond)
        cond_batch, uncond = self._pad_cond_uncond(cond_batch, uncond)
        same_length = cond_batch[CONTEXT_KEY].shape[1] == uncond[CONTEXT_KEY].shape[1]
        joint = concat_conds([cond_batch, uncond]) if same_length else None
        self._prepared = _PreparedBatch(conditioning, cond_batch, uncond, [w for _, w in conditioning.conds], joint)
        return self._prepared

    def _pad_cond_uncond(self, cond: Cond, uncond: Cond) -> tuple[Cond, Cond]:
        self.padded_cond_uncond = False
        c_len, u_len = cond[CONTEXT_KEY].shape[1], uncond[CONTEXT_KEY].shape[1]
        if self.pad_with is None or c_len == u_len:
            return cond, uncond
        chunk = self.pad_with.shape[-2]
        repeats = (c_len - u_len) // chunk
        if repeats > 0:
            uncond = {**uncond, CONTEXT_KEY: pad_with_empty_chunks(uncond[CONTEXT_KEY], repeats, self.pad_with)}
            self.padded_cond_uncond = True
        elif repeats < 0:
            cond = {**cond, CONTEXT_KEY: pad_with_empty_chunks(cond[CONTEXT_KEY], -repeats, self.pad_with)}
            self.padded_cond_uncond = True
        return cond, uncond

    def _skip_uncond(self, sigma: Tensor, weights: list[float]) -> bool:
        if self.keep_uncond:
            return False
        # cfg 1 with weights summing to 1 makes the uncond term cancel exactly; skip its model pass.
        if self.cfg_scale == 1.0 and abs(sum(weights) - 1.0) < 1e-9:
            return True
        # The WebUI's "negative guidance minimum sigma": every other call below the threshold.
        return self.calls % 2 == 1 and self.s_min_uncond > 0 and float(sigma.reshape(-1)[0]) < self.s_min_uncond

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Tensor) -> Tensor:
        batch = self.prepare(self.conditioning_at(self.step_index(sigma)))
        k = len(batch.weights)
        b = x.shape[0]
        skip_uncond = self._skip_uncond(sigma, batch.weights)

        if skip_uncond:
            x_in = torch.cat([x] * k) if k > 1 else x
            sigma_in = torch.cat([sigma] * k) if k > 1 else sigma
            out = self.denoiser(x_in, sigma_in, **batch.cond_batch, **extra)
            uncond_out = out[:b]  # stands in for uncond so sum w_i (c_i - u) reduces to the cond output
            scale = 1.0
        else:
            x_in = torch.cat([x] * (k + 1))
            sigma_in = torch.cat([sigma] * (k + 1))
            if batch.joint is not None:
                out = self.denoiser(x_in, sigma_in, **batch.joint, **extra)
            else:
                cond_out = self.denoiser(x_in[: k * b], sigma_in[: k * b], **batch.cond_batch, **extra)
                out = torch.cat([cond_out, self.denoiser(x, sigma, **batch.uncond, **extra)])
            uncond_out = out[k * b :]
            scale = self.cfg_scale * self.scale_multiplier
            if self.keep_uncond:
                self.last_uncond_denoised = uncond_out

        denoised = combine_denoised(out, uncond_out, batch.weights, scale, b)
        # Without the uncond pass there is no guidance to rescale (cfg 1 or the s_min_uncond steps).
        if self.rescale_cfg > 0 and not skip_uncond:
            unguided = combine_denoised(out, uncond_out, batch.weights, 1.0, b)
            denoised = rescale_guidance(x, sigma, denoised, unguided, self.rescale_cfg)
        if self.mask is not None and self.init_latent is not None:
            denoised = self.init_latent * self.mask + (1 - self.mask) * denoised
        self.calls += 1
        return denoised


def combine_denoised(out: Tensor, uncond_out: Tensor, weights: list[float], cfg_scale: float, b: int) -> Tensor:
    """uncond + sum_i w_i * cfg_scale * (cond_i - uncond); ``out`` holds cond_i for the batch at [i*b:(i+1)*b]."""
    if len(weights) == 1 and weights[0] == 1.0 and cfg_scale == 1.0 and out.shape[0] == b:
        return out
    if len(weights) == 1:
        return torch.lerp(uncond_out, out[:b], weights[0] * cfg_scale)
    denoised = uncond_out.clone()
    for i, weight in enumerate(weights):
        denoised += (out[i * b : (i + 1) * b] - uncond_out) * (weight * cfg_scale)
    return denoised


def rescale_guidance(x: Tensor, sigma: Tensor, guided: Tensor, unguided: Tensor, phi: float) -> Tensor:
    """Rescale CFG: the guided x0 prediction with its v-space spread moved ``phi`` of the way to the unguided one.

    ``guided`` is the CFG result, ``unguided`` the same combination at cfg 1, both k-diffusion x0
    predictions for ``x = x0 + sigma * eps``. In v-space (v = alpha * eps - s * x0 with
    alpha = 1 / sqrt(sigma^2 + 1), s = sigma / sqrt(sigma^2 + 1)) the paper's step is

        v_final = phi * v_cfg * std(v_pos) / std(v_cfg) + (1 - phi) * v_cfg

    with the std per sample over (C, H, W). Work with u = s * v = x / (sigma^2 + 1) - x0 instead:
    the per-sample factor s cancels from the std ratio, x0 = x / (sigma^2 + 1) - u exactly, and
    nothing is divided by sigma, so sigma = inf (zero-terminal-SNR's first step; u -> -x0) stays finite.
    """
    if phi == 0:
        return guided
    work = torch.promote_types(guided.dtype, torch.float32)
    shape = (-1,) + (1,) * (guided.ndim - 1)
    sigma = sigma.to(device=guided.device, dtype=work).reshape(shape)
    x_part = x.to(work) / (sigma * sigma + 1)
    u_cfg = x_part - guided.to(work)
    u_pos = x_part - unguided.to(work)
    dims = tuple(range(1, guided.ndim))
    std_cfg = u_cfg.std(dim=dims, keepdim=True)
    std_pos = u_pos.std(dim=dims, keepdim=True)
    # A flat v_cfg has no spread to rescale; leave such a sample as plain CFG.
    factor = torch.where(std_cfg > 0, std_pos / std_cfg.clamp_min(torch.finfo(work).tiny), torch.ones_like(std_cfg))
    u_final = u_cfg * (phi * factor + (1 - phi))
    return (x_part - u_final).to(guided.dtype)
