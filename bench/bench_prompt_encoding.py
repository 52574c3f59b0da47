"""Cost of the WebUI prompt semantics: PromptEncoder against a plain tokenizer + text encoder.

    .venv/bin/python bench/bench_prompt_encoding.py [--size tiny|sd15] [--runs 15] [--device cpu] [--threads 1]

One prompt of about 300 tokens with emphasis and commas that both ways cut into four chunks. Two ways to encode it:

* plain   – ``tokenizer(prompt)`` (emphasis brackets stripped), cut into four 75-token windows,
            BOS/EOS added, ``text_encoder(input_ids)`` once per window: the least any
            chunked encoder has to do;
* kiln    – ``PromptEncoder.encode``: emphasis parsing, per-piece tokenization, comma
            backtracking, hidden-state multipliers and mean restore, one forward per chunk.

``--size tiny`` is a random 2-layer, 32-wide CLIP (the test fixture size: measures Python
overhead); ``--size sd15`` has CLIP-L's dimensions (12 layers, 768 wide) with random weights.
Runs alternate so machine load hits both alike; the table shows median milliseconds and the
ratio kiln / plain. Goal: the ratio stays close to 1 at sd15 size.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from core.prompts.conditioning import PromptEncoder  # noqa: E402

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "core" / "models" / "clip_tokenizer"
PHRASES = [
    "masterpiece",
    "(best quality:1.2)",
    "a castle on a hill",
    "[blurry background]",
    "((golden hour light))",
    "dramatic clouds",
    "detailed stone walls",
    "(flags:0.8) waving in the wind",
    "river in the valley",
    "tiny figures walking on the bridge",
]


def build_model(size: str, device: torch.device) -> CLIPTextModel:
    hidden, layers, heads = (32, 2, 2) if size == "tiny" else (768, 12, 12)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    torch.manual_seed(0)
    model = CLIPTextModel(config)
    with torch.no_grad():
        model.final_layer_norm.bias.normal_(0.1, 0.1)  # a trained-like nonzero mean
    return model.to(device).eval().requires_grad_(False)


def make_prompt(tokenizer: CLIPTokenizer, encoder: PromptEncoder, chunks: int = 4) -> str:
    """The longest phrase list that both ways encode as ``chunks`` chunks (about 75 × chunks tokens)."""
    phrases: list[str] = []
    while True:
        candidate = ", ".join(phrases + [PHRASES[len(phrases) % len(PHRASES)]])
        plain_tokens = len(tokenizer(strip_emphasis(candidate), add_special_tokens=False)["input_ids"])
        kiln_chunks = len(encoder.slots[0].tokenizer.tokenize_line(candidate)[0])
        if plain_tokens > 75 * chunks or kiln_chunks > chunks:
            return ", ".join(phrases)
        phrases.append(PHRASES[len(phrases) % len(PHRASES)])


def strip_emphasis(prompt: str) -> str:
    return (
        re.sub(r":[\d.]+\)", "", prompt).replace("(", "").replace(")", "").replace("[", "").replace("]", "")
    )


def plain_encode(tokenizer, model, prompt: str, device) -> torch.Tensor:
    ids = tokenizer(prompt, truncation=False, add_special_tokens=False)["input_ids"]
    outputs = []
    for start in range(0, max(len(ids), 1), 75):
        window = ids[start : start + 75]
        row = [tokenizer.bos_token_id, *window, tokenizer.eos_token_id]
        row += [tokenizer.eos_token_id] * (77 - len(row))
        outputs.append(model(input_ids=torch.tensor([row], device=device)).last_hidden_state)
    return torch.cat(outputs, dim=1)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steady timings on a busy host)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    model = build_model(args.size, device)
    encoder = PromptEncoder([tokenizer], [model], "sd1")
    prompt = make_prompt(tokenizer, encoder)
    plain_prompt = strip_emphasis(prompt)

    with torch.no_grad():
        kiln_context = encoder.encode([prompt]).context
        plain_context = plain_encode(tokenizer, model, plain_prompt, device)
        token_count = encoder.encode_with_details([prompt])[0].token_count
        times: dict[str, list[float]] = {"plain": [], "kiln": []}
        for _ in range(2):  # warm-up
            plain_encode(tokenizer, model, plain_prompt, device)
            encoder.encode([prompt])
        for _ in range(args.runs):
            times["plain"].append(timed(lambda: plain_encode(tokenizer, model, plain_prompt, device)))
            times["kiln"].append(timed(lambda: encoder.encode([prompt])))

    plain_ms = statistics.median(times["plain"])
    kiln_ms = statistics.median(times["kiln"])
    print(
        f"prompt: {token_count} tokens, kiln chunks {kiln_context.shape[1] // 77}, plain chunks "
        f"{plain_context.shape[1] // 77}; size {args.size}, device {device}, {args.runs} runs"
    )
    print(f"{'method':<8} {'median ms':>10} {'ratio':>7}")
    print(f"{'plain':<8} {plain_ms:>10.2f} {1.0:>7.2f}")
    print(f"{'kiln':<8} {kiln_ms:>10.2f} {kiln_ms / plain_ms:>7.2f}")


if __name__ == "__main__":
    main()
