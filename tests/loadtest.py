"""A LAN studio under load, on loopback only: N logged-in clients post txt2img jobs at once.

Used by tests/test_studio.py (short) and bench/bench_studio.py (minutes). The server is Kiln's
real API app behind uvicorn on 127.0.0.1 with the built-in Shapes model; each client has its own
login, prompt and seeds, polls /progress while its job runs and checks that it only ever sees its
own jobs; one client also tries to interrupt the others. Every request is bounded in count and
time, and the server stops when the run ends.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"a {c} {s} on a {b} background" for c in ("red", "green", "blue", "yellow", "purple")
           for s in ("circle", "square", "triangle") for b in ("black", "white")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def studio_server(data_dir: Path, users: list[str]) -> Iterator[tuple[str, object, object]]:
    """Kiln's API on a free loopback port with one login per user (password = user + "-pw")."""
    import uvicorn

    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings

    logins = ",".join(f"{u}:{u}-pw" for u in users)
    flags = parse_flags(["--data-dir", str(data_dir), "--nowebui", "--api-auth", logins,
                         "--ckpt", "kiln-shapes-v1.safetensors"])
    settings = Settings.from_flags(flags, REPO)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    queue = JobQueue()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api_app(engine, queue), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", engine, queue
    finally:
        server.should_exit = True
        thread.join(15)
        queue.shutdown()


@dataclass
class ClientReport:
    user: str
    sent: int = 0
    completed: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    own_job_ids: set[str] = field(default_factory=set)
    seen_job_ids: set[str] = field(default_factory=set)
    images: dict[int, str] = field(default_factory=dict)  # seed → sha256 of the PNG's pixels
    errors: list[str] = field(default_factory=list)


def request_body(prompt: str, seed: int, steps: int) -> dict:
    return {"prompt": prompt, "seed": seed, "steps": steps, "width": 64, "height": 64, "cfg_scale": 7,
            "rescale_cfg": 0.7, "sampler_name": "Euler", "save_images": False}


def pixels_digest(b64_png: str) -> str:
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64_png))).convert("RGB")
    return hashlib.sha256(image.tobytes()).hexdigest()


def run_client(base: str, user: str, prompt: str, seeds: list[int], steps: int, deadline: float,
               report: ClientReport) -> None:
    import httpx

    auth = (user, f"{user}-pw")
    with httpx.Client(base_url=base, auth=auth, timeout=120) as client:
        for seed in seeds:
            if time.monotonic() > deadline:
                break
            done = threading.Event()

            def poll(done: threading.Event = done) -> None:
                while not done.is_set():
                    try:
                        state = client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["state"]
                    except Exception as exc:  # noqa: BLE001 - a failed poll is a finding, not a crash
                        report.errors.append(f"progress: {exc}")
                        return
                    if state.get("job_id"):
                        report.seen_job_ids.add(state["job_id"])
                    done.wait(0.2)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            report.sent += 1
            started = time.monotonic()
            try:
                response = client.post("/sdapi/v1/txt2img", json=request_body(prompt, seed, steps))
            except Exception as exc:  # noqa: BLE001
                report.failed += 1
                report.errors.append(f"txt2img: {exc}")
                continue
            finally:
                done.set()
                poller.join(5)
            report.latencies.append(time.monotonic() - started)
            if response.status_code != 200:
                report.failed += 1
                report.errors.append(f"txt2img {response.status_code}: {response.text[:200]}")
                continue
            body = response.json()
            info = json.loads(body["info"])
            report.own_job_ids.add(info["job_id"])
            if len(body["images"]) != 1 or info.get("interrupted"):
                report.failed += 1
                report.errors.append(f"seed {seed}: {len(body['images'])} images, interrupted={info.get('interrupted')}")
                continue
            report.completed += 1
            report.images[seed] = pixels_digest(body["images"][0])


def interrupt_others(base: str, user: str, until: threading.Event, counter: list[int]) -> None:
    """A user who presses Interrupt again and again: it must stop nobody else's job."""
    import httpx

    with httpx.Client(base_url=base, auth=(user, f"{user}-pw"), timeout=30) as client:
        while not until.is_set():
            client.post("/sdapi/v1/interrupt")
            client.post("/sdapi/v1/skip")
            counter[0] += 1
            until.wait(0.1)


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class LoadResult:
    reports: list[ClientReport]
    reference: dict[tuple[str, int], str]
    rss_before: float
    rss_after: float
    interrupts_sent: int
    seconds: float

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.reports)

    @property
    def completed(self) -> int:
        return sum(r.completed for r in self.reports)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.reports)

    @property
    def mixed_up(self) -> int:
        """Results that differ from the same request run alone."""
        return sum(1 for r in self.reports for seed, digest in r.images.items()
                   if (r.user, seed) in self.reference and self.reference[(r.user, seed)] != digest)

    @property
    def compared(self) -> int:
        return sum(1 for r in self.reports for seed in r.images if (r.user, seed) in self.reference)

    @property
    def foreign_progress(self) -> int:
        """Progress polls that showed a job that was not the client's own."""
        return sum(len(r.seen_job_ids - r.own_job_ids) for r in self.reports)

    def latency(self, q: float) -> float:
        values = sorted(v for r in self.reports for v in r.latencies)
        if not values:
            return float("nan")
        return values[min(int(q * len(values)), len(values) - 1)]

    def table(self) -> str:
        rows = [
            ("clients", len(self.reports)), ("jobs sent", self.sent), ("completed", self.completed),
            ("failed", self.failed), ("results checked against the same request alone", self.compared),
            ("mixed up (pixels differ)", self.mixed_up), ("progress polls showing another's job", self.foreign_progress),
            ("Interrupt/Skip presses by a bystander", self.interrupts_sent),
            ("latency p50 / p95 (s)", f"{self.latency(0.5):.2f} / {self.latency(0.95):.2f}"),
            ("RSS before / after (MB)", f"{self.rss_before:.0f} / {self.rss_after:.0f}"),
            ("wall time (s)", f"{self.seconds:.1f}"),
        ]
        return "\n".join(["| measured | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def run_load(data_dir: Path, clients: int, jobs_per_client: int, steps: int, max_seconds: float,
             reference_each: int = 1) -> LoadResult:
    """The whole load run; ``reference_each`` requests per client are first run alone for comparison."""
    import httpx

    users = [f"user{i}" for i in range(clients)] + ["bystander"]
    plan = {u: (PROMPTS[i % len(PROMPTS)], [1000 * i + j for j in range(jobs_per_client)])
            for i, u in enumerate(users[:-1])}
    with studio_server(data_dir, users) as (base, _engine, _queue):
        reference: dict[tuple[str, int], str] = {}
        for user, (prompt, seeds) in plan.items():
            for seed in seeds[:reference_each]:
                with httpx.Client(base_url=base, auth=(user, f"{user}-pw"), timeout=120) as client:
                    body = client.post("/sdapi/v1/txt2img", json=request_body(prompt, seed, steps)).json()
                    reference[(user, seed)] = pixels_digest(body["images"][0])
        rss_before = rss_mb()
        reports = [ClientReport(u) for u in plan]
        stop, counter = threading.Event(), [0]
        bystander = threading.Thread(target=interrupt_others, args=(base, "bystander", stop, counter), daemon=True)
        started = time.monotonic()
        deadline = started + max_seconds
        threads = [threading.Thread(target=run_client, args=(base, r.user, plan[r.user][0], plan[r.user][1], steps,
                                                             deadline, r), daemon=True) for r in reports]
        bystander.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max_seconds + 180)
        stop.set()
        bystander.join(10)
        seconds = time.monotonic() - started
        return LoadResult(reports, reference, rss_before, rss_mb(), counter[0], seconds)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
