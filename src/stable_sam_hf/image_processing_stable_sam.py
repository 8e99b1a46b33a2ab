"""Image processor for Stable-SAM: SAM's PIL-backend image processor without torchvision, and for the images users have."""

from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers import SamImageProcessorPil


# PIL modes with more than 8 bits per pixel, which PIL's own convert("RGB") clips at 255
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def preprocess_shape(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """`(new_height, new_width)` of an image resized so that its longest side is `longest_edge`, as SAM's image
    processor rounds it, except that neither side drops below one pixel (a 3 x 5000 image at 128 would be 0 high)."""
    scale = longest_edge / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of `[x0, y0, x1, y1]` boxes (`torch.Tensor` of shape `(num_boxes, 4)`), as `(x1 - x0) * (y1 - y0)`."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box of `boxes1` (`(N, 4)`) with every box of `boxes2` (`(M, 4)`), as `torchvision.ops.box_iou`.

    Returns:
        `torch.Tensor` of shape `(N, M)`.
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # N x M x 2
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # N x M x 2
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return inter / (area1[:, None] + area2[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, the same result as `torchvision.ops.nms`.

    Boxes are visited by decreasing score; a box is dropped when its IoU with a kept box is above `iou_threshold`.

    Args:
        boxes (`torch.Tensor` of shape `(num_boxes, 4)`): `[x0, y0, x1, y1]` boxes.
        scores (`torch.Tensor` of shape `(num_boxes,)`): box scores.
        iou_threshold (`float`): IoU above which the lower-scored box is discarded.

    Returns:
        `torch.Tensor` of shape `(num_kept,)`, int64: indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].float()
    # Only a higher-scored box (row) can suppress a lower-scored one (column)
    overlaps = (pairwise_box_iou(boxes, boxes) > iou_threshold).triu(diagonal=1).cpu().numpy()
    keep = np.ones(len(order), dtype=bool)
    for index in range(len(order)):
        if keep[index]:
            keep[index + 1 :] &= ~overlaps[index, index + 1 :]
    return order[torch.from_numpy(keep).to(order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-category NMS, the same result as `torchvision.ops.batched_nms`: boxes of different `idxs` never suppress
    each other (each category is shifted by an offset larger than every coordinate).

    Args:
        boxes (`torch.Tensor` of shape `(num_boxes, 4)`): `[x0, y0, x1, y1]` boxes.
        scores (`torch.Tensor` of shape `(num_boxes,)`): box scores.
        idxs (`torch.Tensor` of shape `(num_boxes,)`): category of each box.
        iou_threshold (`float`): IoU above which the lower-scored box is discarded.

    Returns:
        `torch.Tensor` of shape `(num_kept,)`, int64: indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Binary mask `(height, width)` from the uncompressed column-major RLE of SAM's mask generation."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    mask = np.repeat(values, rle["counts"])
    return mask.reshape(width, height).transpose()


def to_uint8_by_range(array: np.ndarray) -> np.ndarray:
    """Scales an image with more than 8 bits per value to uint8, mapping its own [min, max] range to [0, 255].

    Stretching by the values present (not by the type's nominal range) keeps images that use 10-12 of 16 bits
    visible; a constant image becomes 0.
    """
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def _wide_integer_to_uint8(image) -> np.ndarray | None:
    # Integer arrays wider than uint8: uint16 is a 16-bit image, scaled by its range; other integer types are
    # cast when their values already fit 0-255 and scaled by their range otherwise. None for other inputs.
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer) or array.dtype == np.uint8:
        return None
    if array.dtype != np.uint16 and array.size and 0 <= array.min() and array.max() <= 255:
        return array.astype(np.uint8)
    return to_uint8_by_range(array)


def _with_channel_axis(image):
    # A 2-D array is one grayscale image; SAM's image processor only reads 3-D arrays as images
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 2:
        return image[..., None]
    return image


class StableSamImageProcessor(SamImageProcessorPil):
    r"""
    SAM's image processor (PIL backend: resize the longest side to `size["longest_edge"]`, normalise, pad to `pad_size`)
    with these changes:

    - images of any aspect ratio: the short side of a very elongated image is resized to at least one pixel;
    - images are read as people have them: EXIF orientation is applied (`PIL.ImageOps.exif_transpose`), so
      `original_sizes` and prompt coordinates refer to the image as a viewer shows it; 16-bit and 32-bit images (PIL
      modes `I;16`, `I`, `F`, integer arrays wider than uint8) are scaled to 8 bits by their value range instead of
      being clipped at 255 (integer arrays other than uint16 whose values fit 0-255 are only cast); 2-D arrays are
      grayscale images;
    - `post_process_for_mask_generation` runs a pure-torch `batched_nms`, so the `mask-generation` pipeline needs no
      torchvision.
    """

    def preprocess(self, images, segmentation_maps=None, **kwargs):
        if isinstance(images, (list, tuple)):
            images = [
                [_with_channel_axis(image) for image in item]
                if isinstance(item, (list, tuple))
                else _with_channel_axis(item)
                for item in images
            ]
        else:
            images = _with_channel_axis(images)
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _get_preprocess_shape(self, old_shape: tuple[int, int], longest_edge: int) -> tuple[int, int]:
        # SAM's own rounding gives 0 pixels for the short side of very elongated images
        return preprocess_shape(*old_shape, longest_edge)

    def process_image(self, image, do_convert_rgb: bool | None = None, input_data_format=None, **kwargs) -> np.ndarray:
        if isinstance(image, PIL.Image.Image):
            image = PIL.ImageOps.exif_transpose(image)
            if do_convert_rgb and image.mode in HIGH_BIT_DEPTH_MODES:
                image = PIL.Image.fromarray(to_uint8_by_range(np.asarray(image)))
        elif do_convert_rgb and (converted := _wide_integer_to_uint8(image)) is not None:
            image = converted
        return super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )

    def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
        """
        Non-maximum suppression over the masks generated for one image (pure torch, no torchvision).

        Args:
            all_masks (`list[dict]`):
                Masks in SAM's uncompressed RLE format.
            all_scores (`torch.Tensor` of shape `(num_masks,)`):
                Predicted IoU scores.
            all_boxes (`torch.Tensor` of shape `(num_masks, 4)`):
                Boxes of the masks, `[x0, y0, x1, y1]`.
            crops_nms_thresh (`float`):
                IoU above which the lower-scored mask is dropped.

        Returns:
            `tuple`: the kept masks (`list[np.ndarray]` of shape `(height, width)`), their scores, RLEs and boxes.
        """
        keep = batched_nms(
            all_boxes.float(),
            all_scores,
            torch.zeros(all_boxes.shape[0], dtype=torch.int64, device=all_boxes.device),
            crops_nms_thresh,
        )
        scores = all_scores[keep]
        rle_masks = [all_masks[i] for i in keep.tolist()]
        boxes = all_boxes[keep]
        masks = [rle_to_mask(rle) for rle in rle_masks]
        return masks, scores, rle_masks, boxes


__all__ = ["StableSamImageProcessor", "batched_nms", "nms", "pairwise_box_iou", "preprocess_shape"]
