"""Where Kiln keeps things: the AUTOMATIC1111 WebUI folder layout, each folder overridable.

A WebUI user can point Kiln at an existing WebUI folder (``--data-dir``) or at single folders
(``--ckpt-dir``, ``--lora-dir``...) and find their models where they left them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from core.cli import Flags

# Relative to the data folder, as in the WebUI (modules/paths_internal.py, cmd_args.py).
CHECKPOINT_SUBDIR = Path("models/Stable-diffusion")
VAE_SUBDIR = Path("models/VAE")
LORA_SUBDIR = Path("models/Lora")
HYPERNETWORK_SUBDIR = Path("models/hypernetworks")
ESRGAN_SUBDIR = Path("models/ESRGAN")
EMBEDDINGS_SUBDIR = Path("embeddings")
# Taggers and captioners (Dataset › Tag): WD14 ONNX folders (the tagger extensions' models/ layout),
# the WebUI's DeepBooru port, and local transformers folders for BLIP / GIT captions.
TAGGER_SUBDIR = Path("models/tagger")
DEEPBOORU_SUBDIR = Path("models/torch_deepdanbooru")
BLIP_SUBDIR = Path("models/BLIP")
OUTPUTS_SUBDIR = Path("outputs")
EXTENSIONS_SUBDIR = Path("extensions")
CONFIG_NAME = "config.json"
CACHE_NAME = "cache.json"
STYLES_NAME = "styles.csv"  # the WebUI's default styles file, in the data folder


def _absolute(path: Path) -> Path:
    # Relative flag values mean "relative to where the user ran the command", as in a shell.
    return Path(path).expanduser().absolute()


@dataclass
class KilnPaths:
    data_dir: Path
    ckpt_dir: Path
    vae_dir: Path
    lora_dir: Path
    embeddings_dir: Path
    hypernetwork_dir: Path
    esrgan_dir: Path
    tagger_dir: Path
    deepbooru_dir: Path
    blip_dir: Path
    outputs_dir: Path
    config_path: Path
    cache_path: Path
    extensions_dir: Path
    # The Shapes model ships in the repository's own checkpoints folder; the registry lists it
    # even when --data-dir / --ckpt-dir point somewhere else.
    builtin_checkpoint_dir: Path
    # The prompt styles files (--styles-file, each a path or a glob); default DATA_DIR/styles.csv.
    styles_files: tuple[Path, ...] = ()

    @classmethod
    def from_flags(cls, flags: Flags, repo_root: Path) -> KilnPaths:
        repo_root = _absolute(repo_root)
        data = _absolute(flags.data_dir) if flags.data_dir is not None else repo_root

        def pick(override: Path | None, default: Path) -> Path:
            return _absolute(override) if override is not None else data / default

        return cls(
            data_dir=data,
            ckpt_dir=pick(flags.ckpt_dir, CHECKPOINT_SUBDIR),
            vae_dir=pick(flags.vae_dir, VAE_SUBDIR),
            lora_dir=pick(flags.lora_dir, LORA_SUBDIR),
            embeddings_dir=pick(flags.embeddings_dir, EMBEDDINGS_SUBDIR),
            hypernetwork_dir=pick(flags.hypernetwork_dir, HYPERNETWORK_SUBDIR),
            esrgan_dir=pick(flags.esrgan_models_path, ESRGAN_SUBDIR),
            tagger_dir=data / TAGGER_SUBDIR,
            deepbooru_dir=data / DEEPBOORU_SUBDIR,
            blip_dir=data / BLIP_SUBDIR,
            outputs_dir=data / OUTPUTS_SUBDIR,
            config_path=data / CONFIG_NAME,
            cache_path=data / CACHE_NAME,
            extensions_dir=data / EXTENSIONS_SUBDIR,
            builtin_checkpoint_dir=repo_root / CHECKPOINT_SUBDIR,
            styles_files=tuple(_absolute(Path(f)) for f in flags.styles_file) or (data / STYLES_NAME,),
        )

    def folders(self) -> list[Path]:
        """Every folder Kiln reads or writes (not the two JSON files)."""
        return [
            getattr(self, f.name) for f in fields(self)
            if f.name.endswith("_dir") and f.name != "builtin_checkpoint_dir"
        ]

    def ensure_dirs(self) -> None:
        """Create the folders that are missing (a fresh --data-dir starts empty)."""
        for folder in self.folders():
            folder.mkdir(parents=True, exist_ok=True)

    def checkpoint_dirs(self) -> list[Path]:
        """Folders to scan for checkpoints: the user's first, then the built-in one if different."""
        dirs = [self.ckpt_dir]
        if self.builtin_checkpoint_dir.resolve() != self.ckpt_dir.resolve():
            dirs.append(self.builtin_checkpoint_dir)
        return dirs

    def check_inside_data_dir(self, field: str, configured: str) -> Path:
        """A folder option set by a person must stay inside the data folder (InvalidParameterError)."""
        from core.errors import InvalidParameterError

        check_name(field, configured, allow_folders=True)
        resolved = self.resolve_output(configured).resolve()
        root = Path(self.data_dir).resolve()
        if resolved != root and root not in resolved.parents:
            raise InvalidParameterError(field, f"{configured!r} is outside the data folder {root}",
                                        hint="use a folder inside it, e.g. outputs/txt2img-images")
        if resolved.exists() and not resolved.is_dir():
            raise InvalidParameterError(field, f"{configured!r} is a file, not a folder")
        return resolved

    def resolve_output(self, configured: str | Path) -> Path:
        """An output-folder option ("outputs/txt2img-images") → absolute, relative to the data folder."""
        path = Path(configured).expanduser()
        return path if path.is_absolute() else self.data_dir / path


def check_name(field: str, name: str, *, allow_folders: bool = False) -> str:
    """A file or folder name from a request: no NUL bytes, no absolute path, no ``..`` segment.

    Model names only ever match files Kiln listed, so this is the clear message for an attempt
    to name something else; folder options (``allow_folders``) may have sub-folders.
    """
    from core.errors import InvalidParameterError

    if not isinstance(name, str):
        raise InvalidParameterError(field, f"{name!r} is not a name")
    if "\0" in name:
        raise InvalidParameterError(field, "contains a NUL byte")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidParameterError(field, f"{name!r} points outside its folder",
                                    hint="give a name inside the folder, as the lists show it")
    if not allow_folders and not name.strip():
        raise InvalidParameterError(field, "is empty")
    return name
