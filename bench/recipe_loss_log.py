"""The reduced Shapes recipe's loss log, as exact floats: proof that a change to the training code
left the built-in model's recipe unchanged.

    PYTHONPATH=. python bench/recipe_loss_log.py before.json   # on the old code
    PYTHONPATH=. python bench/recipe_loss_log.py after.json    # on the new code
    cmp before.json after.json

Two runs: ``Recipe().scaled(0.01)`` (every stage: VAE, decoder, 40 U-Net steps) and the same with the
U-Net's optional paths on (truncated SNR weights, partial captions, high-noise timesteps), each with
every step's loss in hex and a digest of the final U-Net weights. Measured 2026-12-04 when the
recipe became a client of core.training (objective, EMA, optimizer, schedule): byte-identical.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tempfile
from pathlib import Path

import torch

from core.shapes import recipe as R


class ExactProgress(R.Progress):
    def __init__(self) -> None:
        super().__init__(None, stream=io.StringIO(), every=1)
        self.exact: list[list] = []

    def step(self, step: int, loss: float, **extra: float) -> None:
        self.exact.append([self.stage, step, float(loss).hex()])
        super().step(step, loss, **extra)


def run(recipe: R.Recipe) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        progress = ExactProgress()
        built = R.build_model(recipe, Path(folder), progress, monitor=False)
        digest = float(sum(v.double().sum() for v in built.unet.state_dict().values())).hex()
    return {"losses": progress.exact, "unet_digest": digest}


def main(out: str) -> None:
    torch.set_num_threads(2)
    reduced = R.Recipe().scaled(0.01)
    variant = dataclasses.replace(reduced, unet=dataclasses.replace(
        reduced.unet, snr_gamma=5.0, partial_caption_fraction=0.3, high_noise_fraction=0.3, stop_after=25))
    result = {}
    print("| run | logged steps | U-Net digest |\n|---|---|---|")
    for name, recipe in (("reduced", reduced), ("variant", variant)):
        result[name] = run(recipe)
        print(f"| {name} | {len(result[name]['losses'])} | {result[name]['unet_digest']} |")
    Path(out).write_text(json.dumps(result, indent=0))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "recipe-loss-log.json")
