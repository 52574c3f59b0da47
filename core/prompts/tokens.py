"""Prompt text → 75-token chunks, the WebUI's way (``sd_hijack_clip.tokenize_line``); no torch.

Each chunk holds 75 prompt tokens between BOS and EOS (77 in all) with one emphasis multiplier
per token. ``BREAK`` starts a new chunk; when a chunk fills up, text after the last comma within
``comma_padding_backtrack`` tokens moves to the next chunk; a textual-inversion name is replaced
by as many placeholder tokens as the embedding has vectors and never straddles two chunks.

:func:`count_tokens` is the token counter shown beside the prompt box (``12/75``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import InvalidParameterError
from core.prompts.extra_networks import parse_extra_networks
from core.prompts.parser import multicond_prompt_list, parse_emphasis, prompt_schedules

CHUNK_LENGTH = 75
COMMA_PADDING_BACKTRACK = 20
EMPHASIS_MODES = ("None", "Ignore", "Original", "No norm")
# The token id put where an embedding's vectors go; the text encoder's input embedding at these
# positions is overwritten, so the id only matters for padding rules (it is not EOS).
EMBEDDING_PLACEHOLDER_ID = 0


class EmbeddingLookup(Protocol):
    def find_embedding_at_position(self, token_ids: list[int], offset: int) -> tuple[Any | None, int]: ...


@dataclass(frozen=True)
class ChunkFix:
    """An embedding whose vectors replace the input embeddings after BOS + ``offset``."""

    offset: int
    embedding: Any


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 tokens, EOS) with their emphasis multipliers and embeddings."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[ChunkFix] = field(default_factory=list)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """A vocabulary entry's id, None when absent (``get_vocab()`` would copy 49k entries)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return token_id


def target_token_count(token_count: int) -> int:
    """The "max" of the counter: the next multiple of 75 (at least 75)."""
    return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


class PromptTokenizer:
    """Splits prompts into chunks for one CLIP tokenizer (a transformers ``CLIPTokenizer``)."""

    def __init__(
        self,
        tokenizer: Any,
        embeddings: EmbeddingLookup | None = None,
        *,
        comma_padding_backtrack: int = COMMA_PADDING_BACKTRACK,
        emphasis: str = "Original",
    ):
        if emphasis not in EMPHASIS_MODES:
            raise InvalidParameterError(
                "emphasis", f"unknown mode {emphasis!r}", hint=f"one of {EMPHASIS_MODES}"
            )
        self.tokenizer = tokenizer
        self.embeddings = embeddings
        self.comma_padding_backtrack = comma_padding_backtrack
        self.emphasis = emphasis
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        self.comma_token = _token_id(tokenizer, ",</w>")

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def empty_chunk(self) -> PromptChunk:
        """The chunk of an empty prompt: BOS then EOS to the end."""
        return PromptChunk(
            tokens=[self.id_start] + [self.id_end] * (CHUNK_LENGTH + 1),
            multipliers=[1.0] * (CHUNK_LENGTH + 2),
        )

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        """One prompt → its chunks and its token count (as the counter shows it)."""
        parsed = parse_emphasis(line) if self.emphasis != "None" else [[line, 1.0]]
        tokenized = self.tokenize([text for text, _ in parsed])
        builder = _ChunkBuilder(self)
        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                builder.close_chunk()
                continue
            builder.add_tokens(tokens, weight)
        return builder.finish()

    def process_texts(self, texts: list[str]) -> tuple[list[list[PromptChunk]], int]:
        """Chunks per text (identical texts tokenized once) and the largest token count."""
        cache: dict[str, list[PromptChunk]] = {}
        token_count = 0
        batch = []
        for line in texts:
            if line not in cache:
                chunks, count = self.tokenize_line(line)
                token_count = max(token_count, count)
                cache[line] = chunks
            batch.append(cache[line])
        return batch, token_count


class _ChunkBuilder:
    """The state machine of ``tokenize_line``: fills chunks, backtracks to commas, fits embeddings."""

    def __init__(self, owner: PromptTokenizer):
        self.owner = owner
        self.chunks: list[PromptChunk] = []
        self.chunk = PromptChunk()
        self.token_count = 0
        self.last_comma = -1

    def close_chunk(self, is_last: bool = False) -> None:
        chunk = self.chunk
        # The last chunk counts its real tokens; a closed one counts as full (75).
        self.token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        missing = CHUNK_LENGTH - len(chunk.tokens)
        if missing > 0:
            chunk.tokens += [self.owner.id_end] * missing
            chunk.multipliers += [1.0] * missing
        chunk.tokens = [self.owner.id_start] + chunk.tokens + [self.owner.id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        self.last_comma = -1
        self.chunks.append(chunk)
        self.chunk = PromptChunk()

    def _move_tail_after_comma(self) -> None:
        """Close the chunk at the last comma; the words after it open the next chunk."""
        cut = self.last_comma + 1
        chunk = self.chunk
        moved_tokens, moved_multipliers = chunk.tokens[cut:], chunk.multipliers[cut:]
        # The WebUI leaves the fixes of moved embeddings behind (their vectors then land on the
        # padding of the closed chunk); Kiln moves them with their tokens.
        kept = [fix for fix in chunk.fixes if fix.offset < cut]
        moved = [ChunkFix(fix.offset - cut, fix.embedding) for fix in chunk.fixes if fix.offset >= cut]
        chunk.tokens, chunk.multipliers, chunk.fixes = chunk.tokens[:cut], chunk.multipliers[:cut], kept
        self.close_chunk()
        self.chunk.tokens, self.chunk.multipliers, self.chunk.fixes = moved_tokens, moved_multipliers, moved

    def add_tokens(self, tokens: list[int], weight: float) -> None:
        owner = self.owner
        backtrack = owner.comma_padding_backtrack
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == owner.comma_token:
                self.last_comma = len(self.chunk.tokens)
            elif (
                backtrack != 0
                and len(self.chunk.tokens) == CHUNK_LENGTH
                and self.last_comma != -1
                and len(self.chunk.tokens) - self.last_comma <= backtrack
            ):
                self._move_tail_after_comma()
            if len(self.chunk.tokens) == CHUNK_LENGTH:
                self.close_chunk()

            embedding, name_length = (
                owner.embeddings.find_embedding_at_position(tokens, position)
                if owner.embeddings
                else (None, 0)
            )
            if embedding is None:
                self.chunk.tokens.append(token)
                self.chunk.multipliers.append(weight)
                position += 1
                continue
            vector_count = int(embedding.vectors)
            if len(self.chunk.tokens) + vector_count > CHUNK_LENGTH:
                self.close_chunk()
            self.chunk.fixes.append(ChunkFix(len(self.chunk.tokens), embedding))
            self.chunk.tokens += [EMBEDDING_PLACEHOLDER_ID] * vector_count
            self.chunk.multipliers += [weight] * vector_count
            position += name_length

    def finish(self) -> tuple[list[PromptChunk], int]:
        if self.chunk.tokens or not self.chunks:
            self.close_chunk(is_last=True)
        return self.chunks, self.token_count


def count_tokens(
    tokenizer: Any,
    text: str,
    steps: int = 20,
    *,
    embeddings: EmbeddingLookup | None = None,
    is_positive: bool = True,
    comma_padding_backtrack: int = COMMA_PADDING_BACKTRACK,
    emphasis: str = "Original",
) -> tuple[int, int]:
    """``(tokens, max)`` for the prompt box counter, over every scheduled variant of the prompt.

    Extra-network tags are removed first; a positive prompt is split on ``AND``. Cheap enough to
    run on every keystroke (the tokenizer only, no text encoder). For SDXL pass the CLIP-L
    tokenizer, as the WebUI counts with the first text encoder.
    """
    prompt_tokenizer = (
        tokenizer
        if isinstance(tokenizer, PromptTokenizer)
        else PromptTokenizer(
            tokenizer, embeddings, comma_padding_backtrack=comma_padding_backtrack, emphasis=emphasis
        )
    )
    text, _ = parse_extra_networks(text)
    subprompts = multicond_prompt_list([text])[1] if is_positive else [text]
    variants = [variant for schedule in prompt_schedules(subprompts, steps) for _, variant in schedule]
    token_count = max(prompt_tokenizer.process_texts([variant])[1] for variant in variants)
    return token_count, target_token_count(token_count)


__all__ = [
    "CHUNK_LENGTH",
    "COMMA_PADDING_BACKTRACK",
    "EMPHASIS_MODES",
    "ChunkFix",
    "EmbeddingLookup",
    "PromptChunk",
    "PromptTokenizer",
    "count_tokens",
    "target_token_count",
]
