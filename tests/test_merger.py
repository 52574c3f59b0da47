"""The Checkpoint Merger on tiny checkpoints in the real single-file layout: the WebUI's
arithmetic, names and metadata, Kiln's text-encoder swap and LoRA baking, the refusals, and the
files reloading through Kiln's checkpoint loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import KilnError
from core.hashing import model_hash_old, sha256_file
from core.merge.merger import MergeMismatch, run_merge
from core.merge.recipe import ADD_DIFFERENCE, NO_INTERPOLATION, MergeParams, ModelRef
from core.models.checkpoint import load_checkpoint, save_checkpoint
from core.models.fixtures import (
    tiny_model,
    write_tiny_inpainting_checkpoint,
    write_tiny_networks,
    write_tiny_vae,
)

UNET = "model.diffusion_model."
TE = "cond_stage_model."


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    ckpt = root / "models" / "Stable-diffusion"
    out = {name: save_checkpoint(tiny_model("sd1", seed), ckpt / f"{name}.safetensors")  # float32 files
           for name, seed in (("a", 11), ("b", 22), ("c", 33))}
    out["xl"] = save_checkpoint(tiny_model("sdxl", 44), ckpt / "xl.safetensors")
    out["inpaint"] = write_tiny_inpainting_checkpoint(root)
    out["vae"] = write_tiny_vae(root)
    out["lora"] = write_tiny_networks(root, "sd1")["kohya"]
    out["dir"] = ckpt
    return out


def ref(files, name: str) -> ModelRef:
    return ModelRef(files[name].name, files[name])


def merge(files, tmp_path, a="a", b="b", c=None, **kw):
    params = MergeParams(ref(files, a), ref(files, b) if b else None, ref(files, c) if c else None, **kw)
    return run_merge(params, tmp_path)


def _merged_keys(tensors):
    return [k for k, v in tensors.items() if "model" in k and v.is_floating_point()]


def test_weighted_sum_at_0_is_a_and_at_1_is_b_bitwise(files, tmp_path):
    a, b = load_file(files["a"]), load_file(files["b"])
    zero = load_file(merge(files, tmp_path, multiplier=0.0).path)
    one = load_file(merge(files, tmp_path, multiplier=1.0).path)
    assert set(zero) == set(a) == set(one)
    for key in a:
        assert zero[key].dtype == a[key].dtype and torch.equal(zero[key], a[key]), key
        expected = b[key] if key in _merged_keys(a) and not key.endswith("position_ids") else a[key]
        assert torch.equal(one[key], expected), key
    assert torch.equal(one["alphas_cumprod"], a["alphas_cumprod"])  # not a model weight: A's


def test_weighted_sum_math_and_the_webui_file_name(files, tmp_path):
    result = merge(files, tmp_path, multiplier=0.3)
    assert result.path.name == "0.7(a) + 0.3(b).safetensors"
    assert result.message == f"Checkpoint saved to {result.path}"
    a, b, out = load_file(files["a"]), load_file(files["b"]), load_file(result.path)
    key = UNET + "input_blocks.1.1.proj_in.weight"
    torch.testing.assert_close(out[key], 0.7 * a[key] + 0.3 * b[key], rtol=0, atol=1e-6)
    assert not torch.equal(out[key], a[key])


def test_add_difference_math(files, tmp_path):
    result = merge(files, tmp_path, c="c", interp_method=ADD_DIFFERENCE, multiplier=0.5)
    assert result.path.name == "a + 0.5(b - c).safetensors"
    a, b, c, out = (load_file(p) for p in (files["a"], files["b"], files["c"], result.path))
    for key in (UNET + "out.2.weight", TE + "transformer.text_model.encoder.layers.0.mlp.fc1.weight",
                "first_stage_model.decoder.conv_out.weight"):
        torch.testing.assert_close(out[key], a[key] + 0.5 * (b[key] - c[key]), rtol=0, atol=1e-6)
    with pytest.raises(KilnError, match="requires a tertiary model"):
        merge(files, tmp_path, interp_method=ADD_DIFFERENCE)


def test_text_encoder_swap_keeps_a_unet_and_takes_b_text_encoder(files, tmp_path):
    result = merge(files, tmp_path, interp_method=NO_INTERPOLATION, replace_text_encoder=True)
    assert result.path.name == "a + te(b).safetensors"
    a, b, out = load_file(files["a"]), load_file(files["b"]), load_file(result.path)
    te_keys = [k for k in a if k.startswith(TE)]
    assert te_keys and all(torch.equal(out[k], b[k]) for k in te_keys)
    assert all(torch.equal(out[k], a[k]) for k in a if not k.startswith(TE))
    merged, model_a, model_b = (load_checkpoint(p) for p in (result.path, files["a"], files["b"]))
    for name, tensor in merged.unet.state_dict().items():
        assert torch.equal(tensor, model_a.unet.state_dict()[name]), name
    for name, tensor in merged.text_encoders[0].state_dict().items():
        assert torch.equal(tensor, model_b.text_encoders[0].state_dict()[name]), name


def test_lora_baked_in_equals_what_generation_applies(files, tmp_path):
    from core.networks.lora import NetworkManager, NetworkRequest, load_network

    result = run_merge(MergeParams(ref(files, "a"), interp_method=NO_INTERPOLATION,
                                   lora=ModelRef("kiln_style_v1", files["lora"]), lora_weight=0.7), tmp_path)
    assert result.path.name == "a + 0.7(kiln_style_v1).safetensors"
    base = load_checkpoint(files["a"])
    manager = NetworkManager(base.unet, base.text_encoders, "sd1", base.spec.unet_config)
    report = manager.apply([NetworkRequest(load_network(files["lora"]), 0.7, 0.7)])
    assert report.modules_changed > 0
    baked = load_checkpoint(result.path)
    changed = 0
    for part, other in ((baked.unet, base.unet), (baked.text_encoders[0], base.text_encoders[0])):
        theirs = other.state_dict()
        for name, tensor in part.state_dict().items():
            assert torch.equal(tensor, theirs[name]), name
    manager.restore()
    plain = load_checkpoint(files["a"])
    for name, tensor in baked.unet.state_dict().items():
        changed += not torch.equal(tensor, plain.unet.state_dict()[name])
    assert changed > 0
    vae_a, vae_out = load_file(files["a"]), load_file(result.path)
    assert all(torch.equal(vae_out[k], v) for k, v in vae_a.items() if k.startswith("first_stage_model."))


def test_sd1_with_sdxl_is_refused_naming_a_key_and_writes_nothing(files, tmp_path):
    with pytest.raises(MergeMismatch) as info:
        merge(files, tmp_path, b="xl")
    message = info.value.message
    assert "A is an SD1 model and B is an SDXL model" in message
    assert "first mismatched key: cond_stage_model.transformer.text_model." in message  # A's first key
    assert list(tmp_path.iterdir()) == []


def test_a_missing_key_or_shape_is_refused_naming_it(files, tmp_path):
    b = load_file(files["b"])
    gone = UNET + "output_blocks.2.1.conv.weight"
    assert gone in b
    del b[gone]
    broken = tmp_path / "src" / "b-pruned.safetensors"
    broken.parent.mkdir()
    save_file(b, broken, metadata={"format": "pt"})
    with pytest.raises(MergeMismatch, match=f"first mismatched key: {gone} is in A but not in B"):
        run_merge(MergeParams(ref(files, "a"), ModelRef(broken.name, broken)), tmp_path / "out")
    b[gone] = torch.zeros(3, 3)
    save_file(b, broken, metadata={"format": "pt"})
    with pytest.raises(MergeMismatch, match=rf"{gone} is \[64, 64, 3, 3\] in A but \[3, 3\] in B"):
        run_merge(MergeParams(ref(files, "a"), ModelRef(broken.name, broken)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_never_overwritten_unless_asked(files, tmp_path):
    first = merge(files, tmp_path, custom_name="mine", multiplier=0.5)
    before = first.path.read_bytes()
    with pytest.raises(KilnError, match="mine.safetensors already exists"):
        merge(files, tmp_path, custom_name="mine", multiplier=0.9)
    assert first.path.read_bytes() == before
    again = merge(files, tmp_path, custom_name="mine", multiplier=0.9, overwrite=True)
    assert again.path == first.path and again.path.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.safetensors"]  # no temp file left
    with pytest.raises(KilnError, match="mine.safetensors already exists"):  # a typed extension is the same name
        merge(files, tmp_path, custom_name="mine.safetensors")


def test_metadata_has_the_webui_recipe_and_model_tree(files, tmp_path):
    result = merge(files, tmp_path, multiplier=0.25, custom_name="meta")
    from core.models.checkpoint import read_checkpoint_metadata

    meta = read_checkpoint_metadata(result.path)
    assert meta["format"] == "pt"
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe == {
        "type": "webui", "primary_model_hash": sha256_file(files["a"]),
        "secondary_model_hash": sha256_file(files["b"]), "tertiary_model_hash": None,
        "interp_method": "Weighted sum", "multiplier": 0.25, "save_as_half": False, "custom_name": "meta",
        "config_source": 0, "bake_in_vae": "None", "discard_weights": "", "is_inpainting": False,
        "is_instruct_pix2pix": False}
    models = json.loads(meta["sd_merge_models"])
    assert models[sha256_file(files["a"])] == {"name": "a.safetensors", "legacy_hash": model_hash_old(files["a"]),
                                               "sd_merge_recipe": None}
    assert set(models) == {sha256_file(files["a"]), sha256_file(files["b"])}
    # a merge of that merge keeps the tree, and its own recipe under its hash
    ref_m = ModelRef(result.path.name, result.path)
    second = run_merge(MergeParams(ref_m, ref(files, "c"), custom_name="meta2"), tmp_path)
    tree = json.loads(read_checkpoint_metadata(second.path)["sd_merge_models"])
    assert tree[sha256_file(result.path)]["sd_merge_recipe"]["custom_name"] == "meta"
    assert sha256_file(files["a"]) in tree and sha256_file(files["c"]) in tree


def test_float16_bake_in_vae_and_discard_weights(files, tmp_path):
    result = run_merge(MergeParams(ref(files, "a"), interp_method=NO_INTERPOLATION, save_as_half=True,
                                   bake_in_vae="tiny-vae.safetensors", bake_in_vae_path=files["vae"],
                                   discard_weights="model_ema|^alphas", custom_name="half"), tmp_path)
    out, vae = load_file(result.path), load_file(files["vae"])
    assert "alphas_cumprod" not in out
    assert all(v.dtype == torch.float16 for v in out.values() if v.is_floating_point())
    for key, tensor in vae.items():
        assert torch.equal(out["first_stage_model." + key], tensor.half()), key
    assert load_checkpoint(result.path).spec.family == "sd1"
    recipe = json.loads(result.metadata["sd_merge_recipe"])
    assert recipe["bake_in_vae"] == "tiny-vae.safetensors" and recipe["save_as_half"] is True


def test_inpainting_a_merges_its_first_four_channels(files, tmp_path):
    result = merge(files, tmp_path, a="inpaint", multiplier=1.0)
    assert result.path.name == "0.0(tiny-sd1-inpainting) + 1.0(b).inpainting.safetensors"
    a, b, out = load_file(files["inpaint"]), load_file(files["b"]), load_file(result.path)
    key = UNET + "input_blocks.0.0.weight"
    assert out[key].shape[1] == 9
    assert torch.equal(out[key][:, :4], b[key].to(out[key].dtype))
    assert torch.equal(out[key][:, 4:], a[key][:, 4:].to(out[key].dtype))
    assert json.loads(result.metadata["sd_merge_recipe"])["is_inpainting"] is True
    assert load_checkpoint(result.path).unet.config.in_channels == 9
    with pytest.raises(MergeMismatch, match="A must be the inpainting model"):
        merge(files, tmp_path, b="inpaint")


def test_ckpt_format_and_config_copy(files, tmp_path):
    config = files["a"].with_suffix(".yaml")
    config.write_text("model: {}\n", encoding="utf-8")
    try:
        result = merge(files, tmp_path, checkpoint_format="ckpt", custom_name="as-ckpt")
    finally:
        config.unlink()
    assert result.path.name == "as-ckpt.ckpt"
    assert result.config_path == tmp_path / "as-ckpt.yaml"
    assert result.config_path.read_text(encoding="utf-8") == "model: {}\n"
    assert load_checkpoint(result.path).spec.family == "sd1"


def test_the_merge_job_reports_progress_and_lists_the_new_file(files, tmp_path):
    import shutil

    from core.cli import parse_flags
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.merge.job import MergeChoices, submit_merge
    from core.settings import Settings

    data = tmp_path / "data"
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(files[name], folder / files[name].name)
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data)]), data)
    settings.paths.ensure_dirs()
    engine = Engine(settings)
    queue = JobQueue()
    try:
        with pytest.raises(KilnError, match="Secondary model"):
            submit_merge(engine, queue, MergeChoices(primary="a.safetensors", secondary="nope.safetensors"))
        job = submit_merge(engine, queue, MergeChoices(primary="a.safetensors", secondary="b.safetensors",
                                                       multiplier=0.5), owner="me")
        result = job.wait(300)
    finally:
        queue.shutdown()
    assert job.kind == "merge" and job.progress.state == "done"
    assert job.progress.total_steps == len(load_file(files["a"])) and job.progress.step == job.progress.total_steps
    assert job.artifacts[0].path == str(result.path)
    assert engine.registry.find_checkpoint("0.5(a) + 0.5(b).safetensors") is not None


def test_sdxl_text_encoder_swap_takes_both_embedders_from_b(files, tmp_path):
    b = save_checkpoint(tiny_model("sdxl", 55), tmp_path / "src" / "xl-b.safetensors")
    result = run_merge(MergeParams(ref(files, "xl"), ModelRef(b.name, b), interp_method=NO_INTERPOLATION,
                                   replace_text_encoder=True), tmp_path / "out")
    a_t, b_t, out = load_file(files["xl"]), load_file(b), load_file(result.path)
    te = [k for k in a_t if k.startswith("conditioner.embedders.")]
    assert any(".embedders.0." in k for k in te) and any(".embedders.1." in k for k in te)
    assert all(torch.equal(out[k], b_t[k]) for k in te)
    assert all(torch.equal(out[k], a_t[k]) for k in a_t if not k.startswith("conditioner."))
    assert load_checkpoint(result.path).spec.family == "sdxl"


def test_a_pickled_ckpt_merges_like_its_safetensors(files, tmp_path):
    ckpt = tmp_path / "src" / "a.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": load_file(files["a"])}, ckpt)
    result = run_merge(MergeParams(ModelRef("a.ckpt", ckpt), ref(files, "b"), multiplier=0.0), tmp_path / "out")
    assert result.path.name == "1.0(a) + 0.0(b).safetensors"
    a, out = load_file(files["a"]), load_file(result.path)
    assert set(a) == set(out) and all(torch.equal(out[k], a[k]) for k in a)


def test_an_interrupted_merge_leaves_no_file(files, tmp_path):
    from core.errors import JobInterrupted

    class StopAfter:
        def __init__(self, n: int):
            self.left = n

        def set_total(self, total_steps: int, job_count: int = 1) -> None:
            self.total = total_steps

        def set_text(self, text: str) -> None:
            self.text = text

        def advance(self, steps: int = 1, *, check: bool = True) -> None:
            self.left -= steps
            if self.left <= 0:
                raise JobInterrupted()

    progress = StopAfter(20)
    with pytest.raises(JobInterrupted):
        run_merge(MergeParams(ref(files, "a"), ref(files, "b")), tmp_path, progress)
    assert progress.total == len(load_file(files["a"])) and progress.text.endswith(f"key 20 of {progress.total}")
    assert list(tmp_path.iterdir()) == []


def test_the_inputs_are_streamed_never_read_whole(files, tmp_path, monkeypatch):
    """A, B and C are read a tensor at a time (safe_open), never through the whole-file readers."""
    import safetensors.torch

    import core.models.state_dict_io as io

    def whole_file(*args, **kwargs):
        raise AssertionError("a whole checkpoint was read")

    monkeypatch.setattr(io, "read_state_dict", whole_file)
    monkeypatch.setattr(io, "_read_safetensors", whole_file)
    monkeypatch.setattr(safetensors.torch, "load_file", whole_file)
    result = merge(files, tmp_path, c="c", interp_method=ADD_DIFFERENCE, multiplier=0.5)
    assert result.path.is_file()


def test_output_names_follow_the_webui_rule():
    from core.merge.recipe import output_filename

    a, b, c = ModelRef("sub/x.safetensors", Path("x")), ModelRef("y.ckpt", Path("y")), ModelRef("z.safetensors",
                                                                                              Path("z"))
    assert output_filename(MergeParams(a, b, multiplier=0.25), inpainting=False, instruct_pix2pix=False) \
        == "0.75(sub_x) + 0.25(y).safetensors"
    assert output_filename(MergeParams(a, b, c, interp_method=ADD_DIFFERENCE, multiplier=1, checkpoint_format="ckpt"),
                           inpainting=False, instruct_pix2pix=True) == "sub_x + 1.0(y - z).instruct-pix2pix.ckpt"
    assert output_filename(MergeParams(a, interp_method=NO_INTERPOLATION), inpainting=True,
                           instruct_pix2pix=False) == "sub_x.inpainting.safetensors"
    assert output_filename(MergeParams(a, b, custom_name=" mine.ckpt "), inpainting=False,
                           instruct_pix2pix=False) == "mine.safetensors"
    with pytest.raises(KilnError, match="not a plain file name"):
        MergeParams(a, b, custom_name="../escape").validate()


def test_metadata_json_and_the_metadata_switches(files, tmp_path):
    from core.models.checkpoint import read_checkpoint_metadata

    result = merge(files, tmp_path, custom_name="json", metadata_json='{"author": "me", "tree": {"x": 1}}',
                   add_merge_recipe=False)
    meta = read_checkpoint_metadata(result.path)
    assert meta["author"] == "me" and json.loads(meta["tree"]) == {"x": 1}
    assert "sd_merge_recipe" not in meta and "sd_merge_models" not in meta
    bare = read_checkpoint_metadata(merge(files, tmp_path, custom_name="bare", save_metadata=False).path)
    # no WebUI metadata at all; only what Kiln's loader needs to rebuild this (tiny) model
    assert set(bare) == {"format"} | {k for k in read_checkpoint_metadata(files["a"]) if k.startswith("kiln.")}
    with pytest.raises(KilnError, match="metadata_json: not valid JSON"):
        merge(files, tmp_path, metadata_json="{oops")


def test_atomic_save_new_with_never_replaces_a_file(tmp_path):
    from core.fileio import atomic_save_new_with

    target = tmp_path / "x.bin"
    atomic_save_new_with(target, lambda tmp: Path(tmp).write_bytes(b"first"))
    with pytest.raises(FileExistsError):
        atomic_save_new_with(target, lambda tmp: Path(tmp).write_bytes(b"second"))
    assert target.read_bytes() == b"first"

    def fails(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save_new_with(tmp_path / "y.bin", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]  # no temp file, no half file


def test_an_old_sd1_layout_merges_under_todays_names(files, tmp_path):
    """Very old SD1 files have no CLIP ``text_model.`` level; the WebUI reads them renamed, so does the merger."""
    b = load_file(files["b"])
    level = TE + "transformer.text_model."
    old = {(TE + "transformer." + k[len(level):] if k.startswith(level) else k): v for k, v in b.items()}
    assert TE + "transformer.encoder.layers.0.mlp.fc1.weight" in old
    path = tmp_path / "src" / "b-old.safetensors"
    path.parent.mkdir()
    save_file(old, path, metadata={"format": "pt"})
    result = run_merge(MergeParams(ref(files, "a"), ModelRef(path.name, path), multiplier=1.0), tmp_path / "out")
    out = load_file(result.path)
    key = level + "encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(out[key], b[key]) and set(out) == set(load_file(files["a"]))


def test_sd2_models_merge_and_reload_as_v_models(files, tmp_path):
    src = tmp_path / "src"
    a = save_checkpoint(tiny_model("sd2", 66), src / "v-a.safetensors")
    b = save_checkpoint(tiny_model("sd2", 77), src / "v-b.safetensors")
    result = run_merge(MergeParams(ModelRef(a.name, a), ModelRef(b.name, b), multiplier=0.5), tmp_path / "out")
    ta, tb, out = load_file(a), load_file(b), load_file(result.path)
    last_block = TE + "model.transformer.resblocks.2.attn.in_proj_weight"  # the block the HF model drops
    torch.testing.assert_close(out[last_block], 0.5 * ta[last_block] + 0.5 * tb[last_block], rtol=0, atol=1e-6)
    model = load_checkpoint(result.path)
    assert model.spec.family == "sd2" and model.spec.prediction_type == "v_prediction"
