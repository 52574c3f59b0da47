"""Checkpoint Merger memory: Kiln's streamed merge vs reading A, B and C whole (the WebUI's way).

    python bench/bench_merge_memory.py [--channels 128,256,512,512] [--dtype fp16]

Builds three SD1-layout checkpoints with random weights (a U-Net of the given widths; the real
SD1.5 is 320,640,1280,1280) under bench/.cache/merge, then runs an Add difference merge
(A + (B − C)·0.5) in a fresh process each way and prints the peak RSS above that process's
baseline (after imports), next to the file size. Goal: Kiln ≈ one model, the whole-file way ≈ 3+.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CACHE = REPO / "bench" / ".cache" / "merge"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
from core.merge.merger import run_merge
from core.merge.recipe import ADD_DIFFERENCE, MergeParams, ModelRef
from core.models.state_dict_io import read_state_dict
from pathlib import Path
a, b, c, out = (Path(p) for p in {paths!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if {mode!r} == "kiln":
    run_merge(MergeParams(ModelRef(a.name, a), ModelRef(b.name, b), ModelRef(c.name, c),
                          interp_method=ADD_DIFFERENCE, multiplier=0.5, custom_name="bench", overwrite=True,
                          save_metadata=False), out)
else:  # the WebUI's run_modelmerger: theta_1 = B, theta_2 = C, theta_0 = A, all whole in memory
    t1 = read_state_dict(b); t2 = read_state_dict(c)
    for k in t1:
        if "model" in k and k in t2 and t1[k].is_floating_point():
            t1[k] = t1[k] - t2[k]
    t0 = read_state_dict(a)
    for k in t0:
        if "model" in k and k in t1 and t0[k].is_floating_point():
            t0[k] = t0[k] + 0.5 * t1[k]
    from safetensors.torch import save_file
    save_file({{k: v.contiguous() for k, v in t0.items()}}, str(out / "bench-whole.safetensors"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"extra_mb": (peak - base) / 1024, "seconds": time.perf_counter() - start}}))
"""


def build(channels: list[int], dtype: str) -> list[Path]:
    import dataclasses

    import torch

    from core.models.checkpoint import save_checkpoint
    from core.models.fixtures import random_models, real_file_extras, tiny_spec

    spec = tiny_spec("sd1")
    spec = dataclasses.replace(spec, unet_config={**spec.unet_config, "block_out_channels": channels})
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    paths = []
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        path = CACHE / f"{'-'.join(map(str, channels))}-{dtype}-{name}.safetensors"
        if not path.exists():
            model = random_models(spec, seed, torch_dtype)
            model.passthrough = real_file_extras(spec, seed + 100)
            save_checkpoint(model, path, dtype=torch_dtype)
        paths.append(path)
    return paths


def run(mode: str, paths: list[Path]) -> dict:
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    code = CHILD.format(repo=str(REPO), paths=[str(p) for p in paths] + [str(out)], mode=mode)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="128,256,512,512")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    args = parser.parse_args()
    paths = build([int(c) for c in args.channels.split(",")], args.dtype)
    size_mb = paths[0].stat().st_size / 1e6 / 1.048576
    kiln, whole = run("kiln", paths), run("whole", paths)
    print(f"checkpoint size            {size_mb:8.0f} MiB (each of A, B, C)")
    print(f"Kiln streamed merge        {kiln['extra_mb']:8.0f} MiB above baseline  "
          f"({kiln['extra_mb'] / size_mb:.2f}× one model, {kiln['seconds']:.1f} s)")
    print(f"A, B, C read whole (WebUI) {whole['extra_mb']:8.0f} MiB above baseline  "
          f"({whole['extra_mb'] / size_mb:.2f}× one model, {whole['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
