"""The merge as a queue job: models named as the checkpoint list names them, progress key k of n
with an ETA, the checkpoint list rescanned afterwards so the new file can be chosen at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import KilnError
from core.merge.merger import MergeResult, run_merge
from core.merge.recipe import NO_VAE, MergeParams, ModelRef

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import Job, JobContext, JobQueue

MERGE_KIND = "merge"


@dataclass
class MergeChoices:
    """The merger's form as a person fills it in: models by their list titles, VAE and LoRA by name."""

    primary: str | None
    secondary: str | None = None
    tertiary: str | None = None
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int = 0
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    replace_text_encoder: bool = False
    lora: str | None = None
    lora_weight: float = 1.0
    overwrite: bool = False


def _checkpoint(engine: Engine, title: str | None, label: str) -> ModelRef | None:
    if not title:
        return None
    entry = engine.registry.find_checkpoint(title)
    if entry is None:
        engine.refresh_models()
        entry = engine.registry.find_checkpoint(title)
    if entry is None:
        raise KilnError(f"{label}: checkpoint {title!r} not found",
                        hint=f"put it into {engine.paths.ckpt_dir} and press 🔄")
    return ModelRef(entry.name, entry.path)


def merge_params(engine: Engine, choices: MergeChoices) -> MergeParams:
    """``MergeParams`` for the engine's folders; KilnError names what is missing."""
    primary = _checkpoint(engine, choices.primary, "Primary model (A)")
    if primary is None:
        raise KilnError("Failed: Merging requires a primary model.", hint="choose model A")
    vae_path = None
    if choices.bake_in_vae and choices.bake_in_vae != NO_VAE:
        vae = engine.registry.find("vae", choices.bake_in_vae)
        if vae is None:
            raise KilnError(f"VAE {choices.bake_in_vae!r} not found", hint=f"put it into {engine.paths.vae_dir}")
        vae_path = vae.path
    lora = None
    if choices.lora:
        entry = engine.registry.find("lora", choices.lora)
        if entry is None:
            raise KilnError(f"LoRA {choices.lora!r} not found", hint=f"put it into {engine.paths.lora_dir}")
        lora = ModelRef(entry.name, entry.path)
    return MergeParams(
        primary=primary, secondary=_checkpoint(engine, choices.secondary, "Secondary model (B)"),
        tertiary=_checkpoint(engine, choices.tertiary, "Tertiary model (C)"),
        interp_method=choices.interp_method, multiplier=float(choices.multiplier),
        save_as_half=bool(choices.save_as_half), custom_name=choices.custom_name or "",
        checkpoint_format=choices.checkpoint_format, config_source=int(choices.config_source),
        bake_in_vae=choices.bake_in_vae or NO_VAE, bake_in_vae_path=vae_path,
        discard_weights=choices.discard_weights or "", save_metadata=bool(choices.save_metadata),
        add_merge_recipe=bool(choices.add_merge_recipe), copy_metadata_fields=bool(choices.copy_metadata_fields),
        metadata_json=choices.metadata_json or "{}",
        replace_text_encoder=bool(choices.replace_text_encoder), lora=lora,
        lora_weight=float(choices.lora_weight), overwrite=bool(choices.overwrite))


def read_metadata(engine: Engine, titles: list[str | None]) -> str:
    """The WebUI's "Read metadata from selected checkpoints": A's, B's and C's safetensors
    metadata in one JSON object (later ones win), JSON-valued fields decoded, for editing."""
    import json

    from core.models.checkpoint import read_checkpoint_metadata

    metadata: dict = {}
    for title in titles:
        entry = engine.registry.find_checkpoint(title) if title else None
        if entry is None:
            continue
        for key, value in read_checkpoint_metadata(entry.path).items():
            if value[:1] == "{":
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            metadata[key] = value
    return json.dumps(metadata, indent=4, ensure_ascii=False)


def merge_job(engine: Engine, params: MergeParams) -> Callable[[JobContext], MergeResult]:
    """worker: run the merge, list the new file (and hash it for its title), report it as an artifact."""

    def run(ctx: JobContext) -> MergeResult:
        result = run_merge(params, engine.paths.ckpt_dir, ctx,
                           sha256=lambda path: engine.hash_cache.sha256(path, "checkpoint"))
        engine.refresh_models()
        ctx.add_artifact("model", result.path.name, path=str(result.path))
        return result

    return run


def submit_merge(engine: Engine, queue: JobQueue, choices: MergeChoices, owner: str | None = None) -> Job:
    """Check the choices now (a bad one fails before queueing) and queue the merge job."""
    params = merge_params(engine, choices)
    params.validate()
    return queue.submit(merge_job(engine, params), description=f"merge: {params.primary.name}", owner=owner,
                        kind=MERGE_KIND)
