"""PromptEncoder against hand-built expectations on tiny random CLIP text models."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from core.errors import InvalidParameterError
from core.prompts.conditioning import PromptEncoder

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "core" / "models" / "clip_tokenizer"
BOS, EOS = 49406, 49407


def tiny_config(hidden: int, projection: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=1,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def trained_like(model):
    """A fresh final LayerNorm outputs zero-mean tokens; trained ones have a bias (and the mean
    restore of emphasis divides by the mean), so give it random affine parameters."""
    for name, module in model.named_modules():
        if name.endswith("final_layer_norm"):
            with torch.no_grad():
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def clip_l():
    torch.manual_seed(0)
    return trained_like(CLIPTextModel(tiny_config(32)))


@pytest.fixture(scope="module")
def clip_g():
    torch.manual_seed(1)
    return trained_like(CLIPTextModelWithProjection(tiny_config(48, projection=24)))


@dataclass
class FakeEmbedding:
    name: str
    vectors: int
    vec: dict
    hash: str = "abcdef012345"


class FakeEmbeddings:
    def __init__(self, tokenizer, embeddings):
        self.by_ids = [(tokenizer(e.name, add_special_tokens=False)["input_ids"], e) for e in embeddings]

    def find_embedding_at_position(self, token_ids, offset):
        for ids, embedding in self.by_ids:
            if token_ids[offset : offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, 0


def ids_of(tokenizer, text: str, pad: int = EOS) -> torch.Tensor:
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    row = [BOS, *tokens, EOS]
    return torch.tensor([row + [pad] * (77 - len(row))])


@torch.no_grad()
def test_sd1_plain_prompt_equals_plain_forward(tokenizer, clip_l):
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    cond = encoder.encode(["a photo of a cat"])
    expected = clip_l(input_ids=ids_of(tokenizer, "a photo of a cat")).last_hidden_state
    assert cond.context.shape == (1, 77, 32)
    assert cond.pooled is None
    torch.testing.assert_close(cond.context, expected)


@torch.no_grad()
def test_emphasis_multiplies_then_restores_mean(tokenizer, clip_l):
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    cond, (details,) = encoder.encode_with_details(["a (cat:1.5) dog"])
    plain = clip_l(input_ids=ids_of(tokenizer, "a cat dog")).last_hidden_state
    multipliers = torch.tensor(details.chunks[0][0].multipliers)
    assert multipliers[:5].tolist() == pytest.approx([1.0, 1.0, 1.5, 1.0, 1.0])
    weighted = plain * multipliers[None, :, None]
    expected = weighted * (plain.mean() / weighted.mean())
    torch.testing.assert_close(cond.context, expected)
    torch.testing.assert_close(cond.context.mean(), plain.mean())
    # the emphasised token is 1.5x its neighbours' scale factor
    factor = cond.context[0, 1] / plain[0, 1]
    torch.testing.assert_close(cond.context[0, 2] / plain[0, 2], factor * 1.5)
    no_norm = PromptEncoder([tokenizer], [clip_l], "sd1", emphasis="No norm").encode(["a (cat:1.5) dog"])
    torch.testing.assert_close(no_norm.context, weighted)
    ignore = PromptEncoder([tokenizer], [clip_l], "sd1", emphasis="Ignore").encode(["a (cat:1.5) dog"])
    torch.testing.assert_close(ignore.context, plain)
    assert ignore.extra_generation_params() == {"Emphasis": "Ignore"}
    assert cond.extra_generation_params() == {}


@torch.no_grad()
def test_break_and_long_prompts_concatenate_chunks(tokenizer, clip_l):
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    cond = encoder.encode(["a cat BREAK a dog"])
    assert cond.context.shape == (1, 154, 32)
    torch.testing.assert_close(
        cond.context[:, :77], clip_l(input_ids=ids_of(tokenizer, "a cat")).last_hidden_state
    )
    torch.testing.assert_close(
        cond.context[:, 77:], clip_l(input_ids=ids_of(tokenizer, "a dog")).last_hidden_state
    )
    long = encoder.encode([" ".join(["cat"] * 90)])
    assert long.context.shape == (1, 154, 32) and long.token_count == 90


@torch.no_grad()
def test_batch_with_different_lengths_pads_with_empty_chunk(tokenizer, clip_l):
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    cond = encoder.encode(["a cat", "a dog BREAK more"])
    assert cond.context.shape == (2, 154, 32)
    empty = encoder.encode_empty().context
    torch.testing.assert_close(cond.context[0:1, 77:], empty)


@torch.no_grad()
def test_clip_skip_selects_layer_then_final_norm(tokenizer, clip_l):
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    ids = ids_of(tokenizer, "a cat")
    out = clip_l(input_ids=ids, output_hidden_states=True)
    skip2 = encoder.encode(["a cat"], clip_skip=2).context
    torch.testing.assert_close(skip2, clip_l.final_layer_norm(out.hidden_states[-2]))
    assert not torch.allclose(skip2, out.last_hidden_state)
    skip3 = encoder.encode(["a cat"], clip_skip=3).context
    torch.testing.assert_close(skip3, clip_l.final_layer_norm(out.hidden_states[-3]))
    with pytest.raises(InvalidParameterError):
        encoder.encode(["a cat"], clip_skip=4)
    with pytest.raises(InvalidParameterError):
        encoder.encode(["a cat"], clip_skip=0)


@torch.no_grad()
def test_padding_id_per_family(tokenizer, clip_l, clip_g):
    _, (sd1,) = PromptEncoder([tokenizer], [clip_l], "sd1").encode_with_details(["a cat"])
    assert sd1.input_ids[0][0, 4:].tolist() == [EOS] * 73
    sd2_encoder = PromptEncoder([tokenizer], [clip_l], "sd2")
    cond, (sd2,) = sd2_encoder.encode_with_details(["a cat"])
    assert sd2.input_ids[0][0, :4].tolist()[-1] == EOS and sd2.input_ids[0][0, 4:].tolist() == [0] * 73
    # SD2: penultimate layer through the final norm, zero padding; clip skip is ignored
    ids = ids_of(tokenizer, "a cat", pad=0)
    expected = clip_l.final_layer_norm(clip_l(input_ids=ids, output_hidden_states=True).hidden_states[-2])
    torch.testing.assert_close(cond.context, expected)
    torch.testing.assert_close(sd2_encoder.encode(["a cat"], clip_skip=2).context, expected)
    _, (l_details, g_details) = PromptEncoder([tokenizer] * 2, [clip_l, clip_g], "sdxl").encode_with_details(
        ["a cat"]
    )
    assert l_details.input_ids[0][0, 4:].tolist() == [EOS] * 73
    assert g_details.input_ids[0][0, 4:].tolist() == [0] * 73


@torch.no_grad()
def test_sdxl_concat_and_pooled_from_first_chunk(tokenizer, clip_l, clip_g):
    encoder = PromptEncoder([tokenizer, tokenizer], [clip_l, clip_g], "sdxl")
    cond = encoder.encode(["a cat BREAK a dog", "a bird"])
    assert cond.context.shape == (2, 154, 32 + 48)
    assert cond.pooled.shape == (2, 24)
    ids_l, ids_g = ids_of(tokenizer, "a cat"), ids_of(tokenizer, "a cat", pad=0)
    expected_l = clip_l(input_ids=ids_l, output_hidden_states=True).hidden_states[-2]
    out_g = clip_g(input_ids=ids_g, output_hidden_states=True)
    torch.testing.assert_close(cond.context[0:1, :77, :32], expected_l)
    torch.testing.assert_close(cond.context[0:1, :77, 32:], out_g.hidden_states[-2])
    torch.testing.assert_close(cond.pooled[0:1], out_g.text_embeds)
    # clip skip is ignored for SDXL unless sdxl_clip_l_skip
    torch.testing.assert_close(
        encoder.encode(["a cat"], clip_skip=2).context, encoder.encode(["a cat"]).context
    )
    skip = PromptEncoder([tokenizer], [clip_l, clip_g], "sdxl", sdxl_clip_l_skip=True)
    last = clip_l(input_ids=ids_l, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(skip.encode(["a cat"], clip_skip=1).context[..., :32], last)


@torch.no_grad()
def test_sdxl_empty_negative_prompt_is_zeros(tokenizer, clip_l, clip_g):
    encoder = PromptEncoder([tokenizer, tokenizer], [clip_l, clip_g], "sdxl")
    negative = encoder.encode([""], is_negative_prompt=True)
    assert torch.count_nonzero(negative.context) == 0 and torch.count_nonzero(negative.pooled) == 0
    assert torch.count_nonzero(encoder.encode([""]).context) > 0


@torch.no_grad()
def test_refiner_uses_bigg_only(tokenizer, clip_g):
    cond = PromptEncoder([tokenizer], [clip_g], "sdxl_refiner").encode(["a cat"])
    assert cond.context.shape == (1, 77, 48) and cond.pooled.shape == (1, 24)


@torch.no_grad()
def test_embedding_vectors_replace_placeholder_inputs(tokenizer, clip_l):
    torch.manual_seed(2)
    vectors = torch.randn(3, 32) * 0.05
    embedding = FakeEmbedding("kilnstyle", 3, {"default": vectors})
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1", embeddings=FakeEmbeddings(tokenizer, [embedding]))
    cond, (details,) = encoder.encode_with_details(["a kilnstyle cat"])
    chunk = details.chunks[0][0]
    assert chunk.tokens[:6] == [BOS, chunk.tokens[1], 0, 0, 0, chunk.tokens[5]]
    # expected: the same model with three spare vocabulary rows holding the vectors
    reference = copy.deepcopy(clip_l)
    spare = [40000, 40001, 40002]
    reference.get_input_embeddings().weight[spare] = vectors
    a, cat = (
        tokenizer("a", add_special_tokens=False)["input_ids"][0],
        tokenizer("cat", add_special_tokens=False)["input_ids"][0],
    )
    row = [BOS, a, *spare, cat, EOS]
    expected = reference(input_ids=torch.tensor([row + [EOS] * (77 - len(row))])).last_hidden_state
    torch.testing.assert_close(cond.context, expected)
    assert list(cond.used_embeddings) == ["kilnstyle"]
    assert cond.ti_hashes() == "kilnstyle: abcdef012345"
    assert cond.extra_generation_params() == {"TI hashes": "kilnstyle: abcdef012345"}
    # the hook is removed after encoding: plain prompts are unaffected
    torch.testing.assert_close(
        encoder.encode(["a cat"]).context, clip_l(input_ids=ids_of(tokenizer, "a cat")).last_hidden_state
    )


@torch.no_grad()
def test_sdxl_embedding_uses_clip_l_and_clip_g_vectors(tokenizer, clip_l, clip_g):
    vec = {"clip_l": torch.full((2, 32), 0.01), "clip_g": torch.full((2, 48), -0.01)}
    lookup = FakeEmbeddings(tokenizer, [FakeEmbedding("kilnstyle", 2, vec)])
    encoder = PromptEncoder([tokenizer, tokenizer], [clip_l, clip_g], "sdxl", embeddings=lookup)
    cond = encoder.encode(["kilnstyle"])
    ref_l, ref_g = copy.deepcopy(clip_l), copy.deepcopy(clip_g)
    ref_l.get_input_embeddings().weight[[40000, 40001]] = vec["clip_l"]
    ref_g.get_input_embeddings().weight[[40000, 40001]] = vec["clip_g"]
    row = [BOS, 40000, 40001, EOS]
    ids_l = torch.tensor([row + [EOS] * 73])
    ids_g = torch.tensor([row + [0] * 73])
    torch.testing.assert_close(
        cond.context[..., :32], ref_l(input_ids=ids_l, output_hidden_states=True).hidden_states[-2]
    )
    torch.testing.assert_close(
        cond.context[..., 32:], ref_g(input_ids=ids_g, output_hidden_states=True).hidden_states[-2]
    )


def test_gradients_reach_embedding_vectors(tokenizer, clip_l):
    vectors = torch.zeros(2, 32, requires_grad=True)
    lookup = FakeEmbeddings(tokenizer, [FakeEmbedding("kilnstyle", 2, {"default": vectors})])
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1", embeddings=lookup)
    encoder.encode(["a photo of kilnstyle"]).context.pow(2).sum().backward()
    assert vectors.grad is not None and torch.count_nonzero(vectors.grad) > 0


def test_bad_arguments(tokenizer, clip_l):
    with pytest.raises(InvalidParameterError):
        PromptEncoder([tokenizer], [clip_l], "sd3")
    with pytest.raises(InvalidParameterError):
        PromptEncoder([tokenizer], [clip_l], "sdxl")
    with pytest.raises(InvalidParameterError):
        PromptEncoder([tokenizer], [clip_l], "sd1").encode([])


@torch.no_grad()
def test_with_kiln_embedding_database(tmp_path, tokenizer, clip_l):
    from core.networks.embeddings import Embedding, EmbeddingDatabase

    database = EmbeddingDatabase(embeddings_dir=tmp_path, tokenizer=tokenizer)
    vectors = torch.full((2, 32), 0.02)
    database.register(
        Embedding(name="kilnstyle", vec={"default": vectors}, vectors=2, shape=32, sha256="ab" * 32)
    )
    encoder = PromptEncoder([tokenizer], [clip_l], "sd1", embeddings=database)
    cond, (details,) = encoder.encode_with_details(["a kilnstyle"])
    assert details.chunks[0][0].tokens[2:4] == [0, 0]
    assert cond.ti_hashes() == "kilnstyle: abababababab"


@torch.no_grad()
def test_build_schedule_encodes_each_variant_once_and_keeps_and_weights(tokenizer, clip_l):
    from core.generation.cond_schedule import ConditioningCache, build_schedule

    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    cache = ConditioningCache(encoder, clip_skip=1)
    edited = build_schedule(cache, "a [cat:dog:2]", 4, split_and=False)
    (part,) = edited.parts
    assert part.end_steps == [2, 4] and edited.texts == ["a cat", "a dog"]
    torch.testing.assert_close(part.conds[1].context, encoder.encode(["a dog"]).context)
    # the same text is encoded once per job and shared
    again = build_schedule(cache, "a [cat:dog:2]", 4, split_and=False)
    assert again.parts[0].conds[0] is part.conds[0]

    multi = build_schedule(cache, "a cat AND a dog:0.5", 4, split_and=True)
    assert [p.weight for p in multi.parts] == [1.0, 0.5]
    torch.testing.assert_close(multi.parts[1].conds[0].context, encoder.encode([" a dog"]).context)


def _schedule_of(prompt: str, steps: int):
    """build_schedule with a stand-in cache: each text "encodes" to itself."""
    from core.generation.cond_schedule import build_schedule

    class TextCache:
        def variants(self, texts, is_negative_prompt=False):
            return list(texts)

    return build_schedule(TextCache(), prompt, steps, split_and=False)


def test_prompt_editing_switches_after_the_step_the_webui_switches_at():
    # [cat:dog:10] of 20 steps: the schedule is [[10, "a cat"], [20, "a dog"]]; the WebUI's sampler
    # counts steps from 0 and uses an entry while step <= end_at_step (reconstruct_cond_batch).
    schedule = _schedule_of("a [cat:dog:10]", 20)
    assert schedule.parts[0].end_steps == [10, 20]
    used = [schedule.at(step)[0][0] for step in range(20)]
    assert used == ["a cat"] * 11 + ["a dog"] * 9
    # fractions the same way: [cat:dog:0.25] of 8 steps ends at step 2
    assert [_schedule_of("[cat:dog:0.25]", 8).at(s)[0][0] for s in range(4)] == ["cat", "cat", "cat", "dog"]


def test_alternation_follows_the_webui_step_count():
    schedule = _schedule_of("[a|b]", 6)
    assert [schedule.at(step)[0][0] for step in range(6)] == ["a", "a", "b", "a", "b", "a"]


@torch.no_grad()
def test_schedule_variants_are_encoded_as_one_batch_like_the_webui(tokenizer, clip_l):
    from core.generation.cond_schedule import ConditioningCache, build_schedule

    encoder = PromptEncoder([tokenizer], [clip_l], "sd1")
    schedule = build_schedule(ConditioningCache(encoder, 1), "a [(cat:1.5):dog:2]", 4, split_and=True)
    together = encoder.encode(["a (cat:1.5)", "a dog"]).context
    alone = encoder.encode(["a (cat:1.5)"]).context
    # the emphasis mean is restored over both variants (get_learned_conditioning encodes them together)
    torch.testing.assert_close(schedule.at(0)[0][0].context, together[:1])
    torch.testing.assert_close(schedule.at(3)[0][0].context, together[1:])
    assert not torch.allclose(together[:1], alone)


@torch.no_grad()
def test_an_empty_sdxl_negative_schedule_is_zeros(tokenizer, clip_l, clip_g):
    from core.generation.cond_schedule import ConditioningCache, build_schedule

    cache = ConditioningCache(PromptEncoder([tokenizer, tokenizer], [clip_l, clip_g], "sdxl"), 1)
    negative = build_schedule(cache, "", 4, split_and=False).at(0)[0][0]
    assert negative.context.abs().sum() == 0 and negative.pooled.abs().sum() == 0
    # the positive prompt and the padding chunk keep the real encoding of ""
    assert build_schedule(cache, "", 4, split_and=True).at(0)[0][0].context.abs().sum() > 0
    assert cache.get("").context.abs().sum() > 0


def test_hires_pass_reads_prompt_editing_past_the_first_pass_as_the_webui():
    """[cat:dog:25] with 20 steps + 10 hires steps: cat for the whole first pass; in the hires
    pass, step 25 is its 5th (whole numbers past the first pass count in it)."""
    from core.generation.pipeline import prompt_pass
    from core.sampling.samplers import DEFAULT_SAMPLER

    class TextCache:
        def variants(self, texts, is_negative_prompt=False):
            return list(texts)

        def get(self, text):
            return type("Encoded", (), {"context": text})()

    first = prompt_pass(TextCache(), DEFAULT_SAMPLER, "Karras", 20, 7.0, "[cat:dog:25]", "")
    assert {first.cond.at(step)[0][0] for step in range(20)} == {"cat"}
    second = prompt_pass(TextCache(), DEFAULT_SAMPLER, "Karras", 10, 7.0, "[cat:dog:25]", "", first_pass_steps=20)
    assert [second.cond.at(step)[0][0] for step in range(10)] == ["cat"] * 6 + ["dog"] * 4
    fraction = prompt_pass(TextCache(), DEFAULT_SAMPLER, "Karras", 10, 7.0, "[cat:dog:1.5]", "", first_pass_steps=20)
    assert [fraction.cond.at(step)[0][0] for step in range(10)] == ["cat"] * 6 + ["dog"] * 4
