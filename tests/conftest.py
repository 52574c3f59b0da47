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
