"""Adapter releases of Stable-SAM: the plugin weights only, loaded onto the SAM checkpoint they were trained on.

An adapter folder (or Hub repo) holds:

- `adapter_model.safetensors`: the DSP and DRP weights only (81,828 float32 parameters, about 330 KB), under the
  model's state-dict names (`mask_decoder.transformer.layers.1.dsp.proj.weight`, ...);
- `config.json`: the `StableSamConfig`, whose `base_model_name_or_path` names the SAM checkpoint (Hub id or folder)
  that supplies every other weight, and whose `auto_map` points at the remote-code modules;
- `configuration_stable_sam.py`, `modeling_stable_sam.py`, `adapter.py`, `file_resolution.py`: what loading needs,
  copied at save time, so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` works where
  `stable_sam_hf` is not installed;
- the processor files when a processor is given or available, and a model card `README.md`.

The weights are named `adapter_model.safetensors`, not `model.safetensors`, so that a SAM loader pointed at an adapter
fails on the missing `model.safetensors` instead of loading a SAM with random weights. No `adapter_config.json` is
written: a folder with one is a PEFT adapter and is left to PEFT.
"""

import dataclasses
import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file as safe_load_file
from safetensors.torch import save_file as safe_save_file
from transformers import PreTrainedConfig, SamConfig
from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files
from transformers.utils import logging

from .file_resolution import (
    ADAPTER_ONLY_HUB_KWARGS,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    FULL_WEIGHTS_PATTERNS,
    PEFT_CONFIG_NAME,
    PROCESSOR_FILES,
    SAM_MODEL_TYPES,
    SHARED_HUB_KWARGS,
    check_weights,
    checkpoint_dtypes,
    checkpoint_weight_files,
    decoder_num_layers,
    decoder_width,
    hub_kwargs_of,
    is_hub_id,
    iter_checkpoint_tensors,
    matching_files,
    read_config_dict,
    resolve_file,
    stable_sam_adapter_file,
)


logger = logging.get_logger(__name__)

# save_pretrained arguments that only mean something for a full checkpoint
FULL_CHECKPOINT_KWARGS = (
    "max_shard_size",
    "variant",
    "save_peft_format",
    "save_original_format",
    "safe_serialization",
)
PUSH_KWARGS = ("repo_id", "private", "token", "revision", "commit_message", "commit_description", "create_pr")
# Config fields a SAM checkpoint lacks: given to from_pretrained, they set the plugins of the converted config
PLUGIN_CONFIG_FIELDS = (
    "sampling",
    "plugin_layers",
    "offset_range",
    "offset_kernel_size",
    "routing_hidden_size",
    "routing_token_index",
)
# Processor classes of SAM checkpoints, saved under Stable-SAM's: SAM's mask-generation post-processing needs torchvision
PROCESSOR_CLASS_NAMES = {
    "image_processor_type": {
        "SamImageProcessor": "StableSamImageProcessor",
        "SamImageProcessorPil": "StableSamImageProcessor",
    },
    "processor_class": {"SamProcessor": "StableSamProcessor"},
}


def _package_module(name: str):
    """
    The package's module `name` (the model-card writer, the uploader), or `None` in the copy of this file that is saved
    as remote code, which ships without them. Imported by name because transformers copies every module that a
    remote-code file imports statically, and remote code holds only what loading needs.
    """
    package = __name__.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{package}.{name}":
            raise
        return None


def plugin_config_keys(config_class: type) -> list[str]:
    """The fields that the Stable-SAM config adds to `SamConfig`: the plugin settings and `base_model_name_or_path`."""
    sam_fields = {field.name for field in dataclasses.fields(SamConfig)}
    return [field.name for field in dataclasses.fields(config_class) if field.name not in sam_fields]


def _same_setting(left, right) -> bool:
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return list(left) == list(right)
    return left == right


def _same_folder(left: str | os.PathLike, right: str | os.PathLike) -> bool:
    return os.path.isdir(left) and os.path.isdir(right) and os.path.samefile(left, right)


def _copy_processor_file(source: str, target: str):
    """Copies a processor config, naming Stable-SAM's processor classes where it names SAM's."""
    with open(source, encoding="utf-8") as file:
        config = json.load(file)
    for section in (config, *(value for value in config.values() if isinstance(value, dict))):
        for key, renames in PROCESSOR_CLASS_NAMES.items():
            if section.get(key) in renames:
                section[key] = renames[section[key]]
    temporary = f"{target}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2, sort_keys=True)
        file.write("\n")
    os.replace(temporary, target)


def _replace_files(staging: str, save_directory: str, names: Sequence[str]):
    """Renames the complete files `names` of `staging` over those of `save_directory`: weights first, config last."""
    order = {CONFIG_NAME: 2}
    for name in sorted(names, key=lambda name: (order.get(name, 1 if name.endswith(".index.json") else 0), name)):
        os.replace(os.path.join(staging, name), os.path.join(save_directory, name))


def weights_differing_from_base(model, base: str) -> list[str]:
    """
    The non-plugin weights of `model` that differ from those of the SAM checkpoint `base` (read one at a time). Raises
    when the base's file does not hold every non-plugin weight of the model under its name: nothing would be compared.
    """
    files = checkpoint_weight_files(base)
    if not files:
        raise ValueError(f"Cannot read the weights of the base SAM checkpoint {base!r} to compare the model with.")
    # Tied copies are not saved; their source is compared
    skipped = set(model.plugin_state_dict()) | set(model.all_tied_weights_keys)
    state = {key: tensor for key, tensor in model.state_dict().items() if key not in skipped}
    compared, differing = set(), []
    for key, tensor in iter_checkpoint_tensors(files):
        if key in state:
            compared.add(key)
            if not torch.equal(state[key], tensor.to(state[key].dtype)):
                differing.append(key)
    if len(compared) < len(state):
        missing = sorted(set(state) - compared)
        raise ValueError(
            f"The base SAM checkpoint {base!r} lacks {len(missing)} of the model's {len(state)} SAM weights under their "
            f"names ({', '.join(missing[:5])}{' and more' if len(missing) > 5 else ''}): the model's SAM weights cannot "
            "be compared with it. Is it a SAM checkpoint in transformers' layout?"
        )
    return differing


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

    # A SAM checkpoint has no plugin weights: from_pretrained says so in one line, or raises for a Stable-SAM one
    _keys_to_ignore_on_load_missing = [r"(^|\.)(dsp|drp)\."]

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
        plugins_only: bool = False,
        push_to_hub: bool = False,
        allow_untrained_plugins: bool = False,
        **kwargs,
    ) -> list[str]:
        """
        Saves an adapter release (default) or a full checkpoint.

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write to; created when missing. Nothing in it is deleted: the files are written into a
                temporary folder inside it and each one replaces the file of the same name when complete. A folder that
                holds the weights of the other layout (`model*.safetensors` / `pytorch_model*.bin` for an adapter,
                `adapter_model.safetensors` for a full checkpoint), or full-checkpoint weight files that this save does
                not replace, is refused, and a `README.md` that is not a Stable-SAM model card is kept.
            full_checkpoint (`bool`, *optional*):
                Whether to write every weight in `model.safetensors`, as `SamModel.save_pretrained` does, instead of the
                plugin weights only in `adapter_model.safetensors`. By default, an adapter when the base SAM checkpoint
                is known (see `base_model_name_or_path`) and is not `save_directory` itself, else a full checkpoint.
                An adapter is never saved into its own base folder.
            processor (`ProcessorMixin` or `bool`, *optional*):
                A processor saved beside the weights. By default the processor files of the checkpoint the model was
                loaded from, or else of its base SAM checkpoint, are copied when they are on this machine; `False`
                writes none. SAM's processor classes are saved as `StableSamProcessor` / `StableSamImageProcessor`.
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
            plugins_only (`bool`, *optional*, defaults to `False`):
                Save an adapter of a model loaded from a full checkpoint even when its SAM weights differ from the
                base's (a fine-tuned decoder), keeping only its plugins. Without it such an adapter is refused, naming
                the weights that differ, since it would not reproduce the model.
            push_to_hub (`bool`, *optional*, defaults to `False`):
                Whether to upload the written files afterwards (`repo_id`, `private`, `token`, `revision`,
                `commit_message`, `commit_description`, `create_pr` are read from `kwargs`); see `push_to_hub`.
            allow_untrained_plugins (`bool`, *optional*, defaults to `False`):
                With `push_to_hub`: upload a model whose plugins were never trained, as `push_to_hub` does.
            kwargs:
                Passed to `SamModel.save_pretrained` for a full checkpoint.

        Returns:
            `list[str]`: the names of the files written, sorted.
        """
        push_kwargs = {name: kwargs.pop(name) for name in PUSH_KWARGS if name in kwargs}
        if not is_main_process:
            return []
        save_directory = os.fspath(save_directory)
        base = self._check_save_arguments(save_directory, processor, base_model_name_or_path)
        model_card, upload = _package_module("model_card"), _package_module("upload")
        if model_card is None and (evaluation_results or model_card_kwargs or push_to_hub):
            raise ImportError("Model cards and uploads need the `stable-sam-hf` package: `pip install stable-sam-hf`.")
        evaluation_rows = model_card.check_evaluation_results(evaluation_results) if model_card else []
        full_checkpoint = self._choose_layout(save_directory, full_checkpoint, base)
        if push_to_hub:
            upload.check_plugins_trained(self, allow_untrained_plugins, escape="`allow_untrained_plugins=True`")
        if not full_checkpoint and not plugins_only:
            self._check_sam_weights_match_base(base)
        # Only a save that passed every check changes the config
        self.config.base_model_name_or_path = base
        os.makedirs(save_directory, exist_ok=True)
        self._add_auto_map_for_mask_generation()

        # Each file is written in full into a temporary folder beside the targets, then renamed over them
        staging = tempfile.mkdtemp(prefix=".stable-sam-save-", dir=save_directory)
        try:
            if full_checkpoint:
                written = self._save_full_checkpoint(staging, save_directory, state_dict, kwargs)
            else:
                written = self._save_adapter(staging, state_dict, kwargs)
            _replace_files(staging, save_directory, written)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written += self._save_processor(save_directory, processor)
        if model_card is not None:
            written += model_card.write_model_card(
                save_directory,
                self,
                repo=push_kwargs.get("repo_id") or save_directory,
                base=self.config.base_model_name_or_path,
                full_checkpoint=full_checkpoint,
                files=[*written, model_card.MODEL_CARD_NAME],
                evaluation_rows=evaluation_rows,
                model_card_kwargs=model_card_kwargs,
            )
        written = sorted(set(written))
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", None) or Path(save_directory).resolve().name
            upload.warn_local_base(self, repo_id)
            upload.upload_release_folder(save_directory, repo_id, allow_patterns=written, **push_kwargs)
        return written

    def _check_save_arguments(self, save_directory: str, processor, base_model_name_or_path):
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` must be a folder, got the file {save_directory!r}.")
        if processor is not None and processor is not False and not hasattr(processor, "save_pretrained"):
            raise TypeError(
                f"`processor` must be a processor with `save_pretrained`, or `False`, got {type(processor).__name__}."
            )
        if base_model_name_or_path is not None:
            if not isinstance(base_model_name_or_path, str) or not base_model_name_or_path:
                raise ValueError(
                    "`base_model_name_or_path` must be a SAM checkpoint's Hub id or folder, "
                    f"got {base_model_name_or_path!r}."
                )
            return base_model_name_or_path
        return self.config.base_model_name_or_path

    def _choose_layout(self, save_directory: str, full_checkpoint: bool | None, base: str | None) -> bool:
        """Whether to save a full checkpoint onto `base`; refuses the saves that would delete weights or make a folder
        its own base."""
        into_base = base is not None and _same_folder(base, save_directory)
        if full_checkpoint is None:
            full_checkpoint = base is None or into_base
            if base is None:
                logger.warning(
                    "The model's config names no base SAM checkpoint (`base_model_name_or_path`) for an adapter to go "
                    "onto: saving a full checkpoint. Pass `base_model_name_or_path=` to save the plugin weights only."
                )
            elif into_base:
                logger.info(f"{save_directory!r} is this model's base SAM checkpoint: saving a full checkpoint there.")
        elif not full_checkpoint and base is None:
            raise ValueError(
                "An adapter needs the SAM checkpoint it goes onto: pass `base_model_name_or_path=` (a Hub id such "
                "as 'facebook/sam-vit-base' or a folder) or set `model.config.base_model_name_or_path`, or save "
                "every weight with `full_checkpoint=True`."
            )
        elif not full_checkpoint and into_base:
            raise ValueError(
                f"{save_directory!r} is the base SAM checkpoint of this model: an adapter saved there would replace the "
                "SAM weights it needs. Save the adapter into another folder, or pass `full_checkpoint=True`."
            )
        other = (ADAPTER_WEIGHTS_NAME,) if full_checkpoint else FULL_WEIGHTS_PATTERNS
        found = matching_files(save_directory, other)
        if found:
            layouts = ("an adapter", "a full checkpoint") if full_checkpoint else ("a full checkpoint", "an adapter")
            raise ValueError(
                f"{save_directory!r} holds {layouts[0]} ({', '.join(found)}); saving {layouts[1]} there would leave "
                "two models in one folder, and a save deletes nothing it did not write. Save into another folder, or "
                "remove those files first."
            )
        return full_checkpoint

    def _check_sam_weights_match_base(self, base: str | None):
        """Refuses an adapter of a model whose SAM weights came from a full checkpoint and differ from the base's."""
        source = getattr(self, "_sam_weights_source", None)
        if base is None or source is None or source == base:
            return
        differing = weights_differing_from_base(self, base)
        if differing:
            raise ValueError(
                f"The model loaded from {source!r} differs from its base {base!r} in {len(differing)} SAM weights "
                f"({', '.join(differing[:5])}{' and more' if len(differing) > 5 else ''}): an adapter keeps the plugin "
                "weights only and would not reproduce it. Save it as a full checkpoint (`full_checkpoint=True`), or "
                "pass `plugins_only=True` (`--plugins_only`) to keep only its plugins."
            )

    def _save_full_checkpoint(self, staging: str, save_directory: str, state_dict, kwargs) -> list[str]:
        base = self.config.base_model_name_or_path
        if base is not None and _same_folder(base, save_directory):
            # A folder is never its own base
            self.config.base_model_name_or_path = None
        try:
            super().save_pretrained(staging, is_main_process=True, state_dict=state_dict, **kwargs)
        finally:
            self.config.base_model_name_or_path = base
        written = sorted(os.listdir(staging))
        # Weight files of an earlier save that this one does not replace would be loaded with the new ones
        stale = [name for name in matching_files(save_directory, FULL_WEIGHTS_PATTERNS) if name not in written]
        if stale:
            raise ValueError(
                f"{save_directory!r} holds the weight files {', '.join(stale)}, which this full checkpoint "
                f"({', '.join(name for name in written if name != CONFIG_NAME)}) would not replace, and a save deletes "
                "nothing it did not write. Save into another folder, or remove those files first."
            )
        return written

    def _save_adapter(self, save_directory: str, state_dict, kwargs) -> list[str]:
        ignored = sorted(set(kwargs) & set(FULL_CHECKPOINT_KWARGS))
        unknown = sorted(set(kwargs) - set(FULL_CHECKPOINT_KWARGS))
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {unknown}.")
        if ignored:
            logger.warning(f"{ignored} only apply to full checkpoints (`full_checkpoint=True`); ignored.")
        plugin_keys = list(self.plugin_state_dict())
        if not plugin_keys:
            raise ValueError(f"{type(self).__name__} has no plugin parameters to save.")
        source = self.plugin_state_dict() if state_dict is None else state_dict
        missing = [key for key in plugin_keys if key not in source]
        if missing:
            raise ValueError(f"`state_dict` lacks the plugin weights {missing[:4]} (of {len(plugin_keys)}).")
        tensors = {key: source[key].detach().to("cpu").contiguous() for key in plugin_keys}

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

    def _save_processor(self, save_directory: str, processor) -> list[str]:
        if processor is False:
            return []
        if processor is not None:
            with tempfile.TemporaryDirectory() as staging:
                processor.save_pretrained(staging)
                names = sorted(os.listdir(staging))
                for name in names:
                    source, target = os.path.join(staging, name), os.path.join(save_directory, name)
                    if name in PROCESSOR_FILES:
                        _copy_processor_file(source, target)
                    else:
                        shutil.copyfile(source, f"{target}.tmp")
                        os.replace(f"{target}.tmp", target)
            return names
        sources = [self.config.name_or_path, self.config.base_model_name_or_path]
        for source in dict.fromkeys(str(source) for source in sources if source):
            found = {}
            for name in PROCESSOR_FILES:
                if os.path.isdir(source):
                    path = os.path.join(source, name)
                    found[name] = path if os.path.isfile(path) else None
                elif is_hub_id(source):
                    path = try_to_load_from_cache(source, name)
                    found[name] = path if isinstance(path, str) else None
            found = {name: path for name, path in found.items() if path is not None}
            if found:
                for name, path in found.items():
                    target = os.path.join(save_directory, name)
                    if not (os.path.exists(target) and os.path.samefile(path, target)):
                        _copy_processor_file(path, target)
                return sorted(found)
        return []

    def push_to_hub(
        self,
        repo_id: str,
        *,
        full_checkpoint: bool | None = None,
        processor=None,
        base_model_name_or_path: str | None = None,
        evaluation_results: Sequence[Mapping] | None = None,
        model_card_kwargs: Mapping | None = None,
        allow_untrained_plugins: bool = False,
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
        Hub repo `repo_id`, created when missing, in one commit; `tags` are added to the model card's. Full-checkpoint
        weight files left in the repo by an earlier upload are deleted. A model whose plugins were never trained (they
        still compute SAM's features exactly) is refused unless `allow_untrained_plugins=True`. The token comes from
        `token`, else `HF_TOKEN` or `hf auth login`; it is never logged.

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        upload = _package_module("upload")
        if upload is None:
            raise ImportError("Uploads need the `stable-sam-hf` package: `pip install stable-sam-hf`.")
        return upload.push_release(
            self,
            repo_id,
            allow_untrained_plugins=allow_untrained_plugins,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            commit_description=commit_description,
            create_pr=create_pr,
            tags=tags,
            model_card_kwargs=model_card_kwargs,
            full_checkpoint=full_checkpoint,
            processor=processor,
            base_model_name_or_path=base_model_name_or_path,
            evaluation_results=evaluation_results,
            **save_kwargs,
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
        adapter, `base_model_revision` the base. A plain SAM checkpoint gives fresh plugins (computing SAM's masks).

        Raises:
            `ValueError`: when the adapter does not fit the base (the base is not a SAM checkpoint, its mask decoder has
            another width or fewer layers than the plugins need, the plugin weights are missing or of other shapes),
            when a full Stable-SAM checkpoint lacks plugin weights, or when weights are not floating point or hold NaN
            or inf values.
        """
        if base_model_name_or_path is not None:
            base_model_name_or_path = os.fspath(base_model_name_or_path)
        hub_kwargs = hub_kwargs_of(kwargs, (*ADAPTER_ONLY_HUB_KWARGS, *SHARED_HUB_KWARGS))
        adapter_file = None
        if pretrained_model_name_or_path is not None:
            adapter_file = stable_sam_adapter_file(pretrained_model_name_or_path, **hub_kwargs)
        if adapter_file is None:
            loaded = cls._from_full_checkpoint(pretrained_model_name_or_path, model_args, kwargs, hub_kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            if base_model_name_or_path is not None:
                model.config.base_model_name_or_path = base_model_name_or_path
            elif model.config.base_model_name_or_path is None and pretrained_model_name_or_path is not None:
                # Its SAM weights came from here: an adapter saved from this model goes onto this checkpoint
                model.config.base_model_name_or_path = os.fspath(pretrained_model_name_or_path)
            return loaded
        source = os.fspath(pretrained_model_name_or_path)
        config, base = cls._adapter_config(source, kwargs, hub_kwargs, base_model_name_or_path, base_model_revision)
        # Hub arguments of the adapter repo, and PEFT adapters, do not apply to the base checkpoint
        for name in (*ADAPTER_ONLY_HUB_KWARGS, "adapter_kwargs"):
            kwargs.pop(name, None)
        if base_model_revision is not None:
            kwargs["revision"] = base_model_revision
        loaded = cls._from_full_checkpoint(base, model_args, {**kwargs, "config": config}, None)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.load_plugin_state_dict(safe_load_file(adapter_file), source=source)
        model.config.name_or_path = model.name_or_path = source
        return loaded

    @classmethod
    def _from_full_checkpoint(cls, source, model_args, kwargs: dict, hub_kwargs: dict | None):
        """`SamModel.from_pretrained` plus the checks of the weights; `hub_kwargs` is `None` for an adapter's base,
        whose plugin weights come from the adapter."""
        if source is None:
            return super().from_pretrained(source, *model_args, **kwargs)
        checks_plugins = hub_kwargs is not None
        hub_kwargs = hub_kwargs_of(kwargs, (*ADAPTER_ONLY_HUB_KWARGS, *SHARED_HUB_KWARGS))
        config_dict = read_config_dict(source, **hub_kwargs) or {}
        if kwargs.get("config") is None and config_dict.get("model_type") == "sam":
            # A plain SAM checkpoint: its sizes plus default plugin settings (no model-type mismatch warning)
            plugin_kwargs = {key: kwargs.pop(key) for key in PLUGIN_CONFIG_FIELDS if key in kwargs}
            kwargs["config"] = cls.config_class.from_sam_config(SamConfig.from_dict(config_dict), **plugin_kwargs)
        source = os.fspath(source)
        files = checkpoint_weight_files(source, variant=kwargs.get("variant"), **hub_kwargs)
        loaded = super().from_pretrained(source, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if checks_plugins and config_dict.get("model_type") == "stable_sam":
            # A full Stable-SAM checkpoint may hold fine-tuned SAM weights: an adapter saved from it is checked
            model._sam_weights_source = source
        # The file's dtypes, since loading casts integer tensors silently; keys the model does not load are transformers'
        state = model.state_dict()
        dtypes = {key: dtype for key, dtype in checkpoint_dtypes(files).items() if key in state}
        check_weights(dtypes, source=source, dtypes_only=True)
        check_weights({key: state[key] for key in dtypes}, source=source)
        missing = [key for key in model.plugin_state_dict() if key not in dtypes]
        # A checkpoint with SAM's weights and none or some of the plugins'; one with none of the model's weights gets
        # transformers' report
        if checks_plugins and dtypes and missing:
            if config_dict.get("model_type") == "stable_sam":
                raise ValueError(
                    f"{source!r} is a Stable-SAM checkpoint (model_type 'stable_sam') but lacks {len(missing)} of its "
                    f"plugin weights: {', '.join(missing[:5])}{' and more' if len(missing) > 5 else ''}. The checkpoint is "
                    "incomplete; to start from SAM with fresh plugins, load a SAM checkpoint."
                )
            logger.info(f"{source!r} is a SAM checkpoint: the Stable-SAM plugins start fresh, computing SAM's masks.")
        return loaded

    @classmethod
    def _adapter_config(cls, source: str, kwargs: dict, hub_kwargs: dict, base_argument, base_model_revision):
        """The config of an adapter on its base: SAM sizes from the base, plugin settings from the adapter (then from
        keyword arguments, which are removed from `kwargs`), and the base's name."""
        config = kwargs.pop("config", None)
        if isinstance(config, PreTrainedConfig):
            adapter_config = config.to_dict()
        else:
            adapter_config = read_config_dict(config if config is not None else source, **hub_kwargs) or {}
        base = base_argument or adapter_config.get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"The adapter {source!r} does not name its base SAM checkpoint (no `base_model_name_or_path` in its "
                "config.json): pass `base_model_name_or_path=` (a Hub id such as 'facebook/sam-vit-base' or a folder)."
            )
        base_hub_kwargs = hub_kwargs_of(kwargs, SHARED_HUB_KWARGS)
        if base_model_revision is not None:
            base_hub_kwargs["revision"] = base_model_revision
        base_config = read_config_dict(base, **base_hub_kwargs)
        if base_config is None:
            raise OSError(
                f"Cannot find the base SAM checkpoint {base!r} of the adapter {source!r}: it is neither a folder with "
                "a config.json nor a Hub repo (or it is not cached while offline). Pass `base_model_name_or_path=`."
            )
        cls._check_adapter_fits(adapter_config, base_config, source=source, base=base)

        drop = {"model_type", "architectures", "transformers_version", "auto_map", "_name_or_path"}
        merged = {key: value for key, value in base_config.items() if key not in drop}
        plugin_keys = plugin_config_keys(cls.config_class)
        merged.update({key: adapter_config[key] for key in plugin_keys if key in adapter_config})
        merged.update({key: kwargs.pop(key) for key in list(kwargs) if key in plugin_keys})
        merged["base_model_name_or_path"] = base
        config = cls.config_class.from_dict(merged)
        # Other config attributes passed as keyword arguments update the config, as without an adapter
        for key in [key for key in kwargs if key != "dtype" and key in {f.name for f in dataclasses.fields(config)}]:
            setattr(config, key, kwargs.pop(key))
        return config, base

    @staticmethod
    def _check_adapter_fits(adapter_config: Mapping, base_config: Mapping, *, source: str, base: str):
        model_type = base_config.get("model_type")
        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(
                f"The adapter {source!r} goes onto a SAM checkpoint, but its base {base!r} is a {model_type!r} "
                f"checkpoint (expected model_type {' or '.join(repr(name) for name in SAM_MODEL_TYPES)})."
            )
        adapter_width, base_width = decoder_width(adapter_config), decoder_width(base_config)
        if adapter_width != base_width:
            raise ValueError(
                f"The adapter {source!r} was saved for a mask decoder of width {adapter_width}, but the base SAM "
                f"checkpoint {base!r} has a mask decoder of width {base_width} (mask_decoder_config.hidden_size): the "
                "plugins only fit a SAM with the same decoder width."
            )
        plugin_layers = list(adapter_config.get("plugin_layers") or [])
        base_layers = decoder_num_layers(base_config)
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
        hub_names = (*ADAPTER_ONLY_HUB_KWARGS, *SHARED_HUB_KWARGS)
        if pretrained_model_name_or_path is None or args or set(kwargs) - set(hub_names):
            return super().load_adapter(pretrained_model_name_or_path, *args, **kwargs)
        source = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = hub_kwargs_of(kwargs, hub_names)
        if resolve_file(source, PEFT_CONFIG_NAME, **hub_kwargs) is not None:
            return super().load_adapter(source, **kwargs)
        adapter_file = resolve_file(source, ADAPTER_WEIGHTS_NAME, **hub_kwargs)
        target = f"this model (loaded from {self.name_or_path!r})" if self.name_or_path else "this model"
        if adapter_file is None:
            raise ValueError(
                f"{source!r} holds no Stable-SAM plugin weights ({ADAPTER_WEIGHTS_NAME}) to load onto {target}: it is "
                "not an adapter folder or Hub repo (or it is not cached while offline)."
            )
        adapter_config = read_config_dict(source, **hub_kwargs)
        if adapter_config is not None:
            adapter_width = decoder_width(adapter_config)
            model_width = self.config.mask_decoder_config.hidden_size
            if adapter_width != model_width:
                raise ValueError(
                    f"The adapter {source!r} was saved for a mask decoder of width {adapter_width}, but {target} has a "
                    f"mask decoder of width {model_width}: the plugins only fit a SAM with the same decoder width."
                )
            differing = [
                f"{key}: {adapter_config[key]!r} in the adapter, {getattr(self.config, key)!r} in the model"
                for key in plugin_config_keys(type(self.config))
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
        check_weights(state_dict, source=source)
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


__all__ = ["ADAPTER_WEIGHTS_NAME", "StableSamAdapterMixin", "plugin_config_keys", "weights_differing_from_base"]
