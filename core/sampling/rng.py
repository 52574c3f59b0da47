"""The WebUI's seeds: per-image generators, variation seeds, seed-resize-from, CPU/GPU/NV sources.

One generator per image (WebUI modules/rng.py ImageRNG), so image k of a batch equals a single-image run
with seed k: its starting noise is the generator's first draw, and every later draw (ancestral/SDE noise,
through ``noise_sampler``) continues the same generator. "NV" reproduces torch.randn on CUDA bit for bit
on any device (Philox 4x32-10 + Box-Muller, WebUI modules/rng_philox.py). DPM++ SDE samplers draw from a
Brownian tree seeded per image instead (``BrownianTreeNoiseSampler``, needs torchsde).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidParameterError, KilnError

RNG_SOURCES = ("GPU", "CPU", "NV")

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
TWO_POW32_INV = np.array([2.3283064e-10], dtype=np.float32)
TWO_POW32_INV_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * np.uint64(m)
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox4_32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox 4x32 over columns of a (4, N) uint32 counter with a (2, N) uint32 key."""
    counter, key = counter.copy(), key.copy()
    for round_index in range(rounds):
        hi0, lo0 = _mulhilo(counter[0], PHILOX_M[0])
        hi2, lo2 = _mulhilo(counter[2], PHILOX_M[1])
        counter[0], counter[1], counter[2], counter[3] = hi2 ^ counter[1] ^ key[0], lo2, hi0 ^ counter[3] ^ key[1], lo0
        if round_index < rounds - 1:
            key[0] = key[0] + np.uint32(PHILOX_W[0])
            key[1] = key[1] + np.uint32(PHILOX_W[1])
    return counter


def box_muller_first(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """First output of the Box-Muller transform, with CUDA's float32 constants."""
    u = x * TWO_POW32_INV + TWO_POW32_INV / 2
    v = y * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """Produces what ``torch.randn(shape, device='cuda', generator=g.manual_seed(seed))`` produces."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        seed64 = np.uint64(self.seed % 2**64)
        key = np.empty((2, n), dtype=np.uint32)
        key[0] = np.uint32(int(seed64) & 0xFFFFFFFF)
        key[1] = np.uint32(int(seed64) >> 32)
        g = philox4_32(counter, key)
        return box_muller_first(g[0], g[1]).reshape(tuple(shape))


Generator = torch.Generator | PhiloxGenerator


def slerp(val: float, low: Tensor, high: Tensor) -> Tensor:
    """Spherical interpolation as the WebUI does it (norms over dim 1 of a [C, H, W] noise)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    """Seeded noise for a batch: ``first()`` is the starting latent noise, ``next()`` continues per image."""

    def __init__(
        self,
        shape: Sequence[int],
        seeds: list[int],
        subseeds: list[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        source: str = "GPU",
        device: str | torch.device = "cpu",
        eta_noise_seed_delta: int = 0,
        latent_factor: int = 8,
    ):
        if source not in RNG_SOURCES:
            raise InvalidParameterError("randn_source", f"unknown RNG source {source!r}", hint="use GPU, CPU or NV")
        shape = tuple(int(s) for s in shape)
        if len(shape) == 4:
            if shape[0] != len(seeds):
                raise InvalidParameterError("seeds", f"{len(seeds)} seeds for a batch of {shape[0]}")
            shape = shape[1:]
        self.shape = shape  # one image: (C, H, W)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from_h = int(seed_resize_from_h)
        self.seed_resize_from_w = int(seed_resize_from_w)
        self.source = source
        self.device = torch.device(device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.latent_factor = latent_factor
        self.generators: list[Generator] = [self.create_generator(s) for s in self.seeds]
        self.is_first = True

    def _generator_device(self) -> torch.device:
        # "CPU" draws on the host so a seed gives the same image on every GPU; MPS has no generator of its own.
        if self.source == "CPU" or self.device.type == "mps":
            return torch.device("cpu")
        return self.device

    def create_generator(self, seed: int) -> Generator:
        if self.source == "NV":
            return PhiloxGenerator(seed)
        return torch.Generator(self._generator_device()).manual_seed(int(seed))

    def randn(self, shape: Sequence[int], generator: Generator) -> Tensor:
        if isinstance(generator, PhiloxGenerator):
            return torch.from_numpy(generator.randn(shape)).to(self.device)
        return torch.randn(tuple(shape), device=self._generator_device(), generator=generator).to(self.device)

    def _seed_noise(self, index: int, seed: int) -> Tensor:
        resized = self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0
        noise_shape = self.shape
        if resized:
            noise_shape = (self.shape[0], self.seed_resize_from_h // self.latent_factor,
                           self.seed_resize_from_w // self.latent_factor)
        generator = self.generators[index]
        noise = self.randn(noise_shape, self.create_generator(seed) if resized else generator)
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[index] if index < len(self.subseeds) else 0
            noise = slerp(self.subseed_strength, noise, self.randn(noise_shape, self.create_generator(subseed)))
        if resized:
            noise = self._place_resized(self.randn(self.shape, generator), noise)
        return noise

    def _place_resized(self, canvas: Tensor, noise: Tensor) -> Tensor:
        """Centre the noise of the original size in (or crop it to) the new latent, as the WebUI does."""
        dx = (self.shape[2] - noise.shape[2]) // 2
        dy = (self.shape[1] - noise.shape[1]) // 2
        w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
        h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        canvas[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
        return canvas

    def first(self) -> Tensor:
        xs = [self._seed_noise(i, seed) for i, seed in enumerate(self.seeds)]
        if self.eta_noise_seed_delta:
            # ENSD: sampler noise comes from seed + delta instead of continuing the seed's generator.
            self.generators = [self.create_generator(s + self.eta_noise_seed_delta) for s in self.seeds]
        self.is_first = False
        return torch.stack(xs)

    def next(self) -> Tensor:
        if self.is_first:
            return self.first()
        return torch.stack([self.randn(self.shape, g) for g in self.generators])

    def noise_sampler(self, x: Tensor) -> Callable[[float, float], Tensor]:
        """Ancestral noise for the samplers from the same per-image generators."""
        return lambda sigma, sigma_next: self.next().to(device=x.device, dtype=x.dtype)


class BrownianTreeNoiseSampler:
    """Noise for SDE samplers from one torchsde Brownian tree per image (seeded by that image's seed).

    The increment over [sigma_next, sigma] does not depend on how many steps the sampler takes, which is
    what makes DPM++ SDE images the same in a batch and alone.
    """

    def __init__(self, x: Tensor, sigma_min: float, sigma_max: float, seeds: list[int] | None):
        try:
            import torchsde
        except ImportError as exc:
            raise KilnError(
                "the DPM++ SDE samplers need the torchsde package",
                hint="install it with `pip install torchsde` or pick a non-SDE sampler",
            ) from exc
        t0, t1 = torch.as_tensor(float(sigma_min)), torch.as_tensor(float(sigma_max))
        if seeds is None:
            seeds = [int(torch.randint(0, 2**63 - 1, []).item())]
            w0 = torch.zeros_like(x)
            self.batched = False
        else:
            if len(seeds) != x.shape[0]:
                raise InvalidParameterError("seeds", f"{len(seeds)} seeds for a batch of {x.shape[0]}")
            w0 = torch.zeros_like(x[0])
            self.batched = True
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(s)) for s in seeds]

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        t0, t1 = torch.as_tensor(float(sigma)), torch.as_tensor(float(sigma_next))
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with warnings.catch_warnings():
            # torchsde warns when a query end sits a float32 rounding outside the tree's range; harmless.
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        w = w if self.batched else w[0]
        return w / (t1 - t0).abs().sqrt()
