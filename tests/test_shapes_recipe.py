"""The recipe's mechanics at a tiny budget: it trains every stage, writes an SD1 single-file
checkpoint that Kiln's own loader reads back, with the markers and metadata the model needs."""

import dataclasses
import io
import json

import pytest
import torch
from safetensors import safe_open

from core.models.checkpoint import load_checkpoint
from core.shapes import recipe as R


def tiny_recipe() -> R.Recipe:
    return R.Recipe(
        dataset_size=24,
        vae=R.VaeSettings(block_out_channels=(32, 32, 32), phases=((2, 4, 32), (1, 2, 64))),
        decoder=R.DecoderSettings(steps=2, batch_size=2),
        text=R.TextSettings(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        unet=R.UnetSettings(block_out_channels=(32, 32), phases=((3, 4),), warmup_steps=2, num_attention_heads=2,
                            norm_num_groups=8, train_text_encoder=True),
        monitor_every=0,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("shapes-work")
    progress = R.Progress(work / "loss.csv", stream=io.StringIO(), every=1)
    model = R.build_model(tiny_recipe(), work, progress, monitor=False)
    return model, work, progress


def test_every_stage_trains_and_logs(built):
    model, work, progress = built
    stages = [row["stage"] for row in progress.rows]
    assert stages.count("vae") == 3 and stages.count("vae-decoder") == 2 and stages.count("unet") == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in progress.rows if "loss" in r)
    assert (work / "loss.csv").read_text().startswith("stage,step,loss")
    for name in ("vae", "text_encoder", "unet_ema-3", "latents"):
        assert (work / f"{name}.safetensors").exists()
    assert 0.1 < model.scaling_factor < 100
    # The text encoder's layers trained with the UNet; its token table kept its seeded values.
    fresh = R.build_text_encoder(tiny_recipe().text).state_dict()
    trained = model.text_encoder.state_dict()
    token_table = "embeddings.token_embedding.weight"
    assert torch.equal(fresh[token_table], trained[token_table])
    assert not torch.equal(fresh["encoder.layers.0.mlp.fc1.weight"], trained["encoder.layers.0.mlp.fc1.weight"])


def test_rerun_with_same_settings_skips_finished_stages(built):
    model, work, _ = built
    progress = R.Progress(None, stream=io.StringIO())
    again = R.build_model(tiny_recipe(), work, progress, monitor=False)
    assert not [r for r in progress.rows if r["stage"] in ("vae", "vae-decoder", "unet")]
    for key, value in model.unet.state_dict().items():
        assert torch.equal(value, again.unet.state_dict()[key])


def test_saved_file_loads_through_kilns_loader(built, tmp_path):
    model, _, _ = built
    path = R.save_built(model, tmp_path / "kiln-shapes-test.safetensors", steps_scale=0.0)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").dtype == torch.float16
    assert {"v_pred", "ztsnr"} <= keys
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.resolution"] == "64x64"
    assert meta["kiln.native_size"] == "64" and meta["kiln.prediction_type"] == "v_prediction"
    assert json.loads(meta["kiln.unet.num_attention_heads"]) in (2, [2, 2])
    assert json.loads(meta["kiln.text_encoder.num_attention_heads"]) in (2, [2])
    assert meta["kiln.unet.norm_num_groups"] == "8"
    assert float(meta["kiln.vae.scaling_factor"]) == pytest.approx(model.scaling_factor)
    recipe = json.loads(meta["kiln.recipe"])
    assert recipe["unet"]["phases"] == [[3, 4]] and recipe["world_seed"] == 1234

    loaded = load_checkpoint(path)
    assert loaded.spec.prediction_type == "v_prediction" and loaded.spec.zero_terminal_snr
    assert loaded.spec.native_size == 64
    assert loaded.spec.vae_scaling_factor == pytest.approx(model.scaling_factor)
    for ours, theirs in ((model.unet, loaded.unet), (model.vae, loaded.vae), (model.text_encoder, loaded.text_encoders[0])):
        mine = ours.state_dict()
        for key, value in theirs.state_dict().items():
            assert torch.allclose(value.float(), mine[key].float(), atol=2e-3, rtol=1e-2), key
    # Same outputs from the same inputs: the loader rebuilt the same architecture.
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        a = model.unet.float()(x, t, encoder_hidden_states=ctx).sample
        b = loaded.unet.float()(x, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(a, b, atol=5e-2)


def test_scaled_recipe_scales_steps_not_architecture():
    full = R.Recipe()
    ci = full.scaled(0.05)
    assert ci.unet.block_out_channels == full.unet.block_out_channels
    assert sum(s for s, _ in ci.unet.phases) == round(sum(s for s, _ in full.unet.phases) * 0.05)
    assert ci.dataset_size < full.dataset_size
    assert dataclasses.replace(ci, vae=full.vae, decoder=full.decoder, unet=full.unet, dataset_size=full.dataset_size, monitor_every=full.monitor_every) == full


def test_token_layout_matches_sd1_chunks():
    ids = R.token_ids(R.load_tokenizer(), "a red circle on a blue background")
    assert len(ids) == 77 and ids[0] == R.BOS_ID
    assert ids[-1] == R.EOS_ID and ids.count(R.EOS_ID) == 77 - 1 - 7


def test_lr_schedule_and_batch_phases():
    assert R.batch_size_at(((10, 32), (5, 64)), 9) == 32
    assert R.batch_size_at(((10, 32), (5, 64)), 10) == 64
    assert R.lr_at(0, 100, 1.0, 10, 0.0) == pytest.approx(0.1)
    assert R.lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_a_longer_run_continues_from_a_shorter_runs_snapshot(built, tmp_path):
    # Constant learning rate: the state after N steps does not depend on the total, so a
    # 3-step run resumed from a 2-step run's snapshot equals a 3-step run from scratch.
    model, _, _ = built
    unet = tiny_recipe().unet
    short = dataclasses.replace(tiny_recipe(), unet=dataclasses.replace(unet, stop_after=2))
    R.build_model(short, tmp_path, R.Progress(None, stream=io.StringIO()), monitor=False)
    assert len(list(tmp_path.glob("unet_state-*-000002.pt"))) == 1
    progress = R.Progress(None, stream=io.StringIO())
    resumed = R.build_model(tiny_recipe(), tmp_path, progress, monitor=False)
    assert [r["step"] for r in progress.rows if r["stage"] == "resumed"] == [2]
    assert [r["step"] for r in progress.rows if r["stage"] == "unet"] == [1]
    for key, value in model.unet.state_dict().items():
        assert torch.allclose(value, resumed.unet.state_dict()[key], atol=1e-6), key


def test_stop_after_cuts_the_run_at_a_step_of_the_same_recipe():
    settings = R.UnetSettings(phases=((2000, 16), (2000, 32)))
    assert settings.total_steps == 4000
    assert dataclasses.replace(settings, stop_after=1200).total_steps == 1200
    assert dataclasses.replace(settings, stop_after=9000).total_steps == 4000


def test_decoder_finetune_leaves_the_encoder_and_cached_latents_alone(built):
    model, work, _ = built
    from safetensors.torch import load_file

    before = load_file(str(work / "vae.safetensors"))
    after = model.vae.state_dict()
    encoder_keys = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder_keys = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert any(not torch.equal(before[k], after[k]) for k in decoder_keys)


def test_step_weights_keep_high_noise_and_damp_clean_steps():
    alphas = R.build_train_scheduler().alphas_cumprod.float()
    weights = R.step_weights(alphas, 5.0)
    assert weights[999] == 1.0  # pure noise (zero terminal SNR): full weight, never zero
    assert weights[0] < 0.01  # nearly clean: snr + 1 ~ 1000
    assert torch.all(weights[1:] >= weights[:-1])  # more noise never weighs less
    assert torch.equal(R.step_weights(alphas, None), torch.ones(1000))


def test_old_snapshots_are_pruned_but_every_thousandth_stays(tmp_path):
    prefix = tmp_path / "unet_state-abc"
    for step in (200, 400, 1000, 1200, 1400):
        prefix.with_name(f"{prefix.name}-{step:06d}.pt").write_bytes(b"x")
    R._prune_snapshots(prefix, keep=1400, keep_every=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet_state-abc-001000.pt", "unet_state-abc-001400.pt"]


def test_a_resumed_run_keeps_the_rows_of_its_loss_log(tmp_path):
    log = tmp_path / "model.loss.csv"
    first = R.Progress(log, stream=io.StringIO(), every=1)
    first.start("unet", 2)
    first.step(1, 0.5)
    first.note("monitor", step=1, shape=0.3)
    again = R.Progress(log, stream=io.StringIO(), every=1, keep_existing=True)
    again.note("resumed", step=1)
    again.start("unet", 2)
    again.step(2, 0.25)
    again.flush()
    lines = log.read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["unet", "monitor", "resumed", "unet"]
    fresh = R.Progress(log, stream=io.StringIO(), every=1)
    fresh.note("latents", count=3)
    assert len(log.read_text().splitlines()) == 2  # a run from nothing starts a new log


@pytest.mark.parametrize("value", ["16,20", "a,b,c,d", "20,16,3,10", "30,31,3,10"])
def test_a_bad_jitter_option_stops_with_a_message(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        R.main(["--out", str(tmp_path / "m.safetensors"), "--jitter", value])
    assert stop.value.code == 2 and "--jitter" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
