"""Prompt text → text-encoder conditioning, as the WebUI's ``FrozenCLIPEmbedderWithCustomWords``.

For each text encoder: prompts are cut into 77-token chunks (:mod:`core.prompts.tokens`), each
chunk index is encoded for the whole batch at once, the hidden states are multiplied by the
emphasis weights per token and rescaled to the original mean (the "Original" emphasis), and the
chunks are concatenated along the token axis. Which hidden state is used follows the WebUI:

- SD1 (CLIP-L, pads with EOS): clip skip 1 = last layer; n > 1 = ``hidden_states[-n]`` through
  the final layer norm.
- SD2 (OpenCLIP-H, pads with 0): the penultimate layer through the final layer norm; clip skip is
  ignored, as in the WebUI.
- SDXL: CLIP-L ``hidden_states[-2]`` and OpenCLIP-bigG ``hidden_states[-2]``, both without the
  final norm (with ``sdxl_clip_l_skip`` CLIP-L uses ``hidden_states[-clip_skip]``), concatenated
  on the feature axis; ``pooled`` is bigG's projected EOS state of the first chunk.

Textual-inversion vectors replace the input embeddings of their placeholder tokens through a
forward hook on the encoder's token embedding, so gradients reach them (TI training uses this).
Models are transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` (4.x or 5.x layout).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import InvalidParameterError
from core.prompts.tokens import (
    COMMA_PADDING_BACKTRACK,
    EmbeddingLookup,
    PromptChunk,
    PromptTokenizer,
)

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")


@dataclass
class Conditioning:
    """Encoded prompts. ``context`` is [batch, 77 × chunks, features]; ``pooled`` is SDXL's
    [batch, projection] vector (None for SD1/SD2)."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    used_embeddings: dict[str, Any] = field(default_factory=dict)
    token_count: int = 0
    emphasis: str = "Original"
    uses_brackets: bool = False

    def ti_hashes(self) -> str | None:
        """The ``TI hashes`` infotext value (``name: hash12, ...``), None without embeddings."""
        parts = []
        for name, embedding in self.used_embeddings.items():
            digest = getattr(embedding, "bundled_in", None) or getattr(embedding, "shorthash", None)
            digest = digest or getattr(embedding, "hash", None)
            if digest:
                parts.append(f"{name.replace(':', '').replace(',', '')}: {digest}")
        return ", ".join(parts) or None

    def extra_generation_params(self) -> dict[str, str]:
        """Infotext keys this encoding adds: ``TI hashes`` and, for a non-default emphasis mode
        on a prompt with brackets, ``Emphasis``."""
        params = {}
        hashes = self.ti_hashes()
        if hashes:
            params["TI hashes"] = hashes
        if self.uses_brackets and self.emphasis != "Original":
            params["Emphasis"] = self.emphasis
        return params


@dataclass
class EncoderDetails:
    """What one text encoder saw: chunks per text and the input ids per chunk index."""

    chunks: list[list[PromptChunk]]
    input_ids: list[torch.Tensor]


@dataclass
class _EncoderSlot:
    """One text encoder with the WebUI's settings for it."""

    model: Any
    tokenizer: PromptTokenizer
    pad_id: int
    embedding_key: str
    layer: str  # "clip_skip" | "penultimate_norm" | "penultimate" | "sdxl_clip_l"
    pooled: bool = False


def _text_transformer(model: Any) -> Any:
    """The module holding ``final_layer_norm``: the model itself in transformers 5, or
    ``model.text_model`` (4.x, and ``CLIPTextModelWithProjection``)."""
    if hasattr(model, "final_layer_norm"):
        return model
    inner = getattr(model, "text_model", None)
    if inner is not None:
        return _text_transformer(inner)
    raise InvalidParameterError("text_encoders", f"{type(model).__name__} is not a CLIP text model")


def _select_vectors(embedding: Any, key: str) -> torch.Tensor:
    vec = embedding.vec
    if not isinstance(vec, dict):
        return vec
    if key in vec:
        return vec[key]
    for fallback in ("default", "clip_l"):
        if fallback in vec:
            return vec[fallback]
    return next(iter(vec.values()))


@contextmanager
def _inserted_embeddings(slot: _EncoderSlot, fixes: list[list]) -> Iterator[None]:
    """Replace input embeddings after BOS + offset with embedding vectors during one forward."""
    if not any(fixes):
        yield
        return

    def replace(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        rows = []
        for row, row_fixes in zip(output, fixes):
            for fix in row_fixes:
                vectors = _select_vectors(fix.embedding, slot.embedding_key).to(row.device, row.dtype)
                start = fix.offset + 1
                count = min(row.shape[0] - start, vectors.shape[0])
                row = torch.cat([row[:start], vectors[:count], row[start + count :]])
            rows.append(row)
        return torch.stack(rows)

    handle = slot.model.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


class PromptEncoder:
    """Encodes prompts with the WebUI's chunking, emphasis, clip skip and embeddings.

    ``tokenizers`` and ``text_encoders`` are lists in the checkpoint's order (SDXL: CLIP-L, then
    bigG as ``CLIPTextModelWithProjection``; the refiner: bigG only). ``embeddings`` looks up
    textual inversions by token ids (``EmbeddingDatabase``). ``sd2_penultimate`` is for SD2 text
    encoders that still hold every OpenCLIP layer (the single-file layout); pass False for a
    diffusers-style SD2 encoder whose last layer was dropped.
    """

    def __init__(
        self,
        tokenizers: Sequence[Any],
        text_encoders: Sequence[Any],
        family: str,
        embeddings: EmbeddingLookup | None = None,
        *,
        emphasis: str = "Original",
        comma_padding_backtrack: int = COMMA_PADDING_BACKTRACK,
        sdxl_clip_l_skip: bool = False,
        sd2_penultimate: bool = True,
    ):
        if family not in FAMILIES:
            raise InvalidParameterError(
                "family", f"unknown model family {family!r}", hint=f"one of {FAMILIES}"
            )
        expected = 2 if family == "sdxl" else 1
        if len(text_encoders) != expected or len(tokenizers) not in (1, expected):
            raise InvalidParameterError(
                "text_encoders", f"{family} needs {expected} text encoder(s), got {len(text_encoders)}"
            )
        self.family = family
        self.emphasis = emphasis
        self.sdxl_clip_l_skip = sdxl_clip_l_skip
        tokenizers = list(tokenizers) * (expected if len(tokenizers) == 1 else 1)

        def prompt_tokenizer(tokenizer: Any) -> PromptTokenizer:
            return PromptTokenizer(
                tokenizer, embeddings, comma_padding_backtrack=comma_padding_backtrack, emphasis=emphasis
            )

        if family == "sd1":
            tok = prompt_tokenizer(tokenizers[0])
            self.slots = [_EncoderSlot(text_encoders[0], tok, tok.id_end, "default", "clip_skip")]
        elif family == "sd2":
            layer = "penultimate_norm" if sd2_penultimate else "last"
            self.slots = [
                _EncoderSlot(text_encoders[0], prompt_tokenizer(tokenizers[0]), 0, "default", layer)
            ]
        elif family == "sdxl":
            clip_l = prompt_tokenizer(tokenizers[0])
            self.slots = [
                _EncoderSlot(text_encoders[0], clip_l, clip_l.id_end, "clip_l", "sdxl_clip_l"),
                _EncoderSlot(
                    text_encoders[1], prompt_tokenizer(tokenizers[1]), 0, "clip_g", "penultimate", True
                ),
            ]
        else:
            self.slots = [
                _EncoderSlot(
                    text_encoders[0], prompt_tokenizer(tokenizers[0]), 0, "clip_g", "penultimate", True
                )
            ]

    # --- public ----------------------------------------------------------------------------

    def encode(
        self, texts: list[str], clip_skip: int = 1, *, is_negative_prompt: bool = False
    ) -> Conditioning:
        """Encode a batch. Pass the scheduled variants of one prompt together: the emphasis mean
        is taken over the batch of each chunk index, as in the WebUI."""
        return self.encode_with_details(texts, clip_skip, is_negative_prompt=is_negative_prompt)[0]

    def encode_empty(self, clip_skip: int = 1) -> Conditioning:
        """The conditioning of ``""`` (one chunk), used to pad cond/uncond to the same length."""
        return self.encode([""], clip_skip)

    def empty_chunk(self, encoder_index: int = 0) -> PromptChunk:
        return self.slots[encoder_index].tokenizer.empty_chunk()

    def encode_with_details(
        self, texts: list[str], clip_skip: int = 1, *, is_negative_prompt: bool = False
    ) -> tuple[Conditioning, list[EncoderDetails]]:
        """:meth:`encode` plus, per text encoder, the chunks and input ids it was given."""
        if not texts:
            raise InvalidParameterError("texts", "nothing to encode", hint="pass at least one prompt")
        if int(clip_skip) < 1:
            raise InvalidParameterError("clip_skip", f"must be 1 or more, got {clip_skip}")
        tokenized = [slot.tokenizer.process_texts(texts) for slot in self.slots]
        # Every encoder gets the same number of chunks so SDXL's two outputs line up.
        chunk_count = max(len(chunks) for batch, _ in tokenized for chunks in batch)
        used: dict[str, Any] = {}
        contexts, details, pooled = [], [], None
        for slot, (batch_chunks, _) in zip(self.slots, tokenized):
            z, slot_pooled, ids = self._encode_slot(slot, batch_chunks, chunk_count, int(clip_skip), used)
            contexts.append(z)
            details.append(EncoderDetails(batch_chunks, ids))
            if slot.pooled:
                pooled = slot_pooled
        context = torch.cat(contexts, dim=-1) if len(contexts) > 1 else contexts[0]
        if self.family in ("sdxl", "sdxl_refiner") and is_negative_prompt and all(t == "" for t in texts):
            # The WebUI feeds SDXL zeros (not the encoding of "") for an empty negative prompt.
            context = torch.zeros_like(context)
            pooled = torch.zeros_like(pooled) if pooled is not None else None
        conditioning = Conditioning(
            context=context,
            pooled=pooled,
            used_embeddings=used,
            token_count=tokenized[0][1],
            emphasis=self.emphasis,
            uses_brackets=any("(" in t or "[" in t for t in texts),
        )
        return conditioning, details

    # --- internals -------------------------------------------------------------------------

    def _encode_slot(
        self,
        slot: _EncoderSlot,
        batch_chunks: list[list[PromptChunk]],
        chunk_count: int,
        clip_skip: int,
        used: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        device = slot.model.get_input_embeddings().weight.device
        outputs, all_ids, first_pooled = [], [], None
        for index in range(chunk_count):
            chunks = [c[index] if index < len(c) else slot.tokenizer.empty_chunk() for c in batch_chunks]
            ids = torch.tensor([self._padded_ids(slot, chunk.tokens) for chunk in chunks], device=device)
            fixes = [chunk.fixes for chunk in chunks]
            for row in fixes:
                for fix in row:
                    used[fix.embedding.name] = fix.embedding
            with _inserted_embeddings(slot, fixes):
                z, pooled = self._run_encoder(slot, ids, clip_skip)
            multipliers = torch.tensor(
                [chunk.multipliers for chunk in chunks], device=z.device, dtype=z.dtype
            )
            outputs.append(self._apply_emphasis(z, multipliers))
            all_ids.append(ids)
            if index == 0:
                first_pooled = pooled
        return torch.cat(outputs, dim=1), first_pooled, all_ids

    @staticmethod
    def _padded_ids(slot: _EncoderSlot, tokens: list[int]) -> list[int]:
        """OpenCLIP pads with 0 after the first EOS; CLIP-L keeps EOS as padding."""
        if slot.pad_id == slot.tokenizer.id_end:
            return list(tokens)
        first_end = tokens.index(slot.tokenizer.id_end)
        return tokens[: first_end + 1] + [slot.pad_id] * (len(tokens) - first_end - 1)

    def _run_encoder(
        self, slot: _EncoderSlot, ids: torch.Tensor, clip_skip: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = slot.model(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states
        if slot.layer in ("clip_skip", "sdxl_clip_l") and clip_skip > len(hidden):
            raise InvalidParameterError(
                "clip_skip", f"{clip_skip} is more than this text encoder's {len(hidden) - 1} layers"
            )
        if slot.layer == "clip_skip":
            z = (
                out.last_hidden_state
                if clip_skip == 1
                else _text_transformer(slot.model).final_layer_norm(hidden[-clip_skip])
            )
        elif slot.layer == "penultimate_norm":
            z = _text_transformer(slot.model).final_layer_norm(hidden[-2])
        elif slot.layer == "sdxl_clip_l":
            z = hidden[-clip_skip] if self.sdxl_clip_l_skip else hidden[-2]
        elif slot.layer == "penultimate":
            z = hidden[-2]
        else:
            z = out.last_hidden_state
        pooled = getattr(out, "text_embeds", None) if slot.pooled else None
        return z, pooled

    def _apply_emphasis(self, z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        if self.emphasis in ("None", "Ignore"):
            return z
        weighted = z * multipliers.unsqueeze(-1)
        if self.emphasis == "No norm":
            return weighted
        # "Original": keep the mean of the whole batch's chunk unchanged (the WebUI's comment:
        # likely not correct, but it prevents artifacts). A zero mean (untrained layer norm)
        # would give NaN there; keep the weighted states instead.
        new_mean = weighted.mean()
        if new_mean == 0:
            return weighted
        return weighted * (z.mean() / new_mean)


__all__ = [
    "FAMILIES",
    "Conditioning",
    "EncoderDetails",
    "PromptEncoder",
]
