"""Quality of the built-in Shapes model: does it draw what the prompt says?

    .venv/bin/python bench/bench_shapes_quality.py [--model models/Stable-diffusion/kiln-shapes-v1.safetensors]
        [--sampler "DPM++ 2M"] [--steps 20] [--cfg-scale 7] [--rescale-cfg 0.7] [--grid docs/shapes-grid.png] [--json out.json]

64 fixed prompts with fixed seeds (every held-out combination twice), 20 steps of Kiln's
default sampler, 64x64, through core.sampling with the checkpoint loaded by Kiln's own
loader; the checker reads background, shape colour and shape class back. Prints the three
accuracies overall and on the held-out combinations, the bar (0.95 / 0.90 / 0.70), and the
time per image. Exit status 1 when the bar is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.checkpoint import load_checkpoint  # noqa: E402
from core.models.header_facts import rescale_cfg_default  # noqa: E402
from core.shapes.evaluate import QUALITY_BAR, evaluate, sampler_generate_fn, save_grid  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--rescale-cfg", type=float, default=None,
                        help="default: the txt2img slider's default for the model (0.7 for zero-terminal-SNR)")
    parser.add_argument("--grid", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_checkpoint(args.model)
    rescale_cfg = args.rescale_cfg if args.rescale_cfg is not None else rescale_cfg_default(model.spec.zero_terminal_snr)
    generate = sampler_generate_fn(model, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                                   rescale_cfg=rescale_cfg)
    started = time.perf_counter()
    report = evaluate(generate)
    seconds = time.perf_counter() - started
    summary = {**report.summary(), "model": str(args.model), "sampler": args.sampler or "default",
               "steps": args.steps, "cfg_scale": args.cfg_scale, "rescale_cfg": rescale_cfg,
               "seconds_per_image": round(seconds / len(report.prompts), 3)}
    if args.grid:
        save_grid(report, args.grid)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'':12}{'background':>12}{'colour':>10}{'shape':>10}{'all three':>11}")
    for name, figures in (("all", report.overall), ("held-out", report.held_out)):
        print(f"{name:12}{figures['background']:>12.3f}{figures['color']:>10.3f}{figures['shape']:>10.3f}{figures['all']:>11.3f}")
    print(f"{'bar':12}{QUALITY_BAR['background']:>12.2f}{QUALITY_BAR['color']:>10.2f}{QUALITY_BAR['shape']:>10.2f}")
    print(f"{summary['seconds_per_image']} s/image ({summary['count']} images, {args.steps} steps, CFG {args.cfg_scale}, "
          f"Rescale CFG {rescale_cfg})")
    return 0 if report.meets_bar() else 1


if __name__ == "__main__":
    raise SystemExit(main())
