"""The Engine: settings + model registry + the loaded model + device policy, as one object.

No module globals: the app builds one Engine, tests build their own. Methods marked
"worker" touch torch models and are called from the JobQueue's worker thread only; the
rest are cheap queries safe from any thread (the web server's handlers).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import KilnError, ModelFileError

if TYPE_CHECKING:  # heavy imports stay lazy: the page must serve before torch loads
    from core.generation.params import GenerationParams, GenerationResult
    from core.jobs import JobContext
    from core.models.checkpoint import LoadedModel
    from core.models.registry import ModelEntry
    from core.settings import Settings

log = logging.getLogger(__name__)

# Native sizes by family, for the UI defaults before a model is loaded.
_FAMILY_SIZES = {"sd1": 512, "sd2": 768, "sdxl": 1024}
BUILTIN_CHECKPOINT_PREFIX = "kiln-shapes"
# Lin et al. 2023 (zero-terminal-SNR paper): the guidance rescale that keeps CFG 7 from burning.
ZTSNR_RESCALE_CFG = 0.7


class Engine:
    def __init__(self, settings: Settings, *, registry: Any = None):
        from core.hashing import HashCache
        from core.models.registry import ModelRegistry

        self.settings = settings
        self.paths = settings.paths
        self.hash_cache = HashCache(self.paths.cache_path)
        self.registry = registry or ModelRegistry(self.paths, hash_cache=self.hash_cache)
        self.registry.refresh()
        self._lock = threading.RLock()
        self._model: LoadedModel | None = None
        self._model_entry: ModelEntry | None = None
        self._vae_choice: str | None = None
        self._tokenizer = None
        self._extras: Any = None  # core.generation.extras.ExtraNetworks, built with the model
        self.vae_path: Path | None = None  # the external VAE file in use, None = the checkpoint's own
        self._upscalers = None
        # --ckpt wins at startup (WebUI); a choice made in the UI/API replaces it afterwards.
        self._checkpoint_choice: str | None = settings.startup_checkpoint()
        self.autocast = False  # --precision autocast on a GPU: the U-Net runs under torch.autocast
        self.load_warnings: list[str] = []  # shown with the next result (xformers missing, ...)

    # ------------------------------------------------------------------ queries --
    def refresh_models(self) -> None:
        self.registry.refresh()

    def checkpoint_titles(self) -> list[str]:
        """``name [hash]`` for files hashed before (cache), plain ``name`` for the rest: listing
        never reads gigabytes; a checkpoint gets its hash when it is first loaded (as the WebUI)."""
        return [e.title for e in self.registry.checkpoints()]

    def selected_checkpoint(self) -> ModelEntry | None:
        """The checkpoint the next job will use: the setting, then --ckpt, then the built-in one."""
        wanted = self._checkpoint_choice
        if wanted:
            entry = self.registry.find_checkpoint(wanted)
            if entry is not None:
                return entry
        entries = self.registry.checkpoints()
        builtin = [e for e in entries if Path(e.name).name.startswith(BUILTIN_CHECKPOINT_PREFIX)]
        return (builtin or entries or [None])[0]

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

    def ensure_model(self, name: str | None = None) -> LoadedModel:
        """worker: load the wanted checkpoint unless it is already loaded; free the old one first."""
        entry = self.registry.find_checkpoint(name) if name else self.selected_checkpoint()
        if entry is None:
            if name:
                raise KilnError(f"checkpoint {name!r} not found",
                                hint=f"put it into {self.paths.ckpt_dir} and refresh the list")
            raise KilnError(self.no_checkpoint_message())
        vae_choice = self.settings.options.sd_vae
        with self._lock:
            if self._model is not None and self._model_entry is not None and self._model_entry.path == entry.path:
                if vae_choice != self._vae_choice:
                    self._apply_vae(vae_choice)
                return self._model
            self.unload()
            from core.models.checkpoint import load_checkpoint

            policy = self.settings.device_policy()
            log.info("loading %s on %s (%s)", entry.path, policy.device, policy.dtype)
            model = load_checkpoint(entry.path, device=policy.device_for("sd"), dtype=policy.torch_dtype())
            from core.models.memory import place_model

            self.load_warnings = [*policy.warnings, *place_model(model, policy)]
            self.autocast = bool(policy.autocast)
            self._model, self._model_entry = model, entry
            self.registry.sha256(entry)  # the title gains its short hash, the infotext its Model hash
            self._vae_choice = None
            self._apply_vae(vae_choice)
            from core.generation.extras import ExtraNetworks

            self._extras = ExtraNetworks(model, self.paths, hash_cache=self.hash_cache)
            return model

    def unload(self) -> None:
        """worker: drop the loaded model and give its memory back."""
        with self._lock:
            if self._extras is not None:
                self._extras.restore()
            self._model = None
            self._model_entry = None
            self._extras = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _apply_vae(self, choice: str | None) -> None:
        from core.models.vae import apply_vae, find_vae_for_checkpoint

        assert self._model is not None and self._model_entry is not None
        path = None
        if choice in (None, "", "Automatic"):
            path = find_vae_for_checkpoint(self._model_entry.path, self.paths.vae_dir)
        elif choice != "None":
            vae = self.registry.find("vae", choice)
            if vae is None:
                raise KilnError(f"VAE {choice!r} not found", hint=f"put it into {self.paths.vae_dir} or choose Automatic")
            path = vae.path
        apply_vae(self._model, path)
        self._vae_choice = choice
        self.vae_path = Path(path) if path else None

    def txt2img(self, params: GenerationParams, ctx: JobContext) -> GenerationResult:
        """worker: one txt2img job, from parameters to saved PNGs."""
        from core.generation.txt2img import run_txt2img

        model = self.ensure_model(params.checkpoint)
        return run_txt2img(self, model, params, ctx)

    @property
    def extras(self):
        return self._extras

    @property
    def upscalers(self):
        """Model upscalers (ESRGAN folder), listed without loading any of them."""
        if self._upscalers is None:
            from core.generation.upscalers_model import ModelUpscalers

            device = self.settings.device_policy().device_for("esrgan")
            self._upscalers = ModelUpscalers(self.paths.esrgan_dir, device=device)
        return self._upscalers


def rescale_cfg_default(zero_terminal_snr: bool) -> float:
    """The Rescale CFG a model starts with: 0.7 for zero-terminal-SNR models, else 0 (off)."""
    return ZTSNR_RESCALE_CFG if zero_terminal_snr else 0.0


def is_zero_terminal_snr_from_header(path: str | Path) -> bool:
    """Whether a checkpoint carries the empty ``ztsnr`` marker key ComfyUI and Forge read
    (safetensors header only, no tensor load)."""
    from core.models.architecture import ZTSNR_MARKER
    from core.models.state_dict_io import read_safetensors_header

    path = Path(path)
    if path.suffix != ".safetensors":
        return False
    _, header = read_safetensors_header(path)
    return ZTSNR_MARKER in header


def native_size_from_header(path: str | Path) -> int:
    """Guess a checkpoint's native size from its safetensors header alone (no tensor load)."""
    from core.models.state_dict_io import read_safetensors_header

    path = Path(path)
    if path.suffix != ".safetensors":
        return 512
    _, header = read_safetensors_header(path)
    meta = header.get("__metadata__", {}) or {}
    if "kiln.native_size" in meta:
        return int(meta["kiln.native_size"])
    keys = header.keys()
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return _FAMILY_SIZES["sdxl"]
    if any(k.startswith("cond_stage_model.model.") for k in keys) and "v_pred" in keys:
        return _FAMILY_SIZES["sd2"]
    return _FAMILY_SIZES["sd1"]
