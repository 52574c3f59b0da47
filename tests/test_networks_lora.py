"""LoRA / LyCORIS merging: ΔW per type against hand computations, multipliers, exact restore."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelFileError
from core.models.fixtures import tiny_model
from core.networks.fixtures import kohya_metadata, write_network_fixtures
from core.networks.lora import NetworkManager, NetworkRequest, addnet_hash_safetensors, load_network

TE_Q = "encoder.layers.0.self_attn.q_proj"
UNET_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
UNET_PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # a 1×1 conv in SD1
UNET_CONV1 = "down_blocks.0.resnets.0.conv1"  # 3×3


def models_of(model):
    return model.unet, model.text_encoders


@pytest.fixture(scope="module")
def sd1():
    unet, tes = models_of(tiny_model("sd1", seed=0))
    return unet, tes


def snapshot(*models) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


def assert_same(before, *models) -> None:
    for snap, model in zip(before, models):
        now = model.state_dict()
        assert set(now) == set(snap)
        for k, v in snap.items():
            assert now[k].dtype == v.dtype and torch.equal(now[k], v), k


def weight(model, path: str) -> torch.Tensor:
    return model.get_submodule(path).weight.detach().float().clone()


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_kohya_lora_changes_exactly_the_expected_weights(sd1, tmp_path):
    unet, tes = sd1
    te = tes[0]
    g = torch.Generator().manual_seed(1)
    up_t, down_t = torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g)
    up_u, down_u = torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g)
    up_c, down_c = torch.randn(32, 4, 1, 1, generator=g), torch.randn(4, 32, 1, 1, generator=g)
    sd = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up_t,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down_t,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(2.0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": up_u,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": down_u,
        # no alpha: scale 1 (alpha = rank)
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": up_c,
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": down_c,
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(1.0),
    }
    path = write(tmp_path / "hand.safetensors", sd, kohya_metadata("hand_made", "sd1", 4, 2.0))
    before = snapshot(unet, te)
    w_te, w_u, w_c = weight(te, TE_Q), weight(unet, UNET_Q), weight(unet, UNET_PROJ_IN)

    manager = NetworkManager(unet, tes, "sd1")
    net = manager.load(path)
    report = manager.apply([(net, 0.5, 2.0, None)])

    assert report.networks[0].mapped == 8 and report.networks[0].unmapped == 0
    assert report.modules_changed == 3 and not report.warnings
    torch.testing.assert_close(weight(te, TE_Q) - w_te, up_t @ down_t * (2.0 / 4) * 0.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight(unet, UNET_Q) - w_u, up_u @ down_u * 2.0, rtol=1e-5, atol=1e-5)
    expected_c = (up_c.reshape(32, 4) @ down_c.reshape(4, 32)).reshape(32, 32, 1, 1) * (1.0 / 4) * 2.0
    torch.testing.assert_close(weight(unet, UNET_PROJ_IN) - w_c, expected_c, rtol=1e-5, atol=1e-5)
    # every other tensor is untouched
    changed = {f"{TE_Q}.weight", f"{UNET_Q}.weight", f"{UNET_PROJ_IN}.weight"}
    for snap, model in zip(before, (unet, te)):
        for k, v in model.state_dict().items():
            if k not in changed:
                assert torch.equal(v, snap[k]), k

    manager.restore()
    assert_same(before, unet, te)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_apply_restore_is_bitwise_for_every_fixture_format(sd1, tmp_path, dtype):
    unet, tes = copy.deepcopy(sd1)
    files = write_network_fixtures(tmp_path, "sd1", unet, tes)
    unet.to(dtype)
    for te in tes:
        te.to(dtype)
    before = snapshot(unet, *tes)
    manager = NetworkManager(unet, tes, "sd1")
    names = ["kohya", "locon", "loha", "lokr", "ia3", "full", "dora", "peft"]
    requests = [NetworkRequest(manager.load(files[n]), 0.7, 0.9) for n in names]
    report = manager.apply(requests)
    for net_report in report.networks:
        assert net_report.unmapped == 0, (net_report.name, net_report.unmapped_names)
        assert net_report.modules_changed > 0 and not net_report.failed_modules, net_report
    assert any(not torch.equal(unet.state_dict()[k], v) for k, v in before[0].items())
    manager.restore()
    assert_same(before, unet, *tes)


def test_reapply_with_other_weights_restores_first(sd1, tmp_path):
    unet, tes = sd1
    files = write_network_fixtures(tmp_path, "sd1", unet, tes)
    before = snapshot(unet, *tes)
    manager = NetworkManager(unet, tes, "sd1")
    net = manager.load(files["kohya"])
    manager.apply([(net, 1.0, 1.0, None)])
    first = weight(unet, UNET_Q)
    again = manager.apply([(net, 1.0, 1.0, None)])
    assert again.cached
    manager.apply([(net, 0.5, 0.5, None)])
    half = weight(unet, UNET_Q)
    manager.restore()
    original = weight(unet, UNET_Q)
    torch.testing.assert_close(half - original, (first - original) * 0.5, rtol=1e-4, atol=1e-6)
    manager.apply([])
    assert_same(before, unet, *tes)


def test_loaded_files_are_cached_by_path_and_mtime(sd1, tmp_path):
    unet, tes = sd1
    files = write_network_fixtures(tmp_path, "sd1", unet, tes)
    manager = NetworkManager(unet, tes, "sd1")
    assert manager.load(files["kohya"]) is manager.load(files["kohya"])
    st = files["kohya"].stat()
    import os

    os.utime(files["kohya"], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert manager.load(files["kohya"]) is not None
    assert manager.load(files["kohya"]).mtime != st.st_mtime


def _lyco_file(tmp_path, target: str, parts: dict[str, torch.Tensor]) -> Path:
    key = "lora_unet_" + target.replace(".", "_")
    return write(tmp_path / "lyco.safetensors", {f"{key}.{p}": t for p, t in parts.items()})


def _delta_after_apply(unet, tes, path, unet_mult=1.0, dyn=None, target=UNET_Q):
    before = weight(unet, target)
    manager = NetworkManager(unet, tes, "sd1")
    report = manager.apply([(manager.load(path), 1.0, unet_mult, dyn)])
    assert report.networks[0].mapped == report.networks[0].total_keys, report
    assert not report.networks[0].failed_modules, report.networks[0].failed_modules
    after = weight(unet, target)
    bias = unet.get_submodule(target).bias
    bias = None if bias is None else bias.detach().clone()
    manager.restore()
    return after - before, before, bias


def test_loha_delta(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(2)
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=g) for s in [(32, 2), (2, 32), (32, 2), (2, 32)])
    path = _lyco_file(tmp_path, UNET_Q, {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b,
                                         "alpha": torch.tensor(1.0)})
    delta, _, _ = _delta_after_apply(unet, tes, path, unet_mult=0.8)
    torch.testing.assert_close(delta, (w1a @ w1b) * (w2a @ w2b) * (1.0 / 2) * 0.8, rtol=1e-4, atol=1e-5)


def test_loha_cp_on_conv(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(5)
    r = 2
    t1, t2 = torch.randn(r, r, 3, 3, generator=g), torch.randn(r, r, 3, 3, generator=g)
    w1a, w2a = torch.randn(r, 32, generator=g), torch.randn(r, 32, generator=g)  # CP: [rank, out]
    w1b, w2b = torch.randn(r, 32, generator=g), torch.randn(r, 32, generator=g)  # [rank, in]
    path = _lyco_file(tmp_path, UNET_CONV1, {"hada_t1": t1, "hada_t2": t2, "hada_w1_a": w1a, "hada_w1_b": w1b,
                                             "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(2.0)})
    delta, _, _ = _delta_after_apply(unet, tes, path, target=UNET_CONV1)

    def cp(t, wa, wb):  # W[o,i,k,l] = Σ_ab t[a,b,k,l] wa[a,o] wb[b,i]
        return torch.einsum("abkl,ao,bi->oikl", t, wa, wb)

    torch.testing.assert_close(delta, cp(t1, w1a, w1b) * cp(t2, w2a, w2b) * (2.0 / 2), rtol=1e-4, atol=1e-4)


def test_lokr_full_factors_ignore_alpha_and_factorized_use_it(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(4)
    w1, w2 = torch.randn(2, 4, generator=g), torch.randn(16, 8, generator=g)
    path = _lyco_file(tmp_path, UNET_Q, {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(123.0)})
    delta, _, _ = _delta_after_apply(unet, tes, path)
    torch.testing.assert_close(delta, torch.kron(w1, w2), rtol=1e-5, atol=1e-5)

    w2a, w2b = torch.randn(16, 2, generator=g), torch.randn(2, 8, generator=g)
    path = _lyco_file(tmp_path, UNET_Q, {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b,
                                         "alpha": torch.tensor(1.0)})
    delta, _, _ = _delta_after_apply(unet, tes, path)
    torch.testing.assert_close(delta, torch.kron(w1, w2a @ w2b) * (1.0 / 2), rtol=1e-5, atol=1e-5)


def test_ia3_scales_rows_or_columns(sd1, tmp_path):
    unet, tes = sd1
    w = torch.linspace(-0.5, 0.5, 32)
    path = _lyco_file(tmp_path, UNET_Q, {"weight": w, "on_input": torch.tensor(False)})
    delta, orig, _ = _delta_after_apply(unet, tes, path, unet_mult=0.5)
    torch.testing.assert_close(delta, orig * w.reshape(-1, 1) * 0.5, rtol=1e-5, atol=1e-6)
    path = _lyco_file(tmp_path, UNET_Q, {"weight": w, "on_input": torch.tensor(True)})
    delta, orig, _ = _delta_after_apply(unet, tes, path)
    torch.testing.assert_close(delta, orig * w.reshape(1, -1), rtol=1e-5, atol=1e-6)


def test_full_diff_adds_bias_and_restore_removes_it(sd1, tmp_path):
    unet, tes = sd1
    assert unet.get_submodule(UNET_Q).bias is None
    diff, diff_b = torch.full((32, 32), 0.01), torch.full((32,), 0.02)
    path = _lyco_file(tmp_path, UNET_Q, {"diff": diff, "diff_b": diff_b})
    delta, _, bias = _delta_after_apply(unet, tes, path, unet_mult=2.0)
    torch.testing.assert_close(delta, diff * 2.0)
    torch.testing.assert_close(bias, diff_b * 2.0)
    assert unet.get_submodule(UNET_Q).bias is None


def test_norm_delta_on_layer_norm(sd1, tmp_path):
    unet, tes = sd1
    target = "down_blocks.0.attentions.0.transformer_blocks.0.norm1"
    w_norm, b_norm = torch.full((32,), 0.1), torch.full((32,), -0.2)
    before_b = unet.get_submodule(target).bias.detach().clone()
    path = _lyco_file(tmp_path, target, {"w_norm": w_norm, "b_norm": b_norm})
    delta, _, bias = _delta_after_apply(unet, tes, path, unet_mult=0.5, target=target)
    torch.testing.assert_close(delta, w_norm * 0.5)
    torch.testing.assert_close(bias - before_b, b_norm * 0.5)


def test_dora_renormalizes_per_input_column(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(6)
    up, down = torch.randn(32, 4, generator=g) * 0.1, torch.randn(4, 32, generator=g) * 0.1
    magnitude = torch.rand(1, 32, generator=g) + 0.5
    path = _lyco_file(tmp_path, UNET_Q, {"lora_up.weight": up, "lora_down.weight": down,
                                         "alpha": torch.tensor(2.0), "dora_scale": magnitude})
    delta, orig, _ = _delta_after_apply(unet, tes, path, unet_mult=0.6)
    merged = orig + up @ down * (2.0 / 4)
    expected = (merged * magnitude / merged.norm(dim=0, keepdim=True) - orig) * 0.6
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-5)


def test_locon_3x3_conv(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(7)
    down, up = torch.randn(4, 32, 3, 3, generator=g), torch.randn(32, 4, 1, 1, generator=g)
    path = _lyco_file(tmp_path, UNET_CONV1, {"lora_down.weight": down, "lora_up.weight": up,
                                             "alpha": torch.tensor(4.0)})
    delta, _, _ = _delta_after_apply(unet, tes, path, target=UNET_CONV1)
    expected = (up.reshape(32, 4) @ down.reshape(4, -1)).reshape(32, 32, 3, 3)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4)


def test_dylora_dyn_cuts_the_rank_but_keeps_alpha_over_stored_rank(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(8)
    up, down = torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g)
    path = _lyco_file(tmp_path, UNET_Q, {"lora_up.weight": up, "lora_down.weight": down,
                                         "alpha": torch.tensor(4.0)})
    delta, _, _ = _delta_after_apply(unet, tes, path, dyn=2)
    torch.testing.assert_close(delta, up[:, :2] @ down[:2], rtol=1e-5, atol=1e-5)


def test_peft_and_old_diffusers_keys(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    c, d = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    sd = {
        f"unet.{UNET_Q}.lora_A.weight": a, f"unet.{UNET_Q}.lora_B.weight": b,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": c,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": d,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight": c,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight": d,
    }
    path = write(tmp_path / "peft.safetensors", sd)
    w_q, w_te = weight(unet, UNET_Q), weight(tes[0], TE_Q)
    out = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    w_out = weight(unet, out)
    manager = NetworkManager(unet, tes, "sd1")
    report = manager.apply([(manager.load(path), 0.5, 1.0, None)])
    assert report.networks[0].mapped == 6
    torch.testing.assert_close(weight(unet, UNET_Q) - w_q, b @ a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight(tes[0], TE_Q) - w_te, d @ c * 0.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight(unet, out) - w_out, d @ c, rtol=1e-5, atol=1e-5)
    manager.restore()


def test_two_networks_on_one_layer_add_up(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(10)
    parts = []
    for i in range(2):
        up, down = torch.randn(32, 2, generator=g), torch.randn(2, 32, generator=g)
        key = "lora_unet_" + UNET_Q.replace(".", "_")
        write(tmp_path / f"n{i}.safetensors", {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down})
        parts.append(up @ down)
    before = weight(unet, UNET_Q)
    manager = NetworkManager(unet, tes, "sd1")
    manager.apply([(manager.load(tmp_path / "n0.safetensors"), 1, 1.0, None),
                   (manager.load(tmp_path / "n1.safetensors"), 1, -0.5, None)])
    torch.testing.assert_close(weight(unet, UNET_Q) - before, parts[0] - 0.5 * parts[1], rtol=1e-5, atol=1e-5)
    manager.restore()
    assert torch.equal(weight(unet, UNET_Q), before)


def test_sdxl_lora_on_sd1_reports_no_match_with_a_warning(sd1, tmp_path):
    unet, tes = sd1
    sd = {}
    for i in range(3):
        for base in (f"lora_unet_input_blocks_4_1_transformer_blocks_{i}_attn2_to_k",
                     f"lora_te2_text_model_encoder_layers_{i}_mlp_fc2"):
            sd[f"{base}.lora_up.weight"] = torch.zeros(64, 2)
            sd[f"{base}.lora_down.weight"] = torch.zeros(2, 64)
            sd[f"{base}.alpha"] = torch.tensor(1.0)
    path = write(tmp_path / "xl.safetensors", sd, kohya_metadata("xl", "sdxl", 2, 1.0))
    before = snapshot(unet, *tes)
    manager = NetworkManager(unet, tes, "sd1")
    net = manager.load(path)
    assert net.sd_version == "SDXL"
    report = manager.apply([(net, 1.0, 1.0, None)])
    nr = report.networks[0]
    assert nr.mapped == 0 and nr.unmapped == 18 and report.modules_changed == 0
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc2" in nr.unmapped_names
    assert any("SDXL LoRA on an SD1 model: 0 of 18 keys match" in w for w in report.warnings)
    manager.restore()
    assert_same(before, unet, *tes)


def test_shape_mismatch_is_reported_not_raised(sd1, tmp_path):
    unet, tes = sd1
    key = "lora_unet_" + UNET_Q.replace(".", "_")
    path = write(tmp_path / "bad.safetensors", {f"{key}.lora_up.weight": torch.ones(48, 2),
                                               f"{key}.lora_down.weight": torch.ones(2, 48)})
    before = snapshot(unet)
    manager = NetworkManager(unet, tes, "sd1")
    report = manager.apply([(manager.load(path), 1.0, 1.0, None)])
    assert report.networks[0].failed_modules and report.modules_changed == 0
    assert any("could not be applied" in w for w in report.warnings)
    assert_same(before, unet)


def test_metadata_hash_alias_and_version(sd1, tmp_path):
    unet, tes = sd1
    files = write_network_fixtures(tmp_path, "sd1", unet, tes)
    net = load_network(files["kohya"])
    assert net.name == "kiln_style_v1" and net.alias == "kiln_style"
    assert net.sd_version == "SD1"
    assert net.metadata["sshs_model_hash"] == addnet_hash_safetensors(files["kohya"]) == net.hash
    assert len(net.shorthash) == 12 and net.hash.startswith(net.shorthash)
    assert net.metadata["ss_tag_frequency"] == {"10_sls 1girl": {"sls": 4, "1girl": 4, "solo": 3, "red hair": 2}}
    assert list(net.metadata)[:3] == ["ss_sd_model_name", "ss_resolution", "ss_clip_skip"]
    # no metadata: the addnet hash is computed; version unknown
    plain = load_network(files["loha"])
    assert plain.sd_version == "Unknown" and plain.hash == addnet_hash_safetensors(files["loha"])
    assert plain.alias == "kiln_loha"


def test_addnet_hash_ignores_metadata(tmp_path):
    t = {"a.lora_up.weight": torch.ones(2, 2)}
    h1 = addnet_hash_safetensors(write(tmp_path / "a.safetensors", t, {"x": "1"}))
    h2 = addnet_hash_safetensors(write(tmp_path / "b.safetensors", t, {"x": "a much longer value"}))
    assert h1 == h2


def test_corrupt_files_raise_model_file_error(tmp_path):
    good = write(tmp_path / "good.safetensors", {"lora_unet_x.lora_up.weight": torch.ones(64, 64)})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated"):
        load_network(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(ModelFileError):
        load_network(garbage)
    pickle_file = tmp_path / "bad.pt"
    pickle_file.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ModelFileError, match="weights-only"):
        load_network(pickle_file)
    with pytest.raises(ModelFileError, match="not found"):
        load_network(tmp_path / "missing.safetensors")


def test_bundled_embeddings_are_split_off(tmp_path):
    sd = {"lora_unet_x.lora_up.weight": torch.ones(2, 2),
          "bundle_emb.kiln_tok.string_to_param.*": torch.ones(2, 32),
          "bundle_emb.kiln_xl.clip_l": torch.ones(1, 32), "bundle_emb.kiln_xl.clip_g": torch.ones(1, 40)}
    net = load_network(write(tmp_path / "b.safetensors", sd))
    assert list(net.tensors) == ["lora_unet_x.lora_up.weight"]
    assert set(net.bundle_embeddings) == {"kiln_tok", "kiln_xl"}
    assert torch.equal(net.bundle_embeddings["kiln_tok"]["string_to_param"]["*"], torch.ones(2, 32))


def test_weights_are_updated_in_place(sd1, tmp_path):
    """restore() writes into the same Parameter objects (no re-binding the optimizer/compile would miss)."""
    unet, tes = sd1
    files = write_network_fixtures(tmp_path, "sd1", unet, tes)
    param = unet.get_submodule(UNET_Q).weight
    manager = NetworkManager(unet, tes, "sd1")
    manager.apply([(manager.load(files["kohya"]), 1.0, 1.0, None)])
    assert unet.get_submodule(UNET_Q).weight is param
    manager.restore()
    assert unet.get_submodule(UNET_Q).weight is param


def test_sdxl_kohya_lora_with_sgm_names(tmp_path):
    model = tiny_model("sdxl", seed=0)
    unet, tes = model.unet, model.text_encoders
    files = write_network_fixtures(tmp_path, "sdxl", unet, tes, model.spec.unet_config)
    net = load_network(files["kohya"])
    assert net.sd_version == "SDXL"
    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    assert f"{key}.lora_up.weight" in net.tensors  # kohya's SGM naming, not diffusers'
    target = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    # CLIPTextModelWithProjection keeps the text_model level in transformers 5.x; CLIPTextModel does not
    te2_key, te2_target = "lora_te2_text_model_encoder_layers_0_mlp_fc2", "text_model.encoder.layers.0.mlp.fc2"
    before = snapshot(unet, *tes)
    w_u, w_te2 = weight(unet, target), weight(tes[1], te2_target)
    manager = NetworkManager(unet, tes, "sdxl", model.spec.unet_config)
    report = manager.apply([(manager.load(f), 0.5, 1.5, None) for n, f in files.items()
                            if n in ("kohya", "locon", "loha", "lokr", "ia3", "full", "dora", "peft")])
    for nr in report.networks:
        assert nr.unmapped == 0 and not nr.failed_modules and not nr.warnings, nr
    # only the kohya file touches these two layers
    manager.apply([(net, 0.5, 1.5, None)])
    expected_u = net.tensors[f"{key}.lora_up.weight"] @ net.tensors[f"{key}.lora_down.weight"] * (2.0 / 4) * 1.5
    torch.testing.assert_close(weight(unet, target) - w_u, expected_u, rtol=1e-4, atol=1e-5)
    expected_te2 = (net.tensors[f"{te2_key}.lora_up.weight"] @ net.tensors[f"{te2_key}.lora_down.weight"]
                    * (2.0 / 4) * 0.5)
    torch.testing.assert_close(weight(tes[1], te2_target) - w_te2, expected_te2, rtol=1e-4, atol=1e-5)
    manager.restore()
    assert_same(before, unet, *tes)


def test_sd1_lora_with_compvis_names_needs_the_key_map(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(11)
    up, down = torch.randn(32, 2, generator=g), torch.randn(2, 32, generator=g)
    base = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    path = write(tmp_path / "compvis.safetensors", {f"{base}.lora_up.weight": up, f"{base}.lora_down.weight": down})
    plain = NetworkManager(unet, tes, "sd1")
    assert plain.apply([(plain.load(path), 1.0, 1.0, None)]).networks[0].mapped == 0
    plain.restore()
    before = weight(unet, UNET_Q)
    from core.models.fixtures import tiny_unet_config

    manager = NetworkManager(unet, tes, "sd1", tiny_unet_config("sd1"))
    assert manager.apply([(manager.load(path), 1.0, 1.0, None)]).networks[0].mapped == 2
    torch.testing.assert_close(weight(unet, UNET_Q) - before, up @ down, rtol=1e-5, atol=1e-5)
    manager.restore()


def test_peft_file_alpha_from_diffusers_adapter_metadata(sd1, tmp_path):
    import json

    unet, tes = sd1
    g = torch.Generator().manual_seed(12)
    a, b = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    k_path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    sd = {f"unet.{UNET_Q}.lora_A.weight": a, f"unet.{UNET_Q}.lora_B.weight": b,
          f"unet.{k_path}.lora_A.weight": a, f"unet.{k_path}.lora_B.weight": b}
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 2,
                                                  "unet.alpha_pattern": {"attn1.to_q": 8}})}
    path = write(tmp_path / "peft_meta.safetensors", sd, meta)
    w_q, w_k = weight(unet, UNET_Q), weight(unet, k_path)
    manager = NetworkManager(unet, tes, "sd1")
    manager.apply([(manager.load(path), 1.0, 1.0, None)])
    torch.testing.assert_close(weight(unet, UNET_Q) - w_q, b @ a * (8 / 4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight(unet, k_path) - w_k, b @ a * (2 / 4), rtol=1e-5, atol=1e-5)
    manager.restore()


def test_one_naming_rule_for_prompts_and_cards():
    from core.networks.lora import network_names

    files = [("style_v1", Path("a/style_v1.safetensors")), ("style_v2", Path("b/style_v2.safetensors")),
             ("other", Path("other.safetensors")), ("taken", Path("taken.pt")), ("nothing", Path("n.safetensors")),
             ("loud", Path("loud.safetensors"))]
    aliases = {"a/style_v1.safetensors": "style", "b/style_v2.safetensors": "style",
               "other.safetensors": "Taken", "n.safetensors": "None", "loud.safetensors": "LOUD"}
    names = network_names(files, lambda p: aliases.get(p.as_posix()))
    # every stem and alias reaches a file; a stem wins over another file's alias, the first file
    # wins among equal aliases
    assert names.files["style"] == Path("a/style_v1.safetensors")
    assert names.files["taken"] == Path("taken.pt") and names.files["Taken"] == Path("other.safetensors")
    assert names.files["None"] == Path("n.safetensors") and names.files["LOUD"] == Path("loud.safetensors")
    # cards show the alias only when no other file uses that name (case-insensitively) and it is allowed
    assert names.shown == {"style_v1": "style_v1", "style_v2": "style_v2", "other": "other", "taken": "taken",
                           "nothing": "nothing", "loud": "LOUD"}
    # non-strings and empty aliases mean none
    assert network_names([("x", Path("x.pt"))], lambda p: {"a": 1}).files == {"x": Path("x.pt")}
