"""LoRA training on a tiny SD1 checkpoint through the real loaders: kohya files, metadata, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from core.dataset.caption_rules import CaptionRules
from core.errors import KilnError
from core.models.checkpoint import load_checkpoint
from core.models.fixtures import write_tiny_checkpoint
from core.training.data import Buckets, DataOptions, TrainingData, make_bucket_resolutions
from core.training.loop import LoopOptions, TrainState, input_ids
from core.training.lora import Hooks, LoraJob, OutputOptions, train_lora
from core.training.network import LoRANetwork, NetworkSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "sd1")


def _dataset(root: Path, *, n: int = 3, repeats: int = 2, size=(32, 32)) -> Path:
    folder = root / "train" / f"{repeats}_teal star"
    folder.mkdir(parents=True)
    for k in range(n):
        im = Image.new("RGB", size, (255, 255, 255))
        ImageDraw.Draw(im).ellipse([k * 2, k * 3, 20 + k, 24], fill=(0, 128, 128))
        im.save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(f"teal star, shape {k}", encoding="utf-8")
    return root / "train"


def _job(root: Path, **changes) -> LoraJob:
    loop = LoopOptions(train_batch_size=2, max_train_epochs=2, seed=7, **changes.pop("loop", {}))
    output = OutputOptions(output_dir=root / "out", output_name="teal", save_every_n_epochs=1,
                           **changes.pop("output", {}))
    return LoraJob(train_data_dir=root / "train", output=output, loop=loop,
                   data=DataOptions(resolution=(32, 32), caption_extension=".txt"),
                   network=NetworkSpec(network_dim=2, network_alpha=1.0), learning_rate=1e-3, **changes)


def _state(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, part in enumerate([model.unet, model.vae, *model.text_encoders])
            for k, v in part.state_dict().items()}


def test_kohya_bucket_resolutions_and_selection():
    resos = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in resos and (256, 1024) in resos and (1024, 256) in resos and (640, 384) in resos
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in resos)
    buckets = Buckets(DataOptions(resolution=(512, 512), enable_bucket=True))
    bucket, resized, _ = buckets.select(1200, 800)  # 3:2 → the bucket nearest in aspect, covered
    assert bucket == (640, 384) and resized[0] >= 640 and resized[1] >= 384
    fixed = Buckets(DataOptions(resolution=(512, 512)))
    assert fixed.select(1000, 500)[0] == (512, 512)
    no_up = Buckets(DataOptions(resolution=(512, 512), enable_bucket=True, bucket_no_upscale=True))
    assert no_up.select(300, 200)[0] == (256, 192)  # own size, rounded down to 64
    assert no_up.select(2000, 1000)[0][0] * no_up.select(2000, 1000)[0][1] <= 512 * 512


def test_data_reg_balance_epochs_and_metadata_counts(tmp_path):
    train = _dataset(tmp_path, n=3, repeats=2)
    reg = tmp_path / "reg" / "1_star"
    reg.mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (32, 32), (k * 40, 0, 0)).save(reg / f"r{k}.png")
    from core.dataset.kohya_folders import scan_dataset

    data = TrainingData(scan_dataset(train, tmp_path / "reg"), DataOptions(resolution=(32, 32),
                                                                          caption_extension=".txt"), seed=3)
    assert data.num_train_images == 6 and data.num_reg_images == 4
    assert sum(i.repeats for i in data.reg) == 6  # balanced to the train count
    assert data.batches_per_epoch(2) == 6
    assert data.epoch_batches(1, 2) == data.epoch_batches(1, 2) != data.epoch_batches(2, 2)
    freq = data.tag_frequency()
    assert freq["2_teal star"]["teal star"] == 3 and freq["1_star"] == {"star": 4}  # class tokens as caption
    assert data.dataset_dirs() == {"2_teal star": {"n_repeats": 2, "img_count": 3}}
    pixels = data.pixels(data.train[0], __import__("random").Random(0))
    assert pixels.shape == (3, 32, 32) and -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0


def test_caption_ids_follow_kohya_windows(checkpoint):
    model = load_checkpoint(checkpoint)
    tok = model.tokenizers[0]
    ids = input_ids(tok, "a red circle", 75)
    assert ids.shape == (1, 77) and ids[0, 0] == tok.bos_token_id and tok.eos_token_id in ids[0].tolist()
    assert input_ids(tok, "a red circle", 225).shape == (3, 77)


def test_train_writes_kohya_files_that_load_and_match_the_runtime_network(checkpoint, tmp_path):
    model = load_checkpoint(checkpoint)
    before = _state(model)
    _dataset(tmp_path)
    steps = []
    files = train_lora(_job(tmp_path), model, Hooks(on_step=steps.append))
    assert [p.name for p in files] == ["teal-000001.safetensors", "teal.safetensors"]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(s.loss)) for s in steps)  # 2 epochs × 3 batches
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base model is never written
    tensors = load_file(files[-1])
    assert any(k.startswith("lora_unet_") for k in tensors) and any(k.startswith("lora_te_text_model_") for k in tensors)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors)
    with safe_open(files[-1], "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_train_images"] == "6" and meta["ss_num_batches_per_epoch"] == "3"
    assert meta["ss_max_train_steps"] == "6" and meta["ss_epoch"] == "2" and meta["ss_steps"] == "6"
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1.0" and meta["ss_v2"] == "False"
    assert meta["ss_resolution"] == "(32, 32)" and meta["ss_bucket_info"] == "null"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_teal star": {"n_repeats": 2, "img_count": 3}}
    assert json.loads(meta["ss_tag_frequency"])["2_teal star"]["teal star"] == 3
    assert meta["ss_output_name"] == "teal" and meta["modelspec.resolution"] == "32x32"
    assert all(isinstance(v, str) for v in meta.values()) and "sshs_model_hash" in meta
    loss_log = (tmp_path / "out" / "teal.loss.csv").read_text().splitlines()
    assert loss_log[0] == "step,epoch,loss,average_loss,lr" and len(loss_log) == 7

    # Kiln's own loader finds every key, and the merged weights give the runtime network's output.
    from core.networks.lora import NetworkManager, NetworkRequest, load_network

    manager = NetworkManager(model.unet, model.text_encoders, "sd1", model.spec.unet_config)
    network = load_network(files[-1])
    match = manager.match(network)
    assert not match.unmatched_keys and match.matched_keys == len(tensors)
    trained = LoRANetwork(model.unet, model.text_encoders, "sd1", NetworkSpec(network_dim=2, network_alpha=1.0),
                          model.spec.unet_config)
    trained.load_kohya_state_dict(tensors)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, model.text_encoders[0].config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), trained.attached():
        runtime = model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
        with torch.no_grad():
            plain_ids = torch.tensor([[49406] + [49407] * 76])
            runtime_te = model.text_encoders[0](plain_ids).last_hidden_state
    manager.apply([NetworkRequest(network, 1.0, 1.0)])
    with torch.no_grad():
        merged = model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
        merged_te = model.text_encoders[0](plain_ids).last_hidden_state
    manager.restore()
    assert torch.allclose(runtime, merged, atol=1e-5) and torch.allclose(runtime_te, merged_te, atol=1e-5)


def test_resume_from_a_stopped_run_ends_on_the_same_weights(checkpoint, tmp_path):
    model = load_checkpoint(checkpoint)
    a, b = tmp_path / "a", tmp_path / "b"
    _dataset(a)
    _dataset(b)
    whole = load_file(train_lora(_job(a), model)[-1])
    stop_after = {"n": 0}

    def stop() -> bool:  # "stop and save" after 4 of the 6 steps (mid-epoch 2)
        return stop_after["n"] >= 4

    def count(_report) -> None:
        stop_after["n"] += 1
    train_lora(_job(b), model, Hooks(on_step=count, should_stop=stop))
    state_path = b / "out" / "teal-state.pt"
    assert TrainState.load(state_path).global_step == 4
    resumed = load_file(train_lora(_job(b, resume=state_path), model)[-1])
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # bit-exact on CPU


def test_bad_input_gives_clear_messages(checkpoint, tmp_path):
    model = load_checkpoint(checkpoint)
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(KilnError, match="dataset check found"):
        train_lora(_job(tmp_path), model)
    _dataset(tmp_path / "x")
    job = _job(tmp_path / "x")
    train_lora(job, model)
    with pytest.raises(KilnError, match="already there"):
        train_lora(job, model)
    with pytest.raises(KilnError, match="network_dim"):
        LoRANetwork(model.unet, model.text_encoders, "sd1", NetworkSpec(network_dim=4096), model.spec.unet_config)
    with pytest.raises(KilnError, match="random_crop"):
        train_lora(LoraJob(train_data_dir=job.train_data_dir, output=OutputOptions(tmp_path / "o2"),
                           data=DataOptions(resolution=(32, 32), random_crop=True, caption_extension=".txt",
                                            captions=CaptionRules())), model)


def test_training_runs_as_a_queue_job_and_stop_and_save_keeps_a_file(tmp_path):
    import threading

    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings
    from core.training.jobs import training_job

    write_tiny_checkpoint(tmp_path / "data", "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path / "data")]), tmp_path / "data")
    engine, queue = Engine(settings), JobQueue()
    _dataset(tmp_path)
    job = _job(tmp_path, loop={"max_train_steps": 6})
    job = LoraJob(**{**job.__dict__, "loop": LoopOptions(train_batch_size=2, max_train_steps=50, seed=7)})
    try:
        running = queue.submit(training_job(engine, job), "LoRA teal", "user:ann", kind="train")
        deadline = __import__("time").monotonic() + 120
        while len(running.metrics) < 3 and __import__("time").monotonic() < deadline:
            threading.Event().wait(0.1)
        assert queue.stop(running.id, owner="user:ann")
        files = running.wait(120)
        snapshot = queue.progress(owner="user:ann", job_id=running.id)
        assert running.progress.total_steps == 50 and 3 <= running.progress.step < 50
        assert files[-1].endswith("teal.safetensors") and Path(files[-1]).is_file()
        assert TrainState.load(tmp_path / "out" / "teal-state.pt").global_step == running.progress.step
        assert {"loss", "average_loss", "lr", "epoch"} <= set(running.metrics[-1])
        assert any(a.kind == "lora" for a in running.artifacts) and snapshot is not None
    finally:
        queue.shutdown()


def _toml(tmp_path: Path, checkpoint: Path, **extra) -> Path:
    lines = [f'pretrained_model_name_or_path = "{checkpoint}"', f'train_data_dir = "{tmp_path / "train"}"',
             f'output_dir = "{tmp_path / "out"}"', 'output_name = "teal"', 'resolution = "32,32"',
             "network_module = \"networks.lora\"", "network_dim = 2", "network_alpha = 1",
             "learning_rate = 0.001", "unet_lr = 0.001", "text_encoder_lr = 0.0005", "train_batch_size = 2",
             "max_train_epochs = 2", "save_every_n_epochs = 1", 'caption_extension = ".txt"', "seed = 7",
             'optimizer_type = "AdamW"', 'lr_scheduler = "cosine"', "lr_warmup_steps = 0.1",
             "shuffle_caption = true", "keep_tokens = 1"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_kohya_toml_trains_headless(checkpoint, tmp_path, capsys):
    from core.training.__main__ import main

    _dataset(tmp_path)
    assert main([str(_toml(tmp_path, checkpoint))]) == 0
    out = capsys.readouterr()
    assert out.out.split() == [str(tmp_path / "out" / "teal-000001.safetensors"), str(tmp_path / "out" / "teal.safetensors")]
    assert "step 6/6" in out.err
    with safe_open(tmp_path / "out" / "teal.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_lr_scheduler"] == "cosine" and meta["ss_shuffle_caption"] == "True"
    assert meta["ss_keep_tokens"] == "1" and meta["ss_text_encoder_lr"] == "0.0005"


def test_options_kiln_lacks_are_listed_not_ignored(checkpoint, tmp_path, capsys):
    from core.training.__main__ import main

    _dataset(tmp_path)
    config = _toml(tmp_path, checkpoint, fp8_base="true", mixed_precision='"fp16"', typo_key="1")
    assert main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "typo_key" in err and "Kiln would not apply" in err
    config = _toml(tmp_path, checkpoint, fp8_base="true", mixed_precision='"fp16"')
    assert main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "fp8_base" in err and "NOT applied" in err and "mixed_precision" not in err  # Kiln has mixed precision
    assert not (tmp_path / "out" / "teal.safetensors").exists()
    assert main([str(config), "--allow-unsupported"]) == 0


def test_help_lists_every_key():
    from core.training.__main__ import build_parser

    text = build_parser().format_help()
    assert "network_dim" in text and "lr_scheduler_num_cycles" in text and "caption_extension" in text


def test_diffusers_load_lora_weights_reads_the_file_as_kiln_trained_it(checkpoint, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    model = load_checkpoint(checkpoint)
    _dataset(tmp_path)
    path = train_lora(_job(tmp_path), model)[-1]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, model.text_encoders[0].config.hidden_size, generator=torch.Generator().manual_seed(1))
    network = LoRANetwork(model.unet, model.text_encoders, "sd1", NetworkSpec(network_dim=2, network_alpha=1.0),
                          model.spec.unet_config)
    network.load_kohya_state_dict(load_file(path))
    with torch.no_grad():
        base = model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
        with network.attached():
            kiln = model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0],
                                   unet=model.unet, scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    with torch.no_grad():
        diffusers_out = model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
    assert (kiln - base).abs().max() > 1e-3  # the LoRA does something
    assert torch.allclose(diffusers_out, kiln, atol=1e-5)


def test_sample_prompt_lines_as_kohya_writes_them(tmp_path):
    from core.training.samples import parse_prompt_line, read_sample_prompts, sampler_name

    p = parse_prompt_line("a teal circle, (masterpiece:1.2) --n blurry, lowres --w 64 --h 48 --d 5 --l 6.5 --s 12")
    assert (p.prompt, p.negative_prompt, p.width, p.height, p.seed, p.cfg_scale, p.steps) == (
        "a teal circle, (masterpiece:1.2)", "blurry, lowres", 64, 48, 5, 6.5, 12)
    (tmp_path / "p.txt").write_text("# comment\n\na red square\n", encoding="utf-8")
    assert [q.prompt for q in read_sample_prompts(tmp_path / "p.txt")] == ["a red square"]
    assert sampler_name("euler_a") == "Euler a" and sampler_name("ddim") == "DDIM"
    with pytest.raises(KilnError):
        parse_prompt_line("x --w big")


def test_samples_come_from_the_pipeline_with_the_lora_attached(tmp_path):
    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.settings import Settings
    from core.training.jobs import training_job
    from core.training.samples import SamplePrompt

    write_tiny_checkpoint(tmp_path / "data", "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path / "data")]), tmp_path / "data")
    engine, queue = Engine(settings), JobQueue()
    _dataset(tmp_path)
    base = _job(tmp_path)
    job = LoraJob(**{**base.__dict__, "sample_prompts": (SamplePrompt("teal star", width=32, height=32, steps=3,
                                                                      seed=1),),
                     "sample_every_n_epochs": 1, "sample_sampler": "euler"})
    try:
        running = queue.submit(training_job(engine, job), "LoRA teal", "user:ann", kind="train")
        running.wait(300)
        samples = sorted((tmp_path / "out" / "sample").glob("teal_e*.png"))
        assert [p.name[:12] for p in samples] == ["teal_e000001", "teal_e000002"]
        assert [a.kind for a in running.artifacts].count("sample") == 2
        # the same prompt without the LoRA (plain base model afterwards) differs from the last sample
        from core.generation.params import GenerationParams

        plain = queue.run(lambda ctx: engine.txt2img(GenerationParams(prompt="teal star", width=32, height=32,
                                                                     steps=3, seed=1, cfg_scale=7.5,
                                                                     sampler_name="Euler", save_images=False),
                                                    ctx), timeout=120).images[0].image
        import numpy as np

        assert not np.array_equal(np.asarray(plain), np.asarray(Image.open(samples[-1])))
    finally:
        queue.shutdown()


def test_multires_noise_is_unit_std_and_seeded():
    import random

    from core.training.loop import pyramid_noise

    base = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    a = pyramid_noise(base, 6, 0.3, random.Random(1), torch.Generator().manual_seed(2))
    b = pyramid_noise(base, 6, 0.3, random.Random(1), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and abs(float(a.std()) - 1.0) < 1e-5 and not torch.allclose(a, base)


def test_network_weights_continue_from_a_lora(checkpoint, tmp_path):
    model = load_checkpoint(checkpoint)
    _dataset(tmp_path / "a")
    first = train_lora(_job(tmp_path / "a"), model)[-1]
    _dataset(tmp_path / "b")
    job = _job(tmp_path / "b", network_weights=first, loop={"multires_noise_iterations": 4})
    job = LoraJob(**{**job.__dict__, "learning_rate": 1e-12, "loop": LoopOptions(train_batch_size=2, max_train_steps=1,
                                                                                  multires_noise_iterations=4)})
    second = load_file(train_lora(job, model)[-1])
    start = load_file(first)
    assert all(torch.allclose(start[k], second[k], atol=1e-6) for k in start)


def test_latents_cached_to_disk_are_reused_and_invalidated_when_the_picture_changes(checkpoint, tmp_path):
    import numpy as np

    model = load_checkpoint(checkpoint)
    _dataset(tmp_path)
    job = _job(tmp_path, loop={"cache_latents_to_disk": True}, output={"overwrite": True})
    whole = load_file(train_lora(job, model)[-1])
    npz = tmp_path / "train" / "2_teal star" / "0.npz"
    with np.load(npz) as data:
        assert data["latents"].shape[0] == 4 and list(data["original_size"]) == [32, 32]
        first = data["latents"].copy()
    again = load_file(train_lora(job, model)[-1])  # from the .npz files: the same weights
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "train" / "2_teal star" / "0.png")
    train_lora(job, model)
    with np.load(npz) as data:
        assert not np.array_equal(first, data["latents"])  # the changed picture was encoded again


def test_others_generate_at_the_trainers_pause_points_on_the_plain_base_model(tmp_path):
    import time as _time

    import numpy as np

    from core.cli import parse_flags
    from core.engine import Engine
    from core.generation.params import GenerationParams
    from core.jobs import JobQueue
    from core.settings import Settings
    from core.training.jobs import training_job

    write_tiny_checkpoint(tmp_path / "data", "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path / "data")]), tmp_path / "data")
    engine, queue = Engine(settings), JobQueue()
    params = GenerationParams(prompt="teal star", width=32, height=32, steps=3, seed=5, sampler_name="Euler",
                              save_images=False)
    _dataset(tmp_path)
    job = _job(tmp_path)
    job = LoraJob(**{**job.__dict__, "loop": LoopOptions(train_batch_size=2, max_train_epochs=8, seed=7)})
    try:
        solo = queue.run(lambda ctx: engine.txt2img(params, ctx), "solo", "user:bob", timeout=120).images[0].image
        training = queue.submit(training_job(engine, job), "LoRA teal", "user:ann", kind="train")
        deadline = _time.monotonic() + 120
        while not training.metrics and not training.done and _time.monotonic() < deadline:
            _time.sleep(0.05)
        assert training.metrics, training.error_message
        bob = queue.submit(lambda ctx: engine.txt2img(params, ctx), "bob's picture", "user:bob", kind="generate")
        picture = bob.wait(300).images[0].image
        assert not training.done  # bob did not wait for the whole run
        assert training.paused_seconds > 0  # it ran at the trainer's pause point
        assert np.array_equal(np.asarray(picture), np.asarray(solo))  # the plain base model, no LoRA
        training.wait(300)
    finally:
        queue.shutdown()


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_file(checkpoint, tmp_path):
    model = load_checkpoint(checkpoint)
    _dataset(tmp_path)
    job = _job(tmp_path)
    job = LoraJob(**{**job.__dict__, "learning_rate": 1e30, "unet_lr": 1e30, "text_encoder_lr": 1e30,
                     "loop": LoopOptions(train_batch_size=2, max_train_epochs=6, seed=7, max_grad_norm=0)})
    with pytest.raises(KilnError, match="loss became"):
        train_lora(job, model)
    for path in (tmp_path / "out").glob("teal-*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(path).values())


def test_an_sd2_v_prediction_base_trains_and_the_config_is_told_what_kohya_needs(tmp_path):
    from core.training.config import TrainConfig
    from core.training.from_config import model_mismatches

    model = load_checkpoint(write_tiny_checkpoint(tmp_path / "ckpt", "sd2"))
    assert model.spec.family == "sd2" and model.spec.prediction_type == "v_prediction"
    notes = model_mismatches(TrainConfig(), model.spec)
    assert any("v2 = true" in n for n in notes) and any("v_parameterization = true" in n for n in notes)
    assert model_mismatches(TrainConfig(v2=True, v_parameterization=True), model.spec) == []
    _dataset(tmp_path)
    files = train_lora(_job(tmp_path), model)
    with safe_open(files[-1], "pt") as f:
        meta = f.metadata()
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.prediction_type"] == "v"
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in load_file(files[-1]))


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from core.networks.kohya import save_lora
from core.training.loop import TrainState
out = Path(sys.argv[1])
weights = {"lora_unet_x.lora_down.weight": torch.randn(1024, 2048), "lora_unet_x.alpha": torch.tensor(4.0)}
print("ready", flush=True)
for n in range(10**9):
    weights["lora_unet_x.lora_down.weight"].fill_(float(n))
    save_lora(out / "teal.safetensors", weights, {"ss_steps": str(n)})
    TrainState(global_step=n, network=weights).save(out / "teal-state.pt")
"""


def test_kill_9_mid_save_leaves_the_previous_file_and_state_whole(tmp_path):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time as _time

    repo = Path(__file__).resolve().parents[1]
    for trial in range(4):
        out = tmp_path / f"t{trial}"
        out.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(out)], cwd=repo, stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(repo)})
        assert proc.stdout.readline().strip() == b"ready"
        deadline = _time.monotonic() + 60
        while not (out / "teal-state.pt").exists() and _time.monotonic() < deadline:
            _time.sleep(0.05)
        _time.sleep(random.uniform(0.1, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        tensors = load_file(out / "teal.safetensors")  # whole: it loads
        with safe_open(out / "teal.safetensors", "pt") as f:
            steps = int(f.metadata()["ss_steps"])
        assert float(tensors["lora_unet_x.lora_down.weight"][0, 0]) == steps
        state = TrainState.load(out / "teal-state.pt")
        assert float(state.network["lora_unet_x.lora_down.weight"][0, 0]) == state.global_step
    from core.fileio import remove_stale_temp_files

    leftovers = [p for p in tmp_path.rglob(".*.tmp")]
    for folder in {p.parent for p in leftovers}:
        remove_stale_temp_files(folder, "teal*", older_than_s=0)
    assert not list(tmp_path.rglob(".*.tmp"))  # what a kill leaves is recognised as Kiln's and removed


def test_step_saves_and_keeping_only_the_last_epochs(checkpoint, tmp_path):
    model = load_checkpoint(checkpoint)
    _dataset(tmp_path)
    job = _job(tmp_path, output={"save_every_n_steps": 2, "save_last_n_epochs": 2})
    job = LoraJob(**{**job.__dict__, "loop": LoopOptions(train_batch_size=2, max_train_epochs=4, seed=7)})
    (tmp_path / "out").mkdir()
    keep = tmp_path / "out" / "teal-000099.safetensors"
    keep.write_bytes(b"someone's file")
    files = train_lora(job, model)
    names = sorted(p.name for p in (tmp_path / "out").glob("teal*.safetensors"))
    assert names == ["teal-000002.safetensors", "teal-000003.safetensors", "teal-000099.safetensors",
                     "teal-step00000002.safetensors", "teal-step00000004.safetensors", "teal-step00000006.safetensors",
                     "teal-step00000008.safetensors", "teal-step00000010.safetensors", "teal.safetensors"]
    assert keep.read_bytes() == b"someone's file" and keep not in files
    with safe_open(tmp_path / "out" / "teal-step00000004.safetensors", "pt") as f:
        assert f.metadata()["ss_steps"] == "4" and f.metadata()["ss_epoch"] == "1"  # 0-based inside epoch 2
