"""Adapter releases of Stable-SAM: the plugin weights only, loaded onto the SAM checkpoint they were trained on.

An adapter folder (or Hub repo) holds:

- `adapter_model.safetensors`: the DSP and DRP weights only (81,828 float32 parameters, about 330 KB), under the
  model's state-dict names (`mask_decoder.transformer.layers.1.dsp.proj.weight`, ...);
- `config.json`: the `StableSamConfig`, whose `base_model_name_or_path` names the SAM checkpoint (Hub id or folder)
  that supplies every other weight, and whose `auto_map` points at the remote-code modules;
- `configuration_stable_sam.py`, `modeling_stable_sam.py`, `hub.py`: the package's own modules, copied at save time,
  so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` works where `stable_sam_hf` is not installed;
- the processor files when a processor is given or available, and a model card `README.md`.

The weights are named `adapter_model.safetensors`, not `model.safetensors`, so that a SAM loader pointed at an adapter
fails on the missing `model.safetensors` instead of loading a SAM with random weights. No `adapter_config.json` is
written: a folder with one is a PEFT adapter and is left to PEFT.
"""

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import EvalResult, HfApi, ModelCardData, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, OfflineModeIsEnabled
from safetensors.torch import load_file as safe_load_file
from safetensors.torch import save_file as safe_save_file
from transformers import PreTrainedConfig, SamConfig, SamMaskDecoderConfig
from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files
from transformers.utils import logging


logger = logging.get_logger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "config.json"
MODEL_CARD_NAME = "README.md"
PEFT_CONFIG_NAME = "adapter_config.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# Weight files of a full checkpoint; an adapter save removes them from its folder, and an upload from the repo
FULL_WEIGHTS_PATTERNS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model*.bin",
)
# Model types whose checkpoints hold SAM weights under SamModel's names
SAM_MODEL_TYPES = ("sam", "stable_sam")
EVALUATION_KEYS = ("dataset", "metric", "value")
EVALUATION_OPTIONAL_KEYS = ("prompt", "dataset_type", "split")
# Hub arguments that address the adapter repo only; the base checkpoint has its own revision
_ADAPTER_ONLY_HUB_KWARGS = ("revision", "subfolder")
_SHARED_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token")
# save_pretrained arguments that only mean something for a full checkpoint
_FULL_CHECKPOINT_KWARGS = (
    "max_shard_size",
    "variant",
    "save_peft_format",
    "save_original_format",
    "safe_serialization",
)
_PUSH_KWARGS = ("repo_id", "private", "token", "revision", "commit_message", "commit_description", "create_pr")
# Set while an adapter's base checkpoint loads: its plugin weights are missing there and come from the adapter next
_LOADING_ADAPTER_BASE = contextvars.ContextVar("stable_sam_loading_adapter_base", default=False)


class _PluginKeysWhileLoadingAdapterBase:
    """`_keys_to_ignore_on_load_missing` that names the plugin weights only while an adapter's base loads, so that
    transformers' load report does not list them as newly initialised; any other load reports them."""

    def __get__(self, instance, owner):
        return [r"(^|\.)(dsp|drp)\."] if _LOADING_ADAPTER_BASE.get() else None


@contextlib.contextmanager
def _loading_adapter_base():
    """Within it, loading a SAM checkpoint into a Stable-SAM model does not report the plugin weights as missing."""
    reset = _LOADING_ADAPTER_BASE.set(True)
    try:
        yield
    finally:
        _LOADING_ADAPTER_BASE.reset(reset)


def _hub_kwargs(kwargs: Mapping, names: Sequence[str]) -> dict:
    return {name: kwargs[name] for name in names if kwargs.get(name) is not None}


def _resolve_file(path_or_repo: str | os.PathLike, filename: str, **hub_kwargs) -> str | None:
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


def _read_config_dict(path_or_repo: str | os.PathLike, **hub_kwargs) -> dict | None:
    if os.path.isfile(path_or_repo):
        config_file = os.fspath(path_or_repo)
    else:
        config_file = _resolve_file(path_or_repo, CONFIG_NAME, **hub_kwargs)
    if config_file is None:
        return None
    with open(config_file, encoding="utf-8") as file:
        return json.load(file)


def _is_stable_sam_adapter(path_or_repo: str | os.PathLike, **hub_kwargs) -> str | None:
    """The adapter weights file of a Stable-SAM adapter folder or repo; `None` for full checkpoints and PEFT adapters."""
    adapter_file = _resolve_file(path_or_repo, ADAPTER_WEIGHTS_NAME, **hub_kwargs)
    if adapter_file is None or _resolve_file(path_or_repo, PEFT_CONFIG_NAME, **hub_kwargs) is not None:
        return None
    return adapter_file


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and re.fullmatch(r"[\w.\-]+/[\w.\-]+", name) is not None


def _decoder_width(config_dict: Mapping) -> int:
    decoder = config_dict.get("mask_decoder_config") or {}
    return int(decoder.get("hidden_size", SamMaskDecoderConfig().hidden_size))


def _decoder_num_layers(config_dict: Mapping) -> int:
    decoder = config_dict.get("mask_decoder_config") or {}
    return int(decoder.get("num_hidden_layers", SamMaskDecoderConfig().num_hidden_layers))


def _plugin_config_keys(config_class: type) -> list[str]:
    """The fields that the Stable-SAM config adds to `SamConfig`: the plugin settings and `base_model_name_or_path`."""
    sam_fields = {field.name for field in dataclasses.fields(SamConfig)}
    return [field.name for field in dataclasses.fields(config_class) if field.name not in sam_fields]


def _same_setting(left, right) -> bool:
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return list(left) == list(right)
    return left == right


def _check_evaluation_results(evaluation_results) -> list[dict]:
    """Validates `evaluation_results`: a list of `{"dataset", "metric", "value"[, "prompt", "dataset_type", "split"]}`."""
    if evaluation_results is None:
        return []
    if isinstance(evaluation_results, (str, bytes, Mapping)) or not isinstance(evaluation_results, Sequence):
        raise TypeError(
            "`evaluation_results` must be a list of dicts with keys 'dataset', 'metric', 'value' (and optionally "
            f"'prompt', 'dataset_type', 'split'), got {type(evaluation_results).__name__}."
        )
    rows = []
    for index, row in enumerate(evaluation_results):
        if not isinstance(row, Mapping):
            raise TypeError(f"`evaluation_results[{index}]` must be a dict, got {type(row).__name__}.")
        missing = [key for key in EVALUATION_KEYS if key not in row]
        unknown = sorted(set(row) - set(EVALUATION_KEYS) - set(EVALUATION_OPTIONAL_KEYS))
        if missing or unknown:
            raise ValueError(
                f"`evaluation_results[{index}]` must have the keys {list(EVALUATION_KEYS)} and may have "
                f"{list(EVALUATION_OPTIONAL_KEYS)}; missing {missing}, unknown {unknown}."
            )
        value = row["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"`evaluation_results[{index}]['value']` must be a finite number, got {value!r}.")
        for key in ("dataset", "metric", *EVALUATION_OPTIONAL_KEYS):
            if key in row and (not isinstance(row[key], str) or not row[key]):
                raise TypeError(
                    f"`evaluation_results[{index}][{key!r}]` must be a non-empty string, got {row[key]!r}."
                )
        rows.append(dict(row))
    return rows


def _model_card(
    model,
    *,
    repo: str,
    base: str | None,
    full_checkpoint: bool,
    files: Sequence[str],
    evaluation_rows: Sequence[Mapping],
    model_card_kwargs: Mapping | None,
) -> str:
    """The model card: Hub metadata (base model, model-index with the evaluation results) and how to load."""
    plugin_parameters = sum(tensor.numel() for tensor in model.plugin_state_dict().values())
    all_parameters = sum(param.numel() for param in model.parameters())
    model_name = Path(repo).name or repo
    eval_results = [
        EvalResult(
            task_type="mask-generation",
            task_name="Promptable segmentation",
            dataset_type=row.get("dataset_type", row["dataset"]),
            dataset_name=row["dataset"],
            dataset_split=row.get("split"),
            metric_type=re.sub(r"[^a-z0-9]+", "_", row["metric"].lower()).strip("_") or "metric",
            metric_name=f"{row['metric']} ({row['prompt']})" if "prompt" in row else row["metric"],
            metric_value=row["value"],
        )
        for row in evaluation_rows
    ]
    card_kwargs = {
        "library_name": "transformers",
        "pipeline_tag": "mask-generation",
        "license": "apache-2.0",
        "tags": ["stable-sam", "segment-anything", "sam"],
        "model_name": model_name,
    }
    if base is not None and _is_hub_id(base):
        card_kwargs["base_model"] = base
        if not full_checkpoint:
            card_kwargs["base_model_relation"] = "adapter"
    card_kwargs.update({key: value for key, value in (model_card_kwargs or {}).items() if key != "tags"})
    card_kwargs["tags"] += [tag for tag in (model_card_kwargs or {}).get("tags", []) if tag not in card_kwargs["tags"]]
    card_data = ModelCardData(eval_results=eval_results or None, **card_kwargs)

    config = model.config
    settings = ", ".join(
        f"`{key}` {getattr(config, key)}"
        for key in _plugin_config_keys(type(config))
        if key != "base_model_name_or_path"
    )
    base_text = f"`{base}`" if base is not None else "not recorded"
    if full_checkpoint:
        weights_row = f"| Parameters | {all_parameters:,} in all, of which {plugin_parameters:,} plugin parameters |"
        load_comment = "# SAM and plugin weights, from this checkpoint alone"
    else:
        weights_row = (
            f"| Plugin parameters | {plugin_parameters:,} ({plugin_parameters / 1e6:.2f}M), the only weights in "
            f"`{ADAPTER_WEIGHTS_NAME}` |\n| SAM parameters | {all_parameters - plugin_parameters:,}, frozen, "
            "loaded from the base checkpoint |"
        )
        load_comment = "# loads the base SAM checkpoint, then the plugin weights"
    lines = [
        f"# Stable-SAM {'checkpoint' if full_checkpoint else 'adapter'}: {model_name}",
        "",
        "Deformable sampling (DSP) and dynamic routing (DRP) plugins in SAM's mask decoder, after *Stable Segment "
        "Anything Model* (Fan et al., [arXiv 2311.15776](https://arxiv.org/abs/2311.15776)): SAM stays frozen and the "
        "plugins keep its masks accurate under poor prompts (loose boxes, single points).",
        "",
        "| | |",
        "|---|---|",
        f"| Base SAM checkpoint | {base_text} |",
        weights_row,
        f"| Plugin settings | {settings} |",
        f"| Files | {', '.join(f'`{name}`' for name in sorted(files))} |",
        "",
        "## How to load",
        "",
        "With the `stable-sam-hf` package installed:",
        "",
        "```python",
        "from stable_sam_hf import StableSamModel",
        "",
        f'model = StableSamModel.from_pretrained("{repo}")  {load_comment}',
    ]
    if not full_checkpoint:
        lines += [
            "# or onto another SAM checkpoint with a mask decoder of the same width",
            f'model = StableSamModel.from_pretrained("{repo}", base_model_name_or_path="<SAM checkpoint>")',
            "# or onto a model that is already loaded, with the same plugin settings",
            f'model = StableSamModel.from_pretrained("{base or "<SAM checkpoint>"}")',
            f'model.load_adapter("{repo}")',
        ]
    lines += [
        "```",
        "",
        "Without the package, through the modules in this repo:",
        "",
        "```python",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        "```",
        "",
    ]
    processor_files = [name for name in files if name in PROCESSOR_FILES]
    if processor_files:
        lines += [f"The processor files ({', '.join(f'`{name}`' for name in processor_files)}) are in this repo."]
    elif base is not None:
        lines += [f'Inputs are prepared by SAM\'s processor: `SamProcessor.from_pretrained("{base}")`.']
    if evaluation_rows:
        lines += ["", "## Evaluation", "", "| Dataset | Prompt | Metric | Value |", "|---|---|---|---|"]
        lines += [
            f"| {row['dataset']} | {row.get('prompt', '')} | {row['metric']} | {row['value']:g} |"
            for row in evaluation_rows
        ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def upload_release_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    allow_patterns: Sequence[str] | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
):
    """
    Uploads a release folder to the Hub repo `repo_id` (created when missing) in one commit with
    `huggingface_hub.HfApi.upload_folder`. Full-checkpoint weight files that the folder does not have are deleted from
    the repo, so the repo never holds both an adapter and a stale full checkpoint. The token comes from `token`, else
    `HF_TOKEN` or `hf auth login`; it is never logged.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"`repo_id` must be a Hub repo id such as 'user/stable-sam-vit-base', got {repo_id!r}.")
    if not os.path.isdir(folder):
        raise ValueError(f"`folder` must be an existing folder, got {os.fspath(folder)!r}.")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    uploaded = sorted(allow_patterns) if allow_patterns is not None else sorted(os.listdir(folder))
    logger.info(f"Uploading {len(uploaded)} files to {repo_id}: {', '.join(uploaded)}")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        delete_patterns=list(FULL_WEIGHTS_PATTERNS),
        commit_message=commit_message or "Upload Stable-SAM release",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


# Config fields a SAM checkpoint lacks: given to from_pretrained, they set the plugins of the converted config
_PLUGIN_CONFIG_FIELDS = (
    "sampling",
    "plugin_layers",
    "offset_range",
    "offset_kernel_size",
    "routing_hidden_size",
    "routing_token_index",
)


class StableSamAdapterMixin:
    """
    Adapter releases for `StableSamModel`: `save_pretrained` writes the plugin weights only (or a full checkpoint on
    request), `from_pretrained` loads an adapter onto the SAM checkpoint its config names, `load_adapter` loads one
    onto a model that is already loaded, and `push_to_hub` uploads exactly the saved folder.

    Put it first among the bases: `class StableSamModel(StableSamAdapterMixin, SamModel)`. Subclasses register for
    `AutoModel` / `AutoConfig`, so every save carries the modules that `trust_remote_code=True` needs.

    Example:

    ```python
    >>> from stable_sam_hf import StableSamModel

    >>> model = StableSamModel.from_pretrained("facebook/sam-vit-base")  # SAM weights, fresh plugins
    >>> model.save_pretrained("stable-sam-vit-base")  # plugin weights only; config names facebook/sam-vit-base
    >>> model = StableSamModel.from_pretrained("stable-sam-vit-base")  # loads SAM, then the plugins
    ```
    """

    _keys_to_ignore_on_load_missing = _PluginKeysWhileLoadingAdapterBase()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.register_for_auto_class("AutoModel")
        if cls.config_class is not None and cls.config_class._auto_class is None:
            cls.config_class.register_for_auto_class("AutoConfig")

    # Saving

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        full_checkpoint: bool | None = None,
        processor=None,
        base_model_name_or_path: str | None = None,
        evaluation_results: Sequence[Mapping] | None = None,
        model_card_kwargs: Mapping | None = None,
        is_main_process: bool = True,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> list[str]:
        """
        Saves an adapter release (default) or a full checkpoint.

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write to; created when missing. Weight files of the other layout (`model*.safetensors`,
                `pytorch_model*.bin` for an adapter, `adapter_model.safetensors` for a full checkpoint) are removed from
                it, and `README.md` is rewritten.
            full_checkpoint (`bool`, *optional*):
                Whether to write every weight in `model.safetensors`, as `SamModel.save_pretrained` does, instead of the
                plugin weights only in `adapter_model.safetensors`. By default, an adapter when the base SAM checkpoint
                is known (see `base_model_name_or_path`), else a full checkpoint, with a warning.
            processor (`ProcessorMixin` or `bool`, *optional*):
                A processor saved beside the weights. By default the processor files of the checkpoint the model was
                loaded from, or else of its base SAM checkpoint, are copied when they are on this machine; `False`
                writes none.
            base_model_name_or_path (`str`, *optional*):
                The SAM checkpoint (Hub id or folder) the plugins go onto; defaults to
                `config.base_model_name_or_path`, which `from_pretrained` sets to the SAM checkpoint it loaded. Stored
                in `model.config` and `config.json`.
            evaluation_results (`list[dict]`, *optional*):
                Rows of the model card's evaluation table and model-index metadata, each
                `{"dataset": str, "metric": str, "value": float}` with optional `"prompt"` (prompt type, e.g.
                `"noisy box"`), `"dataset_type"` (Hub dataset id) and `"split"`.
            model_card_kwargs (`dict`, *optional*):
                Overrides of the model card metadata, passed to `huggingface_hub.ModelCardData` (e.g. `license`,
                `datasets`); `tags` are added to the default ones.
            is_main_process (`bool`, *optional*, defaults to `True`):
                Only the main process writes.
            state_dict (`dict[str, torch.Tensor]`, *optional*):
                Weights to save instead of the model's own; an adapter keeps its plugin entries.
            push_to_hub (`bool`, *optional*, defaults to `False`):
                Whether to upload the written files afterwards (`repo_id`, `private`, `token`, `revision`,
                `commit_message`, `commit_description`, `create_pr` are read from `kwargs`); see `push_to_hub`.
            kwargs:
                Passed to `SamModel.save_pretrained` for a full checkpoint.

        Returns:
            `list[str]`: the names of the files written, sorted.
        """
        push_kwargs = {name: kwargs.pop(name) for name in _PUSH_KWARGS if name in kwargs}
        if not is_main_process:
            return []
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` must be a folder, got the file {os.fspath(save_directory)!r}.")
        if base_model_name_or_path is not None:
            if not isinstance(base_model_name_or_path, str) or not base_model_name_or_path:
                raise ValueError(
                    "`base_model_name_or_path` must be a SAM checkpoint's Hub id or folder, "
                    f"got {base_model_name_or_path!r}."
                )
            self.config.base_model_name_or_path = base_model_name_or_path
        base = self.config.base_model_name_or_path
        evaluation_rows = _check_evaluation_results(evaluation_results)
        if processor is not None and processor is not False and not hasattr(processor, "save_pretrained"):
            raise TypeError(
                f"`processor` must be a processor with `save_pretrained`, or `False`, got {type(processor).__name__}."
            )
        if full_checkpoint is None:
            full_checkpoint = base is None
            if full_checkpoint:
                logger.warning(
                    "The model's config names no base SAM checkpoint (`base_model_name_or_path`) for an adapter to go "
                    "onto: saving a full checkpoint. Pass `base_model_name_or_path=` to save the plugin weights only."
                )
        os.makedirs(save_directory, exist_ok=True)
        self._add_auto_map_for_mask_generation()

        if full_checkpoint:
            self._remove_files(save_directory, (ADAPTER_WEIGHTS_NAME,))
            super().save_pretrained(save_directory, is_main_process=True, state_dict=state_dict, **kwargs)
            weights = [
                path.name for path in Path(save_directory).iterdir() if self._matches(path, FULL_WEIGHTS_PATTERNS)
            ]
            written = [*weights, CONFIG_NAME, *self._remote_code_file_names()]
        else:
            if base is None:
                raise ValueError(
                    "An adapter needs the SAM checkpoint it goes onto: pass `base_model_name_or_path=` (a Hub id such "
                    "as 'facebook/sam-vit-base' or a folder) or set `model.config.base_model_name_or_path`, or save "
                    "every weight with `full_checkpoint=True`."
                )
            ignored = sorted(set(kwargs) & set(_FULL_CHECKPOINT_KWARGS))
            unknown = sorted(set(kwargs) - set(_FULL_CHECKPOINT_KWARGS))
            if unknown:
                raise TypeError(f"save_pretrained() got unexpected keyword arguments {unknown}.")
            if ignored:
                logger.warning(f"{ignored} only apply to full checkpoints (`full_checkpoint=True`); ignored.")
            written = self._save_adapter(save_directory, state_dict)

        written += self._save_processor(save_directory, processor)
        card = _model_card(
            self,
            repo=push_kwargs.get("repo_id") or os.fspath(save_directory),
            base=base,
            full_checkpoint=full_checkpoint,
            files=[*written, MODEL_CARD_NAME],
            evaluation_rows=evaluation_rows,
            model_card_kwargs=model_card_kwargs,
        )
        with open(os.path.join(save_directory, MODEL_CARD_NAME), "w", encoding="utf-8") as file:
            file.write(card)
        written = sorted({*written, MODEL_CARD_NAME})

        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", None) or Path(save_directory).resolve().name
            self._warn_local_base(repo_id)
            upload_release_folder(save_directory, repo_id, allow_patterns=written, **push_kwargs)
        return written

    def _save_adapter(self, save_directory, state_dict) -> list[str]:
        plugin_keys = list(self.plugin_state_dict())
        if not plugin_keys:
            raise ValueError(f"{type(self).__name__} has no plugin parameters to save.")
        source = self.plugin_state_dict() if state_dict is None else state_dict
        missing = [key for key in plugin_keys if key not in source]
        if missing:
            raise ValueError(f"`state_dict` lacks the plugin weights {missing[:4]} (of {len(plugin_keys)}).")
        tensors = {key: source[key].detach().to("cpu").contiguous() for key in plugin_keys}

        self._remove_files(save_directory, FULL_WEIGHTS_PATTERNS)
        if self._saves_remote_code():
            custom_object_save(self, save_directory, config=self.config)
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(next(iter(tensors.values())).dtype).split(".")[1]
        self.config.save_pretrained(save_directory)
        safe_save_file(tensors, os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        return [ADAPTER_WEIGHTS_NAME, CONFIG_NAME, *self._remote_code_file_names()]

    def _saves_remote_code(self) -> bool:
        return type(self)._auto_class is not None and type(self).__module__ != "__main__"

    def _remote_code_file_names(self) -> list[str]:
        """The modules that a save copies for `trust_remote_code=True`: the model's module, its relative imports and the
        config's module."""
        names = []
        if self._saves_remote_code():
            module_file = sys.modules[type(self).__module__].__file__
            names += [Path(path).name for path in [module_file, *get_relative_import_files(module_file)]]
        if type(self.config)._auto_class is not None and type(self.config).__module__ != "__main__":
            names.append(Path(sys.modules[type(self.config).__module__].__file__).name)
        return sorted(set(names))

    def _add_auto_map_for_mask_generation(self):
        # custom_object_save records the class under AutoModel only; the mask-generation pipeline looks this one up
        if not self._saves_remote_code():
            return
        reference = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModelForMaskGeneration", reference)
        self.config.auto_map = auto_map

    def _save_processor(self, save_directory, processor) -> list[str]:
        if processor is False:
            return []
        if processor is not None:
            with tempfile.TemporaryDirectory() as staging:
                processor.save_pretrained(staging)
                names = sorted(os.listdir(staging))
                for name in names:
                    shutil.copyfile(os.path.join(staging, name), os.path.join(save_directory, name))
            return names
        sources = [self.config.name_or_path, self.config.base_model_name_or_path]
        for source in dict.fromkeys(str(source) for source in sources if source):
            found = {}
            for name in PROCESSOR_FILES:
                if os.path.isdir(source):
                    path = os.path.join(source, name)
                    found[name] = path if os.path.isfile(path) else None
                elif _is_hub_id(source):
                    path = try_to_load_from_cache(source, name)
                    found[name] = path if isinstance(path, str) else None
            found = {name: path for name, path in found.items() if path is not None}
            if found:
                for name, path in found.items():
                    target = os.path.join(save_directory, name)
                    if not (os.path.exists(target) and os.path.samefile(path, target)):
                        shutil.copyfile(path, target)
                return sorted(found)
        return []

    @staticmethod
    def _matches(path: Path, patterns: Sequence[str]) -> bool:
        return path.is_file() and any(path.match(pattern) for pattern in patterns)

    @classmethod
    def _remove_files(cls, save_directory, patterns: Sequence[str]):
        for path in Path(save_directory).iterdir():
            if cls._matches(path, patterns):
                path.unlink()

    def _warn_local_base(self, repo_id: str):
        base = self.config.base_model_name_or_path
        if base is not None and not _is_hub_id(base):
            logger.warning(
                f"The config names the local folder {base!r} as base SAM checkpoint: users of {repo_id} will have to "
                "pass `base_model_name_or_path=` to load it. Save with the base's Hub id to avoid that."
            )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        full_checkpoint: bool | None = None,
        processor=None,
        base_model_name_or_path: str | None = None,
        evaluation_results: Sequence[Mapping] | None = None,
        model_card_kwargs: Mapping | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        create_pr: bool = False,
        tags: Sequence[str] | None = None,
        **save_kwargs,
    ):
        """
        Saves the release (as `save_pretrained` does, into a temporary folder) and uploads exactly those files to the
        Hub repo `repo_id`, created when missing, in one commit; `tags` are added to the model card's. Full-checkpoint weight files left in the repo by an
        earlier upload are deleted. The token comes from `token`, else `HF_TOKEN` or `hf auth login`; it is never
        logged.

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        if tags:
            model_card_kwargs = dict(model_card_kwargs or {})
            model_card_kwargs["tags"] = [*model_card_kwargs.get("tags", []), *tags]
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(
                folder,
                full_checkpoint=full_checkpoint,
                processor=processor,
                base_model_name_or_path=base_model_name_or_path,
                evaluation_results=evaluation_results,
                model_card_kwargs=model_card_kwargs,
                repo_id=repo_id,
                **save_kwargs,
            )
            self._warn_local_base(repo_id)
            return upload_release_folder(
                folder,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                commit_message=commit_message,
                commit_description=commit_description,
                create_pr=create_pr,
            )

    # Loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args,
        base_model_name_or_path: str | os.PathLike | None = None,
        base_model_revision: str | None = None,
        **kwargs,
    ):
        """
        Loads a full checkpoint as `SamModel.from_pretrained` does, or an adapter: a folder or Hub repo with
        `adapter_model.safetensors`. For an adapter, the SAM checkpoint named by its `config.json`
        (`base_model_name_or_path`, or the argument of that name) is loaded with the adapter's plugin settings, then the
        plugin weights. Every other argument is `SamModel.from_pretrained`'s; `revision` and `subfolder` address the
        adapter, `base_model_revision` the base.

        Raises:
            `ValueError`: when the adapter does not fit the base: the base is not a SAM checkpoint, its mask decoder has
            another width or fewer layers than the plugins need, or the plugin weights are missing or of other shapes.
        """
        if base_model_name_or_path is not None:
            base_model_name_or_path = os.fspath(base_model_name_or_path)
        hub_kwargs = _hub_kwargs(kwargs, (*_ADAPTER_ONLY_HUB_KWARGS, *_SHARED_HUB_KWARGS))
        adapter_file = None
        if pretrained_model_name_or_path is not None:
            adapter_file = _is_stable_sam_adapter(pretrained_model_name_or_path, **hub_kwargs)

        if adapter_file is None:
            if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
                # A plain SAM checkpoint: its sizes plus default plugin settings (no model-type mismatch warning)
                config_dict = _read_config_dict(pretrained_model_name_or_path, **hub_kwargs) or {}
                if config_dict.get("model_type") == "sam":
                    plugin_kwargs = {key: kwargs.pop(key) for key in _PLUGIN_CONFIG_FIELDS if key in kwargs}
                    kwargs["config"] = cls.config_class.from_sam_config(
                        SamConfig.from_dict(config_dict), **plugin_kwargs
                    )
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            if base_model_name_or_path is not None:
                model.config.base_model_name_or_path = base_model_name_or_path
            elif model.config.base_model_name_or_path is None and pretrained_model_name_or_path is not None:
                # Its SAM weights came from here: an adapter saved from this model goes onto this checkpoint
                model.config.base_model_name_or_path = os.fspath(pretrained_model_name_or_path)
            return loaded

        source = os.fspath(pretrained_model_name_or_path)
        config = kwargs.pop("config", None)
        if isinstance(config, PreTrainedConfig):
            adapter_config = config.to_dict()
        else:
            adapter_config = _read_config_dict(config if config is not None else source, **hub_kwargs) or {}
        base = base_model_name_or_path or adapter_config.get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"The adapter {source!r} does not name its base SAM checkpoint (no `base_model_name_or_path` in its "
                "config.json): pass `base_model_name_or_path=` (a Hub id such as 'facebook/sam-vit-base' or a folder)."
            )
        base_hub_kwargs = _hub_kwargs(kwargs, _SHARED_HUB_KWARGS)
        if base_model_revision is not None:
            base_hub_kwargs["revision"] = base_model_revision
        base_config = _read_config_dict(base, **base_hub_kwargs)
        if base_config is None:
            raise OSError(
                f"Cannot find the base SAM checkpoint {base!r} of the adapter {source!r}: it is neither a folder with "
                "a config.json nor a Hub repo (or it is not cached while offline). Pass `base_model_name_or_path=`."
            )
        cls._check_adapter_fits(adapter_config, base_config, source=source, base=base)

        # SAM sizes from the base, plugin settings from the adapter (then from explicit keyword arguments)
        drop = {"model_type", "architectures", "transformers_version", "auto_map", "_name_or_path"}
        merged = {key: value for key, value in base_config.items() if key not in drop}
        plugin_keys = _plugin_config_keys(cls.config_class)
        merged.update({key: adapter_config[key] for key in plugin_keys if key in adapter_config})
        merged.update({key: kwargs.pop(key) for key in list(kwargs) if key in plugin_keys})
        merged["base_model_name_or_path"] = base
        config = cls.config_class.from_dict(merged)
        # Other config attributes passed as keyword arguments update the config, as without an adapter
        for key in [key for key in kwargs if key != "dtype" and key in {f.name for f in dataclasses.fields(config)}]:
            setattr(config, key, kwargs.pop(key))

        # Hub arguments of the adapter repo, and PEFT adapters, do not apply to the base checkpoint
        for name in (*_ADAPTER_ONLY_HUB_KWARGS, "adapter_kwargs"):
            kwargs.pop(name, None)
        if base_model_revision is not None:
            kwargs["revision"] = base_model_revision
        with _loading_adapter_base():
            loaded = super().from_pretrained(base, *model_args, config=config, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.load_plugin_state_dict(safe_load_file(adapter_file), source=source)
        model.config.name_or_path = model.name_or_path = source
        return loaded

    @staticmethod
    def _check_adapter_fits(adapter_config: Mapping, base_config: Mapping, *, source: str, base: str):
        model_type = base_config.get("model_type")
        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(
                f"The adapter {source!r} goes onto a SAM checkpoint, but its base {base!r} is a {model_type!r} "
                f"checkpoint (expected model_type {' or '.join(repr(name) for name in SAM_MODEL_TYPES)})."
            )
        adapter_width, base_width = _decoder_width(adapter_config), _decoder_width(base_config)
        if adapter_width != base_width:
            raise ValueError(
                f"The adapter {source!r} was saved for a mask decoder of width {adapter_width}, but the base SAM "
                f"checkpoint {base!r} has a mask decoder of width {base_width} (mask_decoder_config.hidden_size): the "
                "plugins only fit a SAM with the same decoder width."
            )
        plugin_layers = list(adapter_config.get("plugin_layers") or [])
        base_layers = _decoder_num_layers(base_config)
        if any(int(index) >= base_layers for index in plugin_layers):
            raise ValueError(
                f"The adapter {source!r} has plugins in two-way layers {plugin_layers}, but the mask decoder of the base "
                f"SAM checkpoint {base!r} has {base_layers} layers."
            )

    def load_adapter(self, pretrained_model_name_or_path: str | os.PathLike | None = None, *args, **kwargs):
        """
        Loads the plugin weights of a Stable-SAM adapter (a folder or Hub repo with `adapter_model.safetensors`) onto
        this model, which keeps its SAM weights. The adapter's config must have this model's decoder width and plugin
        settings. A PEFT adapter (a folder with `adapter_config.json`) goes to `PeftAdapterMixin.load_adapter`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                The adapter folder or Hub repo id.
            kwargs:
                `revision`, `subfolder`, `cache_dir`, `force_download`, `local_files_only`, `token`.
        """
        hub_names = (*_ADAPTER_ONLY_HUB_KWARGS, *_SHARED_HUB_KWARGS)
        if pretrained_model_name_or_path is None or args or set(kwargs) - set(hub_names):
            return super().load_adapter(pretrained_model_name_or_path, *args, **kwargs)
        source = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = _hub_kwargs(kwargs, hub_names)
        if _resolve_file(source, PEFT_CONFIG_NAME, **hub_kwargs) is not None:
            return super().load_adapter(source, **kwargs)
        adapter_file = _resolve_file(source, ADAPTER_WEIGHTS_NAME, **hub_kwargs)
        target = f"this model (loaded from {self.name_or_path!r})" if self.name_or_path else "this model"
        if adapter_file is None:
            raise ValueError(
                f"{source!r} holds no Stable-SAM plugin weights ({ADAPTER_WEIGHTS_NAME}) to load onto {target}: it is "
                "not an adapter folder or Hub repo (or it is not cached while offline)."
            )
        adapter_config = _read_config_dict(source, **hub_kwargs)
        if adapter_config is not None:
            adapter_width = _decoder_width(adapter_config)
            model_width = self.config.mask_decoder_config.hidden_size
            if adapter_width != model_width:
                raise ValueError(
                    f"The adapter {source!r} was saved for a mask decoder of width {adapter_width}, but {target} has a "
                    f"mask decoder of width {model_width}: the plugins only fit a SAM with the same decoder width."
                )
            differing = [
                f"{key}: {adapter_config[key]!r} in the adapter, {getattr(self.config, key)!r} in the model"
                for key in _plugin_config_keys(type(self.config))
                if key != "base_model_name_or_path"
                and key in adapter_config
                and not _same_setting(adapter_config[key], getattr(self.config, key))
            ]
            if differing:
                raise ValueError(
                    f"The adapter {source!r} was trained with other plugin settings than {target} has "
                    f"({'; '.join(differing)}). Load it with `from_pretrained({source!r})`, which builds the plugins "
                    "from the adapter's config."
                )
        self.load_plugin_state_dict(safe_load_file(adapter_file), source=source)

    def load_plugin_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str = "state_dict"):
        """
        Copies plugin weights, under the model's state-dict names, into the model after checking that they are exactly
        its plugin tensors: no more, no fewer, of the same shapes. `source` names them in error messages.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"`state_dict` must be a dict of tensors, got {type(state_dict).__name__}.")
        target = f"the model loaded from {self.name_or_path!r}" if self.name_or_path else "this model"
        expected = self.plugin_state_dict()
        unexpected = sorted(set(state_dict) - set(expected))
        if unexpected:
            raise ValueError(
                f"The plugin weights of {source!r} do not fit {target}: it has no place for {len(unexpected)} of them "
                f"({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}); the model has plugins in "
                f"two-way layers {list(self.config.plugin_layers)}."
            )
        missing = sorted(set(expected) - set(state_dict))
        if missing:
            raise ValueError(
                f"The plugin weights of {source!r} lack {len(missing)} of the {len(expected)} tensors that {target} "
                f"needs ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})."
            )
        mismatched = [
            f"{key}: {tuple(state_dict[key].shape)} in {source!r}, {tuple(tensor.shape)} in the model"
            for key, tensor in expected.items()
            if state_dict[key].shape != tensor.shape
        ]
        if mismatched:
            raise ValueError(
                f"The plugin weights of {source!r} were saved for other plugin sizes than {target} has (mask decoder "
                f"width {self.config.mask_decoder_config.hidden_size}): {'; '.join(mismatched[:3])}."
            )
        self.load_state_dict(dict(state_dict), strict=False)


__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "StableSamAdapterMixin",
    "upload_release_folder",
]
