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
