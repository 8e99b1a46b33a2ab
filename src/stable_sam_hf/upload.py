"""Uploading a Stable-SAM release to the Hugging Face Hub."""

import os
import tempfile
from collections.abc import Mapping, Sequence

import torch
from huggingface_hub import HfApi
from transformers.utils import logging

from .file_resolution import FULL_WEIGHTS_PATTERNS, is_hub_id


logger = logging.get_logger(__name__)


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


def untrained_plugin_layers(model) -> list[str]:
    """
    The plugin layers whose sampling plugin still computes SAM's features exactly: an identity re-projection
    (`dsp.proj`) and a zero offset or weight head (`dsp.offset_proj` / `dsp.weight_proj`), as `StableSamModel` starts.
    With all of them so, the model is SAM and an adapter release of it holds fresh plugins.
    """
    untrained = []
    state = model.plugin_state_dict()
    for prefix in sorted({key.split(".dsp.")[0] for key in state if ".dsp." in key}):
        weight, bias = state[f"{prefix}.dsp.proj.weight"], state[f"{prefix}.dsp.proj.bias"]
        identity = torch.equal(weight, torch.eye(*weight.shape, dtype=weight.dtype)) and not bias.any()
        heads = [key for key in state if key.startswith((f"{prefix}.dsp.offset_proj.", f"{prefix}.dsp.weight_proj."))]
        if identity and not any(state[key].any() for key in heads):
            untrained.append(prefix)
    return untrained


def check_plugins_trained(model, allow_untrained_plugins: bool, *, escape: str = "`allow_untrained_plugins=True`"):
    """
    Refuses to publish a model whose plugins were never trained (see `untrained_plugin_layers`): its release would be
    SAM with fresh plugins. `escape` names the option that allows it, in the caller's terms.
    """
    untrained = untrained_plugin_layers(model)
    if untrained and len(untrained) == len(model.config.plugin_layers) and not allow_untrained_plugins:
        raise ValueError(
            f"The plugins of this model were never trained ({', '.join(untrained)} still compute SAM's features "
            f"exactly): a release of it is SAM with fresh plugins. Train them first, or pass {escape} to upload it "
            "anyway."
        )


def warn_local_base(model, repo_id: str):
    base = model.config.base_model_name_or_path
    if base is not None and not is_hub_id(base):
        logger.warning(
            f"The config names the local folder {base!r} as base SAM checkpoint: users of {repo_id} will have to "
            "pass `base_model_name_or_path=` to load it. Save with the Hub id of the same SAM checkpoint to avoid that (an "
            "adapter of a model whose SAM weights differ from its base's is refused)."
        )


def push_release(
    model,
    repo_id: str,
    *,
    allow_untrained_plugins: bool = False,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    tags: Sequence[str] | None = None,
    model_card_kwargs: Mapping | None = None,
    **save_kwargs,
):
    """`StableSamModel.push_to_hub`: saves the release into a temporary folder and uploads exactly those files."""
    check_plugins_trained(model, allow_untrained_plugins)
    if tags:
        model_card_kwargs = dict(model_card_kwargs or {})
        model_card_kwargs["tags"] = [*model_card_kwargs.get("tags", []), *tags]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, model_card_kwargs=model_card_kwargs, repo_id=repo_id, **save_kwargs)
        warn_local_base(model, repo_id)
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


__all__ = ["check_plugins_trained", "push_release", "untrained_plugin_layers", "upload_release_folder"]
