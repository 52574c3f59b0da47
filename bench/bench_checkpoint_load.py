"""Checkpoint load time: Kiln's loader vs diffusers' from_single_file on the same file.

    python bench/bench_checkpoint_load.py [--file PATH] [--repeats 3]

Without --file it builds a full-size SD1.5-layout checkpoint with random weights once
(`python -m core.models.fixtures --out bench/.cache --full-size`) and reuses it. Both loaders
read the same file from the page cache (one warm-up read first), on CPU, fp32 modules,
alternating runs so background load hits both alike. Prints a table and the ratio (goal ≤ 1.0).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def kiln_load(path: Path) -> None:
    from core.models.checkpoint import load_checkpoint

    model = load_checkpoint(path)
    del model


def diffusers_load(path: Path, config_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    del pipe


def timed(fn, *args) -> float:
    gc.collect()
    start = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - start
    gc.collect()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from core.models.fixtures import full_size_sd15_spec, write_diffusers_config_dir, write_full_size_sd15

    cache = REPO / "bench" / ".cache"
    path = args.file
    if path is None:
        path = cache / "models" / "Stable-diffusion" / "full-size-sd15.safetensors"
        if not path.exists():
            print("building a full-size SD1.5 random-weight checkpoint (once)...", flush=True)
            path = write_full_size_sd15(cache)
    config_dir = write_diffusers_config_dir(full_size_sd15_spec(), cache / "sd15-config")
    path.read_bytes()  # warm the page cache so neither side pays the first disk read

    kiln, diff = [], []
    for _ in range(args.repeats):
        kiln.append(timed(kiln_load, path))
        diff.append(timed(diffusers_load, path, config_dir))
    k, d = statistics.median(kiln), statistics.median(diff)
    size = path.stat().st_size / 2**30
    print(f"\ncheckpoint: {path.name} ({size:.2f} GiB), {args.repeats} alternating runs, median seconds")
    print(f"| {'loader':<36} | {'seconds':>8} |")
    print(f"|{'-' * 38}|{'-' * 10}|")
    print(f"| {'Kiln load_checkpoint':<36} | {k:8.2f} |")
    print(f"| {'diffusers from_single_file':<36} | {d:8.2f} |")
    print(f"| {'ratio Kiln / diffusers (goal ≤ 1.0)':<36} | {k / d:8.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
