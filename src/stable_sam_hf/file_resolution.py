"""Where a Stable-SAM or SAM checkpoint's files are (folder or Hub repo), and what its weight files hold."""

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, OfflineModeIsEnabled
from safetensors import safe_open
from transformers import SamMaskDecoderConfig


ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "config.json"
PEFT_CONFIG_NAME = "adapter_config.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# Weight files of a full checkpoint
FULL_WEIGHTS_PATTERNS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model*.bin",
)
# Model types whose checkpoints hold SAM weights under SamModel's names
SAM_MODEL_TYPES = ("sam", "stable_sam")
# Hub arguments that address the adapter repo only; the base checkpoint has its own revision
ADAPTER_ONLY_HUB_KWARGS = ("revision", "subfolder")
SHARED_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token")


def hub_kwargs_of(kwargs: Mapping, names) -> dict:
    """The entries of `kwargs` named in `names` that are set."""
    return {name: kwargs[name] for name in names if kwargs.get(name) is not None}


def resolve_file(path_or_repo: str | os.PathLike, filename: str, **hub_kwargs) -> str | None:
    """Local path of `filename` in a folder or Hub repo (downloading it if needed), or `None` when it has none."""
    path_or_repo = os.fspath(path_or_repo)
    subfolder = hub_kwargs.get("subfolder") or ""
    if os.path.isdir(path_or_repo):
        candidate = os.path.join(path_or_repo, subfolder, filename)
        return candidate if os.path.isfile(candidate) else None
    try:
        return hf_hub_download(
            path_or_repo,
            filename,
            subfolder=subfolder or None,
            revision=hub_kwargs.get("revision"),
            cache_dir=hub_kwargs.get("cache_dir"),
            force_download=bool(hub_kwargs.get("force_download", False)),
            token=hub_kwargs.get("token"),
            local_files_only=bool(hub_kwargs.get("local_files_only", False)),
        )
    # Not in the repo, not cached while offline, or not a repo id at all (a folder that does not exist)
    except (EntryNotFoundError, OfflineModeIsEnabled, HFValidationError):
        return None


def read_config_dict(path_or_repo: str | os.PathLike, **hub_kwargs) -> dict | None:
    """The `config.json` of a folder or Hub repo (or the file itself) as a dict, or `None` when there is none."""
    if os.path.isfile(path_or_repo):
        config_file = os.fspath(path_or_repo)
    else:
        config_file = resolve_file(path_or_repo, CONFIG_NAME, **hub_kwargs)
    if config_file is None:
        return None
    with open(config_file, encoding="utf-8") as file:
        return json.load(file)


def stable_sam_adapter_file(path_or_repo: str | os.PathLike, **hub_kwargs) -> str | None:
    """The adapter weights file of a Stable-SAM adapter folder or repo; `None` for full checkpoints and PEFT adapters."""
    adapter_file = resolve_file(path_or_repo, ADAPTER_WEIGHTS_NAME, **hub_kwargs)
    if adapter_file is None or resolve_file(path_or_repo, PEFT_CONFIG_NAME, **hub_kwargs) is not None:
        return None
    return adapter_file


def is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and re.fullmatch(r"[\w.\-]+/[\w.\-]+", name) is not None


def decoder_width(config_dict: Mapping) -> int:
    decoder = config_dict.get("mask_decoder_config") or {}
    return int(decoder.get("hidden_size", SamMaskDecoderConfig().hidden_size))


def decoder_num_layers(config_dict: Mapping) -> int:
    decoder = config_dict.get("mask_decoder_config") or {}
    return int(decoder.get("num_hidden_layers", SamMaskDecoderConfig().num_hidden_layers))


def matching_files(folder: str | os.PathLike, patterns) -> list[str]:
    """Names of the files of `folder` that match one of the glob `patterns`."""
    if not os.path.isdir(folder):
        return []
    return sorted(
        path.name for path in Path(folder).iterdir() if path.is_file() and any(path.match(p) for p in patterns)
    )


def checkpoint_weight_files(path_or_repo: str | os.PathLike, *, variant: str | None = None, **hub_kwargs) -> list[str]:
    """
    Local paths of the weight files of a full checkpoint in transformers' layout (single file or shards, safetensors
    or `pytorch_model*.bin`), downloading them when needed; `[]` when it has none of these.
    """
    infix = f".{variant}" if variant else ""
    for weights, index in (
        (f"model{infix}.safetensors", f"model{infix}.safetensors.index.json"),
        (f"pytorch_model{infix}.bin", f"pytorch_model{infix}.bin.index.json"),
    ):
        single = resolve_file(path_or_repo, weights, **hub_kwargs)
        if single is not None:
            return [single]
        index_file = resolve_file(path_or_repo, index, **hub_kwargs)
        if index_file is not None:
            with open(index_file, encoding="utf-8") as file:
                shards = sorted(set(json.load(file)["weight_map"].values()))
            return [resolve_file(path_or_repo, shard, **hub_kwargs) for shard in shards]
    return []


def checkpoint_dtypes(files) -> dict[str, torch.dtype]:
    """The dtype of every tensor of the weight files, read from the safetensors headers (or a memory-mapped
    `torch.load(..., weights_only=True)` for `.bin` files) without reading the weights."""
    dtypes = {}
    for path in files:
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as file:
                for key in file.keys():
                    dtypes[key] = _SAFETENSORS_DTYPES.get(file.get_slice(key).get_dtype(), torch.uint8)
        else:
            state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            dtypes.update({key: tensor.dtype for key, tensor in state_dict.items()})
    return dtypes


def iter_checkpoint_tensors(files) -> Iterator[tuple[str, torch.Tensor]]:
    """Every `(name, tensor)` of the weight files, one tensor at a time."""
    for path in files:
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as file:
                for key in file.keys():
                    yield key, file.get_tensor(key)
        else:
            yield from torch.load(path, map_location="cpu", mmap=True, weights_only=True).items()


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def check_weights(tensors: Mapping[str, torch.Tensor | torch.dtype], *, source: str, dtypes_only: bool = False):
    """
    Raises a `ValueError` naming the tensors of `source` that are not floating point (integer or bool weights are a
    broken or foreign file) or, unless `dtypes_only`, hold NaN or inf values. `tensors` maps names to tensors, or to
    dtypes with `dtypes_only`.
    """
    bad_dtypes = []
    for key, value in tensors.items():
        dtype = value if isinstance(value, torch.dtype) else value.dtype
        if not dtype.is_floating_point:
            bad_dtypes.append(f"{key} ({str(dtype).removeprefix('torch.')})")
    if bad_dtypes:
        raise ValueError(
            f"The weights of {source!r} hold {len(bad_dtypes)} tensors that are not floating point: "
            f"{_first(bad_dtypes)}. Model weights are float32, float16 or bfloat16; the file is broken or not a "
            "Stable-SAM / SAM checkpoint."
        )
    if dtypes_only:
        return
    non_finite = [key for key, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())]
    if non_finite:
        raise ValueError(
            f"The weights of {source!r} hold NaN or inf values in {len(non_finite)} tensors: {_first(non_finite)}. "
            "They would give NaN masks; the checkpoint is broken (e.g. saved after a diverged training step)."
        )


def _first(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f", ... ({len(names) - count} more)" if len(names) > count else "")


__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "CONFIG_NAME",
    "FULL_WEIGHTS_PATTERNS",
    "PEFT_CONFIG_NAME",
    "PROCESSOR_FILES",
    "SAM_MODEL_TYPES",
    "check_weights",
    "checkpoint_dtypes",
    "checkpoint_weight_files",
    "decoder_num_layers",
    "decoder_width",
    "is_hub_id",
    "iter_checkpoint_tensors",
    "matching_files",
    "read_config_dict",
    "resolve_file",
    "stable_sam_adapter_file",
]
