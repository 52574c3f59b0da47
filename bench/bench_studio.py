"""The LAN studio under load on loopback: N logged-in clients posting txt2img at once.

    .venv/bin/python bench/bench_studio.py [--clients 20] [--jobs 3] [--steps 6] [--max-seconds 300]

The built-in model behind Kiln's real API app (uvicorn, 127.0.0.1 only). Each client has its own
login, prompt and seeds and polls /progress while it waits; a bystander presses Interrupt and Skip
all along. Reported: jobs sent / completed / failed, results compared with the same request run
alone (pixel-equal or "mixed up"), progress polls that showed another client's job, p50/p95
latency, RSS before/after. Goal: 0 lost, 0 mixed up, 0 cross-user interrupts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=3, help="jobs per client")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    from tests.loadtest import run_load

    result = run_load(Path(tempfile.mkdtemp(prefix="kiln-studio-")), args.clients, args.jobs, args.steps,
                      args.max_seconds)
    print(result.table())
    errors = [e for r in result.reports for e in r.errors]
    if errors:
        print("\nerrors:", *errors[:10], sep="\n  ")
    ok = result.failed == 0 and result.mixed_up == 0 and result.foreign_progress == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
