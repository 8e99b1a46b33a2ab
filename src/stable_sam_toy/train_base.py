"""Trains the toy "foundation" SAM of the offline demo from scratch on synthetic scenes, with clean prompts only.

The model is a `transformers.SamModel` with a small ViT image encoder at 128x128 input (patch 8: a 16x16 image
embedding grid) and SAM's mask decoder width (256), so the Stable-SAM plugins on top of it are the real
81,828-parameter plugins. It is trained the way SAM's prompts mostly are: ground-truth boxes, 3-10 random points,
and boxes with a few points; never noisy boxes or single points. Its held-out mIoU under GT boxes, noisy boxes, 1 and
3 points is logged as it trains.

Two details decide whether a SAM trained from scratch uses its prompts at all:
transformers draws the shared random-Fourier positional embedding (`shared_image_embedding.positional_embedding`)
with standard deviation `vision_config.hidden_size // 2`, where SAM uses 1; this script redraws it with std 1 and
keeps it frozen (a buffer in SAM). `SamVisionConfig.initializer_range` defaults to 1e-10; it is set to 0.02.

Runs (`--resume` continues from the newest `checkpoint-<step>` in `output_dir`):

    python toy/train_toy_base.py --output_dir outputs/toy_base --max_train_steps 8000
    python toy/train_toy_base.py --output_dir outputs/toy_base --max_train_steps 8000 --resume

The final model is written to `output_dir` with `save_pretrained` (safetensors; float16 tensors by default with a
float32 config, so `SamModel.from_pretrained` loads float32), with a model card (`README.md`) and `eval_results.json`.
"""

import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import SamConfig, SamModel, get_cosine_schedule_with_warmup

import stable_sam_hf
from stable_sam_hf.methods import pixel_statistics, segmentation_loss
from stable_sam_hf.prompts import masks_to_boxes, noisy_boxes, sample_points

from .losses import instance_loss
from .synthetic import generate_scenes


logger = logging.getLogger(__name__)

TRAINING_STATE_NAME = "training_state.pt"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PROMPT_KINDS = ("box", "points", "box_points")


@dataclass
class ToyBaseTrainingArguments:
    """Options of `train_toy_base.py`; lengths in pixels, sizes in scenes or prompts."""

    output_dir: str = field(
        default="outputs/toy_base", metadata={"help": "Folder for checkpoints, the final model and its model card."}
    )
    # Data
    image_size: int = field(default=128, metadata={"help": "Side of the square synthetic images and model input."})
    num_train_scenes: int = field(
        default=8000, metadata={"help": "Training scenes generated once before training (domain 'train')."}
    )
    num_eval_scenes: int = field(
        default=64, metadata={"help": "Held-out scenes per evaluation domain (all their objects are evaluated)."}
    )
    data_seed: int = field(default=0, metadata={"help": "Seed of the training scenes."})
    eval_seed: int = field(default=1, metadata={"help": "Seed of the held-out scenes (must differ from data_seed)."})
    eval_shifted: bool = field(
        default=True, metadata={"help": "Also evaluate on the held-out shifted domain (unseen shapes and colours)."}
    )
    eval_prompt_types: list[str] = field(
        default_factory=lambda: ["box", "noisy_box", "points_1", "points_3"],
        metadata={"help": "Evaluation prompt types: 'box', 'noisy_box' or 'points_<k>'."},
    )
    # Model
    patch_size: int = field(default=8, metadata={"help": "ViT patch size; image_size / patch_size is the grid."})
    vision_hidden_size: int = field(default=128, metadata={"help": "Width of the ViT image encoder."})
    vision_num_layers: int = field(default=4, metadata={"help": "Number of ViT layers (all global attention)."})
    vision_num_heads: int = field(default=4, metadata={"help": "Attention heads of the ViT."})
    vision_mlp_dim: int = field(default=512, metadata={"help": "MLP width of the ViT layers."})
    use_rel_pos: bool = field(default=True, metadata={"help": "Relative position embeddings in the ViT, as SAM."})
    decoder_mlp_dim: int = field(
        default=512,
        metadata={
            "help": "MLP width of the mask decoder's two-way transformer (SAM: 2048). It acts on a handful of tokens, "
            "so it costs no time, but at 2048 it would hold 2.1M parameters; the width 256 is SAM's."
        },
    )
    # Optimisation
    max_train_steps: int = field(default=8000, metadata={"help": "Total optimisation steps."})
    train_batch_size: int = field(default=8, metadata={"help": "Images per step."})
    prompts_per_image: int = field(
        default=4, metadata={"help": "Objects prompted per image (point_batch_size); amortises the image encoder."}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (matrices only)."})
    warmup_steps: int = field(default=300, metadata={"help": "Linear warm-up steps before the cosine decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    box_prob: float = field(default=0.45, metadata={"help": "Share of images prompted with GT boxes."})
    points_prob: float = field(default=0.4, metadata={"help": "Share of images prompted with random points only."})
    box_points_prob: float = field(default=0.15, metadata={"help": "Share of images prompted with a box and points."})
    min_points: int = field(default=3, metadata={"help": "Fewest positive points of a points-only prompt."})
    max_points: int = field(default=10, metadata={"help": "Most positive points of a points-only prompt."})
    max_box_points: int = field(default=3, metadata={"help": "Most positive points added to a box (at least 1)."})
    box_jitter: float = field(
        default=0.0,
        metadata={
            "help": "SAM's box noise on training boxes: each coordinate moves by a normal draw with this std times the "
            "box's side, clipped to `box_jitter_max` pixels (SAM: 0.1 and 20 px at 1024). 0 (the default, and how the "
            "shipped base was trained) gives exact GT boxes."
        },
    )
    box_jitter_max: float = field(
        default=2.5,
        metadata={"help": "Largest box-coordinate move of `box_jitter`, in input pixels (SAM's 20 at 128)."},
    )
    iou_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the IoU-head MSE loss."})
    instance_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an auxiliary loss that makes the image embeddings tell objects apart: through a 1x1 "
            "projection head (trained with the model, not saved in it), embedding cells of one object are pulled to "
            "their object's mean direction and the means of different objects (and the background) are pushed to "
            "orthogonal. 0 (the default, and how the shipped base was trained) disables it."
        },
    )
    instance_dim: int = field(default=32, metadata={"help": "Output width of the instance loss's projection head."})
    augment: bool = field(default=True, metadata={"help": "Random 90-degree rotations and flips of the scenes."})
    seed: int = field(default=0, metadata={"help": "Seed of the model initialisation, batches and prompts."})
    num_threads: int = field(
        default=1,
        metadata={
            "help": "torch CPU threads (0 keeps torch's default). One thread is the default: on a shared 2-core "
            "machine a two-thread run slows down several-fold whenever another process is busy."
        },
    )
    # Bookkeeping
    logging_steps: int = field(default=50, metadata={"help": "Log the mean training loss every this many steps."})
    eval_steps: int = field(default=1000, metadata={"help": "Evaluate every this many steps (0: only at the end)."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Write a checkpoint every this many steps."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (the oldest are deleted)."})
    stop_at_step: int = field(
        default=0,
        metadata={
            "help": "End this invocation at this global step with a checkpoint, keeping the learning-rate schedule of "
            "max_train_steps (train in chunks with --resume); 0 runs to max_train_steps and writes the final model."
        },
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the newest checkpoint-<step> in output_dir, if there is one."}
    )
    init_model: str = field(
        default="",
        metadata={
            "help": "Start from this SamModel folder (e.g. models/toy-sam-128) with a fresh optimiser and schedule, "
            "instead of a new model; its saved configuration is used. A checkpoint in output_dir takes precedence "
            "with --resume."
        },
    )
    save_dtype: str = field(
        default="float16",
        metadata={"help": "Dtype of the final weights file: 'float16' (half the size) or 'float32'."},
    )

    def __post_init__(self):
        positive = (
            "image_size",
            "num_train_scenes",
            "num_eval_scenes",
            "patch_size",
            "vision_hidden_size",
            "vision_num_layers",
            "vision_num_heads",
            "vision_mlp_dim",
            "decoder_mlp_dim",
            "max_train_steps",
            "train_batch_size",
            "prompts_per_image",
            "min_points",
            "max_box_points",
            "logging_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "instance_dim",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("`vision_hidden_size` must be a multiple of `vision_num_heads`.")
        if self.max_points < self.min_points:
            raise ValueError(f"`max_points` ({self.max_points}) must be >= `min_points` ({self.min_points}).")
        probabilities = (self.box_prob, self.points_prob, self.box_points_prob)
        if min(probabilities) < 0 or sum(probabilities) <= 0:
            raise ValueError("`box_prob`, `points_prob`, `box_points_prob` must be >= 0 with a positive sum.")
        if self.data_seed == self.eval_seed:
            raise ValueError("`eval_seed` must differ from `data_seed`, or the evaluation scenes are training scenes.")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"`save_dtype` must be 'float16' or 'float32', got {self.save_dtype!r}.")
        if self.init_model and not (Path(self.init_model) / "config.json").is_file():
            raise ValueError(
                f"`init_model` must be a saved SamModel folder (with config.json), got {self.init_model!r}."
            )
        for name in (
            "warmup_steps",
            "eval_steps",
            "num_threads",
            "stop_at_step",
            "instance_loss_weight",
            "box_jitter",
            "box_jitter_max",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for prompt_type in self.eval_prompt_types:
            _parse_eval_prompt(prompt_type)


def _parse_eval_prompt(prompt_type: str) -> tuple[str, int]:
    if prompt_type in ("box", "noisy_box"):
        return prompt_type, 0
    match = re.fullmatch(r"points_([1-9][0-9]*)", prompt_type)
    if match is None:
        raise ValueError(
            f"`eval_prompt_types` entries must be 'box', 'noisy_box' or 'points_<k>', got {prompt_type!r}."
        )
    return "points", int(match.group(1))


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def build_toy_sam_config(args: ToyBaseTrainingArguments) -> SamConfig:
    """A small-encoder SAM configuration: the ViT shrinks, the prompt encoder and mask decoder keep SAM's width 256."""
    vision_config = {
        "hidden_size": args.vision_hidden_size,
        "output_channels": 256,
        "num_hidden_layers": args.vision_num_layers,
        "num_attention_heads": args.vision_num_heads,
        "mlp_dim": args.vision_mlp_dim,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "use_rel_pos": args.use_rel_pos,
        "window_size": 0,
        "global_attn_indexes": list(range(args.vision_num_layers)),
        # transformers' default 1e-10 leaves the encoder at zero
        "initializer_range": 0.02,
    }
    prompt_encoder_config = {"hidden_size": 256, "image_size": args.image_size, "patch_size": args.patch_size}
    mask_decoder_config = {"hidden_size": 256, "mlp_dim": args.decoder_mlp_dim}
    return SamConfig(
        vision_config=vision_config,
        prompt_encoder_config=prompt_encoder_config,
        mask_decoder_config=mask_decoder_config,
    )


def reset_positional_embedding(model: SamModel, generator: torch.Generator | None = None) -> None:
    """Redraws SAM's random Fourier features with std 1 (transformers uses `hidden_size // 2`) and freezes them."""
    embedding = model.shared_image_embedding.positional_embedding
    with torch.no_grad():
        embedding.copy_(torch.randn(embedding.shape, generator=generator, dtype=embedding.dtype))
    embedding.requires_grad_(False)


def _model_options(config: SamConfig) -> dict:
    vision = config.vision_config
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_dim", "image_size", "patch_size")
    options = {name: getattr(vision, name) for name in names}
    options.update(use_rel_pos=vision.use_rel_pos, decoder_mlp_dim=config.mask_decoder_config.mlp_dim)
    return options


def build_toy_sam(args: ToyBaseTrainingArguments) -> SamModel:
    """A freshly initialised toy SAM, seeded by `args.seed`, with a std-1 frozen positional embedding."""
    torch.manual_seed(args.seed)
    model = SamModel(build_toy_sam_config(args))
    reset_positional_embedding(model, torch.Generator().manual_seed(args.seed))
    return model


# ---------------------------------------------------------------------------------------------------------------
# Data and prompts
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SceneBank:
    """Pre-generated scenes: `images` `(N, H, W, 3)` uint8, `labels` `(N, H, W)` uint8, `num_objects` `(N,)`."""

    images: torch.Tensor
    labels: torch.Tensor
    num_objects: torch.Tensor

    @classmethod
    def generate(cls, num_scenes: int, size: int, domain: str, seed: int) -> "SceneBank":
        images, labels = generate_scenes(num_scenes, size=size, domain=domain, seed=seed)
        labels = torch.from_numpy(labels)
        return cls(torch.from_numpy(images), labels, labels.flatten(1).amax(1).long())


def to_pixel_values(images) -> torch.Tensor:
    """`(B, H, W, 3)` uint8 images (tensor or array) to SAM's normalised `(B, 3, H, W)` float pixel values, with the
    image processor's statistics."""
    mean, std = pixel_statistics()
    return (torch.as_tensor(images).permute(0, 3, 1, 2).float() - mean) / std  # B x 3 x H x W


def sample_batch(
    bank: SceneBank, batch_size: int, prompts_per_image: int, augment: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random scenes and objects: pixel values `(B, 3, H, W)`, masks `(B, P, H, W)` bool and the scenes' label maps
    `(B, H, W)` (0 background, 1..n objects)."""
    indices = torch.randint(len(bank.images), (batch_size,), generator=generator)
    images, labels = bank.images[indices], bank.labels[indices]
    if augment:
        images, labels = images.clone(), labels.clone()
        for i in range(batch_size):
            turns, flip = torch.randint(4, (2,), generator=generator).tolist()
            image, label = torch.rot90(images[i], turns, (0, 1)), torch.rot90(labels[i], turns, (0, 1))
            if flip % 2:
                image, label = image.flip(1), label.flip(1)
            images[i], labels[i] = image, label
    object_ids = []
    for count in bank.num_objects[indices].tolist():
        if count >= prompts_per_image:
            object_ids.append(torch.randperm(count, generator=generator)[:prompts_per_image] + 1)
        else:
            object_ids.append(torch.randint(count, (prompts_per_image,), generator=generator) + 1)
    object_ids = torch.stack(object_ids).to(labels.dtype)  # B x P
    masks = labels[:, None] == object_ids[:, :, None, None]  # B x P x H x W
    return to_pixel_values(images), masks, labels


def jitter_boxes(
    boxes: torch.Tensor, std: float, max_shift: float, size: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """SAM's training box noise: boxes `(M, 4)` (x0, y0, x1, y1) with each coordinate moved by N(0, std * side),
    clipped to `max_shift` pixels, then to the image `size` (H, W), keeping x0 <= x1 and y0 <= y1."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # M x 4: w, h, w, h
    shift = (torch.randn(boxes.shape, generator=generator) * std * sides).clamp(-max_shift, max_shift)
    moved = boxes + shift
    height, width = size
    moved[:, 0::2] = moved[:, 0::2].clamp(0, width)
    moved[:, 1::2] = moved[:, 1::2].clamp(0, height)
    low, high = torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])
    return torch.cat([low, high], dim=1)


def clean_prompt(
    masks: torch.Tensor,
    kind: str,
    num_points: int,
    generator: torch.Generator,
    box_jitter: float = 0.0,
    box_jitter_max: float = 0.0,
) -> dict:
    """Model inputs for masks `(n, P, H, W)`: GT boxes `(n, P, 4)` (with SAM's jitter if `box_jitter` > 0) and/or
    positive points `(n, P, k, 2)`."""
    n, p = masks.shape[:2]
    flat = masks.flatten(0, 1)
    inputs = {}
    if kind in ("box", "box_points"):
        boxes = masks_to_boxes(flat)
        if box_jitter > 0:
            boxes = jitter_boxes(boxes, box_jitter, box_jitter_max, tuple(flat.shape[-2:]), generator)
        inputs["input_boxes"] = boxes.view(n, p, 4)
    if kind in ("points", "box_points"):
        points, labels = sample_points(flat, num_points, generator=generator)
        inputs["input_points"] = points.view(n, p, num_points, 2)
        inputs["input_labels"] = labels.view(n, p, num_points)
    return inputs


def eval_prompt(masks: torch.Tensor, prompt_type: str, generator: torch.Generator) -> dict:
    """Model inputs for masks `(M, H, W)` under one evaluation prompt type, with point batch size 1."""
    kind, num_points = _parse_eval_prompt(prompt_type)
    if kind == "points":
        points, labels = sample_points(masks, num_points, generator=generator)
        return {"input_points": points[:, None], "input_labels": labels[:, None]}
    boxes = masks_to_boxes(masks)
    if kind == "noisy_box":
        boxes = noisy_boxes(boxes, tuple(masks.shape[-2:]), noise_scale=0.4, min_iou=0.5, generator=generator)
    return {"input_boxes": boxes[:, None]}


# ---------------------------------------------------------------------------------------------------------------
# Loss and evaluation
# ---------------------------------------------------------------------------------------------------------------


def upsample_logits(pred_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Low-resolution logits `(n, P, 1, h, w)` to `(n, P, H, W)` at the image's resolution."""
    n, p = pred_masks.shape[:2]
    logits = F.interpolate(pred_masks.flatten(0, 2)[:, None], size=size, mode="bilinear", align_corners=False)
    return logits.view(n, p, *size)


def mask_and_iou_loss(
    logits: torch.Tensor, iou_scores: torch.Tensor, masks: torch.Tensor, iou_loss_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask BCE + dice (the training recipe's `segmentation_loss`) + weighted IoU-head MSE.

    Args:
        logits (`torch.Tensor` of shape `(N, H, W)`): mask logits at the masks' resolution.
        iou_scores (`torch.Tensor` of shape `(N,)`): predicted IoUs.
        masks (`torch.Tensor` of shape `(N, H, W)`): bool ground truth.
        iou_loss_weight (`float`): weight of the IoU-head term.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the losses (`(N,)`) and the IoU of the thresholded predictions (`(N,)`).
    """
    with torch.no_grad():
        predicted = (logits > 0).flatten(1)
        truth = masks.flatten(1)
        iou = (predicted & truth).sum(1) / (predicted | truth).sum(1).clamp(min=1)
    iou_loss = (iou_scores - iou) ** 2
    return segmentation_loss(logits, masks, reduction="none") + iou_loss_weight * iou_loss, iou


@torch.no_grad()
def evaluate(
    model: SamModel, bank: SceneBank, prompt_types: list[str], seed: int, chunk_size: int = 64
) -> dict[str, float]:
    """mIoU (0-100) over every object of every scene in `bank`, per prompt type, with seeded prompts.

    Predictions are the single-mask output (`multimask_output=False`) upsampled to the image and thresholded at 0.
    """
    was_training = model.training
    model.eval()
    size = tuple(bank.labels.shape[-2:])
    embeddings = torch.cat(
        [
            model.get_image_embeddings(to_pixel_values(bank.images[start : start + chunk_size]))
            for start in range(0, len(bank.images), chunk_size)
        ]
    )
    scene_index = torch.repeat_interleave(torch.arange(len(bank.images)), bank.num_objects)
    object_id = torch.cat([torch.arange(1, count + 1) for count in bank.num_objects.tolist()])
    masks = bank.labels[scene_index] == object_id[:, None, None].to(bank.labels.dtype)  # M x H x W
    results = {}
    for prompt_type in prompt_types:
        inputs = eval_prompt(masks, prompt_type, torch.Generator().manual_seed(seed))
        ious = []
        for start in range(0, len(masks), chunk_size):
            stop = start + chunk_size
            outputs = model(
                image_embeddings=embeddings[scene_index[start:stop]],
                multimask_output=False,
                **{name: value[start:stop] for name, value in inputs.items()},
            )
            predicted = upsample_logits(outputs.pred_masks, size)[:, 0] > 0
            truth = masks[start:stop]
            ious.append((predicted & truth).flatten(1).sum(1) / (predicted | truth).flatten(1).sum(1).clamp(min=1))
        results[prompt_type] = 100 * torch.cat(ious).mean().item()
    model.train(was_training)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and model card
# ---------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders holding a training state, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / TRAINING_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(
    output_dir: Path, model, optimizer, generator, step: int, history, limit: int, instance_head=None
) -> Path:
    """Writes `output_dir/checkpoint-<step>` (model via `save_pretrained`, float32) and deletes the oldest ones."""
    path = output_dir / f"checkpoint-{step}"
    model.save_pretrained(path)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    if instance_head is not None:
        state["instance_head"] = instance_head.state_dict()
    # Written last: a checkpoint without it is incomplete and ignored on resume
    torch.save(state, path / TRAINING_STATE_NAME)
    for old in list_checkpoints(output_dir)[:-limit]:
        shutil.rmtree(old)
    return path


def save_final_model(model: SamModel, output_dir: Path, save_dtype: str) -> None:
    """`save_pretrained` into `output_dir`; float16 tensors keep a float32 config, so loading gives float32."""
    state_dict = None
    if save_dtype == "float16":
        state_dict = {name: tensor.to(torch.float16) for name, tensor in model.state_dict().items()}
    model.save_pretrained(output_dir, state_dict=state_dict)


def _training_extras(args: ToyBaseTrainingArguments) -> str:
    extras = []
    if args.init_model:
        extras.append(f"It started from the weights of `{args.init_model}` (a fresh optimiser and schedule).")
    if args.box_jitter > 0:
        extras.append(
            f"Its training boxes carried SAM's box noise (std {args.box_jitter} of the box side per coordinate, at most "
            f"{args.box_jitter_max} px)."
        )
    if args.instance_loss_weight > 0:
        extras.append(
            f"An auxiliary instance loss (weight {args.instance_loss_weight}, through a {args.instance_dim}-wide 1x1 "
            "projection head that is not part of this model) trained the image embeddings to tell objects apart."
        )
    return "".join(" " + extra for extra in extras)


def model_card(args: ToyBaseTrainingArguments, num_parameters: int, results: dict, train_seconds: float) -> str:
    """The model card (`README.md`) of the trained toy base."""
    domains = list(results)
    prompt_types = list(next(iter(results.values()))) if results else []
    table = ["| domain | " + " | ".join(prompt_types) + " |", "|---" * (len(prompt_types) + 1) + "|"]
    for domain in domains:
        table.append(f"| {domain} | " + " | ".join(f"{results[domain][p]:.1f}" for p in prompt_types) + " |")
    hyperparameters = json.dumps(asdict(args), indent=2)
    return f"""---
library_name: transformers
tags:
- sam
- mask-generation
- toy
- synthetic-data
---

# Toy SAM for the Stable-SAM offline demo (not SAM)

A tiny `SamModel` trained from scratch on synthetic scenes by `toy/train_toy_base.py` of stable-sam-hf. It
exists so that the Stable-SAM demo, tests and benchmarks run offline in minutes; it is **not** Segment Anything,
has never seen a natural image, and is useless outside the synthetic scenes of `stable_sam_toy.synthetic`.

## What it is
- Image encoder: a {args.vision_num_layers}-layer ViT, width {args.vision_hidden_size}, {args.vision_num_heads} heads,
  global attention, input {args.image_size}x{args.image_size}, patch {args.patch_size} (a
  {args.image_size // args.patch_size}x{args.image_size // args.patch_size} image embedding grid, 256 channels).
- Prompt encoder and mask decoder: SAM's, width 256 (decoder MLP width {args.decoder_mlp_dim}, SAM: 2048), so
  Stable-SAM's DSP + DRP plugins on top are the real 81,828-parameter plugins.
- {num_parameters:,} parameters. Weights stored as {args.save_dtype} safetensors; the config says float32, so
  `SamModel.from_pretrained` loads float32.
- The shared positional embedding holds SAM's random Fourier features with std 1 (transformers' initialisation
  uses `hidden_size // 2`, with which a SAM trained from scratch ignores its prompts).
- Only the single-mask output is trained: call it with `multimask_output=False`. Inputs: RGB {args.image_size}x{args.image_size}
  images normalised as `SamImageProcessor` does (ImageNet mean and std); prompt coordinates in input pixels.

## How it was trained
{args.num_train_scenes} synthetic scenes of the `train` domain (seed {args.data_seed}; the generator of stable-sam-hf
{stable_sam_hf.__version__}), {args.max_train_steps} steps of
{args.train_batch_size} images x {args.prompts_per_image} objects, AdamW (peak lr {args.learning_rate}, weight decay
{args.weight_decay}, {args.warmup_steps} warm-up steps, cosine decay), BCE + dice + IoU-head MSE, with clean prompts
only: ground-truth boxes, {args.min_points}-{args.max_points} random positive points, and boxes with 1-{args.max_box_points}
points. Training took {train_seconds / 3600:.2f} hours on CPU.{_training_extras(args)}

## Measured
mIoU (0-100) over every object of {args.num_eval_scenes} held-out scenes per domain (seed {args.eval_seed}); noisy
boxes as HQ-SAM (noise 0.4, IoU >= 0.5 with the GT box), random positive points; `shifted` scenes have shapes, colours
and textures never seen in training.

{chr(10).join(table)}

## Hyperparameters
```json
{hyperparameters}
```
"""


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def _split_by_prompt_kind(args: ToyBaseTrainingArguments, generator: torch.Generator) -> list[torch.Tensor]:
    weights = torch.tensor([args.box_prob, args.points_prob, args.box_points_prob], dtype=torch.float)
    kinds = torch.multinomial(weights, args.train_batch_size, replacement=True, generator=generator)
    return [torch.nonzero(kinds == k).flatten() for k in range(len(PROMPT_KINDS))]


def training_step(
    model: SamModel, args, pixel_values, masks, generator, labels=None, instance_head=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mean loss, per-mask IoUs and the instance loss (`None` without `instance_head`) of one batch.

    Each prompt kind is one decoder call on shared image embeddings. With `instance_head` (and the scenes' `labels`),
    `args.instance_loss_weight` times `instance_loss` of the projected embeddings is added to the returned loss.
    """
    image_embeddings = model.vision_encoder(pixel_values).last_hidden_state  # B x 256 x g x g
    size = tuple(masks.shape[-2:])
    losses, ious = [], []
    for kind, rows in zip(PROMPT_KINDS, _split_by_prompt_kind(args, generator)):
        if rows.numel() == 0:
            continue
        if kind == "points":
            num_points = int(torch.randint(args.min_points, args.max_points + 1, (1,), generator=generator))
        elif kind == "box_points":
            num_points = int(torch.randint(1, args.max_box_points + 1, (1,), generator=generator))
        else:
            num_points = 0
        inputs = clean_prompt(masks[rows], kind, num_points, generator, args.box_jitter, args.box_jitter_max)
        outputs = model(image_embeddings=image_embeddings[rows], multimask_output=False, **inputs)
        logits = upsample_logits(outputs.pred_masks, size).flatten(0, 1)  # n*P x H x W
        loss, iou = mask_and_iou_loss(
            logits, outputs.iou_scores.flatten(), masks[rows].flatten(0, 1), args.iou_loss_weight
        )
        losses.append(loss)
        ious.append(iou)
    loss = torch.cat(losses).mean()
    auxiliary = None
    if instance_head is not None:
        auxiliary = instance_loss(instance_head(image_embeddings), labels)
        loss = loss + args.instance_loss_weight * auxiliary
    return loss, torch.cat(ious), auxiliary


def _parameter_groups(model: SamModel, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 and "pos" not in name else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _evaluate_all(model, banks: dict, args) -> dict[str, dict[str, float]]:
    return {domain: evaluate(model, bank, args.eval_prompt_types, args.eval_seed) for domain, bank in banks.items()}


def _log_results(step: int, results: dict) -> None:
    for domain, values in results.items():
        summary = ", ".join(f"{name} {value:.1f}" for name, value in values.items())
        logger.info("step %d eval mIoU [%s]: %s", step, domain, summary)


def main(args: ToyBaseTrainingArguments) -> dict:
    """Trains (or resumes) the toy base and writes it to `args.output_dir`.

    Returns:
        `dict` with `global_step`, `train_loss` (mean over the last logging window), `eval` (mIoU per domain and
        prompt type), `output_dir` and `num_parameters`.
    """
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    transformers.utils.logging.disable_progress_bar()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    train_bank = SceneBank.generate(args.num_train_scenes, args.image_size, "train", args.data_seed)
    eval_banks = {"train": SceneBank.generate(args.num_eval_scenes, args.image_size, "train", args.eval_seed)}
    if args.eval_shifted:
        eval_banks["shifted"] = SceneBank.generate(args.num_eval_scenes, args.image_size, "shifted", args.eval_seed)
    logger.info(
        "generated %d training scenes (%d objects) and %d held-out scenes per domain in %.1f s",
        len(train_bank.images),
        int(train_bank.num_objects.sum()),
        args.num_eval_scenes,
        time.perf_counter() - start,
    )

    checkpoints = list_checkpoints(output_dir) if args.resume else []
    if checkpoints:
        model = SamModel.from_pretrained(checkpoints[-1])
        model.shared_image_embedding.positional_embedding.requires_grad_(False)
        if _model_options(model.config) != _model_options(build_toy_sam_config(args)):
            logger.warning("the model options differ from %s; its saved configuration is used", checkpoints[-1])
    elif args.init_model:
        model = SamModel.from_pretrained(args.init_model, dtype=torch.float32)
        model.shared_image_embedding.positional_embedding.requires_grad_(False)
        logger.info("starting from %s", args.init_model)
    else:
        model = build_toy_sam(args)
    model.train()
    num_parameters = sum(p.numel() for p in model.parameters())
    parameter_groups = _parameter_groups(model, args.weight_decay)
    instance_head = None
    if args.instance_loss_weight > 0:
        torch.manual_seed(args.seed)
        instance_head = torch.nn.Conv2d(model.config.vision_config.output_channels, args.instance_dim, 1)
        parameter_groups.append({"params": list(instance_head.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(parameter_groups, lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    global_step, history = 0, []
    if checkpoints:
        state = torch.load(checkpoints[-1] / TRAINING_STATE_NAME, weights_only=True)
        if (instance_head is None) != ("instance_head" not in state):
            raise ValueError(
                f"`instance_loss_weight` must be {'> 0' if 'instance_head' in state else '0'} to resume from "
                f"{checkpoints[-1]}, which was trained {'with' if 'instance_head' in state else 'without'} it."
            )
        if instance_head is not None:
            instance_head.load_state_dict(state["instance_head"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        global_step, history = state["step"], state["history"]
        logger.info("resumed from %s at step %d", checkpoints[-1], global_step)
    elif args.resume:
        logger.info("no checkpoint in %s: starting from scratch", output_dir)
    # The schedule is a function of the step and the current max_train_steps, so a resumed run may extend it
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, args.warmup_steps, args.max_train_steps, last_epoch=global_step - 1
    )
    logger.info(
        "toy SAM: %d parameters (vision %d, decoder %d); %d steps of %d images x %d prompts",
        num_parameters,
        sum(p.numel() for p in model.vision_encoder.parameters()),
        sum(p.numel() for p in model.mask_decoder.parameters()),
        args.max_train_steps,
        args.train_batch_size,
        args.prompts_per_image,
    )

    window_loss, window_iou, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
    window_instance = 0.0
    train_loss = float("nan")
    train_start = time.perf_counter()
    seconds_before = max((entry.get("train_seconds", 0.0) for entry in history), default=0.0)
    last_step = min(args.stop_at_step or args.max_train_steps, args.max_train_steps)
    while global_step < last_step:
        pixel_values, masks, labels = sample_batch(
            train_bank, args.train_batch_size, args.prompts_per_image, args.augment, generator
        )
        loss, iou, auxiliary = training_step(model, args, pixel_values, masks, generator, labels, instance_head)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {global_step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            if instance_head is not None:
                torch.nn.utils.clip_grad_norm_(instance_head.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        global_step += 1
        window_loss += loss.item()
        window_iou += iou.mean().item()
        window_instance += auxiliary.item() if auxiliary is not None else 0.0
        window_steps += 1

        if global_step % args.logging_steps == 0 or global_step == last_step:
            elapsed = time.perf_counter() - window_start
            train_loss = window_loss / window_steps
            logger.info(
                "step %d/%d loss %.4f train IoU %.1f lr %.2e %.3f s/step%s",
                global_step,
                args.max_train_steps,
                train_loss,
                100 * window_iou / window_steps,
                scheduler.get_last_lr()[0],
                elapsed / window_steps,
                f" (instance loss {window_instance / window_steps:.4f})" if instance_head is not None else "",
            )
            entry = {
                "step": global_step,
                "loss": train_loss,
                "train_seconds": seconds_before + time.perf_counter() - train_start,
            }
            if instance_head is not None:
                entry["instance_loss"] = window_instance / window_steps
            history.append(entry)
            window_loss, window_iou, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
            window_instance = 0.0
        if args.eval_steps and global_step % args.eval_steps == 0 and global_step < last_step:
            results = _evaluate_all(model, eval_banks, args)
            _log_results(global_step, results)
            history.append({"step": global_step, "eval": results})
        if global_step % args.checkpointing_steps == 0 or global_step == last_step:
            path = save_checkpoint(
                output_dir,
                model,
                optimizer,
                generator,
                global_step,
                history,
                args.checkpoints_total_limit,
                instance_head,
            )
            logger.info("saved %s", path)

    results = _evaluate_all(model, eval_banks, args)
    _log_results(global_step, results)
    train_seconds = seconds_before + time.perf_counter() - train_start
    if global_step >= args.max_train_steps:
        save_final_model(model, output_dir, args.save_dtype)
        (output_dir / "eval_results.json").write_text(
            json.dumps({"step": global_step, "eval": results}, indent=2) + "\n"
        )
        (output_dir / "README.md").write_text(model_card(args, num_parameters, results, train_seconds))
        logger.info("wrote the toy base and its model card to %s", output_dir)
    else:
        logger.info("stopped at step %d of %d; continue with --resume", global_step, args.max_train_steps)
    return {
        "global_step": global_step,
        "train_loss": train_loss,
        "eval": results,
        "output_dir": str(output_dir),
        "num_parameters": num_parameters,
    }
