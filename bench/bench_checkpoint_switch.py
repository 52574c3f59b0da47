"""Checkpoint switch time: Kiln's engine with sd_checkpoints_limit 1 (every switch reads the file)
and 2 (a switch back takes the kept model), against diffusers' from_single_file doing the switch.

    python bench/bench_checkpoint_switch.py [--file PATH] [--repeats 3]

Without --file it builds a full-size SD1.5-layout checkpoint with random weights once (shared with
bench_checkpoint_load.py, in bench/.cache) and a second copy under another name: two checkpoints
of 2 GB. Each run switches A → B → A through the engine's worker (ensure_model, as a job does)
and times the last switch, the one that comes back to A. All reads come from the page cache. On
CPU the kept model needs no move; on a GPU the switch back also moves it from system RAM to the
device (about 2 GB over PCIe). Prints a table and the ratio (goal: kept switch ≤ 0.5 s).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def engine_for(data: Path, limit: int):
    from core.cli import parse_flags
    from core.engine import Engine
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--skip-load-model-at-start"]), data)
    settings.paths.builtin_checkpoint_dir = data / "models" / "Stable-diffusion"
    settings.options.sd_checkpoints_limit = limit
    return Engine(settings)


def kiln_switch_back(data: Path, names: tuple[str, str], limit: int) -> float:
    from core.jobs import JobQueue

    engine = engine_for(data, limit)
    queue = JobQueue()
    try:
        a, b = names
        queue.run(lambda _ctx: engine.ensure_model(a), timeout=600)
        queue.run(lambda _ctx: engine.ensure_model(b), timeout=600)
        start = time.perf_counter()
        queue.run(lambda _ctx: engine.ensure_model(a), timeout=600)
        return time.perf_counter() - start
    finally:
        queue.shutdown()
        gc.collect()


def diffusers_switch_back(paths: tuple[Path, Path], config_dir: Path) -> float:
    from diffusers import StableDiffusionPipeline

    def load(path: Path):
        return StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)

    pipe = load(paths[0])
    del pipe
    gc.collect()
    pipe = load(paths[1])
    del pipe  # a plain script frees the old pipeline before the next, as the WebUI does at limit 1
    gc.collect()
    start = time.perf_counter()
    pipe = load(paths[0])
    elapsed = time.perf_counter() - start
    del pipe
    gc.collect()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from core.models.fixtures import full_size_sd15_spec, write_diffusers_config_dir, write_full_size_sd15

    cache = REPO / "bench" / ".cache"
    source = args.file or cache / "models" / "Stable-diffusion" / "full-size-sd15.safetensors"
    if not source.exists():
        print("building a full-size SD1.5 random-weight checkpoint (once)...", flush=True)
        source = write_full_size_sd15(cache)
    config_dir = write_diffusers_config_dir(full_size_sd15_spec(), cache / "sd15-config")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        data = Path(tmp)
        folder = data / "models" / "Stable-diffusion"
        folder.mkdir(parents=True)
        paths = (folder / "a.safetensors", folder / "b.safetensors")
        for path in paths:
            shutil.copyfile(source, path)
            path.read_bytes()  # into the page cache
        names = (paths[0].name, paths[1].name)
        reload_s, kept_s, diff_s = [], [], []
        for _ in range(args.repeats):
            reload_s.append(kiln_switch_back(data, names, limit=1))
            kept_s.append(kiln_switch_back(data, names, limit=2))
            diff_s.append(diffusers_switch_back(paths, config_dir))
    r, k, d = (statistics.median(x) for x in (reload_s, kept_s, diff_s))
    size = source.stat().st_size / 2**30
    print(f"\nswitch back A → B → A, checkpoints of {size:.2f} GiB, {args.repeats} runs, median seconds")
    print(f"| {'switch back to A':<46} | {'seconds':>8} |")
    print(f"|{'-' * 48}|{'-' * 10}|")
    print(f"| {'Kiln, sd_checkpoints_limit 1 (reads the file)':<46} | {r:8.3f} |")
    print(f"| {'Kiln, sd_checkpoints_limit 2 (kept)':<46} | {k:8.3f} |")
    print(f"| {'diffusers from_single_file':<46} | {d:8.3f} |")
    print(f"| {'ratio kept / diffusers':<46} | {k / d:8.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
