"""OFT / BOFT networks: files in sd-scripts' and LyCORIS's key layouts, loaded and merged through the
real loader, against a reference written here with explicit block-diagonal and permutation
matrices (torch.linalg.solve for the Cayley transform, float64), as the WebUI's
network_oft.py merges them."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelFileError
from core.models.fixtures import tiny_model
from core.networks.catalog import network_type_from_keys
from core.networks.lora import NetworkManager, NetworkRequest, load_network

TE_Q = "encoder.layers.0.self_attn.q_proj"
TE_Q_KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
UNET_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
UNET_PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # a 1×1 conv in SD1
UNET_CONV1 = "down_blocks.0.resnets.0.conv1"  # 3×3


def kohya(prefix: str, module: str) -> str:
    return prefix + module.replace(".", "_")


@pytest.fixture(scope="module")
def sd1():
    model = tiny_model("sd1", seed=0)
    return model.unet, model.text_encoders


def weight(model, path: str) -> torch.Tensor:
    return model.get_submodule(path).weight.detach().double().clone()


def snapshot(*models) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


def assert_same(before, *models) -> None:
    for snap, model in zip(before, models):
        now = model.state_dict()
        assert set(now) == set(snap)
        for k, v in snap.items():
            assert now[k].dtype == v.dtype and torch.equal(now[k], v), k


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
    return path


# --- the reference -------------------------------------------------------------------------------

def ref_cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """R = (I + Q)(I − Q)⁻¹ = ((I + Q)⁻¹(I − Q))ᵀ for Q skew-symmetric, solved in float64."""
    q = blocks.double() - blocks.double().transpose(-1, -2)
    norm = q.pow(2).sum().sqrt()
    if constraint > 0 and norm > constraint:
        q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], dtype=torch.float64).expand_as(q)
    return torch.linalg.solve(eye + q, eye - q).transpose(-1, -2)


def ref_oft(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """W' = diag(R_0ᵀ, R_1ᵀ, …) · W (sd-scripts' einsum "k n m, k n ... -> k m ...")."""
    big = torch.block_diag(*[block.T for block in r.double()])
    return (big @ w.reshape(w.shape[0], -1)).reshape(w.shape)


def butterfly_permutation(n: int, half: int) -> torch.Tensor:
    """P with (P·W)[c·2h + 2j + g] = W[c·2h + g·h + j]."""
    p = torch.zeros(n, n, dtype=torch.float64)
    for row in range(n):
        c, g, j = row // (2 * half), (row % (2 * half)) // half, row % half
        p[c * 2 * half + 2 * j + g, row] = 1.0
    return p


def ref_boft(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """W' = Π_i P_iᵀ · diag(R_i,0, R_i,1, …) · P_i · W, factor 0 applied first."""
    rows = w.reshape(w.shape[0], -1).double()
    b = r.shape[-1]
    for i in range(r.shape[0]):
        p = butterfly_permutation(w.shape[0], (b // 2) * 2 ** i)
        rows = p.T @ torch.block_diag(*r[i].double()) @ p @ rows
    return rows.reshape(w.shape)


def random_orthogonal(*shape: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(*shape, shape[-1], generator=generator, dtype=torch.float64))
    return q.float()


def delta_after_apply(unet, tes, path: Path, *, te: float = 1.0, unet_mult: float = 1.0
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], NetworkManager]:
    """(weights before, weights while applied) of the touched layers; the manager is restored."""
    layers = {"te": (tes[0], TE_Q), "q": (unet, UNET_Q), "proj_in": (unet, UNET_PROJ_IN), "conv1": (unet, UNET_CONV1)}
    before = {k: weight(m, p) for k, (m, p) in layers.items()}
    manager = NetworkManager(unet, tes, "sd1")
    report = manager.apply([NetworkRequest(manager.load(path), te, unet_mult)])
    net = report.networks[0]
    assert net.unmapped == 0 and not net.failed_modules and not report.warnings, net
    after = {k: weight(m, p) for k, (m, p) in layers.items()}
    manager.restore()
    return before, after, manager


# --- kohya (sd-scripts) OFT ------------------------------------------------------------------------

def test_kohya_oft_is_the_cayley_rotation_with_alpha_as_a_norm_constraint(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(11)
    tight, loose = torch.randn(4, 8, 8, generator=g) * 0.5, torch.randn(4, 8, 8, generator=g) * 0.05
    conv = torch.randn(8, 4, 4, generator=g) * 0.1
    q_key, proj_key = kohya("oft_unet_", UNET_Q), kohya("oft_unet_", UNET_PROJ_IN)
    path = write(tmp_path / "kohya_oft.safetensors", {
        # sd-scripts' own names: oft_unet_<diffusers module>, alpha = 1e-2 → ‖Q‖ ≤ 0.32 (clamps)
        f"{q_key}.oft_blocks": tight, f"{q_key}.alpha": torch.tensor(1e-2),
        # a loose constraint (alpha · out_dim = 32) that this Q never reaches; 8 blocks of 4
        f"{proj_key}.oft_blocks": conv, f"{proj_key}.alpha": torch.tensor(1.0),
        f"{kohya('lora_te_text_model_', TE_Q)}.oft_blocks": loose,
        f"{kohya('lora_te_text_model_', TE_Q)}.alpha": torch.tensor(1e-3),
    })
    before = snapshot(unet, tes[0])
    w, now, _ = delta_after_apply(unet, tes, path, te=0.5, unet_mult=0.7)

    r_q = ref_cayley(tight, 1e-2 * 32)
    assert (tight - tight.transpose(1, 2)).norm() > 1e-2 * 32  # the constraint really is active
    torch.testing.assert_close(now["q"] - w["q"], 0.7 * (ref_oft(w["q"], r_q) - w["q"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(now["proj_in"] - w["proj_in"],
                               0.7 * (ref_oft(w["proj_in"], ref_cayley(conv, 32.0)) - w["proj_in"]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(now["te"] - w["te"], 0.5 * (ref_oft(w["te"], ref_cayley(loose, 1e-3 * 32)) - w["te"]),
                               rtol=1e-4, atol=1e-5)
    # a rotation: at multiplier 1 each block of 8 output rows keeps its Frobenius norm
    turned = w["q"] + (now["q"] - w["q"]) / 0.7
    torch.testing.assert_close(turned.reshape(4, -1).norm(dim=1), w["q"].reshape(4, -1).norm(dim=1), rtol=1e-4, atol=0)
    assert_same(before, unet, tes[0])  # restore() is bit for bit


def test_oft_alpha_is_never_a_scale(sd1, tmp_path):
    """The WebUI's OFT module fixes calc_scale at 1 (its alpha/dim rule would scale ΔW here)."""
    unet, tes = sd1
    g = torch.Generator().manual_seed(12)
    blocks = torch.randn(4, 8, 8, generator=g) * 0.02
    key = kohya("lora_unet_", UNET_Q)
    path = write(tmp_path / "a.safetensors", {f"{key}.oft_blocks": blocks, f"{key}.alpha": torch.tensor(100.0)})
    w, now, _ = delta_after_apply(unet, tes, path)
    torch.testing.assert_close(now["q"], ref_oft(w["q"], ref_cayley(blocks, 0.0)), rtol=1e-4, atol=1e-5)


def test_sdxl_kohya_oft_with_sgm_names(tmp_path):
    """sd-scripts' SDXL trainer names U-Net modules by the original SGM layout: oft_unet_input_blocks_*."""
    model = tiny_model("sdxl", seed=0)
    unet, tes = model.unet, model.text_encoders
    target = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    te2_target = "text_model.encoder.layers.0.mlp.fc2"
    rows, te2_rows = unet.get_submodule(target).weight.shape[0], tes[1].get_submodule(te2_target).weight.shape[0]
    g = torch.Generator().manual_seed(18)
    blocks, te2_blocks = torch.randn(4, rows // 4, rows // 4, generator=g), torch.randn(2, te2_rows // 2, te2_rows // 2,
                                                                                        generator=g) * 0.01
    key = "oft_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    path = write(tmp_path / "sdxl_oft.safetensors", {
        f"{key}.oft_blocks": blocks, f"{key}.alpha": torch.tensor(1e-3),
        "lora_te2_text_model_encoder_layers_0_mlp_fc2.oft_blocks": te2_blocks,
        "lora_te2_text_model_encoder_layers_0_mlp_fc2.alpha": torch.tensor(0),
    })
    before = snapshot(unet, *tes)
    w, w_te2 = weight(unet, target), weight(tes[1], te2_target)
    manager = NetworkManager(unet, tes, "sdxl", model.spec.unet_config)
    report = manager.apply([NetworkRequest(manager.load(path), 0.5, 1.5)])
    assert report.modules_changed == 2 and report.networks[0].unmapped == 0 and not report.warnings, report
    torch.testing.assert_close(weight(unet, target) - w, 1.5 * (ref_oft(w, ref_cayley(blocks, 1e-3 * rows)) - w),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight(tes[1], te2_target) - w_te2,
                               0.5 * (ref_oft(w_te2, ref_cayley(te2_blocks, 0.0)) - w_te2), rtol=1e-4, atol=1e-5)
    manager.restore()
    assert_same(before, unet, *tes)


# --- LyCORIS diag-OFT -----------------------------------------------------------------------------

def test_lycoris_diag_oft_rescale_and_integer_zero_alpha(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(13)
    blocks = torch.randn(4, 8, 8, generator=g) * 0.3
    rescale = (torch.rand(32, 1, generator=g) + 0.5)
    path = write(tmp_path / "lyco_oft.safetensors", {
        # LyCORIS writes its default constraint 0 as an int64 tensor: no constraint at all
        f"{TE_Q_KEY}.oft_blocks": blocks, f"{TE_Q_KEY}.alpha": torch.tensor(0),
        f"{TE_Q_KEY}.rescale": rescale,
    })
    w, now, _ = delta_after_apply(unet, tes, path, te=0.6)
    expected = rescale.double() * ref_oft(w["te"], ref_cayley(blocks, 0.0))
    torch.testing.assert_close(now["te"] - w["te"], 0.6 * (expected - w["te"]), rtol=1e-4, atol=1e-5)


def test_old_lycoris_oft_diag_is_the_rotation_itself(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(14)
    r_conv = random_orthogonal(2, 16, generator=g)  # 2 blocks of 16 on a 3×3 conv
    r_q = random_orthogonal(8, 4, generator=g)
    old_rescale = torch.rand(8, 4, 1, generator=g) + 0.5  # the old [block_num, block_size, 1] layout
    path = write(tmp_path / "lyco_diag.safetensors", {
        f"{kohya('lora_unet_', UNET_CONV1)}.oft_diag": r_conv,
        f"{kohya('lora_unet_', UNET_Q)}.oft_diag": r_q,
        f"{kohya('lora_unet_', UNET_Q)}.rescale": old_rescale,
    })
    w, now, _ = delta_after_apply(unet, tes, path, unet_mult=0.8)
    torch.testing.assert_close(now["conv1"] - w["conv1"], 0.8 * (ref_oft(w["conv1"], r_conv) - w["conv1"]),
                               rtol=1e-4, atol=1e-5)
    expected_q = old_rescale.reshape(32, 1).double() * ref_oft(w["q"], r_q)
    torch.testing.assert_close(now["q"] - w["q"], 0.8 * (expected_q - w["q"]), rtol=1e-4, atol=1e-5)


# --- BOFT ------------------------------------------------------------------------------------------

def test_boft_butterfly_factors_from_oft_blocks_and_oft_diag(sd1, tmp_path):
    unet, tes = sd1
    g = torch.Generator().manual_seed(15)
    # [boft_m, num_blocks, b, b]: 3 factors of 8 blocks of 4 rows; strides 2, 4, 8 on 32 rows
    blocks = torch.randn(3, 8, 4, 4, generator=g) * 0.4
    rescale = torch.rand(32, 1, 1, 1, generator=g) + 0.5
    stored = random_orthogonal(4, 16, 2, generator=g)  # 4 factors of 16 blocks of 2: strides 1…8
    conv_key, q_key = kohya("lora_unet_", UNET_CONV1), kohya("lora_unet_", UNET_Q)
    path = write(tmp_path / "boft.safetensors", {
        f"{conv_key}.oft_blocks": blocks, f"{conv_key}.alpha": torch.tensor(0.01),
        f"{conv_key}.rescale": rescale,
        f"{q_key}.oft_diag": stored,
    })
    w, now, _ = delta_after_apply(unet, tes, path, unet_mult=0.9)
    r_conv = ref_cayley(blocks, 0.01 * 32)  # one norm over all factors, as LyCORIS
    expected_conv = rescale.double() * ref_boft(w["conv1"], r_conv)
    torch.testing.assert_close(now["conv1"] - w["conv1"], 0.9 * (expected_conv - w["conv1"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(now["q"] - w["q"], 0.9 * (ref_boft(w["q"], stored) - w["q"]), rtol=1e-4, atol=1e-5)
    # orthogonal overall: at multiplier 1 the whole weight's column norms are kept
    turned = w["q"] + (now["q"] - w["q"]) / 0.9
    torch.testing.assert_close(turned.norm(dim=0), w["q"].norm(dim=0), rtol=1e-4, atol=0)


def test_first_boft_factor_on_2x2_blocks_is_block_diagonal_r_times_w(sd1, tmp_path):
    """With b = 2 the first butterfly permutation interleaves halves of one row each, i.e. moves
    nothing: each pair of rows becomes R·W (BOFT's convention; OFT's is Rᵀ·W)."""
    unet, tes = sd1
    g = torch.Generator().manual_seed(16)
    r = random_orthogonal(1, 16, 2, generator=g)
    path = write(tmp_path / "boft1.safetensors", {f"{kohya('lora_unet_', UNET_Q)}.oft_diag": r})
    w, now, _ = delta_after_apply(unet, tes, path)
    torch.testing.assert_close(now["q"], torch.block_diag(*r[0].double()) @ w["q"], rtol=1e-4, atol=1e-5)


# --- multipliers and the shared model ---------------------------------------------------------------

def all_kinds_file(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(17)
    return write(tmp_path / "kiln_oft.safetensors", {
        f"{kohya('oft_unet_', UNET_Q)}.oft_blocks": torch.randn(4, 8, 8, generator=g),
        f"{kohya('oft_unet_', UNET_Q)}.alpha": torch.tensor(1e-2),
        f"{TE_Q_KEY}.oft_diag": random_orthogonal(4, 8, generator=g),
        f"{kohya('lora_unet_', UNET_CONV1)}.oft_blocks": torch.randn(3, 8, 4, 4, generator=g),
        f"{kohya('lora_unet_', UNET_CONV1)}.alpha": torch.tensor(0),
        f"{kohya('lora_unet_', UNET_PROJ_IN)}.oft_blocks": torch.randn(4, 8, 8, generator=g),
        f"{kohya('lora_unet_', UNET_PROJ_IN)}.rescale": torch.rand(32, 1, 1, 1, generator=g),
    })


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_multiplier_zero_leaves_every_weight_bitwise(sd1, tmp_path, dtype):
    unet, tes = copy.deepcopy(sd1)
    unet.to(dtype)
    tes[0].to(dtype)
    before = snapshot(unet, tes[0])
    manager = NetworkManager(unet, tes, "sd1")
    report = manager.apply([NetworkRequest(manager.load(all_kinds_file(tmp_path)), 0.0, 0.0)])
    assert report.modules_changed == 4 and not report.warnings, report
    assert_same(before, unet, tes[0])  # while applied, not only after restore
    manager.restore()
    manager.apply([NetworkRequest(manager.load(all_kinds_file(tmp_path)), 1.0, 1.0)])
    assert not torch.equal(unet.get_submodule(UNET_CONV1).weight, before[0][f"{UNET_CONV1}.weight"])
    manager.restore()
    assert_same(before, unet, tes[0])


def test_a_job_merges_oft_and_leaves_the_shared_model_as_it_was(tmp_path):
    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.params import GenerationParams
    from core.jobs import JobQueue
    from core.models.fixtures import write_tiny_checkpoint
    from core.prompts.extra_networks import parse_extra_networks
    from core.settings import Settings

    write_tiny_checkpoint(tmp_path, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), "--ckpt", "tiny-sd1.safetensors"]),
                                   tmp_path)
    settings.paths.ensure_dirs()
    all_kinds_file(Path(settings.paths.lora_dir))
    engine = Engine(settings)
    queue = JobQueue()
    try:
        model = queue.run(lambda _ctx: engine.ensure_model(), timeout=120)
        base = snapshot(model.unet, model.text_encoders[0])
        _, tags = parse_extra_networks("a red circle <lora:kiln_oft:0.8>")

        def inside(_ctx):
            with engine.job_model(engine.run_options(), tags) as gc:
                return weight(engine.model.unet, UNET_CONV1), gc.warnings

        patched, warnings = queue.run(inside, timeout=120)
        assert not warnings, warnings
        assert not torch.equal(patched, base[0][f"{UNET_CONV1}.weight"].double())
        assert_same(base, model.unet, model.text_encoders[0])

        job = GenerationParams(prompt="a red circle <lora:kiln_oft:0.8>", steps=2, width=32, height=32, seed=3,
                               sampler_name="Euler a", save_images=False)
        result = queue.run(lambda ctx: engine.txt2img(job, ctx), timeout=120)
        assert "Lora hashes: \"kiln_oft: " in result.images[0].infotext
        assert_same(base, model.unet, model.text_encoders[0])
        assert engine.model is model
    finally:
        queue.shutdown()


# --- broken files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("part, tensor, problem", [
    ("oft_blocks", torch.zeros(4, 8, 6), "must be square"),
    ("oft_blocks", torch.zeros(32, 32), r"expected \[num_blocks, block_size, block_size\]"),
    ("oft_diag", torch.full((4, 8, 8), float("nan")), "NaN"),
    ("oft_blocks", torch.zeros(4, 8, 8, dtype=torch.int32), "floating-point"),
    ("alpha", torch.ones(2), "single number"),
])
def test_a_malformed_oft_file_is_refused_naming_the_file_and_the_key(tmp_path, part, tensor, problem):
    key = kohya("lora_unet_", UNET_Q)
    tensors = {f"{key}.oft_blocks": torch.zeros(4, 8, 8), f"{key}.{part}": tensor}
    path = write(tmp_path / "broken_oft.safetensors", tensors)
    with pytest.raises(ModelFileError) as err:
        load_network(path)
    message = str(err.value)
    assert str(path) in message and f"{key}.{part}" in message and "malformed OFT tensor" in message
    assert re.search(problem, message), message


def test_oft_blocks_that_do_not_fit_the_layer_are_reported_by_key(sd1, tmp_path):
    unet, tes = sd1
    q_key, conv_key, te_key = kohya("lora_unet_", UNET_Q), kohya("lora_unet_", UNET_CONV1), TE_Q_KEY
    norm = "down_blocks.0.attentions.0.transformer_blocks.0.norm1"
    path = write(tmp_path / "misfit.safetensors", {
        f"{q_key}.alpha": torch.tensor(1e-2), f"{q_key}.oft_blocks": torch.zeros(4, 4, 4),  # 16 rows, not 32
        f"{conv_key}.oft_diag": torch.zeros(5, 8, 4, 4),  # 5 butterfly factors need 64 rows
        f"{te_key}.oft_blocks": torch.zeros(4, 8, 8), f"{te_key}.rescale": torch.ones(16, 1),
        f"{kohya('lora_unet_', norm)}.oft_blocks": torch.zeros(4, 8, 8),  # a LayerNorm
    })
    before = snapshot(unet, tes[0])
    manager = NetworkManager(unet, tes, "sd1")
    report = manager.apply([NetworkRequest(manager.load(path), 1.0, 1.0)])
    failed = " | ".join(report.networks[0].failed_modules)
    assert report.modules_changed == 0 and len(report.networks[0].failed_modules) == 4, failed
    assert f"{q_key}.oft_blocks (OFT [4, 4, 4]: 4 blocks of 4 rows cover 16 output rows, the layer has 32)" in failed
    assert f"{conv_key}.oft_diag (BOFT [5, 8, 4, 4]" in failed and "multiple of 64" in failed
    assert f"{te_key}.rescale (rescale [16, 1] has 16 values" in failed
    assert f"{kohya('lora_unet_', norm)}.oft_blocks (OFT applies to Linear and Conv2d" in failed
    assert any(w.startswith("misfit: 4 layers could not be applied") for w in report.warnings), report.warnings
    assert_same(before, unet, tes[0])


def test_oft_keys_are_recognised_by_name():
    assert network_type_from_keys(["oft_unet_a.oft_blocks", "oft_unet_a.alpha"]) == "OFT"
    assert network_type_from_keys(["lora_unet_a.oft_diag"]) == "OFT"
