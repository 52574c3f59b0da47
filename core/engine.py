"""The Engine: settings + model registry + the loaded model of each device, as one object.

No module globals: the app builds one Engine, tests build their own. Methods marked
"worker" touch torch models and are called from a JobQueue worker thread only; the
rest are cheap queries safe from any thread (the web server's handlers).

Each device (``--device-id 0,1``) has a ``DeviceModels`` slot: its own loaded checkpoint,
patch helpers and upscalers, used only by the worker of the same index (``current_worker()``).
The registry, the settings and the checkpoint choice are shared: every worker loads the
selected checkpoint when its next job needs it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import KilnError, ModelFileError
from core.models.header_facts import (
    is_zero_terminal_snr_from_header,
    native_size_from_header,
    rescale_cfg_default,
)
from core.models.worker_slot import DeviceModels

if TYPE_CHECKING:  # heavy imports stay lazy: the page must serve before torch loads
    from core.generation.context import GenerationContext
    from core.generation.params import GenerationParams, GenerationResult
    from core.generation.run_options import RunOptions
    from core.jobs import JobContext
    from core.models.checkpoint import LoadedModel
    from core.models.registry import ModelEntry
    from core.settings import Settings

log = logging.getLogger(__name__)

BUILTIN_CHECKPOINT_PREFIX = "kiln-shapes"


class Engine:
    def __init__(self, settings: Settings, *, registry: Any = None, devices: list[int | None] | None = None):
        """``devices``: one entry per worker (a CUDA index or None); default: what the flags ask for."""
        from core.hashing import HashCache
        from core.models.registry import ModelRegistry

        self.settings = settings
        self.paths = settings.paths
        from core.hashing import shared_cache_files

        # A WebUI's cache.json next to the model folders Kiln reads: its hashes are reused.
        shared = shared_cache_files([self.paths.ckpt_dir, self.paths.lora_dir, self.paths.embeddings_dir,
                                     self.paths.hypernetwork_dir])
        self.hash_cache = HashCache(self.paths.cache_path, shared_paths=shared)
        self.registry = registry or ModelRegistry(self.paths, hash_cache=self.hash_cache)
        self.registry.refresh()
        from core.styles import StyleDatabase, styles_path

        self.styles = StyleDatabase(self.paths.styles_files or styles_path(self.paths.data_dir))
        self._lock = threading.RLock()  # the shared choice and error table
        devices = settings.worker_devices() if devices is None else devices
        self.slots = [DeviceModels(i, device_id) for i, device_id in enumerate(devices or [None])]
        self._tokenizer = None
        # --ckpt wins at startup (WebUI); a choice made in the UI/API replaces it afterwards.
        self._checkpoint_choice: str | None = settings.startup_checkpoint()
        # Checkpoints that failed to load, path → why; listed as such and skipped as defaults.
        self.checkpoint_errors: dict[str, str] = {}
        self.fallback_note: str | None = None  # "X failed (why); using Y" after a fallback
        from core.extensions.registry import ExtensionRegistry

        # Filled by load_extensions(): the app loads them before it builds the page and the API.
        self.extensions = ExtensionRegistry(self.paths.extensions_dir)

    def load_extensions(self, queue: Any = None) -> Any:
        """Import the enabled extensions of extensions/ once (README, section 'Extensions');
        the ExtensionRegistry of what loaded, failed, or was disabled."""
        from core.extensions.loader import load_extensions

        return load_extensions(self, queue)

    # ------------------------------------------------------------------ devices --
    @property
    def workers(self) -> int:
        """How many workers the JobQueue should run: one per device slot."""
        return len(self.slots)

    def _slot(self) -> DeviceModels:
        """The calling worker's slot (slot 0 for any other thread)."""
        from core.jobs import current_worker

        index = current_worker()
        return self.slots[index] if index < len(self.slots) else self.slots[0]

    def _shown_slot(self) -> DeviceModels:
        """For queries from the page: a worker's slot, the one holding the selected checkpoint
        first (after a switch the others load it with their next job)."""
        from core.jobs import in_worker

        if in_worker() or len(self.slots) == 1:
            return self._slot()
        loaded = [slot for slot in self.slots if slot.model is not None]
        wanted = self._checkpoint_choice and self.registry.find_checkpoint(self._checkpoint_choice)
        for slot in loaded:
            if wanted and slot.entry is not None and slot.entry.path == wanted.path:
                return slot
        return (loaded or self.slots)[0]

    @property
    def _model(self) -> LoadedModel | None:
        return self._shown_slot().model

    @property
    def _model_entry(self) -> ModelEntry | None:
        return self._shown_slot().entry

    @property
    def _extras(self) -> Any:
        return self._shown_slot().extras

    @property
    def autocast(self) -> bool:
        return self._slot().autocast

    @property
    def load_warnings(self) -> list[str]:
        return self._slot().load_warnings

    # ------------------------------------------------------------------ queries --
    def refresh_models(self) -> None:
        self.registry.refresh()

    def checkpoint_titles(self) -> list[str]:
        """``name [hash]`` for files hashed before (cache), plain ``name`` for the rest: listing
        never reads gigabytes; a checkpoint gets its hash when it is first loaded (as the WebUI)."""
        return [e.title for e in self.registry.checkpoints()]

    def checkpoint_error(self, entry: ModelEntry) -> str | None:
        return self.checkpoint_errors.get(str(entry.path))

    def _builtin_first(self) -> list[ModelEntry]:
        entries = self.registry.checkpoints()
        builtin = [e for e in entries if Path(e.name).name.startswith(BUILTIN_CHECKPOINT_PREFIX)]
        return builtin + [e for e in entries if e not in builtin]

    def selected_checkpoint(self) -> ModelEntry | None:
        """The checkpoint the next job will use: the choice (setting or --ckpt), else the built-in
        one, else the first. A choice that failed to load gives way to the model that is loaded."""
        wanted = self._checkpoint_choice
        if wanted:
            entry = self.registry.find_checkpoint(wanted)
            if entry is not None:
                if self.checkpoint_error(entry) and self._model_entry is not None:
                    return self._model_entry
                return entry
        usable = [e for e in self._builtin_first() if not self.checkpoint_error(e)]
        return (usable or self._builtin_first() or [None])[0]

    def loaded_checkpoint(self) -> ModelEntry | None:
        return self._model_entry

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def native_size(self) -> int:
        """Width/height default: the loaded model's native size, else a guess from the file header."""
        if self._model is not None:
            return int(self._model.spec.native_size)
        entry = self.selected_checkpoint()
        if entry is None:
            return 512
        try:
            return native_size_from_header(entry.path)
        except ModelFileError:
            return 512

    def recommended_rescale_cfg(self) -> float:
        """Rescale CFG default for the UI: 0.7 for a zero-terminal-SNR model, else 0 (off).

        Forge's slider starts at 0 for every model; at CFG 7 a zero-terminal-SNR model then
        burns its colours (the built-in model's shape colours read right 0.86 of the time,
        0.98 with 0.7), and 0.7 is the value Lin et al. found for such models. The infotext records
        the value, so a pasted picture still reproduces exactly."""
        if self._model is not None:
            ztsnr = bool(self._model.spec.zero_terminal_snr)
        else:
            entry = self.selected_checkpoint()
            try:
                ztsnr = entry is not None and is_zero_terminal_snr_from_header(entry.path)
            except ModelFileError:
                ztsnr = False
        return rescale_cfg_default(ztsnr)

    def tokenizer(self):
        """The CLIP tokenizer Kiln ships; no model load needed (token counter while typing)."""
        if self._tokenizer is None:
            from core.models.checkpoint import load_tokenizer

            self._tokenizer = load_tokenizer("<|endoftext|>")
        return self._tokenizer

    def count_tokens(self, text: str, steps: int = 20, *, is_positive: bool = True) -> tuple[int, int]:
        """(tokens, limit) as the WebUI's counter shows them; the negative prompt has no AND."""
        from core.prompts.tokens import count_tokens

        embeddings = self._extras.embeddings if self._extras is not None else None
        return count_tokens(self.tokenizer(), text, steps=steps, embeddings=embeddings, is_positive=is_positive)

    def no_checkpoint_message(self) -> str:
        return (f"No checkpoint found. Put a .safetensors checkpoint into {self.paths.ckpt_dir} "
                "and press 🔄 next to the checkpoint list.")

    def run_options(self, overrides: dict[str, Any] | None = None) -> RunOptions:
        """The options a job submitted now runs with (any thread): the settings as they are,
        the checkpoint selected now, ``overrides`` (the API's override_settings) on top."""
        from core.errors import InvalidParameterError
        from core.generation.run_options import snapshot

        entry = self.selected_checkpoint()
        options = snapshot(self.settings.options, entry.title if entry is not None else None, overrides)
        # Files the overrides name must exist now: a 422 at submit, not a failed job later.
        if options.checkpoint_explicit and self.registry.find_checkpoint(options.checkpoint) is None:
            self.refresh_models()
            if self.registry.find_checkpoint(options.checkpoint) is None:
                raise InvalidParameterError("override_settings.sd_model_checkpoint",
                                            f"checkpoint {options.checkpoint!r} not found",
                                            hint=f"see GET /sdapi/v1/sd-models or put it into {self.paths.ckpt_dir}")
        if "sd_vae" in (overrides or {}) and options.sd_vae not in ("", "Automatic", "None") \
                and self.registry.find("vae", options.sd_vae) is None:
            raise InvalidParameterError("override_settings.sd_vae", f"VAE {options.sd_vae!r} not found",
                                        hint=f"see GET /sdapi/v1/sd-vae or put it into {self.paths.vae_dir}")
        return options

    # ------------------------------------------------------------------- worker --
    def select_checkpoint(self, name: str) -> ModelEntry:
        """Make ``name`` the checkpoint for the next jobs and persist the choice (no load yet)."""
        entry = self.registry.find_checkpoint(name)
        if entry is None:
            raise KilnError(f"checkpoint {name!r} not found",
                            hint=f"put it into {self.paths.ckpt_dir} and refresh the list")
        title = self.registry.title_with_hash(entry)
        self._checkpoint_choice = title
        self.settings.options.sd_model_checkpoint = title
        self.settings.save()
        return entry

    def switch_checkpoint(self, name: str) -> LoadedModel:
        """worker: load ``name`` and make it the choice. If it fails, the previous model stays
        loaded and selected (the choice is stored only after a successful load)."""
        model = self.ensure_model(name, fallback=False)
        self.select_checkpoint(name)
        return model

    def ensure_model(self, name: str | None = None, *, fallback: bool | None = None) -> LoadedModel:
        """worker: load the wanted checkpoint unless it is already loaded; free the old one first.

        ``name`` None means the selected checkpoint. When that default fails to load (a
        half-downloaded file, say), the next loadable one is used, the built-in model first,
        and ``fallback_note`` says which failed and why. A named checkpoint that fails raises,
        and the model that was loaded before is loaded again. ``fallback`` forces either rule.
        """
        fallback = name is None if fallback is None else fallback
        entry = self.registry.find_checkpoint(name) if name else self.selected_checkpoint()
        if entry is None:
            if name:
                raise KilnError(f"checkpoint {name!r} not found",
                                hint=f"put it into {self.paths.ckpt_dir} and refresh the list")
            raise KilnError(self.no_checkpoint_message())
        slot = self._slot()
        with slot.lock:
            if slot.model is not None and slot.entry is not None and slot.entry.path == entry.path:
                return slot.model
            previous = slot.entry
            try:
                return self._load(slot, entry)
            except Exception as exc:
                failure = _failure_message(exc)
                self.checkpoint_errors[str(entry.path)] = failure
                log.warning("checkpoint %s failed to load: %s", entry.path, failure)
                if fallback:
                    for other in self._builtin_first():
                        if other.path == entry.path or self.checkpoint_error(other):
                            continue
                        try:
                            model = self._load(slot, other)
                        except Exception as other_exc:
                            self.checkpoint_errors[str(other.path)] = _failure_message(other_exc)
                            continue
                        self.fallback_note = f"{entry.name} could not be loaded ({failure}); using {other.name}"
                        slot.load_warnings.append(self.fallback_note)
                        return model
                elif previous is not None and previous.path != entry.path:
                    try:
                        self._load(slot, previous)
                    except Exception:  # the previous file broke meanwhile: nothing loaded, say why below
                        log.exception("could not reload %s", previous.path)
                raise

    def _load(self, slot: DeviceModels, entry: ModelEntry) -> LoadedModel:
        kept = slot.kept.take(entry)  # first: putting the current one away may drop the oldest
        self._put_away(slot)
        if kept is not None:  # switched back within sd_checkpoints_limit: no file read
            log.info("using %s kept in memory", entry.path)
            slot.kept.resume(kept)
            slot.model, slot.entry, slot.extras, slot.vaes = kept.model, kept.entry, kept.extras, kept.vaes
            slot.autocast, slot.load_warnings = kept.autocast, list(kept.load_warnings)
            self._loaded(entry)
            return kept.model
        from core.fileio import file_stamp
        from core.models.checkpoint import load_checkpoint
        from core.models.memory import place_model

        policy = self.settings.device_policy(slot.device_id)
        log.info("loading %s on %s (%s)", entry.path, policy.device, policy.dtype)
        slot.stamp = file_stamp(entry.path)  # before the read: a file changed while read is read again
        model = load_checkpoint(entry.path, device=policy.device_for("sd"), dtype=policy.torch_dtype())
        slot.load_warnings = [*policy.warnings, *place_model(model, policy)]
        slot.autocast = bool(policy.autocast)
        with self._lock:  # two workers may hash the same file: once is enough
            self.registry.sha256(entry)  # the title gains its short hash, the infotext its Model hash
        from core.generation.extras import ExtraNetworks
        from core.models.vae_swap import ExternalVAEs

        slot.extras = ExtraNetworks(model, self.paths, hash_cache=self.hash_cache)
        slot.vaes = ExternalVAEs(model)
        slot.model, slot.entry = model, entry
        self._loaded(entry)
        return model

    def _loaded(self, entry: ModelEntry) -> None:
        self.checkpoint_errors.pop(str(entry.path), None)
        if self.fallback_note and self._checkpoint_choice and self.registry.find_checkpoint(
                self._checkpoint_choice) == entry:
            self.fallback_note = None

    def _put_away(self, slot: DeviceModels) -> None:
        """Before another checkpoint comes in: keep the current one (its own weights: LoRAs
        restored) while ``sd_checkpoints_limit`` allows, else drop it; free the dropped ones."""
        from core.models.model_cache import KeptModel

        keep = int(self.settings.options.sd_checkpoints_limit) - 1
        with slot.lock:
            dropped = slot.kept.clear() if keep < 1 else []
            if slot.model is not None and slot.entry is not None and keep >= 1:
                if slot.extras is not None:
                    slot.extras.restore()
                dropped += slot.kept.put(KeptModel(slot.entry, slot.model, slot.extras, slot.vaes, slot.autocast,
                                                   list(slot.load_warnings), slot.stamp), keep)
                slot.model = slot.entry = slot.extras = slot.vaes = None
            del dropped  # the last references: _unload's collection frees them with the current one
        self._unload(slot)

    def unload(self) -> None:
        """worker: drop the calling worker's loaded model and give its memory back."""
        self._unload(self._slot())

    def unload_all(self) -> list[int]:
        """worker: drop every worker's model that is not in use (the WebUI's unload-checkpoint).

        A worker busy with a job keeps its model for that job (taking it away would break the
        job); it is skipped and logged, and its model goes with the next unload. The caller's own
        worker is always free here. The next job loads the selected checkpoint again. Returns
        the indexes of the skipped workers."""
        skipped = []
        mine = self._slot()
        for slot in self.slots:
            if not slot.lock.acquire(blocking=slot is mine):
                skipped.append(slot.index)
                continue
            try:
                slot.kept.clear()  # the WebUI's unload frees every checkpoint
                self._unload(slot)
            finally:
                slot.lock.release()
        if skipped:
            log.info("unload: workers %s are busy with a job and keep their model", skipped)
        return skipped

    def _unload(self, slot: DeviceModels) -> None:
        with slot.lock:
            if slot.extras is not None:
                slot.extras.restore()
            slot.model = None
            slot.entry = None
            slot.extras = None
            slot.vaes = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def vae_file(self, choice: str | None, overrides_per_model: bool = True) -> Path | None:
        """The external VAE file a ``sd_vae`` choice names for the loaded checkpoint (None: its own).

        ``overrides_per_model`` is the WebUI's "Selected VAE overrides per-model preferences"
        (sd_vae_overrides_per_model_preferences): off, a VAE beside the checkpoint wins over any
        choice but Automatic's own rule."""
        from core.models.vae import find_vae_for_checkpoint

        entry = self._model_entry
        near = find_vae_for_checkpoint(entry.path, self.paths.vae_dir) if entry is not None else None
        if choice in (None, "", "Automatic"):
            return near
        if near is not None and not overrides_per_model:
            return near
        if choice == "None":
            return None
        vae = self.registry.find("vae", choice)
        if vae is None:
            raise KilnError(f"VAE {choice!r} not found", hint=f"put it into {self.paths.vae_dir} or choose Automatic")
        return vae.path

    @contextmanager
    def job_model(self, options: RunOptions, tags: dict[str, list[Any]], *,
                  checkpoint: str | None = None) -> Iterator[GenerationContext]:
        """worker: the job's model with its patch set (VAE, LoRAs, hypernetworks) applied, for the
        ``with`` block only. On exit, also after an error or an Interrupt, the shared model is the
        base checkpoint again, bit for bit."""
        from core.generation.context import GenerationContext
        from core.generation.extras import Activation

        explicit = checkpoint is not None or options.checkpoint_explicit
        slot = self._slot()
        with slot.lock:
            base = self.ensure_model(checkpoint or options.checkpoint, fallback=not explicit)
            vae_path = self.vae_file(options.sd_vae, options.sd_vae_overrides_per_model_preferences)
            view = slot.vaes.view(vae_path) if slot.vaes is not None else base
            extras = slot.extras
            if extras is not None:
                patches, resolved = extras.resolve(tags, options.lora_folders)
                applied = extras.applied(patches)
            else:
                resolved = Activation(warnings=["extra networks are not available for this model; tags ignored"]
                                      if any(tags.values()) else [])
                applied = contextlib.nullcontext(Activation())
            entry = slot.entry
            with applied as activation:
                yield GenerationContext(
                    model=view, options=options,
                    model_name=Path(entry.name).stem if entry else None,
                    model_hash=self.registry.sha256(entry)[:10] if entry else None,
                    vae_name=vae_path.name if vae_path else None,
                    vae_hash=self.hash_cache.sha256(vae_path, kind="vae")[:10] if vae_path else None,
                    embeddings=extras.embeddings if extras is not None else None,
                    network_infotext=activation.infotext,
                    warnings=[*slot.load_warnings, *resolved.warnings, *activation.warnings],
                    output_root=self.paths.resolve_output, upscale_image=self.upscale_image,
                    autocast=slot.autocast)

    def generate(self, run_mode: Callable[..., GenerationResult], params: Any, ctx: JobContext,
                 options: RunOptions | None = None) -> GenerationResult:
        """worker: one generation job of any mode (``run_txt2img``, ``run_img2img``) with its options."""
        from core.prompts.extra_networks import parse_extra_networks
        from core.styles import apply_styles

        options = options or self.run_options()
        # Styles first, as the WebUI's processing: a style's <lora:...> tags load like the prompt's.
        params = apply_styles(params, self.styles)
        _, tags = parse_extra_networks(params.prompt)
        _, negative_tags = parse_extra_networks(params.negative_prompt)
        for kind, items in negative_tags.items():
            tags.setdefault(kind, []).extend(items)
        with self.job_model(options, tags, checkpoint=params.checkpoint) as gc:
            if params.styles:  # their texts, for the [prompt_no_styles] file name tag
                known = self.styles.styles
                gc.style_prompts = tuple(known[n].prompt for n in params.styles if n in known)
            return run_mode(gc, params, ctx)

    def txt2img(self, params: GenerationParams, ctx: JobContext, options: RunOptions | None = None
                ) -> GenerationResult:
        """worker: one txt2img job, from parameters to saved PNGs."""
        from core.generation.txt2img import run_txt2img

        return self.generate(run_txt2img, params, ctx, options)

    def img2img(self, params: Any, ctx: JobContext, options: RunOptions | None = None) -> GenerationResult:
        """worker: one img2img / inpaint job."""
        from core.generation.img2img import run_img2img

        return self.generate(run_img2img, params, ctx, options)

    @contextmanager
    def lease(self, name: str | None = None, *, dtype: Any = None, trainable: bool = False
              ) -> Iterator[LoadedModel]:
        """worker: the base checkpoint, unpatched, for work outside the pipeline (a trainer).

        - ``trainable=False`` and the loaded dtype: the shared model itself, frozen, for the
          ``with`` block. If anything in it changed when the block ends (a weight written, a
          layer added), the engine drops it and the next job loads the file again.
        - ``trainable=True`` or another ``dtype``: the engine hands the model over (it no longer
          holds it), in that dtype, ``train()`` with gradients on when trainable; the next job
          loads the checkpoint afresh. No generation can ever see the trainer's weights.
        """
        import torch

        model = self.ensure_model(name, fallback=False if name else None)
        parts = [model.unet, model.vae, *model.text_encoders]
        wanted = dtype or model.dtype
        slot = self._slot()
        with slot.lock:
            if slot.extras is not None:
                slot.extras.restore()
            if trainable or wanted != model.dtype:
                self._unload(slot)  # the trainer owns it now
                if wanted != model.dtype:
                    for part in parts:
                        torch.nn.Module.to(part, dtype=wanted)
                    model.dtype = wanted
                for part in parts:
                    part.requires_grad_(trainable)
                    part.train(trainable)
                yield model
                return
            before = _fingerprint(model)
            try:
                yield model
            finally:
                for part in parts:
                    part.eval()
                    part.requires_grad_(False)
                if _fingerprint(model) != before:
                    log.warning("a leased model came back changed; it is reloaded from %s for the next job",
                                model.path)
                    self._unload(slot)

    def upscale_image(self, image: Any, name: str, width: int, height: int) -> Any:
        """worker: a picture resized by a plain resampler or a model upscaler from the ESRGAN folder."""
        from core.errors import InvalidParameterError
        from core.generation.upscale import IMAGE_RESAMPLERS, resize_image

        if name in IMAGE_RESAMPLERS:
            return resize_image(image, name, width, height)
        if name not in self.upscalers.names():
            missing = self.upscalers.missing_reason(name)  # a WebUI name whose file is absent
            raise InvalidParameterError("hr_upscaler", missing or f"unknown upscaler {name!r}",
                                        hint="see GET /sdapi/v1/upscalers for the names")
        return self.upscalers.upscale(image, name, width, height)

    @property
    def extras(self):
        return self._extras

    def loaded_extras(self) -> list[Any]:
        """Every worker's ExtraNetworks (one per device with a model loaded): to refresh them all."""
        return [slot.extras for slot in self.slots if slot.extras is not None]

    @property
    def vae_path(self) -> Path | None:
        """The external VAE the stored ``sd_vae`` option means for the loaded checkpoint."""
        try:
            options = self.settings.options
            return self.vae_file(options.sd_vae, options.sd_vae_overrides_per_model_preferences)
        except KilnError:
            return None

    @property
    def upscalers(self):
        """Model upscalers (ESRGAN folder), listed without loading any of them."""
        slot = self._slot()
        if slot.upscalers is None:
            from core.generation.upscalers_model import ModelUpscalers

            device = self.settings.device_policy(slot.device_id).device_for("esrgan")
            slot.upscalers = ModelUpscalers(self.paths.esrgan_dir, device=device, data_dir=self.paths.data_dir)
        return slot.upscalers


def _failure_message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"


def _fingerprint(model: LoadedModel) -> list[tuple]:
    """Every tensor's identity, storage and in-place version counter: any write, cast, move or
    added layer shows, at the cost of a walk over the names (no tensor data is read)."""
    out = []
    for prefix, module in (("unet", model.unet), ("vae", model.vae),
                           *((f"te{i}", te) for i, te in enumerate(model.text_encoders))):
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            out.append((prefix, name, id(tensor), tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device))
    return out
