"""The WebUI's argument names for Train Embedding / Train Hypernetwork / Create hypernetwork → Kiln's
dataclasses. One table, used by the API (``/sdapi/v1/train/embedding`` bodies are these names)
and the Train tab, so both accept exactly what the WebUI's ``train_embedding(**args)`` does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import InvalidParameterError
from core.training.hypernetwork import HypernetworkSpec, parse_floats
from core.training.ti_data import DataOptions
from core.training.ti_loop import PreviewOptions, TrainOptions

# name → (default, type); the WebUI's UI defaults (seed 003: max steps 100000)
COMMON = {
    "learn_rate": ("0.005", str), "batch_size": (1, int), "gradient_step": (1, int), "data_root": ("", str),
    "log_directory": ("textual_inversion", str), "training_width": (512, int), "training_height": (512, int),
    "varsize": (False, bool), "steps": (100000, int), "clip_grad_mode": ("disabled", str),
    "clip_grad_value": ("0.1", str), "shuffle_tags": (False, bool), "tag_drop_out": (0.0, float),
    "latent_sampling_method": ("once", str), "use_weight": (False, bool), "create_image_every": (500, int),
    "template_filename": ("style_filewords.txt", str), "preview_from_txt2img": (False, bool),
    "preview_prompt": ("", str), "preview_negative_prompt": ("", str), "preview_steps": (20, int),
    "preview_sampler_name": ("Euler a", str), "preview_cfg_scale": (7.0, float), "preview_seed": (-1, int),
    "preview_width": (512, int), "preview_height": (512, int),
}
EMBEDDING = {"embedding_name": ("", str), "save_embedding_every": (500, int),
             "save_image_with_stored_embedding": (True, bool), **COMMON}
HYPERNETWORK = {"hypernetwork_name": ("", str), "save_hypernetwork_every": (500, int),
                **{**COMMON, "learn_rate": ("0.00001", str), "template_filename": ("hypernetwork.txt", str)}}
# Sent by WebUI clients, meaningless here: the task id, the sampler index of old versions, the scheduler.
IGNORED = {"id_task", "preview_sampler_index", "preview_scheduler"}


def _value(name: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is str:
            return "" if value is None else str(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(name, f"{value!r} is not a {kind.__name__}") from exc


def _read(args: dict[str, Any], table: dict[str, tuple[Any, type]]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(table) - IGNORED)
    if unknown:
        raise InvalidParameterError(unknown[0], "unknown field", hint=f"the fields are {', '.join(table)}")
    return {k: _value(k, args.get(k, default), kind) if args.get(k) is not None else default
            for k, (default, kind) in table.items()}


def _options(v: dict[str, Any], save_every: int) -> TrainOptions:
    if v["use_weight"]:
        raise InvalidParameterError("use_weight", "using the PNG alpha channel as loss weight is not supported",
                                    hint="turn it off; give pictures without transparency")
    data = DataOptions(data_root=Path(v["data_root"]), template_filename=v["template_filename"],
                       width=v["training_width"], height=v["training_height"], varsize=v["varsize"],
                       batch_size=v["batch_size"], shuffle_tags=v["shuffle_tags"], tag_drop_out=v["tag_drop_out"],
                       latent_sampling_method=v["latent_sampling_method"])
    preview = PreviewOptions(from_txt2img=v["preview_from_txt2img"], prompt=v["preview_prompt"],
                             negative_prompt=v["preview_negative_prompt"], steps=v["preview_steps"],
                             sampler_name=v["preview_sampler_name"], cfg_scale=v["preview_cfg_scale"],
                             seed=v["preview_seed"], width=v["preview_width"], height=v["preview_height"])
    return TrainOptions(data=data, learn_rate=v["learn_rate"], steps=v["steps"], gradient_step=v["gradient_step"],
                        log_directory=Path(v["log_directory"]) if v["log_directory"] else None,
                        save_every=save_every, create_image_every=v["create_image_every"],
                        clip_grad_mode=v["clip_grad_mode"], clip_grad_value=v["clip_grad_value"], preview=preview)


def embedding_args(args: dict[str, Any]) -> tuple[str, TrainOptions]:
    """(embedding name, options) from the WebUI's ``train_embedding`` arguments."""
    v = _read(args, EMBEDDING)
    if not v["embedding_name"]:
        raise InvalidParameterError("embedding_name", "embedding not selected", hint="choose the embedding to train")
    options = _options(v, v["save_embedding_every"])
    return v["embedding_name"], replace(options, save_image_with_stored_embedding=v["save_image_with_stored_embedding"])


def hypernetwork_args(args: dict[str, Any]) -> tuple[str, TrainOptions]:
    v = _read(args, HYPERNETWORK)
    if not v["hypernetwork_name"]:
        raise InvalidParameterError("hypernetwork_name", "hypernetwork not selected",
                                    hint="choose the hypernetwork to train")
    return v["hypernetwork_name"], _options(v, v["save_hypernetwork_every"])


CREATE_EMBEDDING = {"name": ("", str), "num_vectors_per_token": (1, int), "overwrite_old": (False, bool),
                    "init_text": ("*", str)}
CREATE_HYPERNETWORK = {"name": ("", str), "enable_sizes": (["768", "320", "640", "1280"], list),
                       "overwrite_old": (False, bool), "layer_structure": ("1, 2, 1", str),
                       "activation_func": ("linear", str), "weight_init": ("Normal", str),
                       "add_layer_norm": (False, bool), "use_dropout": (False, bool), "dropout_structure": ("0, 0, 0", str)}


def create_embedding_args(args: dict[str, Any]) -> dict[str, Any]:
    return _read(args, CREATE_EMBEDDING)


def hypernetwork_spec(args: dict[str, Any]) -> HypernetworkSpec:
    """A ``HypernetworkSpec`` from the WebUI's ``create_hypernetwork`` arguments (lists or "1, 2, 1" text)."""
    raw = dict(args)
    for key in ("layer_structure", "dropout_structure"):
        if isinstance(raw.get(key), (list, tuple)):
            raw[key] = ", ".join(str(x) for x in raw[key])
    if isinstance(raw.get("enable_sizes"), (str, int)):
        raw["enable_sizes"] = [x for x in str(raw["enable_sizes"]).split(",") if x.strip()]
    v = _read(raw, CREATE_HYPERNETWORK)
    try:
        sizes = tuple(int(x) for x in v["enable_sizes"])
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError("enable_sizes", f"{v['enable_sizes']!r} are not widths") from exc
    dropout = parse_floats("dropout_structure", v["dropout_structure"]) if v["use_dropout"] else None
    return HypernetworkSpec(name=v["name"], enable_sizes=sizes,
                            layer_structure=tuple(parse_floats("layer_structure", v["layer_structure"])),
                            activation_func=v["activation_func"] or "linear", weight_init=v["weight_init"],
                            add_layer_norm=v["add_layer_norm"], use_dropout=v["use_dropout"],
                            dropout_structure=tuple(dropout) if dropout else None, overwrite_old=v["overwrite_old"])
