"""Evaluation under seeded random prompts: model specs, SAM-style inference with batched prompts, per-object scores,
and COCO mask AP with noisy-box prompts. `training/evaluate_model.py` is the command-line front end.

Inference goes through the checkpoint's image processor: it resizes and normalises the image (the checkpoint's pixel
statistics), prompts drawn on the ground-truth mask in the original frame are scaled into the resized frame as
`SamProcessor` does, and its `post_process_masks` brings the low-resolution logits back to the original size. The
image encoder runs once per image; all prompts of one type go through the decoder as one point batch.
`contenders.py` adds SAM 2 and SAM 3's tracker through their own processors.
"""

import hashlib
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import huggingface_hub
import numpy as np
import torch
from torch import nn
from transformers import Sam2Model, Sam3TrackerModel, SamHQModel, SamModel

from .image_processing_stable_sam import StableSamImageProcessor
from .methods import METHODS, TRAINABLE_WEIGHTS_NAME, build_segmenter, trainable_weights_name
from .metrics import mask_iou, mask_to_boundary, stability
from .modeling_stable_sam import StableSamModel
from .processing_stable_sam import StableSamProcessor
from .prompts import masks_to_boxes, noisy_boxes, parse_prompt_type, sample_prompt


logger = logging.getLogger(__name__)

# The model kinds a spec can name: frozen checkpoints of every SAM family in transformers, and the training methods of
# `methods.METHODS` (a run folder of training/train.py; `stable` and `hq` also take a checkpoint)
MODEL_KINDS = {
    "sam": "a SamModel checkpoint (facebook/sam-vit-base)",
    "hq": "a SamHQModel checkpoint (syscv-community/sam-hq-vit-base), HQ-SAM's default output (the HQ mask fused with "
    "SAM's), or a run folder of train.py's hq method (the HQ token's mask, as trained)",
    "hq_token_only": "a SamHQModel checkpoint, the HQ token's mask alone (HQ-SAM's hq_token_only=True)",
    "sam2": "a Sam2Model checkpoint (facebook/sam2.1-hiera-tiny), through Sam2Processor",
    "sam3_tracker": "a Sam3TrackerModel checkpoint (facebook/sam3), SAM 3's promptable tracker on one image, through "
    "Sam3TrackerProcessor",
    "stable": "a StableSamModel checkpoint or a run folder of train.py's stable method",
    **{method: f"a run folder of train.py's {method} method" for method in METHODS if method not in ("stable", "hq")},
}
EVALUATION_METHODS = tuple(MODEL_KINDS)
# The kinds that take a checkpoint (a Hub id or a model folder), not only a run folder
CHECKPOINT_KINDS = ("sam", "hq", "hq_token_only", "sam2", "sam3_tracker", "stable")
RUN_SUMMARY_NAME = "training_summary.json"
# The config.json model types a checkpoint of each kind may have (SAM 2 and SAM 3 checkpoints on the Hub are saved
# by their video models; a SAM checkpoint loads into Stable-SAM with fresh plugins)
_MODEL_TYPES_OF_KIND = {
    "sam": ("sam",),
    "hq": ("sam_hq",),
    "hq_token_only": ("sam_hq",),
    "sam2": ("sam2", "sam2_video"),
    "sam3_tracker": ("sam3_tracker", "sam3_tracker_video", "sam3", "sam3_video"),
    "stable": ("stable_sam", "sam"),
}
# A checkpoint's config.json model_type -> kind, for specs that name none
_METHOD_OF_MODEL_TYPE = {
    "sam": "sam",
    "stable_sam": "stable",
    "sam_hq": "hq",
    "sam2": "sam2",
    "sam3_tracker": "sam3_tracker",
}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# The COCO protocol's prompt: one noisy box per object, IoU in [0.5, 0.6) with the ground-truth box
COCO_PROMPT_TYPE = "coco_noisy_box"


def check_local_or_hub(path: str, name: str, repo_type: str = "model") -> None:
    """Raises `FileNotFoundError` for a `path` that is neither an existing local path nor shaped like a Hub id, or,
    with the Hub offline (`HF_HUB_OFFLINE=1`), a model id that is not in the local Hub cache: a mistyped folder then
    fails before anything runs instead of as a connection error."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"`{name}` must be a local path or a Hub id, got {path!r}.")
    if Path(path).exists():
        return
    if path.startswith((".", "/", "~")) or not _HUB_ID_PATTERN.match(path):
        raise FileNotFoundError(f"`{name}` {path!r} does not exist (and is not a Hub id).")
    if repo_type == "model" and huggingface_hub.constants.is_offline_mode():
        if not isinstance(huggingface_hub.try_to_load_from_cache(path, "config.json"), str):
            raise FileNotFoundError(
                f"`{name}` {path!r} is not a local path, and as a Hub id it is not in the Hub cache while the Hub is "
                "offline (HF_HUB_OFFLINE=1)."
            )


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: `name=method:path`.

    `path` is a SAM-like checkpoint (Hub id or folder) for `sam`, `stable` and `hq`, or a run folder written by
    `training/train.py` (`trainable.safetensors` + `training_summary.json`) for any method; `base_model` is the frozen
    SAM a run folder's trainable weights go on.
    """

    name: str
    method: str
    path: str
    base_model: str | None = None
    run_folder: bool = False

    @property
    def model_id(self) -> str:
        base = f" on {self.base_model}" if self.run_folder and self.base_model else ""
        return f"{self.method}:{self.path}{base}"


def _read_run_summary(path: str) -> dict[str, Any] | None:
    summary = Path(path) / RUN_SUMMARY_NAME
    if not summary.is_file():
        return None
    try:
        content = json.loads(summary.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{summary} is not valid JSON (truncated or corrupted?): {error}") from error
    if not isinstance(content, dict) or not isinstance(content.get("method"), str):
        raise ValueError(f"{summary} must be a JSON object naming the run's `method`, got {str(content)[:80]!r}.")
    return content


# Bytes read at each end of a file for its fingerprint: bounded, yet a retrained model or re-prepared shard differs
_FINGERPRINT_BYTES = 1 << 16
# Files of a model folder that loading reads (a run folder's logs and checkpoints/ do not change the model)
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth")


def _file_fingerprint(path: Path) -> list:
    stat = path.stat()
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        if stat.st_size > _FINGERPRINT_BYTES:
            handle.seek(max(_FINGERPRINT_BYTES, stat.st_size - _FINGERPRINT_BYTES))
            digest.update(handle.read())
    return [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]


def path_fingerprint(path: str | None, *, model: bool = False) -> str | None:
    """
    What a local file or folder holds, as a short hash: each file's size, modification time and a hash of its first and
    last 64 KiB. A Hub id (nothing local) gives None: its string alone names it.

    Args:
        path (`str`, *optional*): a model or dataset path.
        model (`bool`): only the top-level files that loading a model reads (weights and JSON configs); otherwise every
            file below `path` but hidden ones (a dataset's shards and its README's configs).
    """
    if path is None or not Path(path).exists():
        return None
    root = Path(path)
    if root.is_file():
        files = [root]
    elif model:
        files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix in _MODEL_FILE_SUFFIXES)
    else:
        files = sorted(
            f
            for f in root.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)
        )
    entries = {str(f.relative_to(root)) if f != root else f.name: _file_fingerprint(f) for f in files}
    return hashlib.sha1(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]


def parse_model_spec(spec: str, base_model: str | None = None) -> ModelSpec:
    """
    Parses `[NAME=][METHOD:]PATH`.

    - `sam=sam:facebook/sam-vit-base`: the frozen SAM checkpoint itself.
    - `stable=stable:runs/stable`, `hq=hq:syscv-community/sam-hq-vit-base`: a checkpoint or a run folder.
    - `lora=lora:runs/lora`, `runs/adapter`: a run folder of `training/train.py`; its `training_summary.json` names the
      method and the base SAM (`base_model` overrides the latter, e.g. when the run was trained elsewhere).
    - Without METHOD, PATH is a run folder or a local checkpoint whose config names the model type. Without NAME,
      the name is the method.

    Args:
        spec (`str`): the specification.
        base_model (`str`, *optional*): base SAM checkpoint for run folders (overrides the run's own).

    Returns:
        `ModelSpec`.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"A model spec must be a non-empty string NAME=KIND:PATH, got {spec!r}.")
    name, rest = None, spec
    if "=" in spec:
        name, rest = spec.split("=", 1)
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"Model name {name!r} in {spec!r} must use letters, digits and _ . + - only.")
    method, path = None, rest
    if ":" in rest and rest.split(":", 1)[0] in EVALUATION_METHODS:
        method, path = rest.split(":", 1)
    elif ":" in rest and not Path(rest).exists() and _NAME_PATTERN.match(rest.split(":", 1)[0]):
        # Neither Hub ids nor local paths here hold a colon: the part before it names a method
        raise ValueError(
            f"Model spec {spec!r}: unknown method (model kind) {rest.split(':', 1)[0]!r}; supported kinds: "
            f"{', '.join(EVALUATION_METHODS)}."
        )
    if not path:
        raise ValueError(f"Model spec {spec!r} has no path: expected NAME=KIND:PATH.")
    check_local_or_hub(path, f"path of model spec {spec!r}")
    summary = _read_run_summary(path)
    run_folder = summary is not None
    if run_folder:
        weights_name = trainable_weights_name(summary.get("method"))
        if not (Path(path) / weights_name).is_file():
            raise FileNotFoundError(f"Run folder {path} has {RUN_SUMMARY_NAME} but no {weights_name}.")
        if method is not None and method != summary["method"]:
            raise ValueError(
                f"Model spec {spec!r} says method {method!r} but {path} was trained as {summary['method']!r}."
            )
        method = summary["method"]
        base_model = base_model or summary.get("base_model")
    elif method is None:
        model_type = _local_model_type(path)
        if model_type not in _METHOD_OF_MODEL_TYPE:
            raise ValueError(
                f"Model spec {spec!r} names no method and {path} is neither a run folder ({RUN_SUMMARY_NAME}) nor a "
                f"local SAM, SAM 2, SAM 3 tracker, Stable-SAM or HQ-SAM checkpoint: write NAME=KIND:PATH with KIND in "
                f"{EVALUATION_METHODS}."
            )
        method = _METHOD_OF_MODEL_TYPE[model_type]
    elif method not in CHECKPOINT_KINDS:
        raise ValueError(
            f"Model spec {spec!r}: method {method!r} needs a run folder written by training/train.py "
            f"({TRAINABLE_WEIGHTS_NAME} + {RUN_SUMMARY_NAME}), got {path}."
        )
    elif (model_type := _local_model_type(path)) is not None:
        if model_type not in _MODEL_TYPES_OF_KIND[method]:
            known = _METHOD_OF_MODEL_TYPE.get(model_type)
            hint = f"; its kind is {known!r} (write NAME={known}:PATH)" if known else ""
            raise ValueError(
                f"Model spec {spec!r}: {path} holds a {model_type!r} checkpoint, which kind {method!r} does not load "
                f"(it takes model types {_MODEL_TYPES_OF_KIND[method]}){hint}."
            )
    if run_folder and method != "stable" and not base_model:
        raise ValueError(f"Model spec {spec!r}: the run folder names no base model; pass `base_model`.")
    return ModelSpec(name=name or method, method=method, path=path, base_model=base_model, run_folder=run_folder)


def _local_model_type(path: str) -> str | None:
    config = Path(path) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def load_model(spec: ModelSpec) -> nn.Module:
    """The SAM-like model of `spec` (SamModel, StableSamModel, SamHQModel, or a SamModel with LoRA layers or
    adapters), in eval mode with every parameter frozen."""
    if spec.method == "sam":
        model = SamModel.from_pretrained(spec.path)
    elif spec.method == "sam2":
        model = Sam2Model.from_pretrained(spec.path)
    elif spec.method == "sam3_tracker":
        model = Sam3TrackerModel.from_pretrained(spec.path)
    elif spec.method == "hq_token_only":
        model = SamHQModel.from_pretrained(spec.path)
    elif spec.method == "stable" and (not spec.run_folder or (Path(spec.path) / "config.json").is_file()):
        if _local_model_type(spec.path) == "sam":
            logger.warning(
                "%s: %s is a SAM checkpoint, so Stable-SAM's plugins are untrained: the masks are SAM's, and alpha_1 "
                "comes from freshly drawn routing weights and means nothing.",
                spec.name,
                spec.path,
            )
        # A checkpoint, or a training run folder: train.py saves a Stable-SAM adapter there that names its base SAM
        model = StableSamModel.from_pretrained(spec.path)
    elif spec.method == "hq" and not spec.run_folder:
        model = SamHQModel.from_pretrained(spec.path)
    else:
        segmenter = build_segmenter(spec.method, spec.base_model)
        segmenter.load_trainable(spec.path)
        model = segmenter.sam
    return model.requires_grad_(False).eval()


# Prompts


def prompt_generator(seed: int, dataset: str, object_id: str, prompt_type: str, draw: int) -> torch.Generator:
    """The generator of draw `draw` of prompt type `prompt_type` for one object: the same for every model and run."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    words = [seed, *(zlib.crc32(str(text).encode()) for text in (dataset, object_id, prompt_type)), draw]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def is_deterministic(prompt_type: str) -> bool:
    """The ground-truth box is the same on every draw: one prediction stands for all K."""
    return parse_prompt_type(prompt_type)[0] == "box"


def draw_prompts(
    mask: torch.Tensor,
    prompt_type: str,
    num_prompts: int,
    *,
    seed: int,
    dataset: str,
    object_id: str,
    noise_scale: float = 0.4,
) -> dict[str, torch.Tensor]:
    """
    The `num_prompts` seeded prompts of one object and prompt type, in the mask's pixel frame. Draw `k` comes from
    `prompt_generator(seed, dataset, object_id, prompt_type, k)`, so it does not depend on `num_prompts`.

    Args:
        mask (`torch.Tensor` of shape `(height, width)`): the object's non-empty ground truth.
        prompt_type (`str`): `"box"`, `"noisy_box"` or `"points_<k>"` (a box is drawn once, see `is_deterministic`).

    Returns:
        `dict` with `input_boxes` (`torch.Tensor` of shape `(num_prompts, 4)`), or `input_points` (`torch.Tensor` of
        shape `(num_prompts, num_points, 2)`) and `input_labels` (`torch.Tensor` of shape `(num_prompts, num_points)`).
    """
    kind, _ = parse_prompt_type(prompt_type)
    if kind == "coarse_mask":
        raise ValueError("`prompt_type` coarse_mask is not an evaluation prompt type (one mask prompt per image).")
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
        raise ValueError(f"`num_prompts` must be a positive int, got {num_prompts!r}.")
    if is_deterministic(prompt_type):
        num_prompts = 1
    draws = [
        sample_prompt(
            mask,
            prompt_type,
            prompt_generator(seed, dataset, object_id, prompt_type, draw),
            noise_scale=noise_scale,
        )
        for draw in range(num_prompts)
    ]
    return {key: torch.cat([prompt[key] for prompt in draws]) for key in draws[0]}


# Inference


class ImageEncoding(NamedTuple):
    """Encoder outputs of one image and the geometry needed to map prompts and masks."""

    features: dict[str, Any]
    original_size: tuple[int, int]
    reshaped_size: tuple[int, int]


class Prediction(NamedTuple):
    """masks (`(num_prompts, height, width)`, bool, original resolution), iou_scores (`(num_prompts,)`),
    routing_weights (`(num_prompts, 2)` for Stable-SAM, else None)."""

    masks: torch.Tensor
    iou_scores: torch.Tensor
    routing_weights: torch.Tensor | None


class SamPredictor:
    """
    SAM-style inference for one image and many prompts of one kind.

    Args:
        model (`nn.Module`): a `SamModel`, `StableSamModel`, `SamHQModel` or SAM with LoRA layers / adapters.
        decoder_batch_size (`int`, *optional*, defaults to 20): prompts per decoder call.
        image_processor (`StableSamImageProcessor`, *optional*): the checkpoint's image processor (its pixel
            statistics); SAM's defaults at the model's input size when None.
        hq_token_only (`bool`, *optional*, defaults to `True`): for a `SamHQModel`, the HQ token's mask alone (True)
            or HQ-SAM's default output, the HQ mask fused with SAM's (False).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decoder_batch_size: int = 20,
        image_processor: StableSamImageProcessor | None = None,
        hq_token_only: bool = True,
    ):
        if decoder_batch_size < 1:
            raise ValueError(f"`decoder_batch_size` must be a positive int, got {decoder_batch_size}.")
        self.model = model
        self.decoder_batch_size = decoder_batch_size
        self.image_size = model.config.vision_config.image_size
        self.is_stable = isinstance(model, StableSamModel)
        self.is_hq = isinstance(model, SamHQModel)
        self.hq_token_only = hq_token_only
        size = self.image_size
        if image_processor is None:
            image_processor = StableSamImageProcessor(
                size={"longest_edge": size}, pad_size={"height": size, "width": size}
            )
        self.image_processor = image_processor
        self.processor = StableSamProcessor(image_processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> ImageEncoding:
        """Runs the image encoder on `image` (`torch.Tensor` of shape `(3, height, width)`, uint8)."""
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"`image` must be a uint8 tensor of shape (3, height, width), got {_describe(image)}.")
        inputs = self.image_processor(
            images=image.permute(1, 2, 0).numpy(), input_data_format="channels_last", return_tensors="pt"
        )
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        outputs = self.model.vision_encoder(pixel_values)
        features = {"image_embeddings": outputs.last_hidden_state}
        if self.is_hq:
            features["intermediate_embeddings"] = outputs.intermediate_embeddings
        original = tuple(int(v) for v in inputs["original_sizes"][0])
        reshaped = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
        return ImageEncoding(features, original, reshaped)

    def to_model_frame(self, prompts: dict[str, torch.Tensor], encoding: ImageEncoding) -> dict[str, torch.Tensor]:
        """Scales `input_boxes` (`(N, 4)`) / `input_points` (`(N, P, 2)`) from the original frame to the resized
        input through the processor, as for its own users."""
        keys = [key for key in ("input_boxes", "input_points") if key in prompts]
        # Labels go with the points, so that the processor checks them and leaves padding points alone
        given = [key for key in (*keys, "input_labels") if key in prompts]
        inputs = self.processor(
            original_sizes=[encoding.original_size],
            **{key: [prompts[key].tolist()] for key in given},  # 1 image x N prompts x ...
            return_tensors="pt",
        )
        return {**prompts, **{key: inputs[key][0].float() for key in keys}}

    def postprocess(self, low_res: torch.Tensor, encoding: ImageEncoding, chunk_size: int = 4) -> torch.Tensor:
        """
        SAM's `post_process_masks`: low-res logits upsampled to the padded input size, cropped to the resized image,
        resized to the original size, thresholded at 0.

        Args:
            low_res (`torch.Tensor` of shape `(num_masks, mask_size, mask_size)`): low-resolution mask logits.
            encoding (`ImageEncoding`): the image's geometry.
            chunk_size (`int`): masks upsampled at a time (bounds the memory on large images).

        Returns:
            `torch.Tensor` of shape `(num_masks, height, width)`, bool.
        """
        masks = []
        for chunk in low_res.split(chunk_size):
            (upsampled,) = self.image_processor.post_process_masks(
                [chunk[:, None].float().cpu()], [encoding.original_size], [encoding.reshaped_size]
            )
            masks.append(upsampled[:, 0].to(low_res.device))
        return torch.cat(masks)

    @torch.no_grad()
    def predict(
        self, encoding: ImageEncoding, prompts: dict[str, torch.Tensor], routing_weight: float | None = None
    ) -> Prediction:
        """
        Masks for `num_prompts` prompts of one kind on an encoded image, one prompt per mask.

        Args:
            encoding (`ImageEncoding`): from `encode`.
            prompts (`dict`): `input_boxes` (`(num_prompts, 4)`) or `input_points` (`(num_prompts, num_points, 2)`)
                and `input_labels` (`(num_prompts, num_points)`), in the original image's pixel frame.
            routing_weight (`float`, *optional*): forced alpha_1 (Stable-SAM only).
        """
        if routing_weight is not None and not self.is_stable:
            raise ValueError("`routing_weight` can only be forced on a Stable-SAM model.")
        prompts = self.to_model_frame(prompts, encoding)
        num_prompts = next(iter(prompts.values())).shape[0]
        extra = {"multimask_output": False}
        if self.is_hq:
            extra["hq_token_only"] = self.hq_token_only
        if routing_weight is not None:
            extra["routing_weight"] = float(routing_weight)
        masks, scores, routing = [], [], []
        for start in range(0, num_prompts, self.decoder_batch_size):
            chunk = {key: value[None, start : start + self.decoder_batch_size] for key, value in prompts.items()}
            chunk = {key: value.to(self.device) for key, value in chunk.items()}  # 1 x K x ...
            outputs = self.model(**encoding.features, **chunk, **extra)
            masks.append(self.postprocess(outputs.pred_masks[0, :, 0], encoding))
            scores.append(outputs.iou_scores[0, :, 0].float().cpu())
            if self.is_stable:
                routing.append(outputs.routing_weights[0].float().cpu())
        return Prediction(torch.cat(masks), torch.cat(scores), torch.cat(routing) if routing else None)

    @torch.no_grad()
    def predict_clicks(
        self, encoding: ImageEncoding, points: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        One mask for a set of clicks, with the previous low-resolution logits as the mask prompt (the interactive
        protocol's step).

        Args:
            points (`torch.Tensor` of shape `(num_clicks, 2)`): (x, y) in the original image's pixel frame.
            labels (`torch.Tensor` of shape `(num_clicks,)`): 1 positive, 0 negative.
            mask_logits (`torch.Tensor` of shape `(mask_size, mask_size)`, *optional*): the previous step's logits.

        Returns:
            the mask (`(height, width)`, bool, original resolution), its low-resolution logits and Stable-SAM's
            routing weights (`(2,)`: alpha_1, alpha_2; None for other models).
        """
        prompts = self.to_model_frame({"input_points": points[None], "input_labels": labels[None]}, encoding)
        inputs = {
            "input_points": prompts["input_points"][None].to(self.device),  # 1 x 1 x N x 2
            "input_labels": labels[None, None].to(self.device),  # 1 x 1 x N
        }
        if mask_logits is not None:
            inputs["input_masks"] = mask_logits[None, None].to(self.device, self.model.dtype)  # 1 x 1 x H x W
        extra = {"multimask_output": False}
        if self.is_hq:
            extra["hq_token_only"] = self.hq_token_only
        outputs = self.model(**encoding.features, **inputs, **extra)
        low_res = outputs.pred_masks[0, 0, 0]
        routing = outputs.routing_weights[0, 0].float().cpu() if self.is_stable else None
        return self.postprocess(low_res[None], encoding)[0], low_res, routing


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# Scores


class ObjectScores(NamedTuple):
    """Per-prompt IoU and boundary IoU of one object (lists of floats), and its stability (None for one prompt)."""

    iou: list[float]
    boundary_iou: list[float]
    stability: float | None


def score_object(
    masks: torch.Tensor, gt: torch.Tensor, *, dilation_ratio: float = 0.02, chunk_size: int = 4
) -> ObjectScores:
    """
    Mask IoU, boundary IoU and stability of the predictions for one object.

    Args:
        masks (`torch.Tensor` of shape `(num_prompts, height, width)`): predicted masks, bool, at the ground truth's
            resolution.
        gt (`torch.Tensor` of shape `(height, width)`): the ground truth, bool.
        dilation_ratio (`float`): boundary band width as a fraction of the image diagonal.
        chunk_size (`int`): predictions per boundary computation (bounds the memory on large images).

    Returns:
        `ObjectScores`.
    """
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.ndim != 3:
        raise ValueError(
            f"`masks` must be a bool tensor of shape (num_prompts, height, width), got {_describe(masks)}."
        )
    if not isinstance(gt, torch.Tensor) or gt.dtype != torch.bool or gt.ndim != 2:
        raise ValueError(f"`gt` must be a bool tensor of shape (height, width), got {_describe(gt)}.")
    if masks.shape[-2:] != gt.shape:
        raise ValueError(
            f"Predicted `masks` are {tuple(masks.shape[-2:])} but the ground truth `gt` is {tuple(gt.shape)}: "
            "predictions must be resized to the ground truth's resolution."
        )
    gt = gt.to(masks.device)
    gt_boundary = mask_to_boundary(gt, dilation_ratio)
    iou, boundary = [], []
    for start in range(0, masks.shape[0], chunk_size):
        chunk = masks[start : start + chunk_size]
        iou.append(mask_iou(chunk, gt.expand_as(chunk)))
        pred_boundary = mask_to_boundary(chunk, dilation_ratio)
        boundary.append(mask_iou(pred_boundary, gt_boundary.expand_as(chunk)))
    st = float(stability(masks)) if masks.shape[0] > 1 else None
    return ObjectScores(torch.cat(iou).tolist(), torch.cat(boundary).tolist(), st)


# COCO


class CocoObject(NamedTuple):
    """One non-crowd COCO annotation with its decoded mask (`(height, width)`, bool)."""

    annotation_id: int
    image_id: int
    category_id: int
    mask: torch.Tensor


def coco_objects(coco, image_id: int) -> tuple[list[CocoObject], int]:
    """The non-crowd objects of one image and how many of them have an empty mask (those are left out).

    Args:
        coco (`pycocotools.coco.COCO`): the ground truth.
        image_id (`int`): a COCO image id.
    """
    objects, empty = [], 0
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)):
        mask = torch.from_numpy(coco.annToMask(annotation).astype(bool))
        if not mask.any():
            empty += 1
            continue
        objects.append(CocoObject(int(annotation["id"]), int(image_id), int(annotation["category_id"]), mask))
    return objects, empty


def coco_prompt_boxes(
    objects: list[CocoObject], *, seed: int, noise_scale: float = 0.4, min_iou: float = 0.5, max_iou: float = 0.6
) -> tuple[torch.Tensor, int]:
    """
    One noisy box per object with IoU in `[min_iou, max_iou)` to the object's tight box, seeded per annotation.

    A box with zero width or height (a one-pixel line) or one for which no box in the band is found keeps the exact box.

    Returns:
        boxes (`torch.Tensor` of shape `(num_objects, 4)`) and the number of objects that kept their exact box.
    """
    boxes, exact = [], 0
    for obj in objects:
        box = masks_to_boxes(obj.mask[None])
        generator = prompt_generator(seed, "COCO", str(obj.annotation_id), COCO_PROMPT_TYPE, 0)
        try:
            box = noisy_boxes(
                box, tuple(obj.mask.shape), noise_scale, min_iou=min_iou, max_iou=max_iou, generator=generator
            )
        except ValueError:
            exact += 1
        boxes.append(box)
    return (torch.cat(boxes) if boxes else torch.zeros(0, 4)), exact


def encode_rle(mask: torch.Tensor) -> dict[str, Any]:
    """COCO RLE (`{"size", "counts"}`, counts as str) of a `(height, width)` bool mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.cpu().numpy().astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_detections(objects: list[CocoObject], masks: torch.Tensor, scores: torch.Tensor) -> list[dict[str, Any]]:
    """
    COCO results (one per object, its category, RLE and score) from masks predicted for `objects`.

    Args:
        objects (`list[CocoObject]`): the objects the masks were predicted for, in order.
        masks (`torch.Tensor` of shape `(num_objects, height, width)`): bool, at the image's resolution.
        scores (`torch.Tensor` of shape `(num_objects,)`): confidence, e.g. the predicted IoU.
    """
    if masks.shape[0] != len(objects) or scores.shape != (len(objects),):
        raise ValueError(
            f"`masks` {tuple(masks.shape)} and `scores` {tuple(scores.shape)} must hold one entry per object "
            f"({len(objects)})."
        )
    detections = []
    for obj, mask, score in zip(objects, masks, scores.tolist()):
        if mask.shape != obj.mask.shape:
            raise ValueError(
                f"The mask predicted for annotation {obj.annotation_id} is {tuple(mask.shape)} but its ground truth is "
                f"{tuple(obj.mask.shape)}."
            )
        detections.append(
            {
                "image_id": obj.image_id,
                "category_id": obj.category_id,
                "segmentation": encode_rle(mask),
                "score": float(score),
            }
        )
    return detections


def coco_mask_ap(coco, detections: list[dict[str, Any]], image_ids: list[int]) -> tuple[float, float]:
    """Mask mAP (IoU 0.50:0.95) and mAP50 of `detections` on `image_ids`, with pycocotools; NaN without detections."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    if not detections:
        return math.nan, math.nan
    with contextlib.redirect_stdout(io.StringIO()):
        results = coco.loadRes([dict(detection) for detection in detections])
        evaluator = COCOeval(coco, results, iouType="segm")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


__all__ = [
    "COCO_PROMPT_TYPE",
    "EVALUATION_METHODS",
    "CocoObject",
    "ImageEncoding",
    "ModelSpec",
    "ObjectScores",
    "Prediction",
    "SamPredictor",
    "check_local_or_hub",
    "coco_detections",
    "coco_mask_ap",
    "coco_objects",
    "coco_prompt_boxes",
    "draw_prompts",
    "encode_rle",
    "is_deterministic",
    "load_model",
    "parse_model_spec",
    "path_fingerprint",
    "prompt_generator",
    "score_object",
]
