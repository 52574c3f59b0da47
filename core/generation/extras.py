"""Extra networks for one loaded model: prompt tags → LoRAs merged, hypernetworks hooked,
embeddings looked up. The glue between the prompt's `<lora:...>` tags and core.networks.

Bad tags never stop a generation: each becomes a warning shown in the UI, and the infotext
only names what was really applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ModelFileError
from core.networks import hypernetworks as hn
from core.networks.embeddings import EmbeddingDatabase, expected_dims_for
from core.networks.lora import (
    NetworkManager,
    NetworkRequest,
    find_networks,
    network_names,
    read_safetensors_metadata,
)


@dataclass(eq=False)
class NetworkPatches:
    """A job's extra networks, declared: which LoRAs / hypernetworks at which weights.

    Applied for one job by ``ExtraNetworks.applied`` and taken off when it ends; the shared
    model itself never keeps them (ComfyUI's ModelPatcher idea)."""

    loras: tuple[NetworkRequest, ...] = ()
    lora_names: tuple[str, ...] = ()  # as the prompt named them (Lora hashes)
    hypernets: tuple[tuple[hn.Hypernetwork, float], ...] = ()
    hypernet_names: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.loras and not self.hypernets


@dataclass
class Activation:
    infotext: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def lora_multipliers(positional: list[str], named: dict[str, str]) -> tuple[float, float, int | None]:
    """The WebUI's reading of `<lora:name:te:unet:dyn>` and `te=`/`unet=`/`dyn=` (ValueError if not numbers)."""
    te = float(positional[1]) if len(positional) > 1 else 1.0
    te = float(named.get("te", te))
    unet = float(positional[2]) if len(positional) > 2 else te
    unet = float(named.get("unet", unet))
    dyn = int(positional[3]) if len(positional) > 3 else None
    dyn = int(named["dyn"]) if "dyn" in named else dyn
    return te, unet, dyn


class ExtraNetworks:
    def __init__(self, model: Any, paths: Any, hash_cache: Any = None):
        self.model = model
        self.paths = paths
        self.family = model.spec.family
        self.networks = NetworkManager(model.unet, model.text_encoders, self.family, model.spec.unet_config)
        self.embeddings = EmbeddingDatabase(Path(paths.embeddings_dir), model.tokenizers)
        self._expected_dims = expected_dims_for(model.text_encoders)
        self._aliases: dict[tuple[Path, float], str] = {}
        self._hypernets: dict[Path, tuple[float, hn.Hypernetwork]] = {}
        self.last_apply_seconds = 0.0
        self.refresh_embeddings()

    # -- folders ----------------------------------------------------------------------
    def refresh_embeddings(self, force: bool = False) -> bool:
        return self.embeddings.load_for_model(self.family, self._expected_dims, force=force)

    def lora_index(self, extra_folders: tuple[str | Path, ...] = ()) -> dict[str, Path]:
        """Names a prompt may use: file stems and `ss_output_name` aliases (core.networks.lora.network_names)
        of models/Lora; the stems of ``extra_folders`` (a job's own, e.g. a run's epoch files) come first."""
        index = network_names(find_networks(self.paths.lora_dir).items(), self._alias).files
        for folder in extra_folders:
            for name, path in find_networks(folder).items():
                index[name] = path
        return index

    def _alias(self, path: Path) -> str | None:
        if path.suffix.lower() != ".safetensors":
            return None
        try:
            key = (path, path.stat().st_mtime)
        except OSError:
            return None
        if key not in self._aliases:
            try:
                value = read_safetensors_metadata(path).get("ss_output_name")
            except ModelFileError:
                value = None
            self._aliases[key] = value if isinstance(value, str) else ""
        return self._aliases[key] or None

    # -- patches ----------------------------------------------------------------------
    def resolve(self, tags: dict[str, list[Any]],
                lora_folders: tuple[str | Path, ...] = ()) -> tuple[NetworkPatches, Activation]:
        """The patch set a job's prompt tags ask for (files read, nothing applied yet);
        ``lora_folders``: the job's own LoRA folders, searched before models/Lora."""
        out = Activation()
        self.refresh_embeddings()
        loras, lora_names = self._resolve_loras(tags.get("lora", []), out, lora_folders)
        hypernets, hypernet_names = self._resolve_hypernets(tags.get("hypernet", []), out)
        for kind in tags:
            if kind not in ("lora", "hypernet"):
                out.warnings.append(f"unknown extra network type <{kind}:...>; tag ignored")
        return NetworkPatches(tuple(loras), tuple(lora_names), tuple(hypernets), tuple(hypernet_names)), out

    @contextmanager
    def applied(self, patches: NetworkPatches) -> Iterator[Activation]:
        """Apply ``patches`` for the duration of one job; the base model comes back on exit,
        whatever happens inside (an error, an Interrupt): LoRA merges restored bit for bit,
        hypernetwork attention hooks removed, a LoRA's bundled embeddings forgotten."""
        out = Activation()
        try:
            self._apply_loras(patches, out)
            self._apply_hypernets(patches, out)
            yield out
        finally:
            self.restore()

    def activate(self, tags: dict[str, list[Any]]) -> Activation:
        """Resolve and apply, leaving the networks on until ``restore`` (tests, one-off tools)."""
        patches, out = self.resolve(tags)
        self._apply_loras(patches, out)
        self._apply_hypernets(patches, out)
        return out

    def _resolve_loras(self, items: list[Any], out: Activation,
                       lora_folders: tuple[str | Path, ...] = ()) -> tuple[list[NetworkRequest], list[str]]:
        requests: list[NetworkRequest] = []
        mentioned: list[str] = []
        index = self.lora_index(lora_folders) if items else {}
        for params in items:
            if not params.positional:
                out.warnings.append("a <lora:...> tag without a name was ignored")
                continue
            name = params.positional[0]
            try:
                te, unet, dyn = lora_multipliers(params.positional, params.named)
            except ValueError:
                out.warnings.append(f"LoRA {name}: weight {':'.join(params.positional[1:])!r} is not a number; "
                                    "tag ignored")
                continue
            path = index.get(name)
            if path is None:
                out.warnings.append(f"LoRA {name!r} not found in {self.paths.lora_dir}; tag ignored")
                continue
            try:
                net = self.networks.load(path)
            except ModelFileError as e:
                out.warnings.append(f"LoRA {name}: {e.message}")
                continue
            requests.append(NetworkRequest(net, te, unet, dyn))
            mentioned.append(name)
        return requests, mentioned

    def _apply_loras(self, patches: NetworkPatches, out: Activation) -> None:
        requests = list(patches.loras)
        report = self.networks.apply(requests)
        out.warnings.extend(report.warnings)
        self.last_apply_seconds = report.seconds
        bundled = {}
        for request in requests:
            bundled.update(_bundled_for(request.network))
        # Always called, also with none: it removes the previous job's bundled embeddings.
        for skipped in self.embeddings.set_bundled(bundled, self._expected_dims):
            out.warnings.append(f"embedding {skipped.name} in {skipped.filename} skipped: {skipped.reason}")
        applied = [(m, r) for m, r, rep in zip(patches.lora_names, requests, report.networks) if rep.modules_changed]
        if applied:
            out.infotext["Lora hashes"] = ", ".join(
                f"{m.replace(':', '').replace(',', '')}: {r.network.shorthash}" for m, r in applied)

    def _resolve_hypernets(self, items: list[Any], out: Activation
                           ) -> tuple[list[tuple[hn.Hypernetwork, float]], list[str]]:
        chosen: list[tuple[hn.Hypernetwork, float]] = []
        names: list[str] = []
        index = hn.find_hypernetworks(self.paths.hypernetwork_dir) if items else {}
        for params in items:
            if not params.positional:
                continue
            name = params.positional[0]
            try:
                multiplier = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            except ValueError:
                out.warnings.append(f"hypernetwork {name}: strength {params.positional[1]!r} is not a number; tag ignored")
                continue
            path = index.get(name)
            if path is None:
                out.warnings.append(f"hypernetwork {name!r} not found in {self.paths.hypernetwork_dir}; tag ignored")
                continue
            try:
                chosen.append((self._hypernet(path), multiplier))
                names.append(name)
            except ModelFileError as e:
                out.warnings.append(f"hypernetwork {name}: {e.message}")
        return chosen, names

    def _apply_hypernets(self, patches: NetworkPatches, out: Activation) -> None:
        if patches.hypernets:
            hn.install(self.model.unet, list(patches.hypernets))
            first, multiplier = patches.hypernets[0]
            out.infotext["Hypernet"] = patches.hypernet_names[0]  # the name a prompt uses (file stem)
            out.infotext["Hypernet hash"] = first.shorthash
            out.infotext["Hypernet strength"] = multiplier
        else:
            hn.uninstall(self.model.unet)

    def _hypernet(self, path: Path) -> hn.Hypernetwork:
        mtime = path.stat().st_mtime
        cached = self._hypernets.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, hn.load_hypernetwork(path))
            self._hypernets[path] = cached
        return cached[1]

    def restore(self) -> None:
        """Base weights back, hooks off, no bundled embeddings (after each job, before unloading)."""
        self.networks.restore()
        hn.uninstall(self.model.unet)
        self.embeddings.set_bundled({}, self._expected_dims)


def _bundled_for(network) -> dict:
    from core.networks.embeddings import bundled_embeddings

    return bundled_embeddings(network.name, network.bundle_embeddings) if network.bundle_embeddings else {}
