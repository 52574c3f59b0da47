"""Tagging for the app (UI and API): one tagger cache per Engine, the work run as queue jobs.

The web handlers never run a model themselves: single pictures and folders are jobs of kind
"tag" on the JobQueue (a short kind, so they may run at a training job's pause points).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from core.dataset.taggers import TaggerCache
from core.dataset.taggers.common import TagOptions, TagResult

if TYPE_CHECKING:
    from core.dataset.tag_folder import TagFolderOptions, TagFolderReport
    from core.engine import Engine
    from core.jobs import Job, JobContext, JobQueue

_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def interrogate_device(engine: Engine) -> str:
    """Where taggers run: the accelerator unless ``--use-cpu interrogate`` (or all) says the CPU."""
    return engine.settings.device_policy().device_for("interrogate")


def cache_for(engine: Engine) -> TaggerCache:
    cache = _CACHES.get(engine)
    if cache is None:
        cache = TaggerCache(engine.settings.paths, interrogate_device(engine))
        _CACHES[engine] = cache
    return cache


def tag_images(engine: Engine, queue: JobQueue, model: str, images: Sequence[Image.Image],
               options: TagOptions | None = None, *, owner: str | None = None) -> list[TagResult]:
    """Tag pictures on the queue and wait for the result (raises the job's KilnError)."""
    cache = cache_for(engine)

    def job(ctx: JobContext) -> list[TagResult]:
        ctx.set_total(len(images))
        ctx.set_text(f"loading {model}")
        tagger = cache.get(model)
        ctx.set_text(f"tagging with {tagger.name}")
        results = tagger.tag(list(images), options)
        ctx.advance(len(images))
        return results

    return queue.run(job, description=f"tag {len(images)} picture(s) with {model}", owner=owner, kind="tag")


def submit_tag_folder(engine: Engine, queue: JobQueue, model: str, folder: str | Path,
                      options: TagFolderOptions, *, owner: str | None = None) -> Job:
    """Tag a folder as a job: progress is the picture count, its text the current picture and tags;
    Interrupt / Stop end it between batches with the captions written so far kept."""
    from core.dataset.tag_folder import tag_folder

    cache = cache_for(engine)

    def job(ctx: JobContext) -> TagFolderReport:
        ctx.set_text(f"loading {model}")
        tagger = cache.get(model)

        def progress(p) -> None:
            if p.image is None:  # the start: pictures kept by "skip" count as done
                ctx.set_total(p.total)
                ctx.job.progress.step = p.done
                return
            tags = p.result.text if p.result is not None else "unreadable, skipped"
            ctx.set_text(f"{p.done}/{p.total} {p.image.name}: {tags}")
            # advance() raises on Interrupt (after this picture's caption was written); Stop is
            # honoured between batches through should_stop.
            ctx.advance(p.done - ctx.job.progress.step)

        report = tag_folder(folder, tagger, options, on_progress=progress, should_stop=lambda: ctx.stop_requested)
        ctx.set_text(report.summary())
        return report

    return queue.submit(job, description=f"tag {folder} with {model}", owner=owner, kind="tag")
