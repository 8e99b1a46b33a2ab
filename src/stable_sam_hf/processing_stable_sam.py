"""Processor for Stable-SAM: `SamProcessor` with checked prompts and mask prompts."""

import warnings

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoProcessor, BatchEncoding, SamImageProcessorPil, SamProcessor

from .image_processing_stable_sam import StableSamImageProcessor, preprocess_shape
from .mask_prompts import DEFAULT_MASK_LOGIT, binarize_masks, masks_to_prompt_logits


VALID_POINT_LABELS = (0, 1, -1)


def _to_list(value):
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    return value


def _nesting_depth(value, name: str) -> int:
    depth = 0
    while isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ValueError(f"`{name}` contains an empty list.")
        value = value[0]
        depth += 1
    return depth


def _float_array(value, name: str, ndim: int, last_dim: int | None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"`{name}` is not a regular nested list of numbers: {value!r}.") from None
    if array.ndim != ndim or (last_dim is not None and array.shape[-1] != last_dim) or array.size == 0:
        raise ValueError(f"`{name}` has shape {array.shape}; {_EXPECTED_NESTING[name.split('[')[0]]}.")
    return array


def _per_image_objects(value, name: str, object_ndim: int, last_dim: int | None) -> list[list[np.ndarray]]:
    # [image][object][...] or, as SamProcessor also reads it, [image][...] for one object per image
    if not isinstance(value, list) or len(value) == 0:
        raise ValueError(f"`{name}` must be a non-empty nested list (or tensor); {_EXPECTED_NESTING[name]}.")
    depths = {_nesting_depth(item, name) for item in value}
    if len(depths) != 1 or not depths <= {object_ndim, object_ndim + 1}:
        raise ValueError(f"`{name}` has inconsistent or wrong nesting depth; {_EXPECTED_NESTING[name]}.")
    one_object = depths == {object_ndim}
    result = []
    for index, item in enumerate(value):
        objects = [item] if one_object else item
        result.append(
            [
                _float_array(obj, f"{name}[{index}][{number}]", object_ndim, last_dim)
                for number, obj in enumerate(objects)
            ]
        )
    return result


_EXPECTED_NESTING = {
    "input_points": "expected [image][object][point][x, y] (or [image][point][x, y])",
    "input_labels": "expected [image][object][point] (or [image][point]), like `input_points`",
    "input_boxes": "expected [image][box][x0, y0, x1, y1]",
}


class StableSamProcessor(SamProcessor):
    r"""
    `SamProcessor` for Stable-SAM: the same prompt nesting and padding (points `[image][object][point][x, y]`, labels
    `[image][object][point]`, boxes `[image][box][x0, y0, x1, y1]`, in the original image's pixels), plus:

    - prompt checks: points or boxes with NaN/inf, boxes with `x1 < x0` or `y1 < y0`, boxes entirely outside the image
      and labels other than 1 (foreground), 0 (background), -1 (not a point) or the padding value raise a `ValueError`
      naming the argument; coordinates outside the image (points, and boxes partly outside it) are clipped to its
      border with a warning naming the argument, so that no coordinate, however large, reaches the model;
    - `input_masks`, one mask prompt per image, returned as SAM's low-resolution mask prompt: a
      `torch.Tensor` of shape `(batch_size, 1, mask_height, mask_width)` (256 x 256 for SAM's 1024 input), exactly what
      `SamModel`/`StableSamModel` take as `input_masks`. SAM adds one dense mask embedding per image to every prompt of
      that image, so an image with a mask prompt carries one object (`point_batch_size` 1): to give different objects
      of one image different masks, repeat the image (or its `image_embeddings`) once per object;
    - `original_sizes` in place of `images`, as `Sam2Processor` takes them: prompts for images already encoded
      (`image_embeddings`) are scaled without processing the images again, and `reshaped_input_sizes` is computed
      for `post_process_masks`.

    A mask prompt for an image is a 2-D array or tensor, either
    - at the original image size: binary (bool, integer 0/1 or 0-255, or float 0/1) masks become logits
      `+-mask_logit_scale`, float masks with other values are taken as logits; both are resized into the prompt
      frame with the image's geometry (longest side to `mask_size["longest_edge"]`, pad to `mask_pad_size`, the
      image's 1024 resize-and-pad divided by 4) and the padding is background;
    - or at `mask_pad_size` (256 x 256): low-resolution logits already in the prompt frame, such as SAM's own
      `pred_masks`, used as they are (binary ones become `+-mask_logit_scale`).
    """

    mask_logit_scale = DEFAULT_MASK_LOGIT

    def __init__(self, image_processor):
        # SAM checkpoints name SamImageProcessor, whose mask-generation post-processing needs torchvision
        if type(image_processor) is SamImageProcessorPil:
            image_processor = StableSamImageProcessor.from_dict(image_processor.to_dict())
        super().__init__(image_processor)

    def __call__(
        self,
        images=None,
        text=None,
        segmentation_maps=None,
        input_points=None,
        input_labels=None,
        input_boxes=None,
        input_masks=None,
        mask_logit_scale: float | None = None,
        original_sizes=None,
        **kwargs,
    ):
        r"""
        input_points (`NestedList` or `torch.Tensor` of shape `(batch_size, point_batch_size, num_points, 2)`, *optional*):
            `[x, y]` points in the original image's pixels, nested `[image][object][point][x, y]`.
        input_labels (`NestedList` or `torch.Tensor` of shape `(batch_size, point_batch_size, num_points)`, *optional*):
            1 (foreground), 0 (background), -1 (not a point) or the padding value, nested like `input_points`.
        input_boxes (`NestedList` or `torch.Tensor` of shape `(batch_size, num_boxes, 4)`, *optional*):
            `[x0, y0, x1, y1]` boxes in the original image's pixels, nested `[image][box][x0, y0, x1, y1]`.
        input_masks (`list` of `torch.Tensor` or `np.ndarray` of shape `(height, width)`, *optional*):
            One mask prompt per image (a one-element list per image is accepted too), see the class docstring.
        mask_logit_scale (`float`, *optional*, defaults to `self.mask_logit_scale`):
            Logit given to foreground pixels of binary mask prompts; background gets its negative.
        original_sizes (`NestedList` or `torch.Tensor` of shape `(batch_size, 2)`, *optional*):
            `(height, width)` of each image, in place of `images`: only the prompts are processed.

        Returns:
            `BatchEncoding` with `pixel_values` (from `images`), `original_sizes`, `reshaped_input_sizes` and, when given,
            `input_points`, `input_labels`, `input_boxes`, `input_masks` and `labels` (from `segmentation_maps`).
        """
        point_pad_value = kwargs.get("point_pad_value")
        if point_pad_value is None:
            point_pad_value = self.point_pad_value
        points = self._check_points(_to_list(input_points)) if input_points is not None else None
        labels = self._check_labels(_to_list(input_labels), point_pad_value) if input_labels is not None else None
        boxes = self._check_boxes(_to_list(input_boxes)) if input_boxes is not None else None
        if labels is not None and points is None:
            raise ValueError("`input_labels` was given without `input_points`.")
        if points is not None and labels is not None:
            self._check_points_match_labels(points, labels)

        if images is not None and original_sizes is not None:
            raise ValueError("Pass `images` or `original_sizes` (the sizes of images already encoded), not both.")
        if images is None and original_sizes is None:
            raise ValueError("Pass `images`, or `original_sizes` (the sizes of images already encoded).")
        if original_sizes is not None:
            if text is not None or segmentation_maps is not None:
                raise ValueError("`original_sizes` replaces `images`: pass no `text` or `segmentation_maps` with it.")
            try:
                sizes = np.asarray(_to_list(original_sizes), dtype=np.float64)
            except (TypeError, ValueError):
                sizes = None
            if sizes is None or sizes.ndim != 2 or sizes.shape[1] != 2 or (sizes < 1).any() or (sizes % 1).any():
                raise ValueError(
                    f"`original_sizes` must be (height, width) pairs of positive integers, got {original_sizes!r}."
                )
            sizes = sizes.astype(np.int64)
            # The resized sizes, as the image processor would give them, for `post_process_masks`
            reshaped = np.array([preprocess_shape(int(h), int(w), self.target_size) for h, w in sizes], dtype=np.int64)
            return_tensors = "pt" if kwargs.get("return_tensors") == "pt" else None
            encoding = BatchEncoding({"original_sizes": sizes, "reshaped_input_sizes": reshaped})
        else:
            encoding = super().__call__(images=images, text=text, segmentation_maps=segmentation_maps, **kwargs)
            return_tensors = "pt" if isinstance(encoding["pixel_values"], torch.Tensor) else None
        original_sizes = [tuple(int(v) for v in size) for size in _to_list(encoding["original_sizes"])]

        prompts = {}
        if points is not None:
            points = self._clip_points(points, labels, original_sizes, point_pad_value)
            prompts.update(self._prepare_points(points, labels, original_sizes, point_pad_value))
        if boxes is not None:
            boxes = self._clip_boxes(boxes, original_sizes)
            sizes = self._sizes_for_prompts(original_sizes, len(boxes), "input_boxes")
            prompts["input_boxes"] = np.stack(
                [self._resize_coordinates(box.reshape(-1, 2), size).reshape(-1, 4) for box, size in zip(boxes, sizes)]
            )
        if input_masks is not None:
            num_objects = [prompts[key].shape[1] for key in ("input_points", "input_boxes") if key in prompts]
            if any(count > 1 for count in num_objects):
                raise ValueError(
                    "`input_masks` gives one mask prompt per image, which SAM adds to every prompt of that image, but "
                    f"the point/box prompts have {max(num_objects)} objects per image: pass one object per image with "
                    "a mask prompt (repeat the image once per object)."
                )
            scale = self.mask_logit_scale if mask_logit_scale is None else float(mask_logit_scale)
            prompts["input_masks"] = self._process_masks(input_masks, original_sizes, scale).numpy()
        if return_tensors == "pt":
            prompts = {key: torch.from_numpy(value) for key, value in prompts.items()}
            if images is None:
                for key in ("original_sizes", "reshaped_input_sizes"):
                    encoding[key] = torch.from_numpy(encoding[key])
        encoding.update(prompts)
        return encoding

    def _check_points(self, input_points) -> list[list[np.ndarray]]:
        points = _per_image_objects(input_points, "input_points", 2, 2)
        for index, objects in enumerate(points):
            if not all(np.isfinite(obj).all() for obj in objects):
                raise ValueError(f"`input_points` entry {index} contains NaN or infinite coordinates.")
        return points

    def _check_labels(self, input_labels, point_pad_value) -> list[list[np.ndarray]]:
        labels = _per_image_objects(input_labels, "input_labels", 1, None)
        allowed = (*VALID_POINT_LABELS, point_pad_value)
        for index, objects in enumerate(labels):
            for obj in objects:
                invalid = ~np.isin(obj, allowed)
                if invalid.any():
                    raise ValueError(
                        f"`input_labels` entry {index} has labels {sorted(set(obj[invalid].tolist()))}; expected 1 "
                        f"(foreground), 0 (background), -1 (not a point) or the padding value {point_pad_value}."
                    )
        return [[obj.astype(np.int64) for obj in objects] for objects in labels]

    @staticmethod
    def _check_points_match_labels(points, labels) -> None:
        shapes = [[obj.shape[0] for obj in objects] for objects in points]
        label_shapes = [[obj.shape[0] for obj in objects] for objects in labels]
        if shapes != label_shapes:
            raise ValueError(
                f"`input_labels` must have one label per point: points per object {shapes}, labels per object "
                f"{label_shapes}."
            )

    def _check_boxes(self, input_boxes) -> list[np.ndarray]:
        if not isinstance(input_boxes, list) or len(input_boxes) == 0:
            raise ValueError(
                f"`input_boxes` must be a non-empty nested list (or tensor); {_EXPECTED_NESTING['input_boxes']}."
            )
        boxes = [_float_array(item, f"input_boxes[{index}]", 2, 4) for index, item in enumerate(input_boxes)]
        for index, array in enumerate(boxes):
            if not np.isfinite(array).all():
                raise ValueError(f"`input_boxes` entry {index} contains NaN or infinite coordinates.")
            inverted = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
            if inverted.any():
                raise ValueError(
                    f"`input_boxes` entry {index} has boxes with x1 < x0 or y1 < y0: {array[inverted].tolist()}; "
                    "boxes are [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1."
                )
        if len({array.shape[0] for array in boxes}) != 1:
            raise ValueError(
                f"`input_boxes` has {[array.shape[0] for array in boxes]} boxes per image; every image needs the "
                "same number of boxes."
            )
        return boxes

    @staticmethod
    def _sizes_for_prompts(original_sizes, num_entries: int, name: str) -> list[tuple[int, int]]:
        # SamProcessor reads prompts for a single image as prompts of that image, however many entries they have
        if num_entries == len(original_sizes):
            return original_sizes
        if len(original_sizes) == 1:
            return original_sizes * num_entries
        raise ValueError(f"`{name}` has {num_entries} entries for {len(original_sizes)} images.")

    def _resize_coordinates(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        # (..., 2) [x, y] from the original image to the resized model input, as SamProcessor
        height, width = original_size
        new_height, new_width = preprocess_shape(height, width, self.target_size)
        return coords * np.array([new_width / width, new_height / height])

    def _prepare_points(self, points, labels, original_sizes, point_pad_value) -> dict[str, np.ndarray]:
        num_objects = {len(objects) for objects in points}
        if len(num_objects) != 1:
            raise ValueError(
                f"`input_points` has {[len(objects) for objects in points]} objects per image; every image needs the "
                "same number of objects (point_batch_size)."
            )
        sizes = self._sizes_for_prompts(original_sizes, len(points), "input_points")
        max_points = max(obj.shape[0] for objects in points for obj in objects)
        padded = max_points != min(obj.shape[0] for objects in points for obj in objects)
        if labels is None and padded:
            labels = [[np.ones(obj.shape[0], dtype=np.int64) for obj in objects] for objects in points]
        # B x point_batch_size x num_points x 2, padding points and labels set to point_pad_value
        out_points = np.full((len(points), num_objects.pop(), max_points, 2), point_pad_value, dtype=np.float64)
        out_labels = np.full(out_points.shape[:3], point_pad_value, dtype=np.int64)
        for image, (objects, size) in enumerate(zip(points, sizes)):
            for number, obj in enumerate(objects):
                out_points[image, number, : obj.shape[0]] = self._resize_coordinates(obj, size)
                if labels is not None:
                    out_labels[image, number, : obj.shape[0]] = labels[image][number]
        result = {"input_points": out_points}
        if labels is not None:
            result["input_labels"] = out_labels
        return result

    def _clip_points(self, points, labels, original_sizes, point_pad_value) -> list[list[np.ndarray]]:
        # Points outside the image are clipped to its border, as boxes are; -1 and padding points are not read
        sizes = self._sizes_for_prompts(original_sizes, len(points), "input_points")
        clipped = []
        for index, (objects, (height, width)) in enumerate(zip(points, sizes)):
            limits = np.array([width, height], dtype=np.float64)
            inside, before, after = [], [], []
            for number, obj in enumerate(objects):
                used = np.ones(obj.shape[0], dtype=bool)
                if labels is not None:
                    used = ~np.isin(labels[index][number], (-1, point_pad_value))
                inside.append(np.where(used[:, None], np.clip(obj, 0, limits), obj))
                changed = (inside[-1] != obj).any(axis=1)
                before += obj[changed].tolist()
                after += inside[-1][changed].tolist()
            if before:
                warnings.warn(
                    f"`input_points` entry {index} has points outside the {width}x{height} image, clipped to it: "
                    f"{before} -> {after}.",
                    UserWarning,
                    stacklevel=3,
                )
            clipped.append(inside)
        return clipped

    def _clip_boxes(self, boxes: list[np.ndarray], original_sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        clipped = []
        sizes = self._sizes_for_prompts(original_sizes, len(boxes), "input_boxes")
        for index, (array, (height, width)) in enumerate(zip(boxes, sizes)):
            limits = np.array([width, height, width, height], dtype=np.float64)
            inside = np.clip(array, 0, limits)
            outside = (inside[:, 2] <= inside[:, 0]) | (inside[:, 3] <= inside[:, 1])
            outside &= (array[:, 2] > array[:, 0]) & (array[:, 3] > array[:, 1])
            if outside.any():
                raise ValueError(
                    f"`input_boxes` entry {index} has boxes outside the {width}x{height} image: {array[outside].tolist()}."
                )
            changed = (inside != array).any(axis=1)
            if changed.any():
                warnings.warn(
                    f"`input_boxes` entry {index} has boxes partly outside the {width}x{height} image, clipped to it: "
                    f"{array[changed].tolist()} -> {inside[changed].tolist()}.",
                    UserWarning,
                    stacklevel=3,
                )
            clipped.append(inside)
        return clipped

    def _process_masks(self, input_masks, original_sizes: list[tuple[int, int]], scale: float) -> torch.Tensor:
        mask_size = self.image_processor.mask_size["longest_edge"]
        pad_size = (self.image_processor.mask_pad_size["height"], self.image_processor.mask_pad_size["width"])
        if isinstance(input_masks, (torch.Tensor, np.ndarray)):
            if input_masks.ndim == 2:
                input_masks = [input_masks]
            elif input_masks.ndim == 4 and input_masks.shape[1] == 1:
                input_masks = list(input_masks[:, 0])
            elif input_masks.ndim == 3:
                input_masks = list(input_masks)
            else:
                raise ValueError(
                    "`input_masks` must be a list with one (height, width) mask per image, or an array of shape "
                    f"(batch_size, height, width) or (batch_size, 1, height, width); got shape {tuple(input_masks.shape)}."
                )
        if not isinstance(input_masks, (list, tuple)):
            raise TypeError(
                f"`input_masks` must be a list of masks (one per image), got {type(input_masks).__name__}."
            )
        if len(input_masks) != len(original_sizes):
            raise ValueError(f"`input_masks` has {len(input_masks)} entries for {len(original_sizes)} images.")
        processed = []
        for index, (mask, original_size) in enumerate(zip(input_masks, original_sizes)):
            if isinstance(mask, (list, tuple)):
                if len(mask) != 1:
                    raise ValueError(
                        f"`input_masks` entry {index} has {len(mask)} masks; SAM takes one mask prompt per image "
                        "(repeat the image once per object)."
                    )
                mask = mask[0]
            name = f"input_masks[{index}]"
            if isinstance(mask, np.ndarray):
                mask = torch.from_numpy(mask)
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor or np.ndarray, got {type(mask).__name__}.")
            if mask.ndim == 3 and mask.shape[0] == 1:
                mask = mask[0]
            if mask.ndim != 2:
                raise ValueError(f"`{name}` must be a 2-D (height, width) mask, got shape {tuple(mask.shape)}.")
            processed.append(self._mask_to_prompt(mask, original_size, mask_size, pad_size, scale, name))
        return torch.stack(processed)

    @staticmethod
    def _mask_to_prompt(mask, original_size, mask_size, pad_size, scale, name) -> torch.Tensor:
        # Returns a (1, pad_height, pad_width) float32 logit map
        is_binary = mask.dtype == torch.bool or not mask.is_floating_point()
        if mask.is_floating_point():
            if not torch.isfinite(mask).all():
                raise ValueError(f"`{name}` contains NaN or infinite values.")
            is_binary = bool(((mask == 0) | (mask == 1)).all())
        shape = tuple(mask.shape)
        if is_binary:
            mask = binarize_masks(mask, name=name, ndim=2)
        if shape == tuple(original_size):
            if is_binary:
                return masks_to_prompt_logits(mask[None], mask_size, pad_size, logit_scale=scale)[0]
            new_size = preprocess_shape(*original_size, mask_size)
            logits = torch.nn.functional.interpolate(
                mask[None, None].float(), new_size, mode="bilinear", align_corners=False, antialias=True
            )
            padding = (0, pad_size[1] - new_size[1], 0, pad_size[0] - new_size[0])
            return torch.nn.functional.pad(logits, padding, value=-scale)[0]
        if shape == pad_size:
            if is_binary:
                return torch.where(mask, scale, -scale).float()[None]
            return mask.float()[None]
        raise ValueError(
            f"`{name}` has shape {shape}; expected the original image size {tuple(original_size)} or the mask-prompt "
            f"size {pad_size}."
        )


def register_processors() -> None:
    """Registers `StableSamImageProcessor` and `StableSamProcessor` for `StableSamConfig` with the Auto classes."""
    from .configuration_stable_sam import StableSamConfig

    AutoImageProcessor.register(
        StableSamConfig, image_processor_classes={"pil": StableSamImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(StableSamConfig, StableSamProcessor, exist_ok=True)


__all__ = ["StableSamProcessor", "register_processors"]
