"""One worker per device on one queue (--device-id 0,1 / all): each worker holds its own model,
jobs run side by side, results equal to one worker's, and a job's patches stay on its device."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from core.cli import parse_flags
from core.engine import Engine
from core.errors import KilnError
from core.generation.params import GenerationParams
from core.jobs import JobQueue, current_worker, in_worker
from core.prompts.extra_networks import parse_extra_networks
from core.settings import Settings, derive_device_policy, worker_devices

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data_dir(fixture_models_dir, tmp_path) -> Path:
    shutil.copytree(fixture_models_dir / "models", tmp_path / "models")
    shutil.copytree(fixture_models_dir / "embeddings", tmp_path / "embeddings")
    return tmp_path


def make_engine(data_dir: Path, devices: list[int | None] | None) -> Engine:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data_dir), "--ckpt", "tiny-sd1.safetensors"]), REPO)
    settings.paths.builtin_checkpoint_dir = data_dir / "models" / "Stable-diffusion"
    return Engine(settings, devices=devices)


def params(**kw) -> GenerationParams:
    defaults = dict(prompt="a red circle", steps=3, width=32, height=32, seed=5, sampler_name="Euler a",
                    save_images=False)
    return GenerationParams(**{**defaults, **kw})


# -- which workers a machine runs (pure) ---------------------------------------------------
def test_device_id_parses_lists_and_all():
    assert parse_flags(["--device-id", "1"]).device_id == 1
    flags = parse_flags(["--device-id", "0,1"])
    assert flags.device_ids == (0, 1) and flags.device_id == 0 and not flags.all_devices
    flags = parse_flags(["--device-id", "all"])
    assert flags.all_devices and flags.device_ids == () and flags.device_id is None


@pytest.mark.parametrize("value, message", [("0,0", "listed twice"), ("0,x", "'x' is not a CUDA device index"),
                                            ("-1", "negative")])
def test_device_id_refusals(value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_flags(["--device-id", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_worker_devices():
    assert worker_devices(parse_flags([]), 0) == [None]  # CPU machine: one worker
    assert worker_devices(parse_flags(["--device-id", "0,1"]), 0) == [None]
    assert worker_devices(parse_flags([]), 4) == [None]  # the default device, as the WebUI
    assert worker_devices(parse_flags(["--device-id", "2"]), 4) == [2]
    assert worker_devices(parse_flags(["--device-id", "1,3"]), 4) == [1, 3]
    assert worker_devices(parse_flags(["--device-id", "all"]), 3) == [0, 1, 2]
    assert worker_devices(parse_flags(["--device-id", "all", "--use-cpu", "all"]), 3) == [None]
    with pytest.raises(KilnError) as exc:
        worker_devices(parse_flags(["--device-id", "0,2"]), 2)
    assert "no device 2" in exc.value.message and "--device-id all" in exc.value.hint


def test_each_worker_gets_its_own_device_policy():
    flags = parse_flags(["--device-id", "0,1"])
    assert derive_device_policy(flags, cuda_device_count=2, device_id=1).device == "cuda:1"
    assert derive_device_policy(flags, cuda_device_count=2).device == "cuda:0"
    cpu = derive_device_policy(flags, cuda_device_count=0)
    assert cpu.device == "cpu" and any("one worker on the cpu" in w for w in cpu.warnings)


# -- the queue ----------------------------------------------------------------------------
def test_two_workers_run_two_jobs_at_once():
    queue = JobQueue(workers=2)
    try:
        both_started = threading.Barrier(2, timeout=10)
        seen = []

        def job(ctx):
            seen.append((current_worker(), in_worker(), ctx.worker))
            both_started.wait()  # would time out with one worker
            return ctx.worker

        jobs = [queue.submit(job, owner=f"u{i}") for i in range(2)]
        assert sorted(j.wait(20) for j in jobs) == [0, 1]
        assert sorted(s[0] for s in seen) == [0, 1] and all(s[1] for s in seen)
        assert {j.progress.worker for j in jobs} == {0, 1}
    finally:
        queue.shutdown()
    assert not in_worker() and current_worker() == 0
    with pytest.raises(ValueError):
        JobQueue(workers=0)


# -- the engine's slots -------------------------------------------------------------------
def test_each_worker_loads_its_own_model_and_results_equal_one_worker(data_dir):
    single = make_engine(data_dir, None)
    q1 = JobQueue()
    try:
        expected = {seed: np.asarray(q1.run(lambda ctx, s=seed: single.txt2img(params(seed=s), ctx), timeout=120)
                                     .images[0].image) for seed in (1, 2, 3, 4)}
    finally:
        q1.shutdown()

    engine = make_engine(data_dir, [None, None])
    assert engine.workers == 2
    queue = JobQueue(workers=engine.workers)
    try:
        jobs = {seed: queue.submit(lambda ctx, s=seed: engine.txt2img(params(seed=s), ctx), owner=f"user{seed}")
                for seed in (1, 2, 3, 4)}
        for seed, job in jobs.items():
            assert np.array_equal(np.asarray(job.wait(120).images[0].image), expected[seed]), seed
        assert {job.progress.worker for job in jobs.values()} <= {0, 1}
        # each slot that ran a job holds its own copy of the checkpoint
        loaded = [slot for slot in engine.slots if slot.model is not None]
        assert loaded and len({id(slot.model) for slot in loaded}) == len(loaded)
        assert engine.model is not None  # the page sees a loaded model
    finally:
        queue.shutdown()


def test_patches_on_one_worker_never_reach_the_other(data_dir):
    engine = make_engine(data_dir, [None, None])
    queue = JobQueue(workers=2)
    try:
        inside = threading.Event()
        release = threading.Event()
        plain_ready = threading.Barrier(2, timeout=60)

        def load(ctx):
            engine.ensure_model()
            plain_ready.wait()  # both workers load, each its own copy
            return ctx.worker

        assert sorted(j.wait(120) for j in [queue.submit(load, owner="a"), queue.submit(load, owner="b")]) == [0, 1]
        models = [slot.model for slot in engine.slots]
        assert models[0] is not models[1]
        before = {i: {k: v.clone() for k, v in m.unet.state_dict().items()} for i, m in enumerate(models)}

        def patched(ctx):
            opts = engine.run_options({})
            _, tags = parse_extra_networks("x <lora:kiln_style_v1:1>")
            with engine.job_model(opts, tags):
                inside.set()
                release.wait(30)
            return ctx.worker

        job = queue.submit(patched, owner="a")
        assert inside.wait(60)
        busy = job.progress.worker
        other = 1 - busy
        changed = [k for k, v in engine.slots[busy].model.unet.state_dict().items()
                   if not np.array_equal(v.numpy(), before[busy][k].numpy())]
        unchanged = all(np.array_equal(v.numpy(), before[other][k].numpy())
                        for k, v in engine.slots[other].model.unet.state_dict().items())
        release.set()
        job.wait(60)
        assert unchanged, "the LoRA of one worker's job reached the other worker's model"
        assert changed, "the LoRA was not merged on the busy worker's model"
        after = engine.slots[busy].model.unet.state_dict()
        assert all(np.array_equal(after[k].numpy(), before[busy][k].numpy()) for k in after)  # restored
    finally:
        release.set()
        queue.shutdown()
