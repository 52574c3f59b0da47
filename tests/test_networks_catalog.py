"""NetworkCatalog over the fixture folder: cards, previews, search/sort, LoRA metadata tables, notes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from core.cli import parse_flags
from core.engine import Engine
from core.errors import KilnError
from core.networks.catalog import (
    CHECKPOINT,
    EMBEDDING,
    HYPERNETWORK,
    LORA,
    NetworkCatalog,
    checkpoint_text_widths,
    format_weight,
    lora_prompt_tag,
    lora_type_label,
    network_type_from_keys,
)
from core.networks.lora import read_safetensors_metadata
from core.settings import Settings


def make_engine(data: Path, ckpt: str = "tiny-sd1.safetensors") -> Engine:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", ckpt]), data)
    settings.paths.builtin_checkpoint_dir = data / "models" / "Stable-diffusion"  # hermetic
    return Engine(settings)


@pytest.fixture()
def data(fixture_models_dir, tmp_path) -> Path:
    root = tmp_path / "data"
    for sub in ("models/Stable-diffusion", "models/Lora", "models/hypernetworks", "embeddings"):
        shutil.copytree(fixture_models_dir / sub, root / sub)
    return root


@pytest.fixture()
def catalog(data) -> NetworkCatalog:
    return NetworkCatalog(make_engine(data))


def names(cards) -> list[str]:
    return [c.name for c in cards]


def test_every_tab_lists_the_fixture_files_with_webui_prompt_text(catalog):
    assert names(catalog.cards(CHECKPOINT)) == ["tiny-sd1.safetensors", "tiny-sd2-v.safetensors",
                                                "tiny-sdxl.safetensors"]
    loras = {c.name: c for c in catalog.cards(LORA)}
    assert set(loras) == {"kiln_style_v1", "kiln_locon", "kiln_loha", "kiln_lokr", "kiln_ia3", "kiln_full",
                          "kiln_dora", "kiln_peft"}
    # The kohya file is named in prompts by its ss_output_name alias, weight 1 written as "1".
    assert loras["kiln_style_v1"].prompt_tag == "<lora:kiln_style:1>"
    assert loras["kiln_style_v1"].alias == "kiln_style" and loras["kiln_style_v1"].sd_version == "SD1"
    assert loras["kiln_loha"].prompt_tag == "<lora:kiln_loha:1>" and loras["kiln_loha"].sd_version == "Unknown"
    assert all(c.error is None for c in loras.values())
    tis = {c.name: c for c in catalog.cards(EMBEDDING)}
    assert set(tis) == {"kiln_token", "kiln_token_st", "kiln_concept", "kiln_png", "kiln_pixels"}
    assert tis["kiln_token"].prompt_tag == "kiln_token"
    assert tis["kiln_png"].preview == tis["kiln_png"].path  # an image embedding previews itself
    [hn] = catalog.cards(HYPERNETWORK)
    assert hn.prompt_tag == "<hypernet:kiln_hypernet:1>"


def test_cards_write_the_default_multiplier_option_unless_a_weight_is_preferred(catalog, data):
    catalog.engine.settings.options.extra_networks_default_multiplier = 0.75
    loras = {c.name: c for c in catalog.cards(LORA)}
    assert loras["kiln_style_v1"].prompt_tag == "<lora:kiln_style:0.75>"
    [hn] = catalog.cards(HYPERNETWORK)
    assert hn.prompt_tag == "<hypernet:kiln_hypernet:0.75>"
    assert lora_prompt_tag("x", {"preferred weight": 0.4}, 0.75) == "<lora:x:0.4>"


def test_cards_say_what_kind_of_file_they_are(catalog):
    """The type a card without a preview shows: LyCORIS for files LyCORIS wrote, LoRA for the rest."""
    assert {c.type_label for c in catalog.cards(CHECKPOINT)} == {"Checkpoint"}
    assert {c.name: c.type_label for c in catalog.cards(LORA)} == {
        "kiln_style_v1": "LoRA", "kiln_peft": "LoRA", "kiln_locon": "LyCORIS", "kiln_loha": "LyCORIS",
        "kiln_lokr": "LyCORIS", "kiln_ia3": "LyCORIS", "kiln_full": "LyCORIS", "kiln_dora": "LyCORIS"}
    assert {c.type_label for c in catalog.cards(EMBEDDING)} == {"Textual Inversion"}
    assert {c.type_label for c in catalog.cards(HYPERNETWORK)} == {"Hypernetwork"}
    # kohya's LoCon module and an unreadable header (no keys, no metadata).
    assert lora_type_label({"ss_network_module": "lycoris.kohya"}, ["x.lora_down.weight"]) == "LyCORIS"
    assert lora_type_label({}, []) == "LoRA"


def test_previews_follow_the_webui_file_names(catalog, data):
    lora_dir = data / "models" / "Lora"
    assert catalog.card(LORA, "kiln_loha").preview is None
    Image.new("RGB", (8, 8), "red").save(lora_dir / "kiln_loha.preview.jpg")
    assert catalog.card(LORA, "kiln_loha").preview == lora_dir / "kiln_loha.preview.jpg"
    Image.new("RGB", (8, 8), "blue").save(lora_dir / "kiln_loha.png")  # png comes first, as in A1111
    assert catalog.card(LORA, "kiln_loha").preview == lora_dir / "kiln_loha.png"
    ckpt_dir = data / "models" / "Stable-diffusion"
    Image.new("RGB", (8, 8)).save(ckpt_dir / "tiny-sd2-v.webp")
    assert catalog.card(CHECKPOINT, "tiny-sd2-v.safetensors").preview == ckpt_dir / "tiny-sd2-v.webp"
    # A picture named like an embedding file is that file's preview, not another embedding.
    emb_dir = data / "embeddings"
    Image.new("RGB", (8, 8)).save(emb_dir / "kiln_token.png")
    tis = {c.name: c for c in catalog.cards(EMBEDDING)}
    assert tis["kiln_token"].preview == emb_dir / "kiln_token.png"
    assert len(tis) == 5 and not catalog.embedding_state().errors


def test_search_and_sort(catalog, data):
    assert names(catalog.cards(LORA, search="STYLE")) == ["kiln_style_v1"]
    assert names(catalog.cards(LORA, search="kiln lo")) == ["kiln_locon", "kiln_loha", "kiln_lokr"]
    (data / "models" / "Lora" / "kiln_ia3.txt").write_text("watercolor look", encoding="utf-8")
    [card] = catalog.cards(LORA, search="watercolor")
    assert card.name == "kiln_ia3" and card.description == "watercolor look"
    by_name = names(catalog.cards(LORA))
    assert by_name == sorted(by_name)
    assert names(catalog.cards(LORA, descending=True)) == by_name[::-1]
    for i, name in enumerate(by_name):  # oldest first = reverse name order
        os.utime(data / "models" / "Lora" / f"{name}.safetensors", (1_600_000_000 - i, 1_600_000_000 - i))
    assert names(catalog.cards(LORA, sort="date_modified")) == by_name[::-1]
    sub = data / "models" / "Lora" / "a_sub"
    sub.mkdir()
    shutil.copy(data / "models" / "Lora" / "kiln_full.safetensors", sub / "zz_full.safetensors")
    assert "zz_full" not in names(catalog.cards(LORA))
    catalog.refresh()
    assert names(catalog.cards(LORA, sort="path"))[0] == "zz_full"  # "a_sub/zz_full..." sorts first by path


def test_kohya_metadata_tables(catalog, data):
    meta = catalog.metadata(LORA, "kiln_style_v1")
    raw = meta["raw"]
    assert raw["ss_tag_frequency"] == {"10_sls 1girl": {"sls": 4, "1girl": 4, "solo": 3, "red hair": 2}}
    assert raw["ss_dataset_dirs"]["10_sls 1girl"] == {"n_repeats": 10, "img_count": 4}
    assert list(raw)[:5] == ["ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images",
                             "ss_tag_frequency"]  # the WebUI's order first
    # Count descending, ties by tag.
    assert meta["tag_frequency"] == [("10_sls 1girl", "1girl", 4), ("10_sls 1girl", "sls", 4),
                                     ("10_sls 1girl", "solo", 3), ("10_sls 1girl", "red hair", 2)]
    assert meta["dataset_dirs"] == [("10_sls 1girl", 10, 4, 40, "train")]
    summary = dict(meta["summary"])
    stored = read_safetensors_metadata(data / "models" / "Lora" / "kiln_style_v1.safetensors")["sshs_model_hash"]
    assert summary["Hash (Lora hashes)"] == stored[:12]
    assert summary["Base model version"] == "sd_v1"
    assert summary["Network dim / alpha"] == "4 / 2.0" and summary["Network type"] == "LoRA"
    assert summary["Epoch"] == "2 / 2" and summary["Dataset size (images)"] == "4"
    assert summary["Training started"] == "2023-11-14 22:13 UTC"
    assert summary["Learning rates"] == "lr 0.0001, unet 0.0001, text encoder 5e-05"
    assert "Noise offset" not in summary  # "None" values are left out
    locon = dict(catalog.metadata(LORA, "kiln_locon")["summary"])
    assert locon["Network args"] == "algo=locon, conv_dim=4, conv_alpha=4"
    # No metadata at all: the hash is computed from the tensor bytes, the type read from key names.
    loha = catalog.metadata(LORA, "kiln_loha")
    assert loha["raw"] == {} and loha["tag_frequency"] == []
    assert dict(loha["summary"])["Network type"] == "LoHa"
    assert len(dict(loha["summary"])["Hash (Lora hashes)"]) == 12


def test_network_types_from_key_names_only():
    assert network_type_from_keys(["lora_unet_a.lora_down.weight", "lora_unet_a.alpha"]) == "LoRA"
    assert network_type_from_keys(["unet.a.to_q.lora_A.weight"]) == "LoRA (PEFT)"
    assert network_type_from_keys(["lora_unet_a.lokr_w1", "lora_unet_a.lokr_w2"]) == "LoKr"
    assert network_type_from_keys(["lora_unet_a.weight", "lora_unet_a.on_input"]) == "IA3"
    assert network_type_from_keys(["lora_unet_a.diff"]) == "Full"
    assert network_type_from_keys(["lora_unet_a.lora_down.weight", "lora_unet_a.dora_scale"]) == "DoRA"


def test_user_notes_round_trip_keep_unknown_keys_and_leave_the_model_alone(catalog, data):
    model = data / "models" / "Lora" / "kiln_style_v1.safetensors"
    notes = model.with_suffix(".json")
    notes.write_text(json.dumps({"sd version": "SD1", "civitai id": 1234}), encoding="utf-8")
    before = (model.read_bytes(), model.stat().st_mtime_ns)
    saved = catalog.write_user_metadata(LORA, "kiln_style_v1", {
        "activation text": "sls, 1girl", "preferred weight": 0.8, "notes": "best at epoch 2 — 最好"})
    assert saved["civitai id"] == 1234 and saved["sd version"] == "SD1"
    on_disk = json.loads(notes.read_text(encoding="utf-8"))
    assert on_disk == saved and "最好" in notes.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert catalog.read_user_metadata(LORA, "kiln_style_v1") == saved
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before
    assert not [p for p in notes.parent.iterdir() if p.name.endswith(".tmp")]
    card = catalog.card(LORA, "kiln_style_v1")
    assert card.prompt_tag == "<lora:kiln_style:0.8> sls, 1girl"
    assert catalog.cards(LORA, search="1girl")[0].name == "kiln_style_v1"  # activation text is searchable
    # A damaged notes file is reported on the card and never overwritten.
    notes.write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in catalog.card(LORA, "kiln_style_v1").error
    with pytest.raises(KilnError, match="not valid JSON"):
        catalog.write_user_metadata(LORA, "kiln_style_v1", {"notes": "x"})
    assert notes.read_text(encoding="utf-8") == "{not json"
    # Notes work for every kind (checkpoint notes sit beside the checkpoint).
    catalog.write_user_metadata(CHECKPOINT, "tiny-sd1.safetensors", {"description": "the tiny one"})
    assert catalog.card(CHECKPOINT, "tiny-sd1.safetensors").description == "the tiny one"


def test_prompt_tag_rules():
    assert format_weight(1.0) == "1" and format_weight(0.75) == "0.75" and format_weight(-0.5) == "-0.5"
    assert lora_prompt_tag("x", {}) == "<lora:x:1>"
    assert lora_prompt_tag("x", {"preferred weight": 0}) == "<lora:x:1>"  # 0 means "use the default"
    assert lora_prompt_tag("x", {"preferred weight": "0.6", "activation text": " tok "}) == "<lora:x:0.6> tok"


def test_shared_alias_falls_back_to_file_names(catalog, data):
    lora_dir = data / "models" / "Lora"
    shutil.copy(lora_dir / "kiln_style_v1.safetensors", lora_dir / "kiln_style_v2.safetensors")
    catalog.refresh()
    cards = {c.name: c for c in catalog.cards(LORA)}
    assert cards["kiln_style_v1"].prompt_tag == "<lora:kiln_style_v1:1>"
    assert cards["kiln_style_v2"].prompt_tag == "<lora:kiln_style_v2:1>"


def test_corrupt_files_become_cards_with_an_error(catalog, data):
    (data / "models" / "Lora" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    (data / "models" / "Lora" / "empty.safetensors").write_bytes(b"")
    (data / "embeddings" / "bad.pt").write_bytes(b"not a torch file at all")
    catalog.refresh()
    loras = {c.name: c for c in catalog.cards(LORA)}
    assert "header" in loras["broken"].error and "empty" in loras["empty"].error
    assert loras["broken"].prompt_tag == "<lora:broken:1>"
    meta = catalog.metadata(LORA, "broken")
    assert meta["error"] and meta["raw"] == {}
    tis = {c.name: c for c in catalog.cards(EMBEDDING)}
    assert tis["bad"].error and "weights-only" in tis["bad"].error
    with pytest.raises(KilnError, match="not found"):
        catalog.card(LORA, "no_such_lora")


def test_embeddings_checked_against_the_selected_checkpoint_header(data):
    widths = {f.name: checkpoint_text_widths(f) for f in (data / "models" / "Stable-diffusion").iterdir()}
    assert widths["tiny-sd1.safetensors"] == {"default": 32}
    assert set(widths["tiny-sdxl.safetensors"]) == {"clip_l", "clip_g"}
    sd1 = NetworkCatalog(make_engine(data)).embedding_state()
    assert sd1.checked_against == "checkpoint header tiny-sd1.safetensors"
    assert set(sd1.loaded) == {"kiln_token", "kiln_token_st", "kiln_concept", "kiln_png", "kiln_pixels"}
    assert not sd1.skipped and sd1.loaded["kiln_token"].vectors == 2
    xl_catalog = NetworkCatalog(make_engine(data, "tiny-sdxl.safetensors"))
    xl = xl_catalog.embedding_state()
    assert not xl.loaded and set(xl.skipped) == set(sd1.loaded)
    assert "not an SDXL embedding" in xl.skipped["kiln_token"][1]
    assert "skipped" in xl_catalog.card(EMBEDDING, "kiln_token").error
