"""/sdapi/v1/create|train/embedding|hypernetwork with the WebUI's fields, as queue jobs on a tiny SD1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from core.api.server import create_api_app
from core.cli import parse_flags
from core.engine import Engine
from core.jobs import JobQueue
from core.models.fixtures import write_tiny_checkpoint
from core.networks.embeddings import load_embedding
from core.networks.hypernetworks import load_hypernetwork
from core.settings import Settings
from tests.test_training_ti import dataset


@pytest.fixture()
def setup(tmp_path):
    data = tmp_path / "data"
    write_tiny_checkpoint(data, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data)]), data)
    settings.paths.builtin_checkpoint_dir = data / "models" / "Stable-diffusion"
    engine, queue = Engine(settings), JobQueue()
    dataset(data)
    client = TestClient(create_api_app(engine, queue), raise_server_exceptions=False)
    client.engine = engine  # for tests that queue jobs directly
    yield client, data, queue
    queue.shutdown()


TRAIN = {"learn_rate": "0.05:2, 0.01", "batch_size": 1, "gradient_step": 1, "data_root": "data",
         "log_directory": "textual_inversion", "training_width": 64, "training_height": 64, "steps": 3,
         "create_image_every": 2, "template_filename": "subject_filewords.txt", "preview_from_txt2img": True,
         "preview_prompt": "a photo of kx", "preview_steps": 2, "preview_width": 64, "preview_height": 64,
         "preview_seed": 5, "id_task": "task(abc)"}


def test_create_and_train_an_embedding_through_the_api(setup):
    client, data, queue = setup
    r = client.post("/sdapi/v1/create/embedding", json={"name": "kx", "num_vectors_per_token": 2,
                                                        "overwrite_old": False, "init_text": "star"})
    assert r.status_code == 200, r.text
    path = data / "embeddings" / "kx.pt"
    assert r.json() == {"info": f"create embedding filename: {path}"}
    assert "kx" in client.get("/sdapi/v1/embeddings").json()["loaded"]
    again = client.post("/sdapi/v1/create/embedding", json={"name": "kx"})
    assert again.status_code == 500 and "already exists" in again.json()["detail"]
    r = client.post("/sdapi/v1/train/embedding", json={"embedding_name": "kx", "save_embedding_every": 2, **TRAIN})
    assert r.status_code == 200, r.text
    assert r.json()["info"] == f"train embedding complete: filename: {path} error: None"
    trained = load_embedding(path)
    assert trained.step == 3 and trained.sd_checkpoint_name == "tiny-sd1" and len(trained.sd_checkpoint) == 10
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["kx"]["step"] == 3
    job = next(j for j in queue.jobs() if j.description == "train embedding kx")
    assert job.kind == "train" and job.progress.total_steps == 3 and job.progress.step == 3
    assert {"loss", "lr"} <= set(job.metrics[-1]) and job.progress.preview is not None
    kinds = {a.kind for a in job.artifacts}
    assert {"embedding", "sample"} <= kinds
    sample = next(a for a in job.artifacts if a.kind == "sample")
    assert Path(sample.path).name == "kx-2.png" and Path(sample.path).parent.name == "images"
    copies = list((data / "textual_inversion").glob("*/kx/embeddings/kx-2.pt"))
    assert copies and load_embedding(copies[0]).step == 2


def test_create_and_train_a_hypernetwork_through_the_api(setup):
    client, data, _queue = setup
    r = client.post("/sdapi/v1/create/hypernetwork", json={
        "name": "hx", "enable_sizes": ["32", "64"], "overwrite_old": False, "layer_structure": "1, 2, 1",
        "activation_func": "relu", "weight_init": "XavierNormal", "add_layer_norm": False, "use_dropout": True,
        "dropout_structure": "0, 0.1, 0"})
    assert r.status_code == 200, r.text
    path = data / "models" / "hypernetworks" / "hx.pt"
    assert r.json() == {"info": f"create hypernetwork filename: {path}"}
    assert {"name": "hx", "path": str(path)} in client.get("/sdapi/v1/hypernetworks").json()
    body = {**TRAIN, "hypernetwork_name": "hx", "save_hypernetwork_every": 0, "create_image_every": 1,
            "learn_rate": "0.001", "template_filename": "hypernetwork.txt"}
    r = client.post("/sdapi/v1/train/hypernetwork", json=body)
    assert r.status_code == 200, r.text
    job = next(j for j in _queue.jobs() if j.description == "train hypernetwork hx")
    # a preview every step: the studio's txt2img with <hypernet:hx:1>, then the training hooks back on
    samples = [a for a in job.artifacts if a.kind == "sample"]
    assert [Path(a.path).name for a in samples] == ["hx-1.png", "hx-2.png", "hx-3.png"]
    infotext = Image.open(samples[0].path).info["parameters"]
    assert "<hypernet:hx:1>" in infotext and "Hypernet: hx" in infotext
    network = load_hypernetwork(path)
    assert network.step == 3 and network.dropout_structure == [0.0, 0.1, 0.0]
    assert torch.load(path, weights_only=True)["weight_initialization"] == "XavierNormal"


def test_bad_fields_are_422_naming_them(setup):
    client, _data, _queue = setup
    r = client.post("/sdapi/v1/train/embedding", json={"embedding_name": "kx", "learning_rate": 1})
    assert r.status_code == 422 and r.json()["field"] == "learning_rate"
    r = client.post("/sdapi/v1/create/hypernetwork", json={"name": "h", "layer_structure": "2, 1"})
    assert r.status_code == 422 and r.json()["field"] == "layer_structure"
    r = client.post("/sdapi/v1/train/embedding", json={"embedding_name": "missing", **TRAIN})
    assert r.status_code == 500 and "not found" in r.json()["detail"]


def test_interrupt_saves_the_progress_into_the_embedding(setup):
    import threading
    import time

    from core.training.ti_args import embedding_args
    from core.training.ti_jobs import create_embedding_job, train_embedding_job

    client, data, queue = setup
    queue.submit(create_embedding_job(client.engine, "kx", 1), "create").wait(60)
    name, options = embedding_args({**TRAIN, "embedding_name": "kx", "steps": 100000, "create_image_every": 0,
                                    "save_embedding_every": 0})
    job = queue.submit(train_embedding_job(client.engine, name, options), "train kx", "user:ann", kind="train")
    deadline = time.monotonic() + 120
    while len(job.metrics) < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.1)
    assert queue.interrupt(job.id, owner="user:ann")
    result = job.wait(120)
    assert result.interrupted and 2 <= result.step < 100000
    assert load_embedding(data / "embeddings" / "kx.pt").step == result.step == job.progress.step



def test_others_generate_between_epochs_of_a_hypernetwork_run_on_the_plain_model(setup):
    import time

    import numpy as np

    from core.generation.params import GenerationParams
    from core.training.ti_args import hypernetwork_args, hypernetwork_spec
    from core.training.ti_jobs import create_hypernetwork_file, train_hypernetwork_job

    client, _data, queue = setup
    engine = client.engine
    create_hypernetwork_file(engine, hypernetwork_spec({"name": "hx", "enable_sizes": ["32", "64"],
                                                        "weight_init": "XavierNormal"}))
    params = GenerationParams(prompt="teal star", width=64, height=64, steps=3, seed=5, sampler_name="Euler",
                              save_images=False)
    solo = queue.run(lambda ctx: engine.txt2img(params, ctx), "solo", "user:bob", timeout=120).images[0].image
    name, options = hypernetwork_args({**TRAIN, "hypernetwork_name": "hx", "steps": 30, "create_image_every": 0,
                                       "save_hypernetwork_every": 0, "template_filename": "hypernetwork.txt"})
    training = queue.submit(train_hypernetwork_job(engine, name, options), "train hx", "user:ann", kind="train")
    deadline = time.monotonic() + 120
    while not training.metrics and not training.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert training.metrics, training.error_message
    bob = queue.submit(lambda ctx: engine.txt2img(params, ctx), "bob's picture", "user:bob", kind="generate")
    picture = bob.wait(300).images[0].image
    assert not training.done and training.paused_seconds > 0  # bob ran at an epoch's end, not after the run
    assert np.array_equal(np.asarray(picture), np.asarray(solo))  # no hypernetwork in his picture
    assert training.wait(300).step == 30
