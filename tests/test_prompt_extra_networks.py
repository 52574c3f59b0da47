"""``<name:args>`` tags: removal, arguments, lyco alias, tags inside prompt editing."""

from __future__ import annotations

from core.prompts.extra_networks import ExtraNetworkParams, parse_extra_networks, parse_extra_networks_batch
from core.prompts.parser import prompt_schedules


def test_lora_tag_with_named_argument():
    text, networks = parse_extra_networks("a photo <lora:foo:0.8:te=0.5>, detailed")
    assert text == "a photo , detailed"
    assert list(networks) == ["lora"]
    (params,) = networks["lora"]
    assert params.items == ["foo", "0.8", "te=0.5"]
    assert params.positional == ["foo", "0.8"]
    assert params.named == {"te": "0.5"}


def test_several_types_keep_order_and_unknown_types():
    text, networks = parse_extra_networks(
        "<hypernet:agm:1.1> girl <extrasupernet:master:12:13:14> <hypernet:ray>"
    )
    assert text == " girl  "
    assert [p.items for p in networks["hypernet"]] == [["agm", "1.1"], ["ray"]]
    assert networks["extrasupernet"][0].positional == ["master", "12", "13", "14"]


def test_lyco_is_lora_in_webui_alias_order():
    _, networks = parse_extra_networks("<lyco:a:1> <lora:b:0.5> <lyco:c>")
    assert list(networks) == ["lora"]
    # the WebUI groups by written name first (lyco: a, c), then merges the alias (lora: b)
    assert [p.items[0] for p in networks["lora"]] == ["a", "c", "b"]


def test_double_equals_is_positional():
    params = ExtraNetworkParams.from_items(["x", "a=b=c", "unet=0.3", "dyn=4"])
    assert params.positional == ["x", "a=b=c"]
    assert params.named == {"unet": "0.3", "dyn": "4"}


def test_not_a_tag():
    text, networks = parse_extra_networks("a <b> c <:x> <lora:> <lora-x:1> d")
    assert text == "a <b> c <:x> <lora:> <lora-x:1> d"
    assert networks == {}


def test_tag_inside_prompt_editing_is_taken_from_whole_prompt():
    text, networks = parse_extra_networks("a [b:<lora:x:1>c:5] d")
    assert [p.items for p in networks["lora"]] == [["x", "1"]]
    assert prompt_schedules([text], 10)[0] == [[5, "a b d"], [10, "a c d"]]


def test_batch_uses_first_prompt_networks():
    texts, networks = parse_extra_networks_batch(["x <lora:a:1>", "y <lora:b:1>"])
    assert texts == ["x ", "y "]
    assert [p.items[0] for p in networks["lora"]] == ["a"]
