"""``<name:arg1:arg2>`` tags in prompts (LoRA, hypernetworks, ...), as the WebUI parses them.

Tags are taken out of the whole prompt before prompt editing is scheduled, so a tag inside
``[a:<lora:x:1>:5]`` applies for every step (A1111 ``modules/extra_networks.py``). ``<lyco:...>``
is an alias of ``<lora:...>``; its parameters join the ``lora`` list in the order the WebUI's
alias lookup produces (all tags of the first-seen name, then those of the next).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")

# Names that the WebUI registers as aliases of another extra network.
NETWORK_ALIASES = {"lyco": "lora"}


@dataclass
class ExtraNetworkParams:
    """Arguments of one tag: ``<lora:foo:0.8:te=0.5>`` → items ``["foo", "0.8", "te=0.5"]``,
    positional ``["foo", "0.8"]``, named ``{"te": "0.5"}``."""

    items: list[str]
    positional: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_items(cls, items: list[str]) -> ExtraNetworkParams:
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in items:
            # Exactly one "=" makes a named argument; "a=b=c" stays positional like the WebUI.
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        return cls(items=list(items), positional=positional, named=named)


def _tags_by_written_name(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    found: dict[str, list[ExtraNetworkParams]] = {}

    def take(match: re.Match) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams.from_items(match.group(2).split(":")))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, prompt), found


def parse_extra_networks(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """Remove every extra-network tag from ``prompt``; return the text and the tags by type.

    Types are the names written in the prompt with aliases resolved (``lyco`` → ``lora``).
    Unknown types are returned too; the caller decides what to skip.
    """
    text, by_written_name = _tags_by_written_name(prompt)
    by_type: dict[str, list[ExtraNetworkParams]] = {}
    for name, params in by_written_name.items():
        by_type.setdefault(NETWORK_ALIASES.get(name, name), []).extend(params)
    return text, by_type


def parse_extra_networks_batch(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Strip tags from every prompt of a batch; the networks come from the first prompt only,
    as in the WebUI (one set of networks is active for a whole batch)."""
    texts: list[str] = []
    networks: dict[str, list[ExtraNetworkParams]] | None = None
    for prompt in prompts:
        text, found = parse_extra_networks(prompt)
        texts.append(text)
        if networks is None:
            networks = found
    return texts, networks or {}


__all__ = ["NETWORK_ALIASES", "ExtraNetworkParams", "parse_extra_networks", "parse_extra_networks_batch"]
