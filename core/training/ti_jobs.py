"""Embedding and hypernetwork work as queue jobs (kind "train"): create, train, preview.

Training leases the selected checkpoint frozen (core/engine.py ``lease``) and reports each
step (count, ETA, loss, learning rate) and the latest preview; others' short jobs run at the end
of each epoch (``pause_point``, the target off the model, so they see the plain base model); Stop and Interrupt end the run
after the current step with the progress saved into the file. Previews come from Kiln's own
txt2img on the leased model: the embedding is read from the file the trainer just saved (so a
preview shows what the file holds), the hypernetwork through a ``<hypernet:name:1>`` tag.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import KilnError
from core.training.ti_loop import PreviewOptions, StepInfo, TrainHooks, TrainOptions, TrainResult


def resolve_dir(engine: Any, folder: str | Path | None) -> Path | None:
    """A folder the user typed: relative ones are under the data folder, as the WebUI's cwd."""
    if folder is None or str(folder).strip() == "":
        return None
    path = Path(str(folder).strip()).expanduser()
    return path if path.is_absolute() else Path(engine.paths.data_dir) / path


def checkpoint_identity(engine: Any) -> tuple[str | None, str | None]:
    """(short hash, model name) the WebUI writes as ``sd_checkpoint`` / ``sd_checkpoint_name``."""
    entry = engine.loaded_checkpoint()
    if entry is None:
        return None, None
    return engine.registry.sha256(entry)[:10], Path(entry.name).stem


def refresh_networks(engine: Any) -> None:
    """A new or retrained file shows in the dropdowns and Extra networks at once."""
    engine.registry.refresh()
    for extras in engine.loaded_extras():
        extras.refresh_embeddings(force=True)


def create_embedding_job(engine: Any, name: str, num_vectors_per_token: int = 1, overwrite_old: bool = False,
                         init_text: str = "*"):
    """The queue function: the selected model's encoder gives the initial vectors."""
    from core.training.textual_inversion import create_embedding

    def run(ctx) -> str:
        ctx.set_text(f"creating embedding {name}")
        with engine.lease() as model:
            path = create_embedding(model, Path(engine.paths.embeddings_dir), name, num_vectors_per_token,
                                    overwrite_old, init_text)
        refresh_networks(engine)
        return str(path)
    return run


def create_hypernetwork_file(engine: Any, spec: Any) -> Path:
    """No model needed: written at once (a few small tensors), then the lists are refreshed."""
    from core.training.hypernetwork import create_hypernetwork

    path = create_hypernetwork(Path(engine.paths.hypernetwork_dir), spec)
    refresh_networks(engine)
    return path


def _preview_image(engine: Any, params: PreviewOptions, checkpoint: str | None) -> Any:
    from core.generation.params import GenerationParams
    from core.jobs import Job, JobContext

    private = JobContext(Job(id="preview", description="training preview", fn=lambda ctx: None, kind="generate"))
    generation = GenerationParams(prompt=params.prompt, negative_prompt=params.negative_prompt,
                                  sampler_name=params.sampler_name, steps=params.steps, cfg_scale=params.cfg_scale,
                                  seed=params.seed, width=params.width, height=params.height, save_images=False,
                                  checkpoint=checkpoint)
    result = engine.txt2img(generation, private)
    if not result.images:
        return None
    image = result.images[0].image
    if getattr(result.images[0], "infotext", None):
        image.info["parameters"] = result.images[0].infotext
    return image


def _hooks(engine: Any, ctx: Any, kind: str, checkpoint: str | None, on_saved=None) -> TrainHooks:
    started = {"done": False}

    def on_step(info: StepInfo) -> None:
        if not started["done"]:
            ctx.set_total(info.total_steps - info.initial_step)
            started["done"] = True
        ctx.advance(1, check=False)
        ctx.set_text(f"step {info.step}/{info.total_steps} · epoch {info.epoch}: {info.epoch_step + 1}/"
                     f"{info.steps_per_epoch} · loss {info.loss:.7f} · {info.prompt}")
        ctx.report(loss=info.loss, lr=info.learn_rate, step_done=info.step, epoch=info.epoch)

    def preview(params: PreviewOptions, saved: Path) -> Any:
        if on_saved is not None:
            on_saved(saved)
        return _preview_image(engine, params, checkpoint)

    def on_image(path: Path, step: int, image: Any) -> None:
        ctx.set_preview(image)
        ctx.add_artifact("sample", f"{path.name} (step {step})", path=str(path))

    def on_file(path: Path, step: int) -> None:
        ctx.add_artifact(kind, f"{path.name} (step {step})", path=str(path))

    return TrainHooks(on_step=on_step, should_stop=lambda: ctx.stop_requested, preview=preview,
                      on_file=on_file, on_image=on_image, pause=ctx.pause_point)


def embedding_file(engine: Any, name: str) -> Path:
    """The ``.pt`` an embedding name means (its loaded file, else ``embeddings/<name>.pt``)."""
    extras = engine.extras
    if extras is not None:
        extras.refresh_embeddings()
        loaded = extras.embeddings.loaded.get(name)
        if loaded is not None and loaded.filename:
            return Path(loaded.filename)
    path = Path(engine.paths.embeddings_dir) / f"{name}.pt"
    if not path.is_file():
        raise KilnError(f"embedding {name!r} not found", path=path,
                        hint="create it first (Train › Create embedding), or press refresh")
    return path


def hypernetwork_file(engine: Any, name: str) -> Path:
    from core.networks.hypernetworks import find_hypernetworks

    found = find_hypernetworks(engine.paths.hypernetwork_dir)
    if name not in found:
        raise KilnError(f"hypernetwork {name!r} not found in {engine.paths.hypernetwork_dir}",
                        hint="create it first (Train › Create hypernetwork), or press refresh")
    return found[name]


def _with_dirs(engine: Any, options: TrainOptions) -> TrainOptions:
    data_root = resolve_dir(engine, options.data.data_root)
    if data_root is None:
        raise KilnError("dataset directory is empty", hint="give the folder of pictures and .txt captions")
    return replace(options, data=replace(options.data, data_root=data_root),
                   log_directory=resolve_dir(engine, options.log_directory),
                   clip_skip=options.clip_skip or engine.run_options().clip_skip)


def train_embedding_job(engine: Any, name: str, options: TrainOptions, checkpoint: str | None = None):
    """The queue function for Train Embedding; returns the result (file, steps, log folder)."""
    from core.networks.embeddings import load_embedding
    from core.training.textual_inversion import EmbeddingTrainJob, train_embedding

    def run(ctx) -> TrainResult:
        ctx.set_text(f"preparing the dataset for {name}")
        with engine.lease(checkpoint) as model:
            path = embedding_file(engine, name)
            sd_hash, sd_name = checkpoint_identity(engine)
            extras = engine.extras

            def saved(file: Path) -> None:  # the preview's prompt must find the vectors just saved
                if extras is not None:
                    extras.refresh_embeddings()
                    extras.embeddings.register(load_embedding(file))

            job = EmbeddingTrainJob(path, _with_dirs(engine, options), sd_hash, sd_name)
            result = train_embedding(model, job, _hooks(engine, ctx, "embedding", checkpoint, saved),
                                     others=extras.embeddings if extras is not None else None,
                                     data_dir=Path(engine.paths.data_dir))
        refresh_networks(engine)
        ctx.add_artifact("embedding", f"{result.path.name} (step {result.step})", path=str(result.path))
        return result
    return run


def train_hypernetwork_job(engine: Any, name: str, options: TrainOptions, checkpoint: str | None = None):
    """The queue function for Train Hypernetwork."""
    from core.training.hypernetwork import HypernetworkTrainJob, train_hypernetwork

    def run(ctx) -> TrainResult:
        ctx.set_text(f"preparing the dataset for {name}")
        with engine.lease(checkpoint) as model:
            path = hypernetwork_file(engine, name)
            sd_hash, sd_name = checkpoint_identity(engine)
            extras = engine.extras
            job = HypernetworkTrainJob(path, _with_dirs(engine, options), sd_hash, sd_name)
            result = train_hypernetwork(model, job, _hooks(engine, ctx, "hypernetwork", checkpoint),
                                        others=extras.embeddings if extras is not None else None,
                                        data_dir=Path(engine.paths.data_dir))
        refresh_networks(engine)
        ctx.add_artifact("hypernetwork", f"{result.path.name} (step {result.step})", path=str(result.path))
        return result
    return run
