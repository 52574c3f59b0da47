"""Hypernetworks: WebUI .pt layout, H(x) = x + MLP(x)·m, attention processor install/uninstall."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from core.errors import ModelFileError
from core.models.fixtures import tiny_model
from core.networks import hypernetworks as hn
from core.networks.fixtures import hypernetwork_state, unet_context_dims


def save(path, state):
    torch.save(state, str(path))
    return path


def models_of(model):
    return model.unet, model.text_encoders


@pytest.fixture(scope="module")
def sd1():
    return models_of(tiny_model("sd1", seed=0))


def test_load_matches_the_stored_mlp(tmp_path):
    state = hypernetwork_state([32, 64], layer_structure=(1, 2, 1), activation="relu", layer_norm=True, seed=3)
    path = save(tmp_path / "h.pt", state)
    net = hn.load_hypernetwork(path)
    assert net.name == "kiln-hypernet" and sorted(net.layers) == [32, 64]
    assert net.shorthash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    # slots: Linear, ReLU, LayerNorm, Linear, LayerNorm (no activation after the last Linear)
    kinds = [type(m).__name__ for m in net.layers[32][0]]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Linear", "LayerNorm"]
    x = torch.randn(2, 5, 32)
    sd = state[32][0]
    h = torch.relu(x @ sd["linear.0.weight"].T + sd["linear.0.bias"])
    h = nn.functional.layer_norm(h, (64,), sd["linear.2.weight"], sd["linear.2.bias"])
    h = h @ sd["linear.3.weight"].T + sd["linear.3.bias"]
    h = nn.functional.layer_norm(h, (32,), sd["linear.4.weight"], sd["linear.4.bias"])
    torch.testing.assert_close(net.forward_k(x, 0.7), x + h * 0.7, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(net.forward_v(x, 1.0), net.forward_k(x, 1.0))
    # a width without a module passes through unchanged
    y = torch.randn(1, 3, 48)
    assert net.forward_k(y, 1.0) is y


def test_old_linear1_linear2_keys_and_defaults(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"linear1.weight": torch.randn(64, 32, generator=g), "linear1.bias": torch.zeros(64),
          "linear2.weight": torch.randn(32, 64, generator=g), "linear2.bias": torch.zeros(32)}
    path = save(tmp_path / "old.pt", {32: (sd, dict(sd)), "step": 5})
    net = hn.load_hypernetwork(path)
    assert net.name == "old" and net.layer_structure == [1, 2, 1] and net.activation_func is None
    x = torch.randn(1, 2, 32)
    expected = x + (x @ sd["linear1.weight"].T) @ sd["linear2.weight"].T
    torch.testing.assert_close(net.forward_k(x), expected, rtol=1e-5, atol=1e-5)


def test_dropout_slots_shift_the_indices(tmp_path):
    state = hypernetwork_state([32], layer_structure=(1, 2, 2, 1), activation="swish", use_dropout=True)
    net = hn.load_hypernetwork(save(tmp_path / "d.pt", state))
    kinds = [type(m).__name__ for m in net.layers[32][0]]
    # [1, 2, 2, 1] with dropout → structure [0, 0.3, 0, 0]: one Dropout after the first block
    assert net.dropout_structure == [0, 0.3, 0, 0]
    assert kinds == ["Linear", "Hardswish", "Dropout", "Linear", "Hardswish", "Linear"]
    assert not net.layers[32][0].training


def test_bad_files(tmp_path):
    with pytest.raises(ModelFileError):
        hn.load_hypernetwork(save(tmp_path / "lora.pt", {"lora_unet_x.lora_up.weight": torch.zeros(1)}))
    state = hypernetwork_state([32])
    state["layer_structure"] = [1, 3, 1]  # does not fit the stored tensors
    with pytest.raises(ModelFileError, match="do not match"):
        hn.load_hypernetwork(save(tmp_path / "mismatch.pt", state))
    with pytest.raises(ModelFileError):
        hn.load_hypernetwork(tmp_path / "missing.pt")


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def test_processor_changes_attention_and_uninstall_restores(sd1, tmp_path):
    unet, _ = sd1
    baseline = _unet_out(unet)
    originals = dict(unet.attn_processors)
    dims = unet_context_dims(unet)
    assert dims == [32, 64]  # SD1 tiny: channels 32 (self-attn) and text width 32; 64 has no attention
    net = hn.load_hypernetwork(save(tmp_path / "h.pt", hypernetwork_state(dims, seed=1)))

    hn.install(unet, [(net, 0.0)])
    torch.testing.assert_close(_unet_out(unet), baseline, rtol=1e-4, atol=1e-5)  # same math as SDPA
    hn.install(unet, [(net, 1.0)])
    changed = _unet_out(unet)
    assert (changed - baseline).abs().max() > 1e-4
    hn.install(unet, [(net, 1.0), (net, 1.0)])  # chained: a second pass changes it further
    assert (_unet_out(unet) - changed).abs().max() > 1e-5
    hn.uninstall(unet)
    assert torch.equal(_unet_out(unet), baseline)
    assert all(type(p) is type(originals[k]) for k, p in unet.attn_processors.items())


def test_processor_uses_hypernet_context_for_k_and_v(sd1, tmp_path):
    """One attention layer by hand: k = to_k(HK(ctx)), v = to_v(HV(ctx)), q from the hidden states."""
    unet, _ = sd1
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    net = hn.load_hypernetwork(save(tmp_path / "h.pt", hypernetwork_state([32], seed=2)))
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 16, 32, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        got = hn.HypernetworkAttnProcessor([(net, 0.5)])(attn, x, encoder_hidden_states=ctx)
        q, k, v = attn.to_q(x), attn.to_k(net.forward_k(ctx, 0.5)), attn.to_v(net.forward_v(ctx, 0.5))
        heads = attn.heads
        split = lambda t: t.view(1, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (q.shape[-1] // heads) ** 0.5, dim=-1)
        out = (w @ split(v)).transpose(1, 2).reshape(1, 16, -1)
        expected = attn.to_out[0](out)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_find_hypernetworks(tmp_path):
    (tmp_path / "a").mkdir()
    save(tmp_path / "a" / "Beta.pt", {})
    save(tmp_path / "alpha.pt", {})
    save(tmp_path / "None.pt", {})
    # sorted by lower-cased path like the WebUI ("…/a/beta.pt" < "…/alpha.pt"); "None" is never listed
    assert list(hn.find_hypernetworks(tmp_path)) == ["Beta", "alpha"]
