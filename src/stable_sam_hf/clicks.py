"""The interactive protocol's click simulator (RITM's `get_next_points`, Sofiiuk et al. 2022) and its metrics.

The first click goes to the object's centre: the pixel farthest from its boundary. Each later click goes to the
error region that lies farthest inside itself: the distance transforms of the missed region (ground truth not
predicted) and of the false region (predicted, not ground truth) are compared, and the click lands on the maximum of
the larger one, positive in a missed region, negative in a false one. Pixels beyond the image count as outside every
region, so the image border is a boundary too. Ties go to the first pixel in row-major order.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch


# Clicks per object (the interactive-segmentation papers' cap) and the IoU targets of NoC
MAX_CLICKS = 20
NOC_THRESHOLDS = (0.85, 0.90)


class Click(NamedTuple):
    """x, y in pixels of the original image (column, row); label 1 for a positive click, 0 for a negative one."""

    x: int
    y: int
    label: int


def distance_to_boundary(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of `region` (`(height, width)`, bool) to the nearest pixel outside it (pixels
    beyond the image are outside); 0 outside the region."""
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(np.asarray(region, dtype=bool), 1, constant_values=False)
    return distance_transform_edt(padded)[1:-1, 1:-1]


def _as_numpy_mask(mask, name: str) -> np.ndarray:
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.dtype != bool or array.ndim != 2:
        raise ValueError(f"`{name}` must be a bool mask of shape (height, width), got {array.dtype} {array.shape}.")
    return array


def next_click(prediction, gt) -> Click | None:
    """
    The next click for `prediction` against `gt` (both `(height, width)`, bool, numpy or torch); None when they agree.

    With an empty prediction the missed region is the whole object: the click is the object's centre.
    """
    prediction, gt = _as_numpy_mask(prediction, "prediction"), _as_numpy_mask(gt, "gt")
    if prediction.shape != gt.shape:
        raise ValueError(f"`prediction` is {prediction.shape} but `gt` is {gt.shape}.")
    missed = distance_to_boundary(gt & ~prediction)
    false = distance_to_boundary(prediction & ~gt)
    positive = missed.max() > false.max()
    distance = missed if positive else false
    if distance.max() == 0:
        return None
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(int(x), int(y), int(positive))


class InteractiveResult(NamedTuple):
    """IoU after each click (`list[float]`, length `max_clicks`; once a prediction equals the ground truth, later
    entries repeat its IoU of 1) and the clicks made."""

    ious: list[float]
    clicks: list[Click]


# (points `(num_clicks, 2)` as (x, y), labels `(num_clicks,)`, previous low-res logits or None) ->
# (mask `(height, width)` bool at the ground truth's resolution, low-res logits to feed back)
ClickPredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def simulate_clicks(predict: ClickPredictor, gt: torch.Tensor, *, max_clicks: int = MAX_CLICKS) -> InteractiveResult:
    """
    Runs the interactive protocol on one object: click, predict with every click so far and the previous low-res
    logits as the mask prompt, score, click again on the error, up to `max_clicks` clicks.

    Args:
        predict (`ClickPredictor`): the model under test.
        gt (`torch.Tensor` of shape `(height, width)`): the object's non-empty ground truth, bool.
        max_clicks (`int`): the cap.
    """
    from .metrics import mask_iou

    if isinstance(max_clicks, bool) or not isinstance(max_clicks, int) or max_clicks < 1:
        raise ValueError(f"`max_clicks` must be a positive int, got {max_clicks!r}.")
    gt_array = _as_numpy_mask(gt, "gt")
    if not gt_array.any():
        raise ValueError("`gt` is empty: the interactive protocol needs an object.")
    prediction = np.zeros_like(gt_array)
    logits, clicks, ious = None, [], []
    while len(ious) < max_clicks:
        click = next_click(prediction, gt_array)
        if click is None:
            # The prediction is the ground truth: more clicks change nothing
            ious.extend([ious[-1]] * (max_clicks - len(ious)))
            break
        clicks.append(click)
        points = torch.tensor([[c.x, c.y] for c in clicks], dtype=torch.float32)
        labels = torch.tensor([c.label for c in clicks], dtype=torch.long)
        mask, logits = predict(points, labels, logits)
        if mask.shape != gt.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"The predictor returned a {mask.dtype} mask of shape {tuple(mask.shape)}, expected bool "
                f"{tuple(gt.shape)}."
            )
        ious.append(float(mask_iou(mask.cpu()[None], torch.as_tensor(gt_array)[None])[0]))
        prediction = mask.cpu().numpy()
    return InteractiveResult(ious, clicks)


def number_of_clicks(ious: list[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """NoC@threshold: the clicks needed to reach IoU >= `threshold`, `max_clicks` when never reached."""
    for index, iou in enumerate(ious[:max_clicks]):
        if iou >= threshold:
            return index + 1
    return max_clicks


__all__ = [
    "MAX_CLICKS",
    "NOC_THRESHOLDS",
    "Click",
    "ClickPredictor",
    "InteractiveResult",
    "distance_to_boundary",
    "next_click",
    "number_of_clicks",
    "simulate_clicks",
]
