"""The model card (`README.md`) of a Stable-SAM release: Hub metadata, the evaluation table and how to load it."""

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData
from transformers.utils import logging

from .adapter import plugin_config_keys
from .file_resolution import ADAPTER_WEIGHTS_NAME, PROCESSOR_FILES, is_hub_id


logger = logging.get_logger(__name__)

MODEL_CARD_NAME = "README.md"
EVALUATION_KEYS = ("dataset", "metric", "value")
EVALUATION_OPTIONAL_KEYS = ("prompt", "dataset_type", "split")
# The tag every card written here carries: a README.md without it is someone else's and is kept
CARD_TAG = "stable-sam"


def check_evaluation_results(evaluation_results) -> list[dict]:
    """Validates `evaluation_results`: a list of `{"dataset", "metric", "value"[, "prompt", "dataset_type", "split"]}`."""
    if evaluation_results is None:
        return []
    if isinstance(evaluation_results, (str, bytes, Mapping)) or not isinstance(evaluation_results, Sequence):
        raise TypeError(
            "`evaluation_results` must be a list of dicts with keys 'dataset', 'metric', 'value' (and optionally "
            f"'prompt', 'dataset_type', 'split'), got {type(evaluation_results).__name__}; training/evaluate_model.py "
            "writes one per model in results.json, under ['model_card'][NAME]."
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


def model_card_text(
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
    if base is not None and is_hub_id(base):
        card_kwargs["base_model"] = base
        if not full_checkpoint:
            card_kwargs["base_model_relation"] = "adapter"
    card_kwargs.update({key: value for key, value in (model_card_kwargs or {}).items() if key != "tags"})
    card_kwargs["tags"] += [tag for tag in (model_card_kwargs or {}).get("tags", []) if tag not in card_kwargs["tags"]]
    card_data = ModelCardData(eval_results=eval_results or None, **card_kwargs)

    config = model.config
    settings = ", ".join(
        f"`{key}` {getattr(config, key)}"
        for key in plugin_config_keys(type(config))
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


def is_stable_sam_card(path: str | os.PathLike) -> bool:
    """Whether the file is a model card written by `write_model_card` (its metadata carries the `stable-sam` tag)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    metadata = text.split("---", 2)[1]
    return re.search(rf"^- {re.escape(CARD_TAG)}\s*$", metadata, flags=re.MULTILINE) is not None


def write_model_card(save_directory: str | os.PathLike, model, **card_kwargs) -> list[str]:
    """
    Writes the model card into `save_directory` (see `model_card_text` for the arguments) and returns `["README.md"]`;
    a `README.md` there that this package did not write is kept, with a warning, and `[]` is returned.
    """
    path = Path(save_directory) / MODEL_CARD_NAME
    if path.exists() and not is_stable_sam_card(path):
        logger.warning(
            f"{os.fspath(path)!r} is not a Stable-SAM model card; it is kept as it is and no model card is written."
        )
        return []
    temporary = path.with_name(f".{MODEL_CARD_NAME}.tmp")
    temporary.write_text(model_card_text(model, **card_kwargs), encoding="utf-8")
    os.replace(temporary, path)
    return [MODEL_CARD_NAME]


__all__ = ["MODEL_CARD_NAME", "check_evaluation_results", "model_card_text", "write_model_card"]
