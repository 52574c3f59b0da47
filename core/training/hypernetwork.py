"""Hypernetworks: create a file and train it, as the WebUI's Train tab.

``create_hypernetwork`` writes ``models/hypernetworks/<name>.pt`` in the WebUI's layout (per
context width a (K, V) pair of ``linear.<i>.*`` state dicts, plus ``step``, ``name``,
``layer_structure``, ``activation_func``, ``is_layer_norm``, ``weight_initialization``,
``activate_output`` (False for new files, as the WebUI), ``use_dropout``, ``dropout_structure``,
``last_layer_dropout``, ``sd_checkpoint``, ``sd_checkpoint_name``, ``optional_info``), with
the WebUI's weight initialisations. Kiln's reader (core/networks/hypernetworks.py) loads it.

``train_hypernetwork`` trains those MLPs in every attention layer of the frozen U-Net (multiplier
1, dropout on, AdamW with its default weight decay as the WebUI) through the shared loop.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import InvalidParameterError, KilnError
from core.fileio import atomic_save_with
from core.networks import hypernetworks as hn
from core.training.textual_inversion import clean_name
from core.training.ti_loop import TrainHooks, TrainOptions, TrainResult, check_model, run_training

SIZES = (768, 1024, 320, 640, 1280)  # the WebUI's "Modules" choices
WEIGHT_INITS = ("Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal")
ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid",
               *sorted(k for k in hn.ACTIVATIONS if k not in ("linear", "relu", "leakyrelu", "elu", "swish",
                                                               "tanh", "sigmoid")))


def parse_floats(field_name: str, text: str | list) -> list[float]:
    if isinstance(text, (list, tuple)):
        return [float(x) for x in text]
    try:
        return [float(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError as exc:
        raise InvalidParameterError(field_name, f"{text!r} is not a comma-separated list of numbers",
                                    hint="for example 1, 2, 1") from exc


@dataclass(frozen=True)
class HypernetworkSpec:
    """The WebUI's Create hypernetwork fields (its defaults)."""

    name: str
    enable_sizes: tuple[int, ...] = (768, 320, 640, 1280)
    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str = "linear"
    weight_init: str = "Normal"
    add_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: tuple[float, ...] | None = None
    overwrite_old: bool = False

    def checked(self) -> tuple[list[float], list[float]]:
        layers = list(self.layer_structure)
        if len(layers) < 2 or layers[0] != 1 or layers[-1] != 1 or any(x <= 0 for x in layers):
            raise InvalidParameterError("layer_structure", f"{layers} must start and end with 1 (e.g. 1, 2, 1)")
        if self.activation_func not in hn.ACTIVATIONS:
            raise InvalidParameterError("activation_func", f"unknown activation {self.activation_func!r}",
                                        hint=f"one of {', '.join(ACTIVATIONS)}")
        if self.weight_init not in WEIGHT_INITS:
            raise InvalidParameterError("weight_init", f"unknown initialization {self.weight_init!r}",
                                        hint=f"one of {', '.join(WEIGHT_INITS)}")
        if not self.enable_sizes:
            raise InvalidParameterError("enable_sizes", "no module size chosen", hint="tick 768 for SD1, 1024 for SD2")
        if self.use_dropout and self.dropout_structure:
            dropout = list(self.dropout_structure)
            if len(dropout) != len(layers) or dropout[0] != 0 or dropout[-1] != 0 or \
                    any(not 0 <= p < 1 for p in dropout):
                raise InvalidParameterError(
                    "dropout_structure", f"{dropout} must have one value per layer ({len(layers)}), start and "
                    "end with 0, each at least 0 and below 1", hint="for example 0, 0.3, 0")
        else:
            dropout = [0.0] * len(layers)
        return layers, dropout


def _initialise(mlp: nn.Sequential, weight_init: str, activation: str) -> None:
    """The WebUI's ``HypernetworkModule`` init: LayerNorms always Normal(0, 0.01), biases zero."""
    nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
    for layer in mlp:
        if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
            continue
        w, b = layer.weight.data, layer.bias.data
        if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
            nn.init.normal_(w, mean=0.0, std=0.01)
            nn.init.zeros_(b)
        elif weight_init == "XavierUniform":
            nn.init.xavier_uniform_(w)
            nn.init.zeros_(b)
        elif weight_init == "XavierNormal":
            nn.init.xavier_normal_(w)
            nn.init.zeros_(b)
        elif weight_init == "KaimingUniform":
            nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity)
            nn.init.zeros_(b)
        else:
            nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)
            nn.init.zeros_(b)


def _layer_state(mlp: nn.Sequential) -> dict[str, torch.Tensor]:
    return {f"linear.{k}": v.detach().to("cpu", torch.float32).clone() for k, v in mlp.state_dict().items()}


def hypernetwork_dict(layers: dict[int, tuple[nn.Sequential, nn.Sequential]], info: dict[str, Any]) -> dict:
    """The dict ``Hypernetwork.save`` writes."""
    data: dict[Any, Any] = {width: (_layer_state(k), _layer_state(v)) for width, (k, v) in layers.items()}
    dropout = info.get("dropout_structure")
    data.update(
        step=int(info.get("step") or 0), name=info["name"], layer_structure=list(info["layer_structure"]),
        activation_func=info.get("activation_func"), is_layer_norm=bool(info.get("is_layer_norm")),
        weight_initialization=info.get("weight_initialization"), sd_checkpoint=info.get("sd_checkpoint"),
        sd_checkpoint_name=info.get("sd_checkpoint_name"), activate_output=bool(info.get("activate_output")),
        use_dropout=bool(info.get("use_dropout")), dropout_structure=list(dropout) if dropout is not None else None,
        last_layer_dropout=(dropout[-2] != 0) if dropout is not None and len(dropout) >= 2 else False,
        optional_info=info.get("optional_info") or None)
    return data


def save_hypernetwork_file(path: Path, layers: dict[int, tuple[nn.Sequential, nn.Sequential]],
                           info: dict[str, Any]) -> Path:
    data = hypernetwork_dict(layers, info)
    return atomic_save_with(path, lambda tmp: torch.save(data, tmp))


def create_hypernetwork(hypernetwork_dir: Path, spec: HypernetworkSpec, seed: int | None = None) -> Path:
    """Write a new hypernetwork file; refuses to replace one unless ``overwrite_old``."""
    name = clean_name(spec.name)
    layers_structure, dropout = spec.checked()
    path = Path(hypernetwork_dir) / f"{name}.pt"
    if path.exists() and not spec.overwrite_old:
        raise KilnError("file already exists", path=path, hint="pick another name, or tick Overwrite Old Hypernetwork")
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        layers = {}
        for width in dict.fromkeys(int(x) for x in spec.enable_sizes):
            pair = []
            for _ in range(2):
                mlp = hn.build_mlp(width, layers_structure, spec.activation_func, spec.add_layer_norm, False, dropout)
                _initialise(mlp, spec.weight_init, spec.activation_func)
                pair.append(mlp)
            layers[width] = (pair[0], pair[1])
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    Path(hypernetwork_dir).mkdir(parents=True, exist_ok=True)
    info = dict(name=name, layer_structure=layers_structure, activation_func=spec.activation_func,
                is_layer_norm=spec.add_layer_norm, weight_initialization=spec.weight_init, activate_output=False,
                use_dropout=spec.use_dropout, dropout_structure=dropout, step=0)
    return save_hypernetwork_file(path, layers, info)


@dataclass
class HypernetworkTarget:
    """The hypernetwork being trained, hooked into the U-Net's attention at multiplier 1."""

    name: str
    network: hn.Hypernetwork
    info: dict[str, Any]
    step: int
    others: Any = None
    weight_decay: float = 0.01  # torch AdamW's default, which the WebUI's hypernetwork trainer keeps
    log_kind: str = "hypernetworks"
    loss_csv: str = "hypernetwork_loss.csv"
    fixed_text: bool = True
    _installed: bool = field(default=False, repr=False)

    def parameters(self) -> list[torch.Tensor]:
        return [p for pair in self.network.layers.values() for mlp in pair for p in mlp.parameters()]

    def _install(self, model: Any) -> None:
        for pair in self.network.layers.values():
            for mlp in pair:
                mlp.to(next(model.unet.parameters()).device).train()
        hn.install(model.unet, [(self.network, 1.0)])

    @contextmanager
    def attached(self, model: Any):
        for p in self.parameters():
            p.requires_grad_(True)
        self._install(model)
        try:
            yield
        finally:
            hn.uninstall(model.unet)
            for pair in self.network.layers.values():
                for mlp in pair:
                    mlp.eval()
            for p in self.parameters():
                p.requires_grad_(False)

    @contextmanager
    def detached(self, model: Any):
        """The preview loads the saved file through the studio's own path; hooks back on after."""
        hn.uninstall(model.unet)
        try:
            with torch.no_grad():
                yield
        finally:
            self._install(model)

    def encode(self, model: Any, prompts: list[str], clip_skip: int) -> torch.Tensor:
        from core.prompts.conditioning import PromptEncoder

        encoder = PromptEncoder(model.tokenizers, model.text_encoders, model.spec.family, embeddings=self.others)
        with torch.no_grad():
            return encoder.encode(prompts, clip_skip).context

    def save(self, path: Path, name: str | None = None) -> Path:
        return save_hypernetwork_file(path, self.network.layers, {**self.info, "name": name or self.name,
                                                                  "step": self.step})

    def preview_prompt(self, prompt: str) -> str:
        return f"{prompt} <hypernet:{self.name}:1>"


@dataclass(frozen=True)
class HypernetworkTrainJob:
    hypernetwork_file: Path  # under models/hypernetworks/ (trained in place)
    options: TrainOptions
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None


def load_target(path: Path, model: Any, others: Any = None) -> HypernetworkTarget:
    path = Path(path)
    network = hn.load_hypernetwork(path)
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    info = {k: v for k, v in raw.items() if isinstance(k, str)}
    info.setdefault("layer_structure", network.layer_structure)
    info.setdefault("dropout_structure", network.dropout_structure)
    info.setdefault("activate_output", network.activate_output)
    widths = {te.get_input_embeddings().weight.shape[1] for te in model.text_encoders}
    if not widths & set(network.layers):
        raise KilnError(f"the hypernetwork has modules for {sorted(network.layers)} but this model's text width "
                        f"is {sorted(widths)}", path=path, hint="create it with the module size of this model")
    return HypernetworkTarget(name=path.stem, network=network, info=info, step=network.step, others=others)


def train_hypernetwork(model: Any, job: HypernetworkTrainJob, hooks: TrainHooks | None = None, *,
                       others: Any = None, data_dir: Path | None = None) -> TrainResult:
    """Train the hypernetwork file on the leased model; the file holds the result (also after Stop)."""
    check_model(model, "hypernetwork")
    target = load_target(job.hypernetwork_file, model, others)
    target.info.update(sd_checkpoint=job.sd_checkpoint, sd_checkpoint_name=job.sd_checkpoint_name)
    return run_training(model, target, job.options, Path(job.hypernetwork_file), hooks or TrainHooks(),
                        data_dir=data_dir)
