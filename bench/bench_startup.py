"""Start-up time: ``python app.py`` until its page answers, against the floor ``import torch, gradio``.

    .venv/bin/python bench/bench_startup.py [--runs 3] [--check] [-- app.py flags...]

Each run spawns a fresh interpreter (nothing warm but the OS file cache), polls
http://127.0.0.1:PORT/ until it answers 200, then stops the server. Floor and app runs
alternate so that a machine whose load changes during the benchmark affects both alike.
Goal: app ≤ 1.3 × floor (Kiln should add little to what its two big imports cost anyway).
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.3


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_floor(python: str) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", "import torch, gradio"], check=True, cwd=REPO)
    return time.perf_counter() - start


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # lets uvicorn/gradio shut down cleanly
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_app(python: str, app_args: list[str], timeout: float) -> float:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen([python, str(REPO / "app.py"), "--port", str(port), *app_args],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if page_answers(url):
                    return time.perf_counter() - start
                if proc.poll() is not None or time.perf_counter() - start > timeout:
                    log.seek(0)
                    tail = log.read().decode("utf-8", "replace")[-3000:]
                    why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"no answer in {timeout:.0f} s"
                    raise SystemExit(f"app.py {why} ({url}); its output ends with:\n{tail}")
                time.sleep(0.1)
        finally:
            stop(proc)


def report(floor: Series, app: Series) -> float:
    ratio = app.median / floor.median
    rows = [(s.name, s.median, min(s.seconds), max(s.seconds), len(s.seconds)) for s in (floor, app)]
    print(f"{'':42} {'median s':>9} {'min s':>7} {'max s':>7} {'runs':>5}")
    for name, med, lo, hi, n in rows:
        print(f"{name:42} {med:9.2f} {lo:7.2f} {hi:7.2f} {n:5d}")
    verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
    print(f"ratio app/floor: {ratio:.2f}x ({verdict} the goal of <= {GOAL_RATIO}x)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the page")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio exceeds {GOAL_RATIO}")
    parser.add_argument("app_args", nargs="*", help="flags for app.py (after --)")
    args = parser.parse_args(argv)

    floor = Series("floor: python -c 'import torch, gradio'")
    app = Series("python app.py (page answers 200)")
    for i in range(args.runs):
        floor.seconds.append(time_floor(args.python))
        app.seconds.append(time_app(args.python, args.app_args, args.timeout))
        print(f"run {i + 1}/{args.runs}: floor {floor.seconds[-1]:.2f} s, app {app.seconds[-1]:.2f} s", flush=True)
    ratio = report(floor, app)
    return 1 if args.check and ratio > GOAL_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
