"""Start-up cost of extensions: the same start with 0 and with 3 sample extensions.

    .venv/bin/python bench/bench_extensions_startup.py [--runs 3]

Two measurements, each run in a fresh interpreter, the two configurations alternating so that a
change in the machine's load hits both alike:

- **engine + extensions**: ``Engine(settings)`` plus ``engine.load_extensions()``, timed after
  the modules the app imports anyway (torch, gradio, the sampler table) are in: what the
  extensions themselves add.
- **create_app**: app.py's ``create_app`` with ``--api`` (engine, extensions, API routes and the
  whole page), timed from the interpreter's start: what a user waits for.

The sample extensions (core/extensions/fixtures.py) each add an API route, an X/Y/Z axis, a
sampler, an always-on script and a tab. Goal: 3 extensions add no more than their own import and
setup (the sum of the loader's per-extension times) plus noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ("sample1", "sample2", "sample3")

CHILD = r"""
import json, sys, time
started = time.perf_counter()
mode, data = sys.argv[1], sys.argv[2]
sys.path.insert(0, {repo!r})
from core.cli import parse_flags
from core.settings import Settings

settings = Settings.from_flags(parse_flags(["--data-dir", data, "--api"]), __import__("pathlib").Path(data))
if mode == "engine":
    import gradio, torch  # noqa: F401  what the app imports in any case
    import core.sampling.samplers, core.xyz.axes  # noqa: F401
    from core.engine import Engine
    from core.jobs import JobQueue

    t0 = time.perf_counter()
    engine = Engine(settings)
    queue = JobQueue()
    engine.load_extensions(queue)
    seconds = time.perf_counter() - t0
    queue.shutdown()
else:
    import app

    _fastapi, engine, queue = app.create_app(settings)
    seconds = time.perf_counter() - started
    queue.shutdown()
records = engine.extensions.records
print(json.dumps({{"seconds": seconds, "own": sum(r.seconds for r in records),
                  "loaded": sum(r.enabled for r in records)}}))
"""


@dataclass
class Series:
    seconds: list[float] = field(default_factory=list)
    own: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def own_median(self) -> float:
        return statistics.median(self.own)


def run_child(python: str, mode: str, data: Path, expected: int) -> dict[str, float]:
    out = subprocess.run([python, "-c", CHILD.format(repo=str(REPO)), mode, str(data)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["loaded"] != expected:
        raise SystemExit(f"expected {expected} extensions to load, {result['loaded']} did:\n{out.stderr[-3000:]}")
    return result


def data_folder(root: Path, count: int) -> Path:
    from core.extensions.fixtures import write_sample_extension

    data = root / f"with-{count}"
    (data / "extensions").mkdir(parents=True)
    for name in SAMPLES[:count]:
        write_sample_extension(data / "extensions", name)
    return data


def report(results: dict[tuple[str, int], Series]) -> None:
    print(f"{'measurement':34} {'0 ext. s':>9} {'3 ext. s':>9} {'added s':>8} {'ratio':>6} "
          f"{'own import+setup s':>19}")
    for mode, title in (("engine", "Engine + load_extensions"), ("app", "create_app (engine, API, page)")):
        none, three = results[(mode, 0)], results[(mode, 3)]
        added = three.median - none.median
        print(f"{title:34} {none.median:9.3f} {three.median:9.3f} {added:8.3f} {three.median / none.median:5.2f}x "
              f"{three.own_median:19.3f}")
    print(f"(medians of {len(results[('engine', 0)].seconds)} runs; 'own' is the loader's time in the three "
          "extensions' import and setup())")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    results = {(mode, count): Series() for mode in ("engine", "app") for count in (0, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {count: data_folder(Path(tmp), count) for count in (0, 3)}
        for i in range(args.runs):
            for mode in ("engine", "app"):
                for count in (0, 3):
                    result = run_child(args.python, mode, folders[count], count)
                    results[(mode, count)].seconds.append(result["seconds"])
                    results[(mode, count)].own.append(result["own"])
            print(f"run {i + 1}/{args.runs} done", flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
