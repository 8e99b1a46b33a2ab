"""Mask metrics for evaluating Stable-SAM: mask IoU, boundary IoU and stability under random prompts.

All functions work on batches of masks in torch. Binary masks are `torch.bool`; use `binarize_ground_truth` and
`binarize_prediction` to get them. Predictions are compared at the ground truth's resolution (see
`resize_logits_to`).

An object whose ground truth is empty has no defined IoU: `mask_iou` and `boundary_iou` return NaN for it, and
`summarize` averages the other objects and counts the skipped ones.

Boundary IoU follows Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation Evaluation" (2021),
with `mask_to_boundary` as in HQ-SAM's evaluation code.
"""

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F


# Pixels per chunk when counting pairwise intersections in float32: every partial count stays below 2**24,
# so it is exact.
_PIXEL_CHUNK = 2**20

# Resampled values held at once by `bootstrap_interval`
_BOOTSTRAP_CHUNK = 2**22

EVALUATE_MODULE_PATH = Path(__file__).parent / "evaluate_metrics" / "stable_sam_metrics"


class MetricSummary(NamedTuple):
    """Mean of a per-object metric over the objects that have one, with the number of skipped objects."""

    mean: float
    num_objects: int
    num_skipped: int


def _check_tensor(value, name: str, min_dims: int) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if value.ndim < min_dims:
        raise ValueError(f"`{name}` must have at least {min_dims} dimensions, got shape {tuple(value.shape)}.")


def _check_binary(value, name: str, min_dims: int = 2) -> None:
    _check_tensor(value, name, min_dims)
    if value.dtype != torch.bool:
        raise TypeError(
            f"`{name}` must be a boolean mask, got dtype {value.dtype}; "
            "use `binarize_prediction` or `binarize_ground_truth` first."
        )


def _check_pair(pred: torch.Tensor, gt: torch.Tensor) -> None:
    _check_binary(pred, "pred")
    _check_binary(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(
            f"`pred` has shape {tuple(pred.shape)} but `gt` has shape {tuple(gt.shape)}; predictions are compared at "
            "the ground truth's resolution (see `resize_logits_to`)."
        )


def binarize_ground_truth(gt: torch.Tensor) -> torch.Tensor:
    """
    Binarize ground-truth masks.

    The scale is decided once for the whole tensor: a boolean tensor is returned unchanged; if the largest value is
    above 1 the masks are taken as 0-255 images and thresholded `> 128`; otherwise they are 0/1 (or 0-1 float)
    masks and thresholded `> 128 / 255`, which for 0/1 values is `> 0`.

    Raises:
        `ValueError` for NaN or infinite values, values outside [0, 255], and masks on no known scale: values above 1
        but none above 128 (a 0-100 mask, say), which the 0-255 threshold would make empty and the mean skip.

    Args:
        gt (`torch.Tensor` of shape `(..., height, width)`):
            Ground-truth masks, bool, integer or float, values in [0, 255].

    Returns:
        `torch.Tensor` of shape `(..., height, width)`, bool.
    """
    _check_tensor(gt, "gt", 2)
    if gt.dtype == torch.bool:
        return gt
    if gt.is_complex():
        raise TypeError(f"`gt` must be a real or boolean tensor, got dtype {gt.dtype}.")
    if gt.numel() == 0:
        return torch.zeros_like(gt, dtype=torch.bool)
    if gt.is_floating_point() and not torch.isfinite(gt).all():
        raise ValueError("`gt` contains NaN or infinite values; ground-truth masks are bool, 0/1 or 0-255.")
    low, high = gt.min().item(), gt.max().item()
    if low < 0 or high > 255:
        raise ValueError(f"`gt` values must lie in [0, 255] (0/1 or 0-255 masks), got range [{low}, {high}].")
    if 1 < high <= 128:
        raise ValueError(
            f"`gt` values lie in [{low}, {high}]: above 1, so not 0/1 masks, but none above 128, the foreground "
            "threshold of 0-255 masks, so every mask would be empty. Pass bool, 0/1 or 0-255 masks (a 0-100 mask "
            "times 2.55 is 0-255)."
        )
    if high > 1:
        return gt > 128
    return gt.to(torch.float32) > 128 / 255


def binarize_prediction(logits: torch.Tensor) -> torch.Tensor:
    """
    Binarize predicted mask logits at 0 (probability 0.5). Boolean masks are returned unchanged; NaN logits (a
    model's numerical failure) raise a `ValueError` instead of counting as background.

    Args:
        logits (`torch.Tensor` of shape `(..., height, width)`):
            Mask logits, or 0/1 masks.

    Returns:
        `torch.Tensor` of shape `(..., height, width)`, bool.
    """
    _check_tensor(logits, "logits", 2)
    if logits.dtype == torch.bool:
        return logits
    if logits.is_floating_point() and torch.isnan(logits).any():
        raise ValueError(
            f"`logits` contains {int(torch.isnan(logits).sum())} NaN values; a prediction must be finite."
        )
    return logits > 0


def resize_logits_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """
    Bilinearly resize mask logits to the ground truth's resolution, as SAM's post-processing does
    (`align_corners=False`). Resize logits, never binary masks.

    Args:
        logits (`torch.Tensor` of shape `(..., height, width)`):
            Mask logits.
        size (`tuple[int, int]`):
            `(height, width)` of the ground truth.

    Returns:
        `torch.Tensor` of shape `(..., size[0], size[1])`.
    """
    _check_tensor(logits, "logits", 2)
    if not logits.is_floating_point():
        raise TypeError(f"`logits` must be a floating point tensor of mask logits, got dtype {logits.dtype}.")
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"`size` must be a (height, width) pair of positive ints, got {size}.")
    size = tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    leading = logits.shape[:-2]
    flat = logits.reshape(-1, 1, *logits.shape[-2:])  # B x 1 x h x w
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return resized.reshape(*leading, *size)


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """
    Intersection over union of binary masks, NaN where the ground truth is empty.

    Args:
        pred (`torch.Tensor` of shape `(num_masks, height, width)`):
            Predicted masks, bool. Any number of leading dimensions is accepted.
        gt (`torch.Tensor` of shape `(num_masks, height, width)`):
            Ground-truth masks, bool, same shape as `pred`.

    Returns:
        `torch.Tensor` of shape `(num_masks,)`, float64.
    """
    _check_pair(pred, gt)
    intersection = (pred & gt).sum(dim=(-2, -1)).double()
    union = (pred | gt).sum(dim=(-2, -1)).double()
    iou = intersection / union.clamp(min=1)
    empty_gt = ~gt.any(dim=-1).any(dim=-1)
    return iou.masked_fill(empty_gt, float("nan"))


def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Erosion depth in pixels of `mask_to_boundary`: `max(1, round(dilation_ratio * image diagonal))`."""
    if not dilation_ratio > 0:
        raise ValueError(f"`dilation_ratio` must be positive, got {dilation_ratio}.")
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_to_boundary(mask: torch.Tensor, dilation_ratio: float = 0.02) -> torch.Tensor:
    """
    Inner boundary band of binary masks: the mask minus its erosion, as HQ-SAM's `mask_to_boundary`.

    The original pads the mask with a 1-pixel zero border (`cv2.copyMakeBorder`), erodes it `d` times with a 3x3
    kernel (`cv2.erode`, whose default border never erodes) and crops the border off, with
    `d = boundary_dilation(height, width, dilation_ratio)`. Iterated 3x3 erosion inside a rectangle is one erosion
    by a `(2d + 1) x (2d + 1)` square, and the square around a pixel leaves the image only by crossing the zero
    border, so that equals one square erosion with everything outside the image counted as background. Here it is a
    separable max-pool of the inverted mask padded with `d` pixels of background.

    Args:
        mask (`torch.Tensor` of shape `(num_masks, height, width)`):
            Binary masks, bool. Any number of leading dimensions is accepted.
        dilation_ratio (`float`, *optional*, defaults to 0.02):
            Band width as a fraction of the image diagonal.

    Returns:
        `torch.Tensor` of shape `(num_masks, height, width)`, bool.
    """
    _check_binary(mask, "mask")
    height, width = mask.shape[-2:]
    dilation = boundary_dilation(height, width, dilation_ratio)
    if mask.numel() == 0:
        return mask.clone()
    background = (~mask).reshape(-1, 1, height, width).float()  # B x 1 x H x W
    background = F.pad(background, (dilation, dilation, dilation, dilation), value=1.0)
    kernel = 2 * dilation + 1
    # A pixel survives erosion when its whole square holds no background
    background = F.max_pool2d(background, kernel_size=(kernel, 1), stride=1)
    background = F.max_pool2d(background, kernel_size=(1, kernel), stride=1)
    eroded = (background == 0).reshape(mask.shape)
    return mask & ~eroded


def boundary_iou(pred: torch.Tensor, gt: torch.Tensor, dilation_ratio: float = 0.02) -> torch.Tensor:
    """
    Boundary IoU (Cheng et al. 2021): IoU of the masks' boundary bands, NaN where the ground truth is empty.

    Args:
        pred (`torch.Tensor` of shape `(num_masks, height, width)`):
            Predicted masks, bool. Any number of leading dimensions is accepted.
        gt (`torch.Tensor` of shape `(num_masks, height, width)`):
            Ground-truth masks, bool, same shape as `pred`.
        dilation_ratio (`float`, *optional*, defaults to 0.02):
            Band width as a fraction of the image diagonal.

    Returns:
        `torch.Tensor` of shape `(num_masks,)`, float64.
    """
    _check_pair(pred, gt)
    pred_boundary = mask_to_boundary(pred, dilation_ratio)
    gt_boundary = mask_to_boundary(gt, dilation_ratio)
    # A non-empty mask always has a non-empty boundary, so only an empty ground truth gives NaN
    return mask_iou(pred_boundary, gt_boundary)


def pairwise_mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """
    IoU between every pair of masks of a group; two empty masks have IoU 1.0 (they agree).

    Args:
        masks (`torch.Tensor` of shape `(num_objects, num_masks, height, width)`):
            Binary masks, bool. Any number of leading dimensions is accepted.

    Returns:
        `torch.Tensor` of shape `(num_objects, num_masks, num_masks)`, float64.
    """
    _check_binary(masks, "masks", min_dims=3)
    *leading, num_masks, height, width = masks.shape
    flat = masks.reshape(-1, num_masks, height * width)  # B x K x HW
    intersection = torch.zeros(flat.shape[0], num_masks, num_masks, dtype=torch.float64, device=masks.device)
    for start in range(0, height * width, _PIXEL_CHUNK):
        chunk = flat[..., start : start + _PIXEL_CHUNK].float()
        intersection += (chunk @ chunk.transpose(-1, -2)).double()  # B x K x K
    area = flat.sum(dim=-1).double()  # B x K
    union = area.unsqueeze(-1) + area.unsqueeze(-2) - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return iou.reshape(*leading, num_masks, num_masks)


def stability(masks: torch.Tensor) -> torch.Tensor:
    """
    Stability ST: mean IoU over the `K * (K - 1) / 2` pairs of masks predicted for one object under `K` random
    prompts of one type. Two empty masks have IoU 1.0.

    Args:
        masks (`torch.Tensor` of shape `(num_objects, num_prompts, height, width)`):
            Predicted binary masks, bool, `num_prompts >= 2`. A single object's `(num_prompts, height, width)`
            gives a 0-dimensional result; any number of leading dimensions is accepted.

    Returns:
        `torch.Tensor` of shape `(num_objects,)`, float64.
    """
    _check_binary(masks, "masks", min_dims=3)
    num_prompts = masks.shape[-3]
    if num_prompts < 2:
        raise ValueError(f"`masks` needs at least 2 predictions per object (dim -3), got shape {tuple(masks.shape)}.")
    iou = pairwise_mask_iou(masks)
    rows, cols = torch.triu_indices(num_prompts, num_prompts, offset=1, device=masks.device)
    return iou[..., rows, cols].mean(dim=-1)


def summarize(values: torch.Tensor) -> MetricSummary:
    """
    Average per-object metric values, skipping NaN (objects with an empty ground truth) and counting them.

    Args:
        values (`torch.Tensor` of shape `(num_objects,)`):
            Per-object values, e.g. from `mask_iou`; any shape is flattened.

    Returns:
        `MetricSummary`: the mean (NaN when no object is left), the number of objects averaged and the number
        skipped.
    """
    _check_tensor(values, "values", 0)
    values = values.detach().reshape(-1).double()
    valid = ~torch.isnan(values)
    num_objects = int(valid.sum())
    mean = values[valid].mean().item() if num_objects else float("nan")
    return MetricSummary(mean=mean, num_objects=num_objects, num_skipped=values.numel() - num_objects)


def bootstrap_interval(
    groups, *, num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """
    Percentile bootstrap interval of a mean of per-object values (objects resampled with replacement).

    With several groups (datasets) the statistic is the mean of the group means, as in an evaluation table's average
    over datasets, and objects are resampled within their group. Pass per-object differences between two models on
    the same objects and prompts for a paired interval of their difference.

    Args:
        groups (`torch.Tensor` or sequence of `torch.Tensor`):
            Per-object values, one 1-D tensor (or list of floats) per group; NaN values are dropped.
        num_resamples (`int`, *optional*, defaults to 1000):
            Bootstrap resamples.
        confidence (`float`, *optional*, defaults to 0.95):
            Coverage of the interval, in (0, 1).
        seed (`int`, *optional*, defaults to 0):
            Seed of the resampling, so intervals are repeatable.

    Returns:
        `tuple[float, float]`: the interval's ends, NaN when no group has a value.
    """
    if isinstance(groups, torch.Tensor):
        groups = [groups]
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"`num_resamples` must be a positive integer, got {num_resamples!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    generator = torch.Generator().manual_seed(seed)
    statistic, num_groups = torch.zeros(num_resamples, dtype=torch.float64), 0
    for values in groups:
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        values = values[~torch.isnan(values)]
        if not len(values):
            continue
        chunk = max(1, _BOOTSTRAP_CHUNK // len(values))  # resamples drawn at once, to bound memory
        for start in range(0, num_resamples, chunk):
            count = min(chunk, num_resamples - start)
            picks = torch.randint(len(values), (count, len(values)), generator=generator)
            statistic[start : start + count] += values[picks].mean(dim=1)
        num_groups += 1
    if not num_groups:
        return math.nan, math.nan
    statistic /= num_groups
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(statistic, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return low, high


def load_metric(config_name: str | None = None, **kwargs):
    """
    Load these metrics as an `evaluate` module (works offline: the module ships with the package).

    Args:
        config_name (`str`, *optional*):
            `"default"` for one prediction per object, `"grouped"` for `K` predictions per object (adds ST).
        kwargs:
            Passed to `evaluate.load` (e.g. `cache_dir`, `keep_in_memory`).

    Returns:
        `evaluate.EvaluationModule`.

    Example:

    ```python
    >>> from stable_sam_hf.metrics import load_metric
    >>> metric = load_metric()
    >>> metric.compute(predictions=[[[1.0, -1.0], [-1.0, -1.0]]], references=[[[255, 0], [0, 0]]])["mean_iou"]
    1.0

    ```
    """
    import evaluate

    return evaluate.load(str(EVALUATE_MODULE_PATH), config_name, **kwargs)


__all__ = [
    "EVALUATE_MODULE_PATH",
    "MetricSummary",
    "binarize_ground_truth",
    "binarize_prediction",
    "bootstrap_interval",
    "boundary_dilation",
    "boundary_iou",
    "load_metric",
    "mask_iou",
    "mask_to_boundary",
    "pairwise_mask_iou",
    "resize_logits_to",
    "stability",
    "summarize",
]
