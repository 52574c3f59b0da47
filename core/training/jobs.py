"""A training run as a job of the studio's queue (kind "train"): progress, loss, files, pauses.

The job leases the selected base checkpoint frozen (core/engine.py ``lease``), trains, and
reports each step (the step count, ETA, loss, average loss and LR in the job's metrics, which
the Train tab plots), each saved file as an artifact, and lets queued short jobs of other
people run at the end of each epoch (``pause_point``: the LoRA is detached then, so their
pictures come from the plain base model). "Stop and save" and Interrupt both end the run after
the current step with a usable file and a state to resume from.
"""

from __future__ import annotations

from typing import Any

from core.training.lora import Hooks, LoraJob, train_lora


def training_job(engine: Any, job: LoraJob, checkpoint: str | None = None):
    """The function the queue runs (``queue.submit(fn, description, owner, kind="train")``)."""
    def run(ctx) -> list[str]:
        ctx.set_text("preparing the dataset")
        started = {"total": False}

        def on_step(report) -> None:
            if not started["total"]:
                ctx.set_total(report.total_steps)
                ctx.advance(report.global_step - 1, check=False)  # a resumed run starts where it was
                started["total"] = True
            ctx.advance(1, check=False)
            ctx.set_text(f"epoch {report.epoch} · loss {report.loss:.4f} (average {report.average_loss:.4f})")
            ctx.report(loss=report.loss, average_loss=report.average_loss, lr=report.lr, epoch=report.epoch)

        def on_file(path, epoch: int) -> None:
            ctx.add_artifact("lora", f"{path.name} (epoch {epoch})", path=str(path))

        def sample(prompts) -> list:
            return sample_pictures(engine, prompts, job, checkpoint)

        def on_sample(path, epoch: int) -> None:
            from PIL import Image

            with Image.open(path) as image:
                ctx.set_preview(image.copy())
            ctx.add_artifact("sample", f"{path.name} (epoch {epoch})", path=str(path))

        with engine.lease(checkpoint) as model:
            files = train_lora(job, model, Hooks(on_step=on_step, should_stop=lambda: ctx.stop_requested,
                                                 pause=ctx.pause_point, on_file=on_file, sample=sample,
                                                 on_sample=on_sample,
                                                 on_note=lambda text: ctx.add_artifact("note", text)))
        return [str(p) for p in files]
    return run


def sample_pictures(engine: Any, prompts: list, job: LoraJob, checkpoint: str | None) -> list:
    """kohya's sample prompts through Kiln's txt2img on the worker, on the leased model (the
    trainer has the LoRA attached around this call); progress stays the training job's."""
    from core.generation.params import GenerationParams
    from core.jobs import Job, JobContext
    from core.training.samples import sampler_name

    images = []
    width, height = job.data.resolution
    private = JobContext(Job(id="sample", description="training sample", fn=lambda ctx: None, kind="generate"))
    for prompt in prompts:
        params = GenerationParams(
            prompt=prompt.prompt, negative_prompt=prompt.negative_prompt, width=prompt.width or width,
            height=prompt.height or height, steps=prompt.steps, cfg_scale=prompt.cfg_scale,
            seed=prompt.seed if prompt.seed is not None else job.loop.seed, sampler_name=sampler_name(job.sample_sampler),
            save_images=False, checkpoint=checkpoint)
        images += [g.image for g in engine.txt2img(params, private).images]
    return images


def dreambooth_job(engine: Any, config: Any, checkpoint: str | None = None):
    """The queue function of a DreamBooth / fine-tune run (a core.training.dreambooth_config
    DreamBoothConfig): the missing class pictures first, made with the shared base model, then
    the trainer takes a trainable copy of it (``lease(trainable=True)``: the engine reloads the
    file for the next job, so the shared model never sees the training)."""
    def run(ctx) -> list[str]:
        from pathlib import Path

        import torch

        from core.errors import KilnError
        from core.jobs import Job, JobContext
        from core.training.class_images import generate_class_images, plan_class_images
        from core.training.dreambooth import prepare_dreambooth_data, train_dreambooth

        prepare_dreambooth_data(config)  # a bad folder fails before minutes of class pictures
        lora_dir = Path(config.extract_lora_dir) if config.extract_lora_dir else engine.settings.paths.lora_dir
        if config.extract_lora:
            from core.training.extract_lora import lora_output_path

            if lora_output_path(config, lora_dir).exists():
                raise KilnError("output_name: a LoRA of this name is already in the LoRA folder; nothing was trained",
                                path=lora_output_path(config, lora_dir), hint="choose another output_name")
        base = checkpoint
        if base is None:
            # One base for the whole run: the new checkpoint joins the list at the end and must
            # not become "the selected one" of a later step (or of a second run).
            entry = engine.selected_checkpoint()
            base = entry.name if entry is not None else None
        missing = sum(f.missing for f in plan_class_images(config))
        if missing:
            ctx.set_total(missing)
            ctx.set_text(f"generating {missing} class images")
            private = JobContext(Job(id="class", description="class image", fn=lambda c: None, kind="generate"))

            def on_image(path) -> None:
                ctx.advance(1, check=False)
                ctx.set_text(f"class image {path.name}")

            report = generate_class_images(config, lambda params: engine.txt2img(params, private),
                                           checkpoint=base, on_image=on_image,
                                           should_stop=lambda: ctx.stop_requested)
            ctx.add_artifact("note", f"class images: {report.generated} generated, {report.total} in the reg folders")
            if ctx.stop_requested:
                return []
        data = prepare_dreambooth_data(config)
        ctx.set_text("training")
        started = {"total": False}

        def on_step(report) -> None:
            if not started["total"]:
                ctx.set_total(report.total_steps)
                ctx.job.progress.step = 0  # the class pictures had the bar before
                started["total"] = True
            ctx.advance(1, check=False)
            ctx.set_text(f"epoch {report.epoch} · loss {report.loss:.4f} (average {report.average_loss:.4f})")
            ctx.report(loss=report.loss, average_loss=report.average_loss, lr=report.lr, epoch=report.epoch)

        def on_file(path, epoch: int) -> None:
            ctx.add_artifact("checkpoint", f"{path.name} (epoch {epoch})", path=str(path))

        output_dir = Path(config.output_dir) if config.output_dir else engine.settings.paths.ckpt_dir
        # float32 weights to train on, whatever dtype the engine generates in
        with engine.lease(base, dtype=torch.float32, trainable=True) as model:
            result = train_dreambooth(config, model, output_dir, Hooks(
                on_step=on_step, should_stop=lambda: ctx.stop_requested, on_file=on_file,
                on_note=lambda text: ctx.add_artifact("note", text)), data=data)
            files = list(result.files)
            if config.extract_lora:
                from core.training.extract_lora import extract_after_training

                ctx.set_text("extracting the LoRA")
                lora = extract_after_training(config, model, result.files[-1], lora_dir)
                ctx.add_artifact("lora", lora.name, path=str(lora))
                files.append(lora)
        engine.refresh_models()  # the new checkpoint shows in the model list
        return [str(p) for p in files]
    return run
