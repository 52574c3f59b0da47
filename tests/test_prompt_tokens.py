"""Chunking and the token counter, with the shipped CLIP vocabulary (no text encoder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from core.errors import InvalidParameterError
from core.prompts.tokens import CHUNK_LENGTH, PromptTokenizer, count_tokens, target_token_count

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "core" / "models" / "clip_tokenizer"
BOS, EOS, COMMA = 49406, 49407, 267


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


@dataclass
class FakeEmbedding:
    name: str
    vectors: int
    vec: dict


class FakeEmbeddings:
    """Finds embeddings by their name's token ids, like the WebUI's EmbeddingDatabase."""

    def __init__(self, tokenizer, embeddings):
        self.by_ids = [(tokenizer(e.name, add_special_tokens=False)["input_ids"], e) for e in embeddings]

    def find_embedding_at_position(self, token_ids, offset):
        for ids, embedding in self.by_ids:
            if token_ids[offset : offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, 0


def single_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, word
    return ids[0]


def test_short_prompt_is_one_padded_chunk(tokenizer):
    chunks, count = PromptTokenizer(tokenizer).tokenize_line("a cat")
    assert count == 2
    (chunk,) = chunks
    assert len(chunk.tokens) == 77 and len(chunk.multipliers) == 77
    assert chunk.tokens[0] == BOS and chunk.tokens[3:] == [EOS] * 74
    assert chunk.multipliers == [1.0] * 77


def test_emphasis_multipliers_per_token(tokenizer):
    (chunk,), _ = PromptTokenizer(tokenizer).tokenize_line("a (cat:1.5) [dog]")
    assert chunk.multipliers[:4] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1])
    (plain,), _ = PromptTokenizer(tokenizer, emphasis="None").tokenize_line("a (cat:1.5)")
    assert set(plain.multipliers) == {1.0}
    assert len([t for t in plain.tokens if t != EOS]) > 3  # brackets and weight are tokens now


def test_break_starts_new_chunk_and_counts_full_chunk(tokenizer):
    chunks, count = PromptTokenizer(tokenizer).tokenize_line("a cat BREAK a dog")
    assert len(chunks) == 2
    assert chunks[0].tokens[1:3] == tokenizer("a cat", add_special_tokens=False)["input_ids"]
    assert chunks[0].tokens[3:] == [EOS] * 74
    assert chunks[1].tokens[1:3] == tokenizer("a dog", add_special_tokens=False)["input_ids"]
    assert count == 75 + 2
    assert count_tokens(tokenizer, "a cat BREAK a dog") == (77, 150)


def test_long_prompt_two_chunks(tokenizer):
    cat = single_token(tokenizer, "cat")
    chunks, count = PromptTokenizer(tokenizer, comma_padding_backtrack=0).tokenize_line(
        " ".join(["cat"] * 90)
    )
    assert count == 90
    assert [len(c.tokens) for c in chunks] == [77, 77]
    assert chunks[0].tokens == [BOS] + [cat] * 75 + [EOS]
    assert chunks[1].tokens[1:16] == [cat] * 15 and chunks[1].tokens[16:] == [EOS] * 61
    assert count_tokens(tokenizer, " ".join(["cat"] * 90)) == (90, 150)


def test_comma_backtracking_moves_words_after_last_comma(tokenizer):
    cat, dog = single_token(tokenizer, "cat"), single_token(tokenizer, "dog")
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks, count = PromptTokenizer(tokenizer).tokenize_line(prompt)
    # 70 cats + comma = 71 tokens; 4 dogs fill the chunk, the 5th dog finds the comma 4 back
    assert chunks[0].tokens[1:72] == [cat] * 70 + [COMMA]
    assert chunks[0].tokens[72:] == [EOS] * 5
    assert chunks[1].tokens[1:11] == [dog] * 10
    assert count == 75 + 10
    # with backtracking off (or the comma too far back) the chunk is cut at 75 tokens
    chunks, _ = PromptTokenizer(tokenizer, comma_padding_backtrack=0).tokenize_line(prompt)
    assert chunks[0].tokens[72:76] == [dog] * 4
    far = " ".join(["cat"] * 40) + ", " + " ".join(["dog"] * 40)
    chunks, _ = PromptTokenizer(tokenizer).tokenize_line(far)
    assert chunks[0].tokens[42:76] == [dog] * 34


def test_empty_prompt(tokenizer):
    chunks, count = PromptTokenizer(tokenizer).tokenize_line("")
    assert count == 0 and len(chunks) == 1
    assert chunks[0].tokens == PromptTokenizer(tokenizer).empty_chunk().tokens == [BOS] + [EOS] * 76
    assert count_tokens(tokenizer, "") == (0, 75)


def test_embedding_counts_its_vectors_and_fits_in_one_chunk(tokenizer):
    emb = FakeEmbedding("kilnstyle", 5, {})
    name_ids = tokenizer("kilnstyle", add_special_tokens=False)["input_ids"]
    assert len(name_ids) > 1  # the name is several tokens; the embedding counts 5
    lookup = FakeEmbeddings(tokenizer, [emb])
    (chunk,), count = PromptTokenizer(tokenizer, lookup).tokenize_line("a (kilnstyle:1.2) cat")
    assert count == 1 + 5 + 1
    assert chunk.tokens[2:7] == [0] * 5
    assert chunk.multipliers[2:7] == pytest.approx([1.2] * 5)
    assert [(f.offset, f.embedding.name) for f in chunk.fixes] == [(1, "kilnstyle")]
    # 73 words then the embedding: it does not fit in the 2 free tokens, so it opens chunk 2
    chunks, _ = PromptTokenizer(tokenizer, lookup, comma_padding_backtrack=0).tokenize_line(
        " ".join(["cat"] * 73) + " kilnstyle"
    )
    assert chunks[0].fixes == [] and chunks[0].tokens[74:] == [EOS] * 3
    assert [f.offset for f in chunks[1].fixes] == [0] and chunks[1].tokens[1:6] == [0] * 5
    assert count_tokens(tokenizer, "a kilnstyle", embeddings=lookup) == (6, 75)


def test_backtracking_moves_embedding_with_its_tokens(tokenizer):
    lookup = FakeEmbeddings(tokenizer, [FakeEmbedding("kilnstyle", 2, {})])
    prompt = " ".join(["cat"] * 70) + ", kilnstyle " + " ".join(["dog"] * 5)
    chunks, _ = PromptTokenizer(tokenizer, lookup).tokenize_line(prompt)
    assert chunks[0].fixes == []
    assert [f.offset for f in chunks[1].fixes] == [0]
    assert chunks[1].tokens[1:3] == [0, 0]


def test_counter_covers_schedules_and_and_and_removes_tags(tokenizer):
    assert count_tokens(tokenizer, "<lora:foo:1> cat") == (1, 75)
    long = " ".join(["cat"] * 80)
    assert count_tokens(tokenizer, f"[dog:{long}:5]", steps=20) == (80, 150)
    assert count_tokens(tokenizer, f"[dog:{long}:5]", steps=20)[0] == count_tokens(tokenizer, long)[0]
    assert count_tokens(tokenizer, "cat AND dog dog dog") == (3, 75)
    # a negative prompt is not split on AND
    assert count_tokens(tokenizer, "cat AND dog", is_positive=False) == (3, 75)


def test_target_token_count():
    assert [target_token_count(n) for n in (0, 1, 75, 76, 150, 151)] == [75, 75, 75, 150, 150, 225]
    assert CHUNK_LENGTH == 75


def test_unknown_emphasis_mode(tokenizer):
    with pytest.raises(InvalidParameterError):
        PromptTokenizer(tokenizer, emphasis="Loud")


def test_process_texts_caches_identical_lines(tokenizer):
    batch, count = PromptTokenizer(tokenizer).process_texts(["a cat", "a dog dog", "a cat"])
    assert batch[0] is batch[2] and count == 3
