"""Shared pytest fixtures (generic: helpers add their artifacts through core.models.fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fixture_models_dir(tmp_path_factory) -> Path:
    """A folder with models/Stable-diffusion/tiny-{sd1,sd2-v,sdxl}.safetensors and models/VAE/tiny-vae.safetensors."""
    from core.models.fixtures import build_fixture_models

    root = tmp_path_factory.mktemp("fixture_models")
    build_fixture_models(root)
    return root


@pytest.fixture(scope="module")
def model_api(tmp_path_factory):
    """The API over a data folder with the tiny SD1 fixture checkpoint and a standalone VAE."""
    from fastapi.testclient import TestClient

    from core.api.server import create_api_app
    from core.cli import parse_flags
    from core.engine import Engine
    from core.models.fixtures import write_tiny_checkpoint, write_tiny_vae
    from core.settings import Settings

    data = tmp_path_factory.mktemp("api_models")
    write_tiny_checkpoint(data, "sd1")
    write_tiny_vae(data)
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--api"]), data)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    from core.jobs import JobQueue

    queue = JobQueue()
    try:
        with TestClient(create_api_app(engine, queue), raise_server_exceptions=False) as client:
            yield client, engine
    finally:
        queue.shutdown()
