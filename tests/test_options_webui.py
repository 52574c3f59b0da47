"""WebUI options Kiln keeps at one behaviour: accepted at that value, refused with the reason at
any other (never stored and ignored); the live preview method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InvalidParameterError
from core.generation.run_options import snapshot
from core.settings import FIXED_WEBUI_OPTIONS, Options


@pytest.mark.parametrize("key", sorted(FIXED_WEBUI_OPTIONS))
def test_a_fixed_option_is_accepted_at_kilns_value_and_refused_with_its_reason_otherwise(model_api, key):
    client, engine = model_api
    value, reason = FIXED_WEBUI_OPTIONS[key]
    assert engine.settings.check_user_changes({key: value}) == {}  # nothing to store: Kiln does that
    other = True if value is False else 0.5 if isinstance(value, float) else "Prompt"
    with pytest.raises(InvalidParameterError) as caught:
        engine.settings.check_user_changes({key: other})
    assert caught.value.field == key and reason in caught.value.message
    r = client.post("/sdapi/v1/options", json={key: other})
    assert r.status_code == 422 and key in r.text
    with pytest.raises(InvalidParameterError) as caught:
        snapshot(Options(), None, {key: other})
    assert caught.value.field == f"override_settings.{key}"
    assert snapshot(Options(), None, {key: value}) == snapshot(Options(), None)


def test_full_preview_decodes_with_the_vae(model_api):
    from core.generation.preview import LatentPreviewer
    from core.models.checkpoint import load_checkpoint

    _client, engine = model_api
    model = load_checkpoint(engine.registry.checkpoints()[0].path)
    latent = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(1))  # above the cheap map's bound
    cheap = LatentPreviewer(model.vae, model.spec.vae_scaling_factor, 4)
    full = LatentPreviewer(model.vae, model.spec.vae_scaling_factor, 4, full=True)
    decoded = np.asarray(cheap._full_decode(latent))
    assert np.array_equal(np.asarray(full.to_image(latent)), decoded)
    assert np.asarray(cheap.to_image(latent)).shape != decoded.shape or \
        not np.array_equal(np.asarray(cheap.to_image(latent)), decoded)


def test_a_webui_preview_method_kiln_lacks_falls_back_with_a_warning():
    options, warnings = Options.from_json({"show_progress_type": "Approx NN"})
    assert options.show_progress_type == "Approx cheap"
    assert len(warnings) == 1 and "show_progress_type" in warnings[0] and "Full" in warnings[0]
