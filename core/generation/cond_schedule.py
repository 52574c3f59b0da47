"""Prompt text → per-step conditioning, computed once per job.

The WebUI's prompt editing (`[a:b:0.5]`), alternation (`[a|b]`) and AND all reduce to:
for every AND part, a list of (end_at_step, text). Each distinct text is encoded exactly
once; the denoise loop then only looks up which encoding is active at step i.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import torch

from core.prompts.conditioning import Conditioning, PromptEncoder
from core.prompts.parser import parse_and, prompt_schedules


@dataclass
class PartSchedule:
    """One AND part: its weight and the conditioning active until each end step."""

    weight: float
    end_steps: list[int]
    conds: list[Conditioning]

    def at(self, step: int) -> Conditioning:
        """The conditioning of sampler step ``step`` (counted from 0), as the WebUI's
        ``reconstruct_cond_batch`` picks it: the first entry with ``step <= end_at_step``.

        The schedule's texts are those of steps 1..N while the sampler counts 0..N-1, so each
        entry also covers the step after its end: ``[cat:dog:10]`` of 20 steps is cat for steps
        0-10 and dog for 11-19, and ``[a|b]`` gives a, a, b, a, b, ...
        """
        index = bisect_left(self.end_steps, step)
        return self.conds[min(index, len(self.conds) - 1)]


@dataclass
class PromptSchedule:
    parts: list[PartSchedule]
    texts: list[str] = field(default_factory=list)  # every distinct text encoded

    def at(self, step: int) -> list[tuple[Conditioning, float]]:
        return [(part.at(step), part.weight) for part in self.parts]


class ConditioningCache:
    """Encodes each distinct text once per job (and per clip skip)."""

    def __init__(self, encoder: PromptEncoder, clip_skip: int):
        self.encoder = encoder
        self.clip_skip = clip_skip
        self._cache: dict[str, Conditioning] = {}

    def get(self, text: str) -> Conditioning:
        if text not in self._cache:
            self._cache[text] = self.encoder.encode([text], clip_skip=self.clip_skip)
        return self._cache[text]

    @property
    def used_embeddings(self) -> dict:
        used: dict = {}
        for cond in self._cache.values():
            used.update(getattr(cond, "used_embeddings", {}) or {})
        return used


def build_schedule(cache: ConditioningCache, prompt: str, steps: int, *, split_and: bool,
                   hires_steps: int | None = None) -> PromptSchedule:
    """Parse ``prompt`` (AND parts if ``split_and``) and encode every scheduled text once."""
    parts = parse_and(prompt) if split_and else [(prompt, 1.0)]
    texts = [text for text, _ in parts]
    schedules = prompt_schedules(texts, steps, hires_steps)
    out: list[PartSchedule] = []
    encoded: list[str] = []
    for (_, weight), schedule in zip(parts, schedules):
        end_steps = [int(end) for end, _ in schedule]
        conds = []
        for _, text in schedule:
            conds.append(cache.get(text))
            encoded.append(text)
        out.append(PartSchedule(weight=float(weight), end_steps=end_steps, conds=conds))
    return PromptSchedule(parts=out, texts=encoded)


def expand_batch(cond: Conditioning, batch: int) -> dict[str, torch.Tensor]:
    """A single-prompt conditioning repeated for every image of the batch, as model kwargs."""
    out = {"context": cond.context.expand(batch, -1, -1)}
    if getattr(cond, "pooled", None) is not None:
        out["pooled"] = cond.pooled.expand(batch, -1)
    return out
