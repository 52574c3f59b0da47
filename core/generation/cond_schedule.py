"""Prompt text → per-step conditioning, computed once per job.

The WebUI's prompt editing (`[a:b:0.5]`), alternation (`[a|b]`) and AND all reduce to:
for every AND part, a list of (end_at_step, text). Each distinct text is encoded exactly
once; the denoise loop then only looks up which encoding is active at step i.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace

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
    """Encodes each prompt's schedule once per job (and per clip skip).

    The variants of one schedule are encoded as one batch, as the WebUI's
    ``get_learned_conditioning`` does: they get the same number of 77-token chunks and the
    "Original" emphasis restores the mean over all of them together.
    """

    def __init__(self, encoder: PromptEncoder, clip_skip: int):
        self.encoder = encoder
        self.clip_skip = clip_skip
        self._cache: dict[tuple[tuple[str, ...], bool], list[Conditioning]] = {}

    def get(self, text: str) -> Conditioning:
        """One text on its own (the empty prompt that pads cond and uncond, for instance)."""
        return self.variants([text])[0]

    def variants(self, texts: list[str], *, is_negative_prompt: bool = False) -> list[Conditioning]:
        """The scheduled texts of one prompt, encoded together; one Conditioning each."""
        key = (tuple(texts), bool(is_negative_prompt))
        if key not in self._cache:
            batch = self.encoder.encode(list(texts), clip_skip=self.clip_skip, is_negative_prompt=is_negative_prompt)
            self._cache[key] = [
                replace(batch, context=batch.context[i : i + 1],
                        pooled=batch.pooled[i : i + 1] if batch.pooled is not None else None)
                for i in range(len(texts))
            ]
        return self._cache[key]

    @property
    def used_embeddings(self) -> dict:
        used: dict = {}
        for conds in self._cache.values():
            for cond in conds:
                used.update(getattr(cond, "used_embeddings", {}) or {})
        return used


def build_schedule(cache: ConditioningCache, prompt: str, steps: int, *, split_and: bool,
                   hires_steps: int | None = None, is_negative_prompt: bool | None = None) -> PromptSchedule:
    """Parse ``prompt`` (AND parts if ``split_and``) and encode every scheduled text once.

    ``is_negative_prompt`` (default: ``not split_and``, since the WebUI splits AND only in the
    prompt, never in the negative) lets SDXL encode an empty negative as zeros, as the WebUI does.
    """
    negative = not split_and if is_negative_prompt is None else is_negative_prompt
    parts = parse_and(prompt) if split_and else [(prompt, 1.0)]
    texts = [text for text, _ in parts]
    schedules = prompt_schedules(texts, steps, hires_steps)
    out: list[PartSchedule] = []
    encoded: list[str] = []
    for (_, weight), schedule in zip(parts, schedules):
        end_steps = [int(end) for end, _ in schedule]
        variant_texts = [text for _, text in schedule]
        conds = cache.variants(variant_texts, is_negative_prompt=negative)
        encoded.extend(variant_texts)
        out.append(PartSchedule(weight=float(weight), end_steps=end_steps, conds=list(conds)))
    return PromptSchedule(parts=out, texts=encoded)


def expand_batch(cond: Conditioning, batch: int) -> dict[str, torch.Tensor]:
    """A single-prompt conditioning repeated for every image of the batch, as model kwargs."""
    out = {"context": cond.context.expand(batch, -1, -1)}
    if getattr(cond, "pooled", None) is not None:
        out["pooled"] = cond.pooled.expand(batch, -1)
    return out
