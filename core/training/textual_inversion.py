"""Textual Inversion: create an embedding file and train its vectors, as the WebUI's Train tab.

``create_embedding`` writes ``embeddings/<name>.pt`` at once in the WebUI's layout
(``string_to_token {'*': 265}``, ``string_to_param {'*': [vectors, width]}``, ``name``,
``step``, ``sd_checkpoint``, ``sd_checkpoint_name``); for SDXL ``<name>.safetensors`` with
``clip_l`` / ``clip_g`` (the layout kohya's SDXL trainer writes and the WebUI reads). The
vectors start as the token embeddings of the initialization text, spread over the vectors
(the WebUI's ``encode_embedding_init_text``), or zeros without one.

``train_embedding`` trains only those vectors (core/training/ti_loop.py) through Kiln's prompt
encoder, which puts them in place of the name's tokens exactly as generation does.
"""

from __future__ import annotations

import base64
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidParameterError, KilnError
from core.fileio import atomic_save_with
from core.networks.embeddings import Embedding, load_embedding
from core.training.ti_loop import TrainHooks, TrainOptions, TrainResult, check_model, run_training

MAX_VECTORS = 75  # one CLIP chunk; the WebUI's slider goes to 75 (seed 003: keep it under 12)


def clean_name(name: str) -> str:
    """The WebUI keeps letters, digits, ``._-`` and spaces of a new embedding's name."""
    cleaned = "".join(x for x in str(name) if x.isalnum() or x in "._- ").strip()
    if not cleaned:
        raise InvalidParameterError("name", "the name is empty", hint="type the word you will use in prompts")
    return cleaned


def init_vectors(tokenizer: Any, text_encoder: Any, init_text: str, num_vectors: int) -> torch.Tensor:
    """[num_vectors, width]: token embeddings of ``init_text`` picked evenly, zeros without a text."""
    embedding_layer = text_encoder.get_input_embeddings()
    width = embedding_layer.weight.shape[1]
    vec = torch.zeros((num_vectors, width), dtype=torch.float32)
    if not init_text:
        return vec
    ids = tokenizer(init_text, add_special_tokens=False, truncation=False)["input_ids"]
    if not ids:
        return vec
    with torch.no_grad():
        embedded = embedding_layer(torch.tensor(ids, device=embedding_layer.weight.device)).float().cpu()
    for i in range(num_vectors):
        vec[i] = embedded[i * embedded.shape[0] // num_vectors]
    return vec


def save_embedding_file(path: Path, vec: torch.Tensor, name: str, step: int | None,
                        sd_checkpoint: str | None = None, sd_checkpoint_name: str | None = None) -> Path:
    """The WebUI's ``Embedding.save`` dict, written atomically."""
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vec.detach().to("cpu", torch.float32).clone()},
        "name": name,
        "step": step,
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    return atomic_save_with(path, lambda tmp: torch.save(data, tmp))


def create_embedding(model: Any, embeddings_dir: Path, name: str, num_vectors_per_token: int = 1,
                     overwrite_old: bool = False, init_text: str = "*") -> Path:
    """Write a new embedding for the loaded model; returns its file. Refuses to replace a file
    unless ``overwrite_old``."""
    name = clean_name(name)
    if not 1 <= int(num_vectors_per_token) <= MAX_VECTORS:
        raise InvalidParameterError("num_vectors_per_token", f"must be 1 to {MAX_VECTORS}, got {num_vectors_per_token}",
                                    hint="1 to 12 works best")
    embeddings_dir = Path(embeddings_dir)
    sdxl = model.spec.family in ("sdxl", "sdxl_refiner") and len(model.text_encoders) == 2
    path = embeddings_dir / f"{name}{'.safetensors' if sdxl else '.pt'}"
    taken = [p for p in (embeddings_dir / f"{name}.pt", embeddings_dir / f"{name}.safetensors") if p.exists()]
    if taken and not overwrite_old:
        raise KilnError("file already exists", path=taken[0], hint="pick another name, or tick Overwrite Old Embedding")
    embeddings_dir.mkdir(parents=True, exist_ok=True)
    n = int(num_vectors_per_token)
    if sdxl:
        from safetensors.torch import save_file

        tensors = {key: init_vectors(model.tokenizers[min(i, len(model.tokenizers) - 1)], te, init_text, n).contiguous()
                   for i, (key, te) in enumerate(zip(("clip_l", "clip_g"), model.text_encoders))}
        atomic_save_with(path, lambda tmp: save_file(tensors, tmp))
    else:
        vec = init_vectors(model.tokenizers[0], model.text_encoders[0], init_text, n)
        save_embedding_file(path, vec, name, 0)
    for other in taken:  # overwriting: the other format's file of that name would shadow the new one
        if other != path:
            other.unlink()
    return path


class _Lookup:
    """The trained embedding first, then the studio's own (other embeddings a caption names)."""

    def __init__(self, tokenizer: Any, embedding: Embedding, fallback: Any = None):
        self.ids = list(tokenizer(embedding.name, add_special_tokens=False, truncation=False)["input_ids"])
        self.embedding, self.fallback = embedding, fallback

    def find_embedding_at_position(self, token_ids: list[int], offset: int) -> tuple[Any, int]:
        if self.ids and token_ids[offset:offset + len(self.ids)] == self.ids:
            return self.embedding, len(self.ids)
        if self.fallback is not None:
            return self.fallback.find_embedding_at_position(token_ids, offset)
        return None, 0


@dataclass
class EmbeddingTarget:
    """The embedding being trained: its vectors are the only tensor with a gradient."""

    name: str
    vec: torch.Tensor
    step: int
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    others: Any = None  # an EmbeddingDatabase for other names in captions
    weight_decay: float = 0.0  # the WebUI's AdamW for embeddings
    log_kind: str = "embeddings"
    loss_csv: str = "textual_inversion_loss.csv"
    fixed_text: bool = False

    def parameters(self) -> list[torch.Tensor]:
        return [self.vec]

    def attached(self, model: Any):
        return nullcontext()

    def detached(self, model: Any):
        return nullcontext()

    def embedding(self) -> Embedding:
        return Embedding(name=self.name, vec={"default": self.vec}, vectors=self.vec.shape[0],
                         shape=self.vec.shape[1], step=self.step)

    def encode(self, model: Any, prompts: list[str], clip_skip: int) -> torch.Tensor:
        from core.prompts.conditioning import PromptEncoder

        lookup = _Lookup(model.tokenizers[0], self.embedding(), self.others)
        encoder = PromptEncoder(model.tokenizers, model.text_encoders, model.spec.family, embeddings=lookup)
        return encoder.encode(prompts, clip_skip).context

    def save(self, path: Path, name: str | None = None) -> Path:
        return save_embedding_file(path, self.vec, name or self.name, self.step, self.sd_checkpoint,
                                   self.sd_checkpoint_name)

    def preview_prompt(self, prompt: str) -> str:
        return prompt

    def stored_embedding_chunk(self) -> str:
        return embedding_to_b64(self.vec, self.name, self.step, self.sd_checkpoint, self.sd_checkpoint_name)


def embedding_to_b64(vec: torch.Tensor, name: str, step: int | None, sd_checkpoint: str | None = None,
                     sd_checkpoint_name: str | None = None) -> str:
    """The WebUI's ``embedding_to_b64``: the saved dict as JSON, tensors as ``{"TORCHTENSOR": lists}``."""
    data = {"string_to_token": {"*": 265},
            "string_to_param": {"*": {"TORCHTENSOR": vec.detach().cpu().float().numpy().tolist()}},
            "name": name, "step": step, "sd_checkpoint": sd_checkpoint, "sd_checkpoint_name": sd_checkpoint_name}
    return base64.b64encode(json.dumps(data).encode()).decode()


@dataclass(frozen=True)
class EmbeddingTrainJob:
    embedding_file: Path  # the .pt under embeddings/ (trained in place)
    options: TrainOptions
    sd_checkpoint: str | None = None  # the model's short hash, written into the saved files
    sd_checkpoint_name: str | None = None


def load_target(path: Path, model: Any, others: Any = None) -> EmbeddingTarget:
    path = Path(path)
    if path.suffix.lower() != ".pt":
        raise KilnError("only .pt embeddings can be trained", path=path,
                        hint="create a new embedding (Create embedding) to train")
    embedding = load_embedding(path)
    if embedding is None or "default" not in embedding.vec:
        raise KilnError("not an SD1/SD2 embedding", path=path)
    width = model.text_encoders[0].get_input_embeddings().weight.shape[1]
    if embedding.shape != width:
        raise KilnError(f"the embedding's width {embedding.shape} does not fit this model's {width}", path=path,
                        hint="select the checkpoint it was made for, or create a new embedding")
    device = model.text_encoders[0].get_input_embeddings().weight.device
    vec = embedding.vec["default"].detach().clone().to(device, torch.float32).requires_grad_(True)
    return EmbeddingTarget(name=path.stem, vec=vec, step=embedding.step or 0, others=others)


def train_embedding(model: Any, job: EmbeddingTrainJob, hooks: TrainHooks | None = None, *,
                    others: Any = None, data_dir: Path | None = None) -> TrainResult:
    """Train the embedding file on the leased model; the file holds the result (also after Stop)."""
    check_model(model, "embedding")
    target = load_target(job.embedding_file, model, others)
    target.sd_checkpoint, target.sd_checkpoint_name = job.sd_checkpoint, job.sd_checkpoint_name
    return run_training(model, target, job.options, Path(job.embedding_file), hooks or TrainHooks(),
                        data_dir=data_dir)

