"""LoRA / LyCORIS networks at generation time: read files, merge them into the model, restore.

``load_network(path)`` reads one file (safetensors or a weights-only ``.pt``/``.ckpt``) with
the WebUI's name, alias, metadata, hash and base-model version. ``NetworkManager`` is bound
to one loaded model; ``apply`` merges the deltas into the weights (so sampling costs nothing
extra) and keeps a CPU copy of only the tensors it touched; ``restore`` copies them back
bit for bit.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelFileError
from core.hashing import addnet_hash_safetensors, sha256_file
from core.models.folders import walk_files
from core.models.state_dict_io import read_safetensors_metadata as read_raw_metadata
from core.networks.lora_formats import (
    SUPPORTED_TYPES,
    MatchResult,
    ModuleIndex,
    ModuleTarget,
    UnsupportedNetworkType,
    match_state_dict,
    network_delta,
    network_type,
    split_bundle_embeddings,
)
from core.networks.oft import OFTPartError, check_oft_tensors

NETWORK_EXTENSIONS = (".safetensors", ".pt", ".ckpt")

# The WebUI shows these first in its metadata view (A1111 network.py metadata_tags_order).
_METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                   "ss_tag_frequency": 20}

SD1, SD2, SDXL, UNKNOWN = "SD1", "SD2", "SDXL", "Unknown"
_FAMILY_VERSION = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}


# --- file reading ---------------------------------------------------------------------------

def read_safetensors_metadata(path: str | Path) -> dict[str, object]:
    """The ``__metadata__`` map; values that start with ``{`` are JSON-decoded (as the WebUI)."""
    metadata: dict[str, object] = {}
    for key, value in read_raw_metadata(path).items():
        metadata[key] = value
        if isinstance(value, str) and value[:1] == "{":
            try:
                metadata[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return metadata


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ModelFileError(f"cannot read safetensors data ({e})", path=path,
                                 hint="re-download the file; it may be truncated or corrupt") from e
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"cannot load as a weights-only torch file ({type(e).__name__}: {e})", path=path,
                             hint="convert it to .safetensors; pickles that run code are refused") from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFileError("does not contain a dict of tensors", path=path)
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def detect_version(metadata: dict[str, object]) -> str:
    """The WebUI's base-model rule: sdxl_* → SDXL; ss_v2 "True" → SD2; any metadata → SD1."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return SDXL
    if str(metadata.get("ss_v2", "")) == "True":
        return SD2
    if metadata:
        return SD1
    return UNKNOWN


def _guess_version_from_keys(keys: list[str]) -> str:
    """Used only to word warnings when the metadata says nothing."""
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        return SDXL
    return UNKNOWN


@dataclass
class LoadedNetwork:
    """One network file read into memory (CPU tensors), independent of any model."""

    name: str  # file stem
    path: Path
    mtime: float
    alias: str  # ss_output_name, else the name
    metadata: dict[str, object]
    tensors: dict[str, torch.Tensor]
    hash: str  # full hex: sshs_model_hash, else addnet hash (.safetensors) or file sha256
    sd_version: str  # SD1 | SD2 | SDXL | Unknown (the WebUI's rule)
    bundle_embeddings: dict[str, dict] = field(default_factory=dict)  # TI name → embedding data

    @property
    def shorthash(self) -> str:
        """The 12 hex characters written as ``Lora hashes: name: <hash>``."""
        return self.hash[:12]

    @property
    def key_count(self) -> int:
        return len(self.tensors)


def load_network(path: str | Path) -> LoadedNetwork:
    """Read a LoRA/LyCORIS file. Raises ``ModelFileError`` for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("network file not found", path=path, hint="check the models/Lora folder")
    is_safetensors = path.suffix.lower() == ".safetensors"
    metadata = read_safetensors_metadata(path) if is_safetensors else {}
    metadata = dict(sorted(metadata.items(), key=lambda kv: _METADATA_ORDER.get(kv[0], 999)))
    tensors, bundles = split_bundle_embeddings(_read_tensors(path))
    if not tensors and not bundles:
        raise ModelFileError("contains no tensors", path=path, hint="this is not a LoRA file")
    _refuse_malformed_oft(path, tensors)
    stored = metadata.get("sshs_model_hash")
    file_hash = stored if isinstance(stored, str) and stored else (
        addnet_hash_safetensors(path) if is_safetensors else sha256_file(path))
    return LoadedNetwork(
        name=path.stem, path=path, mtime=path.stat().st_mtime, alias=output_name_alias(metadata, path.stem),
        metadata=metadata, tensors=tensors, hash=file_hash, sd_version=detect_version(metadata),
        bundle_embeddings=bundles)


def _refuse_malformed_oft(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """OFT tensors no model could use make the whole file unreadable, by key: merging the rest
    would give a picture that is neither the network's nor the base model's."""
    problems = check_oft_tensors(tensors)
    if problems:
        listed = "; ".join(f"{key}: {problem}" for key, problem in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelFileError(f"malformed OFT tensor {listed}{more}", path=path,
                             hint="the file is damaged or not an OFT/BOFT network; re-download or re-export it")


# --- applying -------------------------------------------------------------------------------

@dataclass
class NetworkReport:
    name: str
    total_keys: int
    mapped: int
    unmapped: int
    unmapped_names: list[str]
    modules_changed: int = 0
    failed_modules: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ApplyReport:
    networks: list[NetworkReport]
    modules_changed: int
    seconds: float
    cached: bool = False  # True when the same set was already applied and nothing was done

    @property
    def warnings(self) -> list[str]:
        return [f"{n.name}: {w}" for n in self.networks for w in n.warnings]


@dataclass(frozen=True)
class NetworkRequest:
    """One ``<lora:name:te:unet:dyn=N>`` use: a loaded file and its multipliers."""

    network: LoadedNetwork
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None


def _as_request(item) -> NetworkRequest:
    if isinstance(item, NetworkRequest):
        return item
    net, te, unet, dyn = (tuple(item) + (None,))[:4]
    return NetworkRequest(net, float(te), float(unet), dyn)


class NetworkManager:
    """Merges networks into one model's weights and undoes it exactly.

    Bind one manager per loaded model. When the model's weights are replaced (another
    checkpoint loaded into the same modules), call ``forget()`` instead of ``restore()``.
    """

    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module], family: str,
                 unet_config=None, *, unet_key_map: dict[str, str] | None = None, cache_size: int = 8):
        if unet_key_map is None and unet_config is not None:
            from core.models.layout import unet_key_map as build_key_map

            unet_key_map = build_key_map(unet_config)
        self.family = family
        self.index = ModuleIndex(unet, list(text_encoders), family, unet_key_map)
        self.cache_size = cache_size
        self._files: OrderedDict[Path, LoadedNetwork] = OrderedDict()
        self._matches: dict[tuple[Path, float], MatchResult] = {}
        self._backup: dict[tuple[ModuleTarget, str], torch.Tensor | None] = {}
        self._applied_key: tuple = ()
        self._last_report: ApplyReport | None = None

    # files ---------------------------------------------------------------------------------

    def load(self, path: str | Path) -> LoadedNetwork:
        """``load_network`` through a small cache keyed by path and mtime."""
        path = Path(path)
        cached = self._files.get(path)
        try:
            mtime = path.stat().st_mtime
        except OSError as e:
            raise ModelFileError("network file not found", path=path, hint="check the models/Lora folder") from e
        if cached is not None and cached.mtime == mtime:
            self._files.move_to_end(path)
            return cached
        net = load_network(path)
        self._files[path] = net
        while len(self._files) > self.cache_size:
            old_path, old = self._files.popitem(last=False)
            self._matches.pop((old_path, old.mtime), None)
        return net

    def match(self, net: LoadedNetwork) -> MatchResult:
        key = (net.path, net.mtime)
        result = self._matches.get(key)
        if result is None:
            adapter_metadata = net.metadata.get("lora_adapter_metadata")
            result = match_state_dict(net.tensors, self.index,
                                      adapter_metadata if isinstance(adapter_metadata, dict) else None)
            self._matches[key] = result
        return result

    # merging -------------------------------------------------------------------------------

    @property
    def applied(self) -> bool:
        return bool(self._applied_key)

    def apply(self, networks) -> ApplyReport:
        """Merge ``networks`` (``NetworkRequest`` or ``(net, te, unet, dyn)`` tuples) in order.

        A different set or different weights than the current one is restored first; the
        same set again does nothing.
        """
        requests = [_as_request(n) for n in networks]
        wanted = tuple((r.network.path, r.network.mtime, r.te_multiplier, r.unet_multiplier, r.dyn_dim)
                       for r in requests)
        if wanted == self._applied_key and self._last_report is not None:
            return ApplyReport(self._last_report.networks, self._last_report.modules_changed, 0.0, cached=True)
        started = time.perf_counter()
        self.restore()
        matches = [self.match(r.network) for r in requests]
        reports = [self._report(r.network, m) for r, m in zip(requests, matches)]
        targets: dict[ModuleTarget, None] = {}
        for m in matches:
            targets.update(dict.fromkeys(m.modules))
        changed = 0
        with torch.no_grad():
            for target in targets:
                if self._merge_module(target, requests, matches, reports):
                    changed += 1
        for report in reports:
            if report.failed_modules:
                report.warnings.append(f"{len(report.failed_modules)} layers could not be applied "
                                       f"(shape or type mismatch): {', '.join(report.failed_modules[:5])}")
        self._applied_key = wanted
        self._last_report = ApplyReport(reports, changed, time.perf_counter() - started)
        return self._last_report

    def _merge_module(self, target: ModuleTarget, requests: list[NetworkRequest], matches: list[MatchResult],
                      reports: list[NetworkReport]) -> bool:
        module = self.index.modules[target]
        weight = module.weight
        new_weight = weight.detach().to(torch.float32)
        bias = getattr(module, "bias", None)
        new_bias = bias.detach().to(torch.float32) if bias is not None else None
        touched = bias_touched = False
        for request, match, report in zip(requests, matches, reports):
            parts = match.modules.get(target)
            if parts is None:
                continue
            multiplier = request.te_multiplier if target.is_text_encoder else request.unet_multiplier
            try:
                delta, delta_bias = network_delta(parts, new_weight, multiplier, request.dyn_dim)
                delta = _fit_inpaint_conv_in(delta, new_weight)
                if delta.shape != new_weight.shape:
                    raise RuntimeError(f"delta {tuple(delta.shape)} vs weight {tuple(new_weight.shape)}")
                if delta_bias is not None:
                    delta_bias = delta_bias.reshape(weight.shape[0])
            except (RuntimeError, UnsupportedNetworkType) as e:
                # an OFT part error knows which stored tensor does not fit: name that key
                key = match.part_keys[target].get(e.part) if isinstance(e, OFTPartError) else None
                report.failed_modules.append(f"{key or match.first_key[target]} ({e})")
                continue
            new_weight = new_weight + delta
            if delta_bias is not None:
                new_bias = delta_bias if new_bias is None else new_bias + delta_bias
                bias_touched = True
            report.modules_changed += 1
            touched = True
        if not touched:
            return False
        self._backup_tensor(target, module, "weight")
        weight.copy_(new_weight.to(weight.dtype))
        if bias_touched:
            self._backup_tensor(target, module, "bias")
            if bias is None:
                module.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=False)
            else:
                bias.copy_(new_bias.to(bias.dtype))
        return True

    def _backup_tensor(self, target: ModuleTarget, module: nn.Module, attr: str) -> None:
        key = (target, attr)
        if key in self._backup:
            return
        tensor = getattr(module, attr, None)
        # None records "this layer had no bias": restore removes the one we added
        self._backup[key] = tensor.detach().to("cpu", copy=True) if tensor is not None else None

    def restore(self) -> None:
        """Put every touched tensor back exactly as it was before ``apply``."""
        with torch.no_grad():
            for (target, attr), saved in self._backup.items():
                module = self.index.modules[target]
                if saved is None:
                    setattr(module, attr, None)
                else:
                    getattr(module, attr).copy_(saved)
        self._backup.clear()
        self._applied_key = ()
        self._last_report = None

    def forget(self) -> None:
        """Drop the backups without writing them (the model's weights were reloaded)."""
        self._backup.clear()
        self._applied_key = ()
        self._last_report = None

    # reports -------------------------------------------------------------------------------

    def _report(self, net: LoadedNetwork, match: MatchResult) -> NetworkReport:
        total = net.key_count
        report = NetworkReport(name=net.name, total_keys=total, mapped=match.matched_keys,
                               unmapped=len(match.unmatched_keys), unmapped_names=match.unmatched_modules)
        model_version = _FAMILY_VERSION.get(self.family, self.family)
        net_version = net.sd_version if net.sd_version != UNKNOWN else _guess_version_from_keys(list(net.tensors))
        if net_version not in (UNKNOWN, model_version) and not (net_version == SD1 and model_version == SD2
                                                               and match.matched_keys == total):
            report.warnings.append(f"{net_version} LoRA on an {model_version} model: "
                                   f"{match.matched_keys} of {total} keys match")
        elif match.matched_keys == 0 and total:
            report.warnings.append(f"none of its {total} keys match this {model_version} model")
        elif match.unmatched_keys:
            report.warnings.append(f"{len(match.unmatched_keys)} of {total} keys match no layer of this model")
        unsupported = {network_type(parts) or "unknown" for parts in match.modules.values()} - set(SUPPORTED_TYPES)
        if unsupported:
            report.warnings.append(f"network type not supported: {', '.join(sorted(unsupported))}")
        return report


def _fit_inpaint_conv_in(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 4-channel conv_in delta on a 9-channel inpainting model: zero-pad the extra inputs."""
    if delta.dim() == 4 and weight.dim() == 4 and weight.shape[1] == 9 and delta.shape[1] == 4:
        return torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, 5))
    return delta


def find_networks(lora_dir: str | Path) -> dict[str, Path]:
    """Name (file stem) → path for every network file under ``lora_dir`` (folder by folder, each
    folder's files case-insensitively; the first file of a stem wins)."""
    found: dict[str, Path] = {}
    for p in walk_files(lora_dir, NETWORK_EXTENSIONS, key=lambda p: (str(p.parent), p.name.lower())):
        found.setdefault(p.stem, p)
    return found


# --- names a prompt may use -----------------------------------------------------------------

# Aliases the WebUI never shows as a LoRA's prompt name (networks.forbidden_network_aliases).
FORBIDDEN_ALIASES = ("none", "addams")


def output_name_alias(metadata: Mapping[str, object], stem: str) -> str:
    """A network's own alias: kohya's ``ss_output_name``, else the file stem (A1111 ``NetworkOnDisk.alias``)."""
    alias = metadata.get("ss_output_name")
    return alias if isinstance(alias, str) and alias else stem


@dataclass(frozen=True)
class NetworkNames:
    files: dict[str, Path]  # every name a <lora:...> tag may use → its file
    shown: dict[str, str]  # file stem → the name its card and inserted tag use


def network_names(files: Iterable[tuple[str, Path]], alias_of: Callable[[Path], object]) -> NetworkNames:
    """The one LoRA naming rule (A1111 ``networks.list_available_networks``, ``NetworkOnDisk.get_alias``).

    ``files`` are (stem, path) in listing order; ``alias_of(path)`` gives the file's
    ``ss_output_name`` (anything but a non-empty string means none). A network is reachable by its
    stem and by its alias; a stem wins over another file's alias, and among equal stems or equal
    aliases the first file wins (the WebUI lets the later file win, so its lookups depend on the
    folder order). A card shows the alias unless another file's stem or alias is the same
    (case-insensitively) or it is one of ``FORBIDDEN_ALIASES``; then it shows the stem.
    """
    entries = []
    for stem, path in files:
        alias = alias_of(path)
        entries.append((stem, path, alias if isinstance(alias, str) and alias else stem))
    by_name: dict[str, Path] = {}
    for stem, path, _ in entries:
        by_name.setdefault(stem, path)
    for _, path, alias in entries:
        by_name.setdefault(alias, path)
    uses = Counter(name for stem, _, alias in entries for name in {stem.lower(), alias.lower()})
    shown: dict[str, str] = {}
    for stem, _, alias in entries:
        usable = alias == stem or (uses[alias.lower()] == 1 and alias.lower() not in FORBIDDEN_ALIASES)
        shown.setdefault(stem, alias if usable else stem)
    return NetworkNames(by_name, shown)

