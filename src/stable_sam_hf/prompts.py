"""Prompt generation for training and evaluation: ground-truth boxes, noisy boxes, points and coarse masks.

Conventions shared by every function here:

- Masks are `(num_masks, height, width)` tensors (or numpy arrays) of dtype bool, integer 0/1, integer 0-255 (foreground
  is > 128, as in HQ-SAM and the evaluation protocol) or floating 0-1 (foreground is > 0.5).
- Coordinates are pixel indices in the frame of the mask: `x` is the column, `y` the row. A box `[x0, y0, x1, y1]`
  spans the pixels `x0..x1` and `y0..y1` inclusive (HQ-SAM's `misc.masks_to_boxes` and SAM's `batched_mask_to_box`);
  a point `[x, y]` is the pixel in column `x`, row `y`. SAM's prompt encoder adds 0.5 to both to reach the pixel centre,
  so these coordinates go to `SamProcessor`/`StableSamProcessor` (original image frame) or straight to the model when
  the mask is already in the model's input frame.
- Mask prompts are low-resolution logits `(num_masks, 1, 256, 256)` in SAM's mask-prompt frame: the mask is resized
  with its longest side to 256 and padded at the bottom and right, the geometry `SamProcessor` applies to images (longest
  side 1024, then pad) divided by 4. Foreground is `+logit_scale`, background `-logit_scale`.
- Every random function takes `generator` (a `torch.Generator` on the masks' device, or `None` for torch's global
  generator): the same seed gives the same prompts.
"""

import math
import re
from enum import Enum

import torch
import torch.nn.functional as F

from .mask_prompts import (
    DEFAULT_MASK_LOGIT,
    as_tensor,
    binarize_masks,
    masks_to_prompt_logits,
    resize_masks_to_prompt_frame,
)


class PromptType(str, Enum):
    """Prompt types of the training mix and the evaluation protocol; any `"points_<k>"` string is accepted too."""

    BOX = "box"
    NOISY_BOX = "noisy_box"
    POINTS_1 = "points_1"
    POINTS_3 = "points_3"
    POINTS_5 = "points_5"
    POINTS_10 = "points_10"
    COARSE_MASK = "coarse_mask"


TRAINING_PROMPT_TYPES = tuple(PromptType)
EVALUATION_PROMPT_TYPES = (
    PromptType.BOX,
    PromptType.NOISY_BOX,
    PromptType.POINTS_1,
    PromptType.POINTS_3,
    PromptType.POINTS_5,
    PromptType.POINTS_10,
)

_POINTS_PATTERN = re.compile(r"^points_([1-9][0-9]*)$")


def parse_prompt_type(prompt_type: "str | PromptType") -> tuple[str, int]:
    """Splits a prompt type into its kind (`"box"`, `"noisy_box"`, `"points"`, `"coarse_mask"`) and point count.

    Returns:
        `tuple[str, int]`: the kind and the number of points (0 for kinds other than `"points"`).
    """
    value = prompt_type.value if isinstance(prompt_type, PromptType) else prompt_type
    if not isinstance(value, str):
        raise TypeError(f"`prompt_type` must be a str or PromptType, got {type(prompt_type).__name__}.")
    if value in ("box", "noisy_box", "coarse_mask"):
        return value, 0
    match = _POINTS_PATTERN.match(value)
    if match is None:
        raise ValueError(
            f"`prompt_type` must be one of 'box', 'noisy_box', 'coarse_mask' or 'points_<k>' with k >= 1, got {value!r}."
        )
    return "points", int(match.group(1))


def random_prompt_type(
    prompt_types: tuple = TRAINING_PROMPT_TYPES, generator: torch.Generator | None = None
) -> "str | PromptType":
    """Draws one prompt type uniformly from `prompt_types` (the training mix by default)."""
    if len(prompt_types) == 0:
        raise ValueError("`prompt_types` must not be empty.")
    for prompt_type in prompt_types:
        parse_prompt_type(prompt_type)
    index = int(torch.randint(len(prompt_types), (1,), generator=generator).item())
    return prompt_types[index]


def _check_not_empty(masks: torch.Tensor, name: str) -> None:
    empty = ~masks.flatten(1).any(dim=1)
    if empty.any():
        indices = empty.nonzero().flatten().tolist()
        raise ValueError(f"`{name}` has empty masks (no foreground pixel) at index {indices}.")


def _check_boxes(boxes, name: str = "boxes") -> torch.Tensor:
    boxes = as_tensor(boxes, name)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"`{name}` must have shape (num_boxes, 4) as [x0, y0, x1, y1], got shape {tuple(boxes.shape)}."
        )
    if not boxes.is_floating_point():
        boxes = boxes.float()
    if not torch.isfinite(boxes).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        indices = degenerate.nonzero().flatten().tolist()
        raise ValueError(
            f"`{name}` has degenerate boxes (x1 <= x0 or y1 <= y0) at index {indices}: {boxes[degenerate].tolist()}."
        )
    return boxes


def masks_to_boxes(masks) -> torch.Tensor:
    """Tight boxes around masks, as `[x0, y0, x1, y1]` with x1/y1 the last foreground column/row (inclusive).

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`):
            Bool, 0/1, 0-255 or floating 0-1 masks; none may be empty.

    Returns:
        `torch.Tensor` of shape `(num_masks, 4)` and dtype float32.
    """
    masks = binarize_masks(masks)
    _check_not_empty(masks, "masks")
    rows = masks.any(dim=2)  # N x H
    cols = masks.any(dim=1)  # N x W
    height, width = masks.shape[-2:]
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    y0 = torch.where(rows, row_index, height).amin(dim=1)
    y1 = torch.where(rows, row_index, -1).amax(dim=1)
    x0 = torch.where(cols, col_index, width).amin(dim=1)
    x1 = torch.where(cols, col_index, -1).amax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two sets of `[x0, y0, x1, y1]` boxes, areas as `(x1 - x0) * (y1 - y0)`.

    Args:
        boxes1 (`torch.Tensor` of shape `(num_boxes, 4)`)
        boxes2 (`torch.Tensor` of shape `(num_boxes, 4)`)

    Returns:
        `torch.Tensor` of shape `(num_boxes,)`; 0 where the union is empty.

    Unlike `torchvision.ops.box_iou` this does not pair every box with every other one (`pairwise_box_iou` of
    `stable_sam_hf.image_processing_stable_sam` does), so the two sets must have the same shape.
    """
    if boxes1.ndim != 2 or boxes1.shape[-1] != 4 or boxes1.shape != boxes2.shape:
        raise ValueError(
            f"`boxes1` and `boxes2` must both have shape (num_boxes, 4), got {tuple(boxes1.shape)} and "
            f"{tuple(boxes2.shape)}."
        )
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def _check_image_size(image_size) -> tuple[int, int]:
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"`image_size` must be (height, width), got {image_size!r}.")
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"`image_size` must be positive (height, width), got {image_size!r}.")
    return height, width


def noisy_boxes(
    boxes,
    image_size: tuple[int, int],
    noise_scale: float = 0.4,
    min_iou: float = 0.5,
    max_iou: float | None = None,
    generator: torch.Generator | None = None,
    max_tries: int = 1000,
) -> torch.Tensor:
    """Jitters boxes the way HQ-SAM's `misc.box_noise` does, resampling each box until its IoU is in range.

    The box is moved to `(cx, cy, w, h)`; `cx, cy` get uniform noise in `[-1, 1] * noise_scale * (w / 2, h / 2)` and
    `w, h` in `[-1, 1] * noise_scale * (w, h)`. The result is clipped to the image and kept once
    `min_iou <= IoU(noisy, box)` (and `IoU < max_iou` when given, e.g. the 0.5-0.6 band of the COCO protocol);
    the other boxes are drawn again.

    Args:
        boxes (`torch.Tensor` of shape `(num_boxes, 4)`):
            Ground-truth `[x0, y0, x1, y1]` boxes in pixel indices (see `masks_to_boxes`), inside the image.
        image_size (`tuple[int, int]`):
            `(height, width)` of the image; boxes are clipped to `[0, width - 1] x [0, height - 1]`.
        noise_scale (`float`, *optional*, defaults to 0.4):
            Noise amplitude relative to the box size.
        min_iou (`float`, *optional*, defaults to 0.5):
            Smallest accepted IoU with the ground-truth box.
        max_iou (`float`, *optional*):
            IoU bound the noisy box must stay below.
        generator (`torch.Generator`, *optional*):
            Random generator on the boxes' device.
        max_tries (`int`, *optional*, defaults to 1000):
            Draws per box before giving up with a `ValueError`.

    Returns:
        `torch.Tensor` of shape `(num_boxes, 4)`, float.
    """
    height, width = _check_image_size(image_size)
    boxes = _check_boxes(boxes, "boxes")
    if noise_scale < 0 or not math.isfinite(noise_scale):
        raise ValueError(f"`noise_scale` must be a finite number >= 0, got {noise_scale}.")
    if not 0 <= min_iou <= 1:
        raise ValueError(f"`min_iou` must lie in [0, 1], got {min_iou}.")
    if max_iou is not None and not min_iou < max_iou <= 1:
        raise ValueError(f"`max_iou` must lie in (min_iou, 1], got max_iou={max_iou} with min_iou={min_iou}.")
    if max_tries < 1:
        raise ValueError(f"`max_tries` must be >= 1, got {max_tries}.")

    limits = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=boxes.dtype, device=boxes.device)
    outside = (boxes < 0).any(dim=1) | (boxes > limits).any(dim=1)
    if outside.any():
        raise ValueError(
            f"`boxes` at index {outside.nonzero().flatten().tolist()} reach outside the image "
            f"[0, {width - 1}] x [0, {height - 1}] of image_size={image_size}."
        )
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    # HQ-SAM's box_noise: centre noise scales with half the size, size noise with the size
    amplitude = torch.cat([sizes / 2, sizes], dim=1) * noise_scale  # N x 4

    result = boxes.clone()
    pending = torch.arange(boxes.shape[0], device=boxes.device)
    for _ in range(max_tries):
        if pending.numel() == 0:
            break
        noise = torch.rand((pending.numel(), 4), generator=generator, device=boxes.device, dtype=boxes.dtype) * 2 - 1
        noisy = torch.cat([centres[pending], sizes[pending]], dim=1) + noise * amplitude[pending]
        noisy = torch.cat([noisy[:, :2] - noisy[:, 2:] / 2, noisy[:, :2] + noisy[:, 2:] / 2], dim=1)
        noisy = torch.minimum(noisy.clamp(min=0), limits)
        iou = box_iou(noisy, boxes[pending])
        accepted = iou >= min_iou
        if max_iou is not None:
            accepted &= iou < max_iou
        result[pending[accepted]] = noisy[accepted]
        pending = pending[~accepted]
    if pending.numel() > 0:
        band = f"[{min_iou}, {max_iou})" if max_iou is not None else f">= {min_iou}"
        raise ValueError(
            f"`noisy_boxes` found no box with IoU {band} within {max_tries} tries for `boxes` at index "
            f"{pending.tolist()} ({boxes[pending].tolist()}, image_size={image_size}); raise `noise_scale` or "
            "`max_tries`, or widen the IoU range."
        )
    return result


def sample_points(
    masks,
    num_points: int,
    generator: torch.Generator | None = None,
    negative: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random point prompts: `num_points` positive points inside each mask, then `negative` points outside it.

    Points are drawn uniformly over the mask's pixels without replacement, with replacement when the mask (or, for
    negative points, the background) has fewer pixels than requested.

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`):
            Non-empty masks.
        num_points (`int`):
            Positive points per mask (>= 1, or 0 when `negative` > 0).
        generator (`torch.Generator`, *optional*):
            Random generator on the masks' device.
        negative (`int`, *optional*, defaults to 0):
            Negative points per mask, drawn outside it.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: points (`torch.Tensor` of shape `(num_masks, num_points + negative, 2)`,
        float32 `[x, y]` pixel indices) and labels (`torch.Tensor` of shape `(num_masks, num_points + negative)`,
        int64, 1 for positive and 0 for negative points).
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 0:
        raise ValueError(f"`num_points` must be an int >= 0, got {num_points!r}.")
    if isinstance(negative, bool) or not isinstance(negative, int) or negative < 0:
        raise ValueError(f"`negative` must be an int >= 0, got {negative!r}.")
    if num_points + negative == 0:
        raise ValueError("`num_points` and `negative` are both 0: nothing to sample.")
    masks = binarize_masks(masks)
    _check_not_empty(masks, "masks")
    width = masks.shape[-1]

    def draw(region: torch.Tensor, count: int) -> torch.Tensor:
        # N x count flat pixel indices, uniform over each row's region
        rows = []
        for pixels in region.flatten(1):
            candidates = pixels.nonzero().flatten()
            if candidates.numel() >= count:
                # The top-k of uniform keys is a uniform subset without replacement
                keys = torch.rand(candidates.numel(), generator=generator, device=candidates.device)
                rows.append(candidates[keys.topk(count).indices])
            else:
                rows.append(
                    candidates[
                        torch.randint(candidates.numel(), (count,), generator=generator, device=candidates.device)
                    ]
                )
        return torch.stack(rows)

    points, labels = [], []
    if num_points > 0:
        points.append(draw(masks, num_points))
        labels.append(torch.ones((masks.shape[0], num_points), dtype=torch.long, device=masks.device))
    if negative > 0:
        full = masks.flatten(1).all(dim=1)
        if full.any():
            raise ValueError(
                f"`masks` at index {full.nonzero().flatten().tolist()} cover the whole image: no negative point "
                "can be drawn outside them."
            )
        points.append(draw(~masks, negative))
        labels.append(torch.zeros((masks.shape[0], negative), dtype=torch.long, device=masks.device))
    flat_indices = torch.cat(points, dim=1)
    xy = torch.stack([flat_indices % width, flat_indices // width], dim=-1).float()  # N x k x 2
    return xy, torch.cat(labels, dim=1)


def coarse_masks(
    masks,
    output_size: int = 256,
    generator: torch.Generator | None = None,
    noise_std: float = 1.0,
    boundary_width: int = 8,
    logit_scale: float = DEFAULT_MASK_LOGIT,
) -> torch.Tensor:
    """Coarse mask prompts: the ground truth with Gaussian noise on its boundary band, as mask-prompt logits.

    Follows HQ-SAM's `misc.masks_noise` at the mask-prompt resolution: the mask is resized into the prompt frame (soft
    values `f` in [0, 1]); inside the band of pixels within `boundary_width` of the boundary (dilation minus erosion)
    a pixel is foreground when `f + noise_std * N(0, 1) > 0.5`; elsewhere it keeps its ground-truth value `f > 0.5`.
    The result is written as `+logit_scale` (foreground) / `-logit_scale` (background), the logits SAM's mask input
    expects (HQ-SAM feeds 0/255 instead).

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`):
            Non-empty ground-truth masks at the image's resolution.
        output_size (`int`, *optional*, defaults to 256):
            Side of the square mask-prompt frame (`4 * image_embedding_size`).
        generator (`torch.Generator`, *optional*):
            Random generator on the masks' device.
        noise_std (`float`, *optional*, defaults to 1.0):
            Standard deviation of the noise added to the soft mask in the band (HQ-SAM: 1.0).
        boundary_width (`int`, *optional*, defaults to 8):
            Half-width of the boundary band, in output pixels (HQ-SAM's band comes from a factor-8 down/up-sampling).
        logit_scale (`float`, *optional*, defaults to 20.0):
            Magnitude of the output logits.

    Returns:
        `torch.Tensor` of shape `(num_masks, 1, output_size, output_size)`, float32.
    """
    if noise_std < 0 or not math.isfinite(noise_std):
        raise ValueError(f"`noise_std` must be a finite number >= 0, got {noise_std}.")
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, int) or boundary_width < 1:
        raise ValueError(f"`boundary_width` must be an int >= 1, got {boundary_width!r}.")
    masks = binarize_masks(masks)
    _check_not_empty(masks, "masks")
    fraction, valid = resize_masks_to_prompt_frame(masks, output_size)
    ground_truth = fraction > 0.5
    kernel = 2 * boundary_width + 1
    dilated = F.max_pool2d(ground_truth.float(), kernel, stride=1, padding=boundary_width) > 0
    eroded = -F.max_pool2d(-ground_truth.float(), kernel, stride=1, padding=boundary_width) > 0
    band = dilated & ~eroded & valid
    noise = torch.randn(fraction.shape, generator=generator, device=fraction.device, dtype=fraction.dtype)
    coarse = torch.where(band, fraction + noise_std * noise > 0.5, ground_truth)
    return torch.where(coarse, logit_scale, -logit_scale).to(torch.float32)


def sample_prompt(
    mask,
    prompt_type: "str | PromptType",
    generator: torch.Generator | None = None,
    *,
    noise_scale: float = 0.4,
    min_iou: float = 0.5,
    max_iou: float | None = None,
    mask_prompt_size: int = 256,
    coarse_noise_std: float = 1.0,
    coarse_boundary_width: int = 8,
    logit_scale: float = DEFAULT_MASK_LOGIT,
) -> dict[str, torch.Tensor]:
    """Model inputs for one object under one prompt type.

    Coordinates are in the mask's pixel frame. Stacking the values of several objects along a new first dimension
    gives `SamModel`'s shapes.

    Args:
        mask (`torch.Tensor` of shape `(height, width)`):
            The object's non-empty ground-truth mask.
        prompt_type (`str` or `PromptType`):
            `"box"`, `"noisy_box"`, `"points_<k>"` or `"coarse_mask"`.
        generator (`torch.Generator`, *optional*):
            Random generator on the mask's device.
        noise_scale, min_iou, max_iou: see `noisy_boxes`.
        mask_prompt_size, coarse_noise_std, coarse_boundary_width, logit_scale: see `coarse_masks`.

    Returns:
        `dict[str, torch.Tensor]` with, by prompt type:
        - box, noisy_box: `input_boxes` (`torch.Tensor` of shape `(1, 4)`);
        - points_<k>: `input_points` (`torch.Tensor` of shape `(1, k, 2)`) and `input_labels`
          (`torch.Tensor` of shape `(1, k)`, all 1);
        - coarse_mask: `input_masks` (`torch.Tensor` of shape `(1, mask_prompt_size, mask_prompt_size)`).
    """
    kind, num_points = parse_prompt_type(prompt_type)
    masks = binarize_masks(mask, name="mask", ndim=2)[None]
    if not masks.any():
        raise ValueError("`mask` is empty (no foreground pixel).")
    if kind in ("box", "noisy_box"):
        boxes = masks_to_boxes(masks)
        if kind == "noisy_box":
            boxes = noisy_boxes(
                boxes, tuple(masks.shape[-2:]), noise_scale, min_iou=min_iou, max_iou=max_iou, generator=generator
            )
        return {"input_boxes": boxes}
    if kind == "points":
        points, labels = sample_points(masks, num_points, generator=generator)
        return {"input_points": points, "input_labels": labels}
    logits = coarse_masks(
        masks,
        mask_prompt_size,
        generator=generator,
        noise_std=coarse_noise_std,
        boundary_width=coarse_boundary_width,
        logit_scale=logit_scale,
    )
    return {"input_masks": logits[:, 0]}


__all__ = [
    "DEFAULT_MASK_LOGIT",
    "EVALUATION_PROMPT_TYPES",
    "TRAINING_PROMPT_TYPES",
    "PromptType",
    "binarize_masks",
    "box_iou",
    "coarse_masks",
    "masks_to_boxes",
    "masks_to_prompt_logits",
    "noisy_boxes",
    "parse_prompt_type",
    "random_prompt_type",
    "resize_masks_to_prompt_frame",
    "sample_points",
    "sample_prompt",
]
