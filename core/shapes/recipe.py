"""The recipe that builds Kiln's built-in model from nothing, deterministically.

    python -m core.shapes.recipe --out models/Stable-diffusion/kiln-shapes-v1.safetensors
    python -m core.shapes.recipe --out /tmp/ci.safetensors --steps-scale 0.05   # CI-sized

Stages (each writes diffusers-format weights into the work folder, so a later failure
never loses an earlier stage, and a rerun with the same settings skips finished stages):

1. VAE: trained on world pictures (MSE + L1, tiny KL, extra weight on the border so the
   decoder does not smear a frame of another colour there); after the latents are cached,
   its decoder alone is trained further on whole pictures (sharper edges, true colours,
   no frame) without touching the encoder the UNet's latents come from.
2. Text encoder: CLIP architecture with the real 49408-token vocabulary and 77 positions,
   kept at its seeded initialisation. Frozen, its outputs for the 90 captions are computed
   once; the UNet's cross-attention learns to read them (measured: training it too costs
   more time per step than it buys in accuracy, because its 3 M-entry token table gets a
   dense Adam update every step).
3. UNet: v-prediction on a zero-terminal-SNR schedule (the SD scaled_linear betas,
   rescaled), latents cached once, EMA of the weights, batch growing by phase.
4. Save: one SD1 single-file checkpoint (fp16) through Kiln's own checkpoint writer.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from core.errors import KilnError
from core.fileio import atomic_save_with, atomic_write_text
from core.shapes import world
from core.training.ema import Ema
from core.training.objective import noised, per_sample_mse, prediction_target, truncated_snr_weights
from core.training.optimizers import build_optimizer
from core.training.schedulers import warmup_cosine_lr

RECIPE_VERSION = "kiln-shapes-v1.2"
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "models" / "clip_tokenizer"
DEFAULT_WORKDIR = Path(__file__).resolve().parents[2] / ".helpers" / "shapes-run"
BOS_ID, EOS_ID, CONTEXT_LENGTH = 49406, 49407, 77

# The SD1 training schedule. Kiln's samplers rebuild it from these numbers.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


@dataclass(frozen=True)
class VaeSettings:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    # (steps, batch size, crop size) per phase: random 32x32 crops teach flat colours and
    # edges at a quarter of the cost; whole pictures at the end teach the border.
    phases: tuple[tuple[int, int, int], ...] = ((250, 32, 32), (80, 8, 64))
    learning_rate: float = 1e-3
    l1_weight: float = 0.5
    kl_weight: float = 1e-6
    border_width: int = 4
    border_weight: float = 4.0
    seed: int = 11


@dataclass(frozen=True)
class DecoderSettings:
    """A last VAE stage that trains only the decoder, on whole pictures, with the encoder
    (and so every cached latent the UNet learns) left as it was. The joint VAE stage is
    short; this one removes the frame of another colour a zero-padded decoder smears
    along the picture border and sharpens edges and colours, without retraining the UNet
    whenever the decoder improves."""

    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 5e-4
    l1_weight: float = 0.5
    border_width: int = 4
    border_weight: float = 6.0
    seed: int = 44


@dataclass(frozen=True)
class TextSettings:
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    seed: int = 22


@dataclass(frozen=True)
class UnetSettings:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    # SD1 has 8 heads of 40 channels. Measured on 2 CPU cores at batch 32: 1 head per block
    # makes a step 1.4x faster than 4 heads of 8 channels (the CPU attention kernel costs per
    # head); the shipped model keeps 4 until a 1-head run matches it.
    num_attention_heads: int = 4
    # GroupNorm groups. diffusers' (and SD's) 32 groups make every group of the first level
    # a single channel of 32: an instance norm that erases each channel's mean, the flat
    # colour of a whole picture, at every layer. 8 groups (4 and 8 channels each) measured
    # with the recipe's monitor (36 prompts, CFG 3) at steps 1500 / 2000: shape class
    # 0.67 / 0.72 against 0.47 / 0.56 with 32, the rest of the recipe the same. Not visible in
    # tensor shapes: the checkpoint carries it as kiln.unet.norm_num_groups.
    norm_num_groups: int = 8
    # (steps, batch size) per phase. The learning rate is constant after warm-up and the
    # EMA does the averaging, so the weights after N steps are the same whatever the
    # total: a run cut short by a deadline is exactly the recipe with fewer steps.
    phases: tuple[tuple[int, int], ...] = ((2000, 16), (2000, 32))
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    # Share of samples trained with a shorter caption (world.caption_variants) instead of
    # the full one, so that lone words ("red", "circle") mean something.
    partial_caption_fraction: float = 0.0
    # Train the text encoder's layers with the UNet (its 49408-row token table stays at its
    # seeded values: a dense Adam update of 3 M entries per step would cost more than the
    # UNet step). This is why colour follows the text within a few hundred steps; it is also,
    # measured, why shape does not: trained, the layers amplified the colour words and
    # squashed the shape word (the contexts of "a red circle ..." and "a red square ..." differ
    # by 0.28 at the shape token, against 5.6 for red/green at the colour token; seeded, both
    # ~2.6), and the UNet's pure-noise prediction was the same blob for all three shape words.
    # Frozen (--frozen-text-encoder) the shape words stay apart, but after 2500 steps the UNet
    # had not yet learned to draw them apart either, and colour came slower.
    train_text_encoder: bool = True
    # The text encoder's learning rate as a share of the UNet's. At 1.0 (v1) the encoder
    # races ahead of the UNet: it amplifies the colour words the UNet already uses and
    # squashes the shape word before the UNet has learned to draw shapes apart.
    text_encoder_lr_scale: float = 0.1
    # Share of each batch whose timesteps are drawn from [high_noise_from, 999] instead of
    # the whole range: the prompt decides the picture at high noise (background, colour and
    # outline are all fixed there), while low-noise steps only sharpen what is already drawn.
    high_noise_fraction: float = 0.0
    high_noise_from: int = 500
    # Min-SNR-style weighting, truncated so that it never zeroes a step: the v-loss of a
    # step is scaled by min(1, gamma / (snr + 1)). High-noise steps (snr + 1 <= gamma: where
    # outline and colours are decided) keep full weight; nearly clean steps, which only
    # sharpen edges and otherwise dominate the gradient, count less. Kohya's min_snr_gamma
    # for v-prediction (min(snr, gamma) / (snr + 1)) would give the pure-noise step of a
    # zero-terminal-SNR schedule weight 0. None (the shipped model): plain v-loss. Measured
    # with gamma 5 over 1000-2500 steps: colour and background as fast, shape no better.
    snr_gamma: float | None = None
    # Stop after this many steps (None: all phases). The learning rate is constant, so the
    # weights after N steps are those of the full recipe's step N.
    stop_after: int | None = None
    seed: int = 33

    @property
    def total_steps(self) -> int:
        planned = sum(steps for steps, _ in self.phases)
        return planned if self.stop_after is None else min(planned, self.stop_after)


@dataclass(frozen=True)
class Recipe:
    world_seed: int = 1234
    dataset_size: int = 6000
    # How the world varies each picture (size, offset, rotation); every stage's key includes it.
    jitter: world.Jitter = field(default_factory=world.Jitter)
    vae: VaeSettings = field(default_factory=VaeSettings)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    text: TextSettings = field(default_factory=TextSettings)
    unet: UnetSettings = field(default_factory=UnetSettings)
    monitor_every: int = 500
    monitor_seed: int = 77
    version: str = RECIPE_VERSION

    def scaled(self, steps_scale: float) -> Recipe:
        """The same recipe with every step count (and the dataset) scaled, for CI runs."""

        def scale(n: int, floor: int) -> int:
            return max(floor, round(n * steps_scale))

        vae_phases = tuple((scale(steps, 2), batch, crop) for steps, batch, crop in self.vae.phases)
        vae = dataclasses.replace(self.vae, phases=vae_phases)
        phases = tuple((scale(steps, 2), batch) for steps, batch in self.unet.phases)
        unet = dataclasses.replace(
            self.unet, phases=phases, warmup_steps=scale(self.unet.warmup_steps, 1)
        )
        decoder = dataclasses.replace(self.decoder, steps=scale(self.decoder.steps, 2))
        return dataclasses.replace(
            self,
            dataset_size=scale(self.dataset_size, 64),
            vae=vae,
            decoder=decoder,
            unet=unet,
            # A scaled run probes once, at its end.
            monitor_every=sum(steps for steps, _ in phases),
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def settings_hash(*parts: object) -> str:
    text = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- builders


def build_vae(settings: VaeSettings):
    from diffusers import AutoencoderKL

    levels = len(settings.block_out_channels)
    torch.manual_seed(settings.seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=settings.block_out_channels,
        layers_per_block=settings.layers_per_block,
        latent_channels=settings.latent_channels,
        norm_num_groups=settings.norm_num_groups,
        sample_size=world.IMAGE_SIZE,
    )


def build_text_encoder(settings: TextSettings):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    torch.manual_seed(settings.seed)
    return CLIPTextModel(config).eval()


def build_unet(settings: UnetSettings, cross_attention_dim: int, latent_channels: int, sample_size: int):
    """An SD1-shaped UNet: cross-attention at every level but the lowest, like SD1's
    four levels, with attention at the full latent resolution too."""
    from diffusers import UNet2DConditionModel

    levels = len(settings.block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    torch.manual_seed(settings.seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=settings.block_out_channels,
        layers_per_block=settings.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        # diffusers' SD1 naming: "attention_head_dim" is the number of heads there.
        attention_head_dim=settings.num_attention_heads,
        norm_num_groups=settings.norm_num_groups,
    )


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def token_ids(tokenizer, text: str) -> list[int]:
    """SD1's layout of one 77-token chunk: BOS, the prompt's tokens, EOS padding."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: CONTEXT_LENGTH - 2]
    return [BOS_ID, *ids] + [EOS_ID] * (CONTEXT_LENGTH - 1 - len(ids))


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    ids = torch.tensor([token_ids(tokenizer, p) for p in prompts])
    return text_encoder(input_ids=ids).last_hidden_state.float()


# ----------------------------------------------------------------------------- progress


class Progress:
    """Steps, loss and ETA on stderr; one CSV row per logged step."""

    def __init__(self, log_path: Path | None, stream=sys.stderr, every: int = 10, keep_existing: bool = False):
        """``keep_existing``: start from the rows already in ``log_path`` (a resumed run
        continues its log instead of replacing it)."""
        self.log_path = log_path
        self.stream = stream
        self.every = every
        self.rows: list[dict] = []
        if keep_existing and log_path is not None and log_path.is_file():
            with open(log_path, newline="", encoding="utf-8") as f:
                self.rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def start(self, stage: str, total: int) -> None:
        self.stage, self.total, self.t0, self.smoothed = stage, total, time.perf_counter(), None

    def step(self, step: int, loss: float, **extra: float) -> None:
        self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / step * (self.total - step)
        self.stream.write(
            f"\r{self.stage} {step}/{self.total} loss {self.smoothed:.4f} "
            f"{elapsed / step:.2f} s/step ETA {int(eta // 60)}:{int(eta % 60):02d}   "
        )
        if step == self.total:
            self.stream.write("\n")
        self.stream.flush()
        self.rows.append({"stage": self.stage, "step": step, "loss": round(loss, 6), "loss_smoothed": round(self.smoothed, 6), "elapsed_s": round(elapsed, 1), **extra})

    def note(self, stage: str, **values) -> None:
        self.stream.write(f"{stage}: {json.dumps(values)}\n")
        self.stream.flush()
        self.rows.append({"stage": stage, **values})
        self.flush()

    def flush(self) -> None:
        if self.log_path is None or not self.rows:
            return
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        lines = [",".join(columns)]
        for row in self.rows:
            lines.append(",".join(_csv_cell(row.get(c, "")) for c in columns))
        atomic_write_text(self.log_path, "\n".join(lines) + "\n")


def _csv_cell(value: object) -> str:
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


# ----------------------------------------------------------------------------- data


def images_to_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB pictures → (N, 3, H, W) in [-1, 1]."""
    import numpy as np

    array = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) for img in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(batch: torch.Tensor) -> list:
    from PIL import Image

    array = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


lr_at = warmup_cosine_lr  # the VAE stages' schedule, shared with core.training


# ----------------------------------------------------------------------------- VAE


def border_weights(size: int, width: int, weight: float) -> torch.Tensor:
    w = torch.ones(size, size)
    w[:width, :] = w[-width:, :] = w[:, :width] = w[:, -width:] = weight
    return w / w.mean()


def random_crops(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    if size >= batch.shape[-1]:
        return batch
    limit = batch.shape[-1] - size + 1
    offsets = torch.randint(0, limit, (batch.shape[0], 2), generator=generator).tolist()
    return torch.stack([img[:, y : y + size, x : x + size] for img, (y, x) in zip(batch, offsets)])


def train_vae(vae, settings: VaeSettings, world_seed: int, progress: Progress,
              jitter: world.Jitter = world.DEFAULT_JITTER) -> None:
    vae.train()
    optimizer = build_optimizer("AdamW", vae.parameters(), settings.learning_rate, {"weight_decay": 0.0})
    generator = torch.Generator().manual_seed(settings.seed)
    total = sum(steps for steps, _, _ in settings.phases)
    pictures = world.iter_world(world_seed + 1, sum(s * b for s, b, _ in settings.phases), "train", jitter)
    progress.start("vae", total)
    step = 0
    for phase_steps, batch_size, crop in settings.phases:
        # Crops have no picture border inside them, so the border weight applies only to
        # whole pictures.
        weights = (
            border_weights(crop, settings.border_width, settings.border_weight)
            if crop >= world.IMAGE_SIZE
            else torch.ones(crop, crop)
        )
        for _ in range(phase_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, settings.learning_rate, 50, settings.learning_rate * 0.05)
            full = images_to_tensor([next(pictures).image for _ in range(batch_size)])
            batch = random_crops(full, crop, generator)
            posterior = vae.encode(batch).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
            recon = vae.decode(z).sample
            error = recon - batch
            loss = (
                (error.square().mean(1) * weights).mean()
                + settings.l1_weight * (error.abs().mean(1) * weights).mean()
                + settings.kl_weight * posterior.kl().mean()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            step += 1
            progress.step(step, loss.item(), batch=batch_size, crop=crop)
    vae.eval()


def finetune_decoder(vae, settings: DecoderSettings, world_seed: int, progress: Progress,
                     jitter: world.Jitter = world.DEFAULT_JITTER) -> None:
    """Trains the decoder (and post_quant_conv) on the encoder's posterior means of whole
    pictures; the encoder stays frozen so latents cached before this stage stay valid."""
    vae.eval()
    decoder_params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    optimizer = build_optimizer("AdamW", decoder_params, settings.learning_rate, {"weight_decay": 0.0})
    weights = border_weights(world.IMAGE_SIZE, settings.border_width, settings.border_weight)
    pictures = world.iter_world(world_seed + 2, settings.steps * settings.batch_size, "train", jitter)
    progress.start("vae-decoder", settings.steps)
    vae.decoder.train()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.steps, settings.learning_rate, 20, settings.learning_rate * 0.05)
        batch = images_to_tensor([next(pictures).image for _ in range(settings.batch_size)])
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.mean
        error = vae.decode(latents).sample - batch
        loss = (error.square().mean(1) * weights).mean() + settings.l1_weight * (error.abs().mean(1) * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder_params, 1.0)
        optimizer.step()
        progress.step(step + 1, loss.item())
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: Sequence, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of the pictures (unscaled)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        chunks.append(vae.encode(images_to_tensor(images[start : start + batch_size])).latent_dist.mean)
    return torch.cat(chunks)


# ----------------------------------------------------------------------------- UNet


@dataclass
class UnetData:
    latents: torch.Tensor  # (N, C, h, w), scaled to ~unit std
    caption_index: torch.Tensor  # (N,) rows of `contexts`
    contexts: torch.Tensor  # (K + 1 [+ K * V], 77, hidden): one per caption, then the empty prompt
    token_ids: torch.Tensor  # (K + 1, 77): the same captions as token ids
    # (K, V): for each caption row, the rows of its shorter variants (appended after the
    # empty prompt in `contexts` and `token_ids`); None: no variants.
    variant_rows: torch.Tensor | None = None


def trainable_parts(unet, text_encoder, settings: UnetSettings) -> torch.nn.ModuleDict:
    """What the UNet stage trains (and averages, and snapshots): the UNet, and with
    ``train_text_encoder`` the text encoder with its token table frozen."""
    parts = {"unet": unet}
    if settings.train_text_encoder:
        text_encoder.requires_grad_(True)
        text_encoder.get_input_embeddings().weight.requires_grad_(False)
        parts["text_encoder"] = text_encoder
    return torch.nn.ModuleDict(parts)


def batch_size_at(phases: Sequence[tuple[int, int]], step: int) -> int:
    for phase_steps, batch_size in phases:
        if step < phase_steps:
            return batch_size
        step -= phase_steps
    return phases[-1][1]


def sample_timesteps(batch_size: int, steps: int, settings: UnetSettings, generator: torch.Generator) -> torch.Tensor:
    t = torch.randint(0, steps, (batch_size,), generator=generator)
    if settings.high_noise_fraction <= 0:
        return t
    high = torch.randint(settings.high_noise_from, steps, (batch_size,), generator=generator)
    pick_high = torch.rand(batch_size, generator=generator) < settings.high_noise_fraction
    return torch.where(pick_high, high, t)


def step_weights(alphas_cumprod: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """Per-sample weights of the v-loss (see UnetSettings.snr_gamma)."""
    if snr_gamma is None:
        return torch.ones_like(alphas_cumprod)
    return truncated_snr_weights(alphas_cumprod, snr_gamma)


def _prune_snapshots(prefix: Path, keep: int, keep_every: int) -> None:
    """Deletes the older snapshots except every ``keep_every``-th step (a run's state is
    ~50 MB; 25 of them would fill a small disk)."""
    for path in prefix.parent.glob(f"{prefix.name}-*.pt"):
        step = int(path.stem.rsplit("-", 1)[1])
        if step < keep and step % keep_every:
            path.unlink(missing_ok=True)


def latest_snapshot(prefix: Path, max_step: int) -> Path | None:
    """The snapshot ``<prefix>-<step>.pt`` with the largest step not past ``max_step``."""
    best: tuple[int, Path] | None = None
    for path in prefix.parent.glob(f"{prefix.name}-*.pt"):
        step = int(path.stem.rsplit("-", 1)[1])
        if step <= max_step and (best is None or step > best[0]):
            best = (step, path)
    return best[1] if best else None


def train_unet(
    parts: torch.nn.ModuleDict,
    data: UnetData,
    settings: UnetSettings,
    progress: Progress,
    monitor: Callable[[int, dict], dict] | None = None,
    monitor_every: int = 0,
    snapshots: Path | None = None,
    snapshot_every: int = 200,
) -> Ema:
    """Trains ``parts`` (see trainable_parts) in place; returns their EMA. With ``snapshots`` (a file name prefix),
    the whole training state is saved every ``snapshot_every`` steps as
    ``<prefix>-<step>.pt``, and a run continues from the latest one not past its total."""
    scheduler = build_train_scheduler()
    alphas = scheduler.alphas_cumprod.float()
    unet, text_encoder = parts["unet"], parts["text_encoder"] if "text_encoder" in parts else None
    params = [p for p in parts.parameters() if p.requires_grad]
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "scale": 1.0}]
    if text_encoder is not None:
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad],
                       "scale": settings.text_encoder_lr_scale})
    optimizer = build_optimizer("AdamW", groups, settings.learning_rate, {"weight_decay": settings.weight_decay})
    generator = torch.Generator().manual_seed(settings.seed)
    ema = Ema(parts, settings.ema_decay)
    total = settings.total_steps
    start = 0
    resume = latest_snapshot(snapshots, total) if snapshots is not None else None
    if resume is not None:
        state = torch.load(resume, weights_only=True)
        start = int(state["step"])
        parts.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        ema.load_state_dict({"shadow": state["ema"], "steps": state["ema_steps"]})
        progress.note("resumed", step=start)
    empty_row = data.variant_rows.min().item() - 1 if data.variant_rows is not None else data.contexts.shape[0] - 1
    n = data.latents.shape[0]
    parts.train()
    progress.start("unet", total - start)
    for step in range(start, total):
        batch_size = batch_size_at(settings.phases, step)
        for group in optimizer.param_groups:
            group["lr"] = group["scale"] * settings.learning_rate * min(1.0, (step + 1) / settings.warmup_steps)
        index = torch.randint(0, n, (batch_size,), generator=generator)
        x0 = data.latents[index]
        rows = data.caption_index[index].clone()
        drop = torch.rand(batch_size, generator=generator) < settings.caption_dropout
        rows[drop] = empty_row
        if data.variant_rows is not None and settings.partial_caption_fraction > 0:
            variants = data.variant_rows.shape[1]
            pick = torch.randint(0, variants, (batch_size,), generator=generator)
            partial = (torch.rand(batch_size, generator=generator) < settings.partial_caption_fraction) & ~drop
            rows[partial] = data.variant_rows[rows[partial], pick[partial]]
        noise = torch.randn(x0.shape, generator=generator)
        t = sample_timesteps(batch_size, scheduler.config.num_train_timesteps, settings, generator)
        abar = alphas[t].view(-1, 1, 1, 1)
        noisy = noised(x0, noise, abar)
        target = prediction_target(x0, noise, abar, "v_prediction")
        if text_encoder is not None:
            context = text_encoder(input_ids=data.token_ids[rows]).last_hidden_state
        else:
            context = data.contexts[rows]
        prediction = unet(noisy, t, encoder_hidden_states=context).sample
        if settings.snr_gamma is None:
            loss = F.mse_loss(prediction, target)
        else:
            loss = (per_sample_mse(prediction, target) * step_weights(alphas[t], settings.snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        ema.update(parts)
        done = step + 1
        progress.step(done - start, loss.item(), lr=round(optimizer.param_groups[0]["lr"], 7), batch=batch_size, unet_step=done)
        if snapshots is not None and (done % snapshot_every == 0 or done == total):
            state = {
                "step": done,
                "model": parts.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "ema": ema.shadow,
                "ema_steps": ema.steps,
            }
            path = snapshots.with_name(f"{snapshots.name}-{done:06d}.pt")
            atomic_save_with(path, lambda tmp, state=state: torch.save(state, tmp))
            _prune_snapshots(snapshots, keep=done, keep_every=1000)
            progress.flush()
        if monitor is not None and monitor_every and (done % monitor_every == 0 or done == total):
            progress.note("monitor", step=done, **monitor(done, ema.shadow))
            parts.train()
    parts.eval()
    parts.requires_grad_(False)
    return ema


# ----------------------------------------------------------------------------- monitoring


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, scaling_factor: float) -> list:
    return tensor_to_images(vae.decode(latents / scaling_factor).sample)


def make_monitor(parts: torch.nn.ModuleDict, vae, text_encoder, tokenizer, scaling_factor: float, seed: int,
                 count: int = 36, cfg_scale: float = 3.0):
    """Generates ``count`` pictures with the EMA weights through Kiln's default sampler
    (20 steps) and reads them with the checker."""
    from core.shapes import checker
    from core.shapes.evaluate import components_generate_fn

    rng = random.Random(seed)
    combos = [rng.choice(world.all_combinations()) for _ in range(count)]
    prompts = [world.caption_for(*c) for c in combos]
    seeds = [seed * 1000 + i for i in range(count)]
    expected = [checker.Expected(color=c, shape=s, background=b) for c, s, b in combos]

    def monitor(step: int, ema_state: dict) -> dict:
        live = {k: v.clone() for k, v in parts.state_dict().items()}
        parts.load_state_dict(ema_state)
        parts.eval()
        generate = components_generate_fn(parts["unet"], vae, text_encoder, tokenizer, scaling_factor, cfg_scale=cfg_scale)
        results = [checker.check_image(img) for img in generate(prompts, seeds)]
        parts.load_state_dict(live)
        return {k: round(v, 3) for k, v in checker.score(results, expected).items()}

    return monitor


# ----------------------------------------------------------------------------- stages


def _save_module(module: torch.nn.Module, path: Path, config: dict) -> None:
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    atomic_save_with(path, lambda tmp: save_file(state, str(tmp), metadata={"config": json.dumps(config)}))


def _stage_done(path: Path, key: str) -> bool:
    marker = path.with_suffix(".key")
    return path.exists() and marker.exists() and marker.read_text().strip() == key


def _mark_stage(path: Path, key: str) -> None:
    atomic_write_text(path.with_suffix(".key"), key + "\n")


def _plain_config(module) -> dict:
    config = module.config
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def _vae_stage(vae, path: Path, key: str, train: Callable[[], None]) -> None:
    """Loads the VAE weights a finished stage saved under ``key``, or trains and saves them."""
    if _stage_done(path, key):
        vae.load_state_dict(load_file(str(path)))
        vae.eval()
        return
    train()
    _save_module(vae, path, _plain_config(vae))
    _mark_stage(path, key)


@dataclass
class BuiltModel:
    """The trained parts in diffusers/transformers form, and how they were made."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    scaling_factor: float
    recipe: Recipe
    monitor: dict


def build_model(recipe: Recipe, workdir: Path, progress: Progress, monitor: bool = True) -> BuiltModel:
    """Runs (or resumes) every training stage; returns the trained parts."""
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer()

    vae = build_vae(recipe.vae)
    # The world's jitter is part of every stage's key: pictures drawn differently make a
    # different VAE, latents and UNet.
    vae_path = workdir / "vae.safetensors"
    vae_key = settings_hash(recipe.vae, recipe.world_seed, dataclasses.asdict(recipe.jitter))
    _vae_stage(vae, vae_path, vae_key, lambda: train_vae(vae, recipe.vae, recipe.world_seed, progress, recipe.jitter))
    progress.flush()

    text_encoder = build_text_encoder(recipe.text)
    _save_module(text_encoder, workdir / "text_encoder.safetensors", text_encoder.config.to_dict())

    latents_path = workdir / "latents.safetensors"
    latents_key = settings_hash(vae_key, recipe.text, recipe.dataset_size)
    if _stage_done(latents_path, latents_key):
        cached = load_file(str(latents_path))
    else:
        samples = world.sample_world(recipe.world_seed, recipe.dataset_size, "train", recipe.jitter)
        raw = encode_latents(vae, [s.image for s in samples])
        captions = sorted({s.caption for s in samples})
        row = {c: i for i, c in enumerate(captions)}
        cached = {
            "latents": raw.contiguous(),
            "caption_index": torch.tensor([row[s.caption] for s in samples]),
            "contexts": encode_prompts(text_encoder, tokenizer, [*captions, ""]),
        }
        atomic_save_with(latents_path, lambda tmp: save_file(cached, str(tmp)))
        _mark_stage(latents_path, latents_key)
    # One number that brings the cached latents to unit standard deviation, as SD's 0.18215.
    scaling_factor = round(1.0 / cached["latents"].std().item(), 4)
    # Rows of the caption table: the training captions in sorted order, then the empty prompt.
    # The world cycles through every combination before repeating one, so the first
    # len(combinations) samples name every caption of the data set.
    first = min(recipe.dataset_size, len(world.combinations("train")))
    captions = sorted({s.caption for s in world.sample_world(recipe.world_seed, first, "train", recipe.jitter)})
    if len(captions) + 1 != cached["contexts"].shape[0]:
        raise KilnError("the cached latents do not match the world's captions", path=latents_path,
                        hint="delete the work folder and run the recipe again")
    # The shorter captions of every training caption, as rows after the empty prompt.
    combo_of = {world.caption_for(*c): c for c in world.combinations("train")}
    variants = [world.caption_variants(*combo_of[c]) for c in captions]
    extra = [v for row in variants for v in row]
    first_extra = len(captions) + 1
    variant_rows = torch.arange(first_extra, first_extra + len(extra)).view(len(captions), -1)
    ids = torch.tensor([token_ids(tokenizer, c) for c in [*captions, "", *extra]])
    contexts = torch.cat([cached["contexts"], encode_prompts(text_encoder, tokenizer, extra)])
    data = UnetData(cached["latents"] * scaling_factor, cached["caption_index"], contexts, ids, variant_rows)
    progress.note("latents", count=int(data.latents.shape[0]), scaling_factor=scaling_factor)

    unet = build_unet(recipe.unet, recipe.text.hidden_size, recipe.vae.latent_channels, world.IMAGE_SIZE // 2 ** (len(recipe.vae.block_out_channels) - 1))
    unet_path = workdir / f"unet_ema-{recipe.unet.total_steps}.safetensors"
    unet_key = settings_hash(latents_key, recipe.unet)
    # The training state does not depend on the step count (constant learning rate), so a
    # run with more steps continues a shorter one.
    state_key = settings_hash(latents_key, dataclasses.replace(recipe.unet, stop_after=None))
    last_monitor: dict = {}
    parts = trainable_parts(unet, text_encoder, recipe.unet)
    if _stage_done(unet_path, unet_key):
        parts.load_state_dict(load_file(str(unet_path)))
        parts.eval()
    else:
        watch = (
            make_monitor(parts, vae, text_encoder, tokenizer, scaling_factor, recipe.monitor_seed) if monitor else None
        )
        snapshots = workdir / f"unet_state-{state_key}"
        ema = train_unet(parts, data, recipe.unet, progress, watch, recipe.monitor_every, snapshots)
        _save_module(parts, unet_path.with_name(unet_path.name.replace("unet_ema", "unet_last")), {})
        parts.load_state_dict(ema.shadow)
        _save_module(parts, unet_path, _plain_config(unet))
        _mark_stage(unet_path, unet_key)
        last_monitor = next((r for r in reversed(progress.rows) if r.get("stage") == "monitor"), {})

    # The decoder fine-tune leaves the encoder alone, so the latents cached from that encoder
    # (and the UNet trained on them) stay valid; it runs last.
    decoder_path, decoder_key = workdir / "vae_decoder.safetensors", settings_hash(vae_key, recipe.decoder)
    _vae_stage(vae, decoder_path, decoder_key, lambda: finetune_decoder(vae, recipe.decoder, recipe.world_seed, progress, recipe.jitter))
    progress.flush()
    return BuiltModel(vae, text_encoder, unet, scaling_factor, recipe, last_monitor)


def checkpoint_metadata(built: BuiltModel, steps_scale: float) -> dict[str, str]:
    """The file's metadata beyond what Kiln's writer derives from the model itself (it adds
    kiln.unet/text_encoder.num_attention_heads, kiln.unet.norm_num_groups and kiln.vae.scaling_factor)."""
    recipe_json = {**built.recipe.to_json(), "steps_scale": steps_scale, "schedule": SCHEDULE}
    return {
        "kiln.recipe": json.dumps(recipe_json, sort_keys=True),
        "kiln.version": built.recipe.version,
        "kiln.native_size": str(world.IMAGE_SIZE),
        "kiln.prediction_type": "v_prediction",
        "modelspec.prediction_type": "v",
        "modelspec.resolution": f"{world.IMAGE_SIZE}x{world.IMAGE_SIZE}",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.title": "Kiln Shapes v1.2",
        "modelspec.description": "Trained from scratch by Kiln on the procedural Shapes world (core/shapes).",
    }


def model_spec(built: BuiltModel):
    """The ModelSpec Kiln's loader will detect from the saved file."""
    return model_spec_from_parts(built.unet, built.vae, built.text_encoder, built.scaling_factor)


def model_spec_from_parts(unet, vae, text_encoder, scaling_factor: float):
    """The ModelSpec of a Shapes model from its diffusers / transformers parts."""
    from core.models import architecture as arch

    text_config = {
        key: text_encoder.config.to_dict()[key]
        for key in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id",
        )
    }
    return arch.ModelSpec(
        family="sd1",
        prediction_type="v_prediction",
        zero_terminal_snr=True,
        native_size=world.IMAGE_SIZE,
        unet_config=_plain_config(unet),
        vae_config={**_plain_config(vae), "scaling_factor": scaling_factor},
        text_encoder_configs=[{**text_config, "architectures": ["CLIPTextModel"]}],
        clip_pad_token=arch.PAD_CLIP_L,
        vae_scaling_factor=scaling_factor,
        clip_pad_tokens=[arch.PAD_CLIP_L],
        text_encoder_prefixes=[arch.SD1_CLIP],
        text_encoder_formats=["hf"],
        prediction_source="metadata",
        native_size_fixed=True,
    )


def save_built(built: BuiltModel, out: Path, steps_scale: float) -> Path:
    """Writes the single-file SD1 checkpoint (fp16) through Kiln's checkpoint writer."""
    from core.models.checkpoint import LoadedModel, save_checkpoint

    model = LoadedModel(
        spec=model_spec(built), unet=built.unet, vae=built.vae, text_encoders=[built.text_encoder], tokenizers=[]
    )
    return save_checkpoint(model, out, metadata=checkpoint_metadata(built, steps_scale), dtype=torch.float16)


def _parse_jitter(parser: argparse.ArgumentParser, text: str) -> world.Jitter:
    """``SIZE_MIN,SIZE_MAX,OFFSET,ROTATION``; a bad value stops with a message, not a traceback."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"--jitter {text!r}: expected four numbers SIZE_MIN,SIZE_MAX,OFFSET,ROTATION, e.g. 16,20,3,10")
    if len(values) != 4:
        parser.error(f"--jitter {text!r}: expected four numbers SIZE_MIN,SIZE_MAX,OFFSET,ROTATION, got {len(values)}")
    size_min, size_max, offset, rotation = values
    if not 0 < size_min <= size_max or offset < 0 or rotation < 0:
        parser.error(f"--jitter {text!r}: needs 0 < SIZE_MIN <= SIZE_MAX and OFFSET, ROTATION >= 0")
    if size_max * world.TRIANGLE_SCALE + offset >= world.IMAGE_SIZE / 2:
        parser.error(f"--jitter {text!r}: a triangle of circumradius {size_max * world.TRIANGLE_SCALE:g} px "
                     f"moved {offset:g} px would leave the {world.IMAGE_SIZE}-px picture")
    return world.Jitter(size_min, size_max, offset, rotation)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.shapes.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors checkpoint to write")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every step count (0.05: CI-sized)")
    parser.add_argument("--workdir", type=Path, default=None, help="where stage weights go (default: beside --out)")
    parser.add_argument("--no-monitor", action="store_true", help="skip the sample-and-check probes during training")
    parser.add_argument("--unet-steps", type=int, default=None,
                        help="stop the UNet after this many steps: the recipe's weights at that step")
    parser.add_argument("--high-noise-fraction", type=float, default=None,
                        help="share of timesteps drawn from the high-noise half (default: the recipe's)")
    parser.add_argument("--text-encoder-lr-scale", type=float, default=None,
                        help="the text encoder's learning rate as a share of the UNet's (default: the recipe's)")
    parser.add_argument("--jitter", type=str, default=None, metavar="SIZE_MIN,SIZE_MAX,OFFSET,ROTATION",
                        help="the world's jitter (default: the recipe's)")
    parser.add_argument("--unet-norm-groups", type=int, default=None,
                        help="GroupNorm groups in the UNet (default: the recipe's)")
    parser.add_argument("--frozen-text-encoder", action="store_true",
                        help="keep the text encoder at its seeded values (cache its outputs)")
    # Measured on a shared 2-core machine: one thread trains ~4x faster than two when other
    # processes compete for the cores (the second thread mostly waits at barriers).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe() if args.steps_scale == 1.0 else Recipe().scaled(args.steps_scale)
    if args.high_noise_fraction is not None:
        recipe = dataclasses.replace(
            recipe, unet=dataclasses.replace(recipe.unet, high_noise_fraction=args.high_noise_fraction)
        )
    if args.text_encoder_lr_scale is not None:
        recipe = dataclasses.replace(
            recipe, unet=dataclasses.replace(recipe.unet, text_encoder_lr_scale=args.text_encoder_lr_scale)
        )
    if args.jitter is not None:
        recipe = dataclasses.replace(recipe, jitter=_parse_jitter(parser, args.jitter))
    if args.unet_norm_groups is not None:
        recipe = dataclasses.replace(recipe, unet=dataclasses.replace(recipe.unet, norm_num_groups=args.unet_norm_groups))
    if args.frozen_text_encoder:
        recipe = dataclasses.replace(recipe, unet=dataclasses.replace(recipe.unet, train_text_encoder=False))
    if args.unet_steps is not None:
        recipe = dataclasses.replace(recipe, unet=dataclasses.replace(recipe.unet, stop_after=args.unet_steps))
    workdir = args.workdir or (DEFAULT_WORKDIR if args.steps_scale == 1.0 else args.out.parent / (args.out.stem + "-work"))
    # A work folder with finished stages or snapshots is a resumed run: keep its log.
    resuming = workdir.is_dir() and any(workdir.iterdir())
    progress = Progress(args.out.with_suffix(".loss.csv"), keep_existing=resuming)
    started = time.process_time()
    built = build_model(recipe, workdir, progress, monitor=not args.no_monitor)
    progress.note("trained", cpu_seconds=round(time.process_time() - started, 1))
    path = save_built(built, args.out, args.steps_scale)
    sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
