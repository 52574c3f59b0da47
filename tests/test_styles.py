"""Prompt styles (core/styles.py): the WebUI's styles.csv, merge rule, paste extraction, API."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from core.errors import InvalidParameterError, KilnError
from core.generation.infotext import parse_generation_parameters
from core.generation.params import GenerationParams, HiresParams
from core.styles import (
    PromptStyle,
    StyleDatabase,
    apply_styles,
    extract_style_text_from_prompt,
    merge_prompts,
)

WEBUI_CSV = (
    "\ufeffname,prompt,negative_prompt\r\n"
    "# Portraits,,\r\n"
    "Masterpiece,\"masterpiece, best quality\",lowres\r\n"
    "Frame,\"photo of {prompt}, film grain\",\r\n"
    "Neg only,,\"blurry, jpeg artifacts\"\r\n"
)


@pytest.fixture()
def db(tmp_path) -> StyleDatabase:
    (tmp_path / "styles.csv").write_bytes(WEBUI_CSV.encode("utf-8"))
    return StyleDatabase(tmp_path / "styles.csv")


# --- the WebUI's merge and extraction rules (modules/styles.py, its docstring examples) -----------
@pytest.mark.parametrize("style, prompt, merged", [
    ("masterpiece", "1girl", "1girl, masterpiece"),
    ("masterpiece, {prompt}", "1girl", "masterpiece, 1girl"),
    ("  masterpiece ", " 1girl ", "1girl, masterpiece"),  # both stripped when appended
    ("masterpiece", "", "masterpiece"),
    ("", "1girl", "1girl"),
    ("{prompt}, {prompt}", "x", "x, x"),  # every placeholder is replaced
])
def test_merge_rule(style, prompt, merged):
    assert merge_prompts(style, prompt) == merged


@pytest.mark.parametrize("style, prompt, expected", [
    ("masterpiece", "1girl, art by greg, masterpiece", (True, "1girl, art by greg")),
    ("masterpiece, {prompt}", "masterpiece, 1girl, art by greg", (True, "1girl, art by greg")),
    ("masterpiece, {prompt}", "exquisite, 1girl, art by greg", (False, "exquisite, 1girl, art by greg")),
    ("masterpiece", "masterpiece", (True, "")),
    ("", "anything", (True, "anything")),
])
def test_extract_style_text_like_the_webui_examples(style, prompt, expected):
    assert extract_style_text_from_prompt(style, prompt) == expected


def test_reads_webui_csv_skipping_dividers(db):
    assert db.names() == ["Masterpiece", "Frame", "Neg only"]
    assert db.get("Frame") == PromptStyle("Frame", "photo of {prompt}, film grain", "")
    assert db.get("# Portraits") is None


def test_old_name_text_columns_and_missing_file(tmp_path):
    (tmp_path / "styles.csv").write_text("name,text\nOld,oil painting\n", encoding="utf-8")
    assert StyleDatabase(tmp_path / "styles.csv").get("Old") == PromptStyle("Old", "oil painting", "")
    assert StyleDatabase(tmp_path / "none.csv").names() == []


def test_a_csv_without_the_columns_names_the_file(tmp_path):
    (tmp_path / "styles.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(KilnError) as caught:
        StyleDatabase(tmp_path / "styles.csv").names()
    assert "styles.csv" in caught.value.message and "name,prompt,negative_prompt" in caught.value.message


def test_styles_apply_in_order_to_both_prompts(db):
    p = GenerationParams(prompt="a cat", negative_prompt="ugly", styles=["Frame", "Masterpiece", "Neg only"])
    styled = apply_styles(p, db)
    assert styled.prompt == "photo of a cat, film grain, masterpiece, best quality"
    assert styled.negative_prompt == "ugly, lowres, blurry, jpeg artifacts"
    assert styled.styles == p.styles and p.prompt == "a cat"  # the request itself is not changed


def test_hires_prompts_get_the_styles_only_when_set(db):
    p = GenerationParams(prompt="a", styles=["Masterpiece"], hires=HiresParams(enabled=True, prompt="b"))
    styled = apply_styles(p, db)
    assert styled.hires.prompt == "b, masterpiece, best quality" and styled.hires.negative_prompt == ""


def test_unknown_style_is_refused_naming_the_field(db):
    with pytest.raises(InvalidParameterError) as caught:
        apply_styles(GenerationParams(prompt="a", styles=["Nope"]), db)
    assert caught.value.field == "styles" and "Nope" in caught.value.message and "Masterpiece" in caught.value.message


def test_extraction_round_trips_what_apply_made(db):
    names = ["Frame", "Masterpiece", "Neg only"]
    styled = apply_styles(GenerationParams(prompt="a cat", negative_prompt="ugly", styles=names), db)
    assert db.extract_styles_from_prompt(styled.prompt, styled.negative_prompt) == (names, "a cat", "ugly")
    # Both prompts must match: a negative prompt without the style's text keeps the style in.
    assert db.extract_styles_from_prompt("a cat, masterpiece, best quality", "") == \
        ([], "a cat, masterpiece, best quality", "")


@pytest.mark.parametrize("mode, styles, prompt", [
    ("Apply if any", ["Masterpiece"], "a cat"),
    ("Apply", ["Masterpiece"], "a cat"),
    ("Discard", None, "a cat"),
    ("Ignore", None, "a cat, masterpiece, best quality"),
])
def test_infotext_paste_follows_infotext_styles(db, mode, styles, prompt):
    text = "a cat, masterpiece, best quality\nNegative prompt: lowres\nSteps: 20, Sampler: Euler, Seed: 1"
    parsed = parse_generation_parameters(text, styles=db, infotext_styles=mode)
    assert parsed.get("Styles array") == styles and parsed["Prompt"] == prompt
    if mode != "Ignore":
        assert parsed["Negative prompt"] == ""
    plain = parse_generation_parameters("a dog\nSteps: 20, Sampler: Euler, Seed: 1", styles=db, infotext_styles=mode)
    assert plain.get("Styles array") == ([] if mode == "Apply" else None)


def test_save_keeps_dividers_order_and_a_backup(db, tmp_path):
    before = (tmp_path / "styles.csv").read_bytes()
    db.save_style(PromptStyle("Frame", "frame of {prompt}", "x, y"))
    db.save_style(PromptStyle(" New ", "new", ""))
    assert (tmp_path / "styles.csv.bak").read_bytes().startswith(before[:40])
    text = (tmp_path / "styles.csv").read_bytes().decode("utf-8")
    assert text.startswith("\ufeffname,prompt,negative_prompt\r\n# Portraits,,\r\n")
    assert text.endswith('Frame,frame of {prompt},"x, y"\r\nNeg only,,"blurry, jpeg artifacts"\r\nNew,new,\r\n')
    again = StyleDatabase(tmp_path / "styles.csv")
    assert again.names() == ["Masterpiece", "Frame", "Neg only", "New"]
    db.delete_style("New")
    assert "New" not in StyleDatabase(tmp_path / "styles.csv").names()
    with pytest.raises(InvalidParameterError):
        db.save_style(PromptStyle("#divider", "x", ""))


def test_a_hand_edit_is_seen_without_a_restart(db, tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("name,prompt,negative_prompt\nOnly,only,\n", encoding="utf-8")
    import os

    os.utime(path, ns=(1, 1))  # a different stamp even on coarse-clock filesystems
    assert db.names() == ["Only"]


# --- several files (--styles-file given more than once, or a glob) -------------------------------
def _csv(path, rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("name,prompt,negative_prompt\n" + rows, encoding="utf-8")


def test_several_files_merge_later_wins_in_the_earlier_place(tmp_path):
    _csv(tmp_path / "a.csv", "Shared,from a,\nOnly A,a,\n")
    _csv(tmp_path / "more" / "b.csv", "Only B,b,\nShared,from b,neg b\n")
    db = StyleDatabase([tmp_path / "a.csv", str(tmp_path / "more" / "*.csv")])
    assert db.names() == ["Shared", "Only A", "Only B"]
    shared = db.get("Shared")
    assert (shared.prompt, shared.negative_prompt, shared.path) == ("from b", "neg b", tmp_path / "more" / "b.csv")
    assert db.get("Only A").path == tmp_path / "a.csv"


def test_saving_writes_only_the_styles_own_file_and_new_ones_to_the_first(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _csv(a, "Shared,from a,\nOnly A,a,\n")
    _csv(b, "Only B,b,\nShared,from b,\n")
    b_before = b.read_bytes()
    db = StyleDatabase([a, b])
    assert db.save_style(PromptStyle("Only A", "a edited", "")) == a
    assert b.read_bytes() == b_before  # the other file is not rewritten
    assert db.save_style(PromptStyle("New", "new", "")) == a
    assert db.save_style(PromptStyle("Only B", "b edited", "")) == b
    assert StyleDatabase([a]).names() == ["Shared", "Only A", "New"]  # a's shadowed style is kept
    assert [(s.name, s.prompt) for s in StyleDatabase([b]).styles.values()] == [("Only B", "b edited"),
                                                                                 ("Shared", "from b")]
    # Deleting the shown "Shared" (b's) lets a's show again; nothing else is lost.
    assert db.delete_style("Shared") == b
    assert db.get("Shared").prompt == "from a" and db.get("Shared").path == a
    assert (tmp_path / "b.csv.bak").exists()


def test_a_wildcard_first_path_saves_to_its_first_match_or_styles_csv_beside(tmp_path):
    _csv(tmp_path / "s" / "b.csv", "B,b,\n")
    _csv(tmp_path / "s" / "a.csv", "A,a,\n")
    db = StyleDatabase([str(tmp_path / "s" / "*.csv")])
    assert db.path == tmp_path / "s" / "a.csv" and db.names() == ["A", "B"]
    empty = StyleDatabase([str(tmp_path / "none" / "*.csv")])
    assert empty.path == tmp_path / "none" / "styles.csv" and empty.names() == []
    assert empty.save_style(PromptStyle("First", "f", "")) == tmp_path / "none" / "styles.csv"
    assert empty.names() == ["First"]


def test_a_file_added_to_a_glob_folder_is_seen_without_a_restart(tmp_path):
    _csv(tmp_path / "s" / "a.csv", "A,a,\n")
    db = StyleDatabase([str(tmp_path / "s" / "*.csv")])
    assert db.names() == ["A"]
    _csv(tmp_path / "s" / "c.csv", "C,c,\n")
    assert db.names() == ["A", "C"]


def test_styles_file_flag_reaches_the_engine_and_cmd_flags(tmp_path):
    from core.api.cmd_flags import cmd_flags
    from core.cli import parse_flags
    from core.paths import KilnPaths

    _csv(tmp_path / "x.csv", "X,x,\n")
    flags = parse_flags(["--data-dir", str(tmp_path), "--styles-file", str(tmp_path / "x.csv"),
                         "--styles-file", str(tmp_path / "s" / "*.csv")])
    assert flags.styles_file == [str(tmp_path / "x.csv"), str(tmp_path / "s" / "*.csv")]
    assert "--styles-file" not in flags.webui_accepted
    paths = KilnPaths.from_flags(flags, tmp_path)
    assert paths.styles_files == (tmp_path / "x.csv", tmp_path / "s" / "*.csv")
    assert cmd_flags(flags, paths)["styles_file"] == [str(tmp_path / "x.csv"), str(tmp_path / "s" / "*.csv")]
    assert StyleDatabase(paths.styles_files).names() == ["X"]
    default = KilnPaths.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    assert default.styles_files == (tmp_path / "styles.csv",)


# --- the API ----------------------------------------------------------------------------------------
def test_prompt_styles_route_and_unknown_style_422(model_api):
    client, engine = model_api
    engine.styles.path.write_text(WEBUI_CSV, encoding="utf-8")
    engine.styles.reload()
    listed = client.get("/sdapi/v1/prompt-styles").json()
    assert listed[0] == {"name": "Masterpiece", "prompt": "masterpiece, best quality", "negative_prompt": "lowres"}
    assert [s["name"] for s in listed] == ["Masterpiece", "Frame", "Neg only"]
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                      "styles": ["Nope"]})
    assert response.status_code == 422 and response.json()["field"] == "styles"


def test_txt2img_applies_styles_into_the_infotext(model_api):
    client, engine = model_api
    engine.styles.path.write_text(WEBUI_CSV, encoding="utf-8")
    engine.styles.reload()
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat", "negative_prompt": "ugly", "steps": 1, "width": 64, "height": 64, "seed": 3,
        "sampler_name": "Euler", "styles": ["Frame", "Masterpiece"]})
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    text = image.info["parameters"]
    assert text.startswith("photo of a cat, film grain, masterpiece, best quality\nNegative prompt: ugly, lowres\n")
    assert json.loads(body["info"])["styles"] == ["Frame", "Masterpiece"]
    # PNG Info gives the styles back, and pasting the infotext selects them again.
    info = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()
    assert info["parameters"]["Styles array"] == ["Frame", "Masterpiece"] and info["parameters"]["Prompt"] == "a cat"
    pasted = client.post("/sdapi/v1/txt2img", json={"infotext": text, "steps": 1, "width": 64, "height": 64})
    assert pasted.status_code == 200, pasted.text
    again = Image.open(io.BytesIO(base64.b64decode(pasted.json()["images"][0])))
    assert again.info["parameters"] == text


def test_xyz_styles_axis_applies_each_style_and_refuses_unknown_ones(model_api):
    client, engine = model_api
    engine.styles.path.write_text(WEBUI_CSV, encoding="utf-8")
    engine.styles.reload()
    body = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler",
            "script_name": "x/y/z plot", "script_args": ["Styles", "Frame, Masterpiece", [], "Nothing", "", [],
                                                         "Nothing", "", [], True, True, False, False]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    infotexts = json.loads(r.json()["info"])["infotexts"]
    prompts = [t.split("\n")[0] for t in infotexts]  # the grid (first cell's), then the cells
    assert prompts[1:] == ["photo of a cat, film grain", "a cat, masterpiece, best quality"], prompts
    body["script_args"] = ["Styles", "Nope", []]
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and "Nope" in r.json()["detail"]


def test_a_broken_styles_csv_does_not_stop_a_paste(tmp_path):
    (tmp_path / "styles.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    parsed = parse_generation_parameters("a cat, masterpiece\nSteps: 2, Sampler: Euler, Seed: 1",
                                         styles=StyleDatabase(tmp_path / "styles.csv"))
    assert parsed["Prompt"] == "a cat, masterpiece" and "Styles array" not in parsed
