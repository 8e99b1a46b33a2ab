"""Conversion of Stable-SAM weights, in any layout, into an adapter release (plugin weights + config naming the base).

Two sources are understood:

- a full `StableSamModel` checkpoint folder (`save_pretrained(..., full_checkpoint=True)`), whose plugin weights are
  kept and whose SAM weights are dropped;
- a SAM checkpoint in transformers' layout (Hub id or folder) plus plugin weights in any file a training script may
  have written: `.safetensors`, or `.pth` / `.pt` / `.bin` / `.ckpt` read with `torch.load(..., weights_only=True)`;
  plugin weights alone or inside a whole-model state dict, nested (`{"model": {...}, "optimizer": {...}}`) or
  prefixed (`module.`, `model.`, `_orig_mod.`, `mask_decoder.`), in transformers' or segment-anything's module names
  (both use `mask_decoder.transformer.layers.<i>.`), with the 1x1 projections stored as `Conv2d` or `Linear` weights.
"""

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file as safe_load_file

from .adapter import weights_differing_from_base
from .configuration_stable_sam import StableSamConfig
from .file_resolution import decoder_width, read_config_dict
from .model_card import check_evaluation_results
from .modeling_stable_sam import PLUGIN_MODULE_NAMES, StableSamModel


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Weight files read from a folder of plugin weights, in this order
FOLDER_WEIGHT_PATTERNS = ("adapter_model.safetensors", "model*.safetensors", "pytorch_model*.bin")
# Plugin weights of 1x1 projections, stored by some implementations as Conv2d kernels `(out, in, 1, 1)`
PROJECTION_WEIGHTS = ("dsp.proj.weight", "dsp.offset_proj.weight")


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
    return flat


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Reads every tensor of a weights file (`.safetensors`, or `.pth`/`.pt`/`.bin`/`.ckpt` with
    `torch.load(..., weights_only=True)`) or of the weight files of a folder, as a flat dict: nested dicts are flattened
    with `.` (`{"model": {"a.b": t}}` gives `"model.a.b"`) and non-tensor entries (epoch, step, ...) are dropped.
    """
    path = Path(path)
    if path.is_dir():
        files = []
        for pattern in FOLDER_WEIGHT_PATTERNS:
            files += sorted(file for file in path.glob(pattern) if file not in files)
        if not files:
            raise ValueError(
                f"The folder {os.fspath(path)!r} has no weight files ({', '.join(FOLDER_WEIGHT_PATTERNS)})."
            )
        flat = {}
        for file in files:
            flat.update(load_state_dict_file(file))
        return flat
    if not path.is_file():
        raise ValueError(f"The weights file {os.fspath(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        return safe_load_file(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"Cannot read {os.fspath(path)!r}: expected a .safetensors file or a torch file ({', '.join(TORCH_SUFFIXES)})."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{os.fspath(path)!r} holds objects other than tensors and plain containers, so it cannot be read with "
            f"`weights_only=True` ({error}). Save the state dict alone (`torch.save(model.state_dict(), path)`)."
        ) from None
    if isinstance(loaded, torch.Tensor) or not isinstance(loaded, Mapping):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(loaded).__name__}, not a state dict.")
    return _flatten(loaded)


def _plugin_layer_of(prefix: list[str]) -> int | None:
    if len(prefix) >= 2 and prefix[-2] == "layers" and prefix[-1].isdigit():
        return int(prefix[-1])
    if prefix and prefix[-1].isdigit():
        return int(prefix[-1])
    return None


def extract_plugin_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    plugin_layer: int | None = None,
    key_prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """
    The plugin tensors of a state dict in any layout, under `StableSamModel`'s names
    (`mask_decoder.transformer.layers.<i>.dsp.proj.weight`, ...).

    A key belongs to a plugin when one of its dotted parts is `dsp` or `drp`; what comes before is a prefix that ends in
    the two-way layer index (`...layers.1.dsp...` or `1.dsp...`). Conv2d 1x1 kernels of the projections become Linear
    weights.

    Args:
        state_dict (`dict[str, torch.Tensor]`):
            Flat state dict, e.g. from `load_state_dict_file`.
        plugin_layer (`int`, *optional*):
            The two-way layer of keys that name none (`dsp.proj.weight`).
        key_prefix (`str`, *optional*):
            Only keys that start with it are read, e.g. `"ema."` when a file holds several copies of the weights.
    """
    if key_prefix is not None and not isinstance(key_prefix, str):
        raise TypeError(f"`key_prefix` must be a string, got {type(key_prefix).__name__}.")
    plugins, origin = {}, {}
    for key, tensor in state_dict.items():
        if key_prefix is not None and not key.startswith(key_prefix):
            continue
        parts = key.split(".")
        index = next((i for i, part in enumerate(parts) if part in PLUGIN_MODULE_NAMES), None)
        if index is None or index == len(parts) - 1:
            continue
        layer = _plugin_layer_of(parts[:index])
        if layer is None:
            layer = plugin_layer
        if layer is None:
            raise ValueError(
                f"The plugin weight {key!r} does not say which two-way layer it belongs to: pass `plugin_layer` "
                "(the paper's plugins are in layer 1)."
            )
        name = f"mask_decoder.transformer.layers.{layer}.{'.'.join(parts[index:])}"
        if name in plugins:
            raise ValueError(
                f"The keys {origin[name]!r} and {key!r} are both the plugin weight {name!r}: the file holds several "
                "copies of the weights; pick one with `key_prefix`."
            )
        if name.endswith(PROJECTION_WEIGHTS) and tensor.ndim == 4 and tuple(tensor.shape[-2:]) == (1, 1):
            tensor = tensor.flatten(1)
        plugins[name], origin[name] = tensor, key
    if not plugins:
        raise ValueError(
            f"No plugin weights (keys with a {' or '.join(repr(name) for name in PLUGIN_MODULE_NAMES)} part) among "
            f"the {len(state_dict)} tensors{f' under {key_prefix!r}' if key_prefix else ''}."
        )
    return plugins


def infer_plugin_config(plugin_state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The plugin settings that the weights' names and shapes fix: `plugin_layers`, `routing_hidden_size`,
    `offset_kernel_size`, `sampling` (spatial attention has a weight head where DSP has offsets) and the mask decoder
    width `hidden_size`."""
    settings = {}
    layers = sorted(
        {int(key.split(".")[3]) for key in plugin_state_dict if key.startswith("mask_decoder.transformer.")}
    )
    if layers:
        settings["plugin_layers"] = layers
    for key, tensor in plugin_state_dict.items():
        if key.endswith("drp.dense1.weight"):
            settings["routing_hidden_size"] = int(tensor.shape[0])
        elif key.endswith("dsp.offset_conv.weight"):
            settings["offset_kernel_size"] = int(tensor.shape[-1])
        elif key.endswith("dsp.proj.weight"):
            settings["hidden_size"] = int(tensor.shape[0])
        elif key.endswith("dsp.weight_proj.weight"):
            settings["sampling"] = "spatial"
    return settings


def convert_to_adapter(
    output_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    base_model_name_or_path: str | None = None,
    plugin_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    plugin_layer: int | None = None,
    key_prefix: str | None = None,
    evaluation_results: Sequence[Mapping] | None = None,
    plugins_only: bool = False,
    overwrite_output_dir: bool = False,
    **plugin_settings,
) -> list[str]:
    """
    Writes the adapter release of a full `StableSamModel` checkpoint (`checkpoint`), or of plugin weights in any layout
    (`plugin_weights`) for the SAM checkpoint `base_model_name_or_path`, to `output_dir`.

    Args:
        output_dir (`str` or `os.PathLike`):
            The adapter folder to write.
        checkpoint (`str` or `os.PathLike`, *optional*):
            A full `StableSamModel` checkpoint (folder or Hub id). Its base is `base_model_name_or_path`, else the one its
            config names.
        base_model_name_or_path (`str`, *optional*):
            The SAM checkpoint (Hub id or folder, transformers' layout) that the plugins go onto.
        plugin_weights (`str`, `os.PathLike` or `dict[str, torch.Tensor]`, *optional*):
            With `base_model_name_or_path`: a weights file or folder, or a state dict, holding the plugin weights (alone
            or with other weights); see `extract_plugin_state_dict` for the layouts.
        plugin_layer, key_prefix:
            See `extract_plugin_state_dict`.
        evaluation_results (`list[dict]`, *optional*):
            Rows of the model card's evaluation table, as for `StableSamModel.save_pretrained`.
        plugins_only (`bool`, *optional*, defaults to `False`):
            With `checkpoint`: convert it even when its SAM weights differ from the base's (a fine-tuned decoder),
            keeping only its plugins. Without it such a checkpoint is refused, naming the weights that differ, since
            its adapter would not reproduce it.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Write into an `output_dir` that is not empty; only the release files are written there, nothing is deleted.
        plugin_settings:
            `StableSamConfig` plugin settings that the weights do not fix (`offset_range`, `routing_token_index`).

    Returns:
        `list[str]`: the files written.
    """
    if (checkpoint is None) == (plugin_weights is None):
        raise ValueError(
            "Pass either `checkpoint` (a full StableSamModel checkpoint) or `plugin_weights` together with "
            "`base_model_name_or_path` (a SAM checkpoint)."
        )
    check_evaluation_results(evaluation_results)
    _check_output_dir(os.fspath(output_dir), checkpoint, overwrite_output_dir)
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        config = read_config_dict(checkpoint)
        if config is None or config.get("model_type") != StableSamConfig.model_type:
            found = "no config.json" if config is None else f"model_type {config.get('model_type')!r}"
            raise ValueError(
                f"`checkpoint` must be a full StableSamModel checkpoint (model_type 'stable_sam'), but {checkpoint!r} has "
                f"{found}. For a SAM checkpoint plus plugin weights, pass `base_model_name_or_path` and `plugin_weights`."
            )
        base = base_model_name_or_path or config.get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"The checkpoint {checkpoint!r} does not name the SAM checkpoint its plugins were trained on: pass "
                "`base_model_name_or_path` (Hub id or folder)."
            )
        model = StableSamModel.from_pretrained(checkpoint, base_model_name_or_path=base, **plugin_settings)
        differing = weights_differing_from_base(model, base)
        if differing and not plugins_only:
            raise ValueError(
                f"The checkpoint {checkpoint!r} differs from its base {base!r} in {len(differing)} SAM weights "
                f"({', '.join(differing[:5])}{' and more' if len(differing) > 5 else ''}): an adapter keeps the plugin "
                "weights only and would not reproduce it. Publish it as a full checkpoint, or pass `plugins_only=True` "
                "(`--plugins_only`) to keep only its plugins."
            )
        # Checked above, with the checkpoint named in the error
        return model.save_pretrained(output_dir, evaluation_results=evaluation_results, plugins_only=True)

    if not base_model_name_or_path:
        raise ValueError("`plugin_weights` need `base_model_name_or_path`: the SAM checkpoint (Hub id or folder).")
    base = os.fspath(base_model_name_or_path)
    if isinstance(plugin_weights, Mapping):
        source, state_dict = "`plugin_weights`", _flatten(plugin_weights)
    else:
        source, state_dict = os.fspath(plugin_weights), load_state_dict_file(plugin_weights)
    plugins = extract_plugin_state_dict(state_dict, plugin_layer=plugin_layer, key_prefix=key_prefix)

    base_config = read_config_dict(base)
    if base_config is None or base_config.get("model_type") not in ("sam", StableSamConfig.model_type):
        found = "no config.json" if base_config is None else f"model_type {base_config.get('model_type')!r}"
        raise ValueError(
            f"The plugin weights of {source!r} go onto a SAM checkpoint in transformers' layout, but "
            f"`base_model_name_or_path` {base!r} has {found} (expected model_type 'sam' or 'stable_sam')."
        )
    inferred = infer_plugin_config(plugins)
    width = inferred.pop("hidden_size", None)
    if width is not None and width != decoder_width(base_config):
        raise ValueError(
            f"The plugin weights of {source!r} are for a mask decoder of width {width}, but the SAM checkpoint {base!r} "
            f"has a mask decoder of width {decoder_width(base_config)}."
        )
    config_dict = {key: value for key, value in base_config.items() if key not in ("model_type", "architectures")}
    config_dict.update({**inferred, **plugin_settings, "base_model_name_or_path": base})
    model = StableSamModel.from_pretrained(base, config=StableSamConfig.from_dict(config_dict))
    model.load_plugin_state_dict(plugins, source=source)
    return model.save_pretrained(output_dir, evaluation_results=evaluation_results)


def _check_output_dir(output_dir: str, checkpoint, overwrite_output_dir: bool):
    if checkpoint is not None and os.path.isdir(checkpoint) and os.path.isdir(output_dir):
        if os.path.samefile(checkpoint, output_dir):
            raise ValueError(
                f"`output_dir` {output_dir!r} is the checkpoint being converted: write the adapter into another folder."
            )
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite_output_dir:
        raise ValueError(
            f"`output_dir` {output_dir!r} is not empty. Choose an empty or new folder, or pass "
            "`overwrite_output_dir=True` (`--overwrite_output_dir`) to write the release files into it (nothing else "
            "in it is deleted)."
        )


def read_evaluation_results(path: str | os.PathLike) -> list[dict]:
    """Evaluation rows from a JSON file holding a list of `{"dataset", "metric", "value"[, "prompt", ...]}`."""
    with open(path, encoding="utf-8") as file:
        return check_evaluation_results(json.load(file))


__all__ = [
    "convert_to_adapter",
    "extract_plugin_state_dict",
    "infer_plugin_config",
    "load_state_dict_file",
    "read_evaluation_results",
    "weights_differing_from_base",
]
