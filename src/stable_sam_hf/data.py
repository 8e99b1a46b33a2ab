"""HQSeg-44K as a stream: the subset table, robust decoding, large-scale jitter and occlusion synthesis.

The on-disk format is the one `training/prepare_hqseg44k.py` writes (parquet shards, one config per subset, columns
`image`, `mask`, `dataset`, `id`); a local folder and a Hub dataset repository are read by the same
`datasets.load_dataset(..., streaming=True)` call.

Example:

```python
>>> from torch.utils.data import DataLoader
>>> from stable_sam_hf.data import SkipCounter, TrainStreamArguments, build_train_dataset

>>> stream = build_train_dataset(TrainStreamArguments(dataset="path/to/hqseg44k", output_size=1024), seed=0)
>>> loader = DataLoader(stream, batch_size=4, num_workers=4)
>>> skipped = SkipCounter()  # checkpoint it with `accelerator.register_for_checkpointing(skipped)`
>>> batch = next(iter(loader))
>>> batch["image"].shape, batch["mask"].shape
(torch.Size([4, 3, 1024, 1024]), torch.Size([4, 1024, 1024]))
>>> skipped.update(batch["skipped"])  # what the workers skipped before these samples
>>> print(skipped.report())
Skipped nothing.
```
"""

import io
import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import fsspec.asyn
import numpy as np
import torch
import torch.nn.functional as F
from datasets import (
    Dataset,
    Features,
    IterableDataset,
    concatenate_datasets,
    get_dataset_config_names,
    get_dataset_split_names,
    load_dataset,
)
from datasets import Image as ImageFeature
from datasets import Value as ValueFeature
from datasets.distributed import split_dataset_by_node
from PIL import Image

from .prompts import masks_to_boxes


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HQSegSubset:
    """One HQSeg-44K subset: where its images and masks sit in the unpacked archives (HQ-SAM `train/train.py`)."""

    name: str
    split: str
    image_dir: PurePosixPath
    mask_dir: PurePosixPath
    image_ext: str = ".jpg"
    mask_ext: str = ".png"

    @property
    def archive(self) -> str:
        """Name of the archive (and of the top-level folder) that holds this subset, e.g. `DIS5K`."""
        return self.image_dir.parts[0]


# HQ-SAM's `train_datasets` then `valid_datasets`, names and folders as in its `train/train.py`
HQSEG44K_SUBSETS: tuple[HQSegSubset, ...] = (
    HQSegSubset("DIS5K-TR", "train", PurePosixPath("DIS5K/DIS-TR/im"), PurePosixPath("DIS5K/DIS-TR/gt")),
    HQSegSubset(
        "ThinObject5k-TR",
        "train",
        PurePosixPath("thin_object_detection/ThinObject5K/images_train"),
        PurePosixPath("thin_object_detection/ThinObject5K/masks_train"),
    ),
    HQSegSubset("FSS", "train", PurePosixPath("cascade_psp/fss_all"), PurePosixPath("cascade_psp/fss_all")),
    HQSegSubset("DUTS-TR", "train", PurePosixPath("cascade_psp/DUTS-TR"), PurePosixPath("cascade_psp/DUTS-TR")),
    HQSegSubset("DUTS-TE", "train", PurePosixPath("cascade_psp/DUTS-TE"), PurePosixPath("cascade_psp/DUTS-TE")),
    HQSegSubset("ECSSD", "train", PurePosixPath("cascade_psp/ecssd"), PurePosixPath("cascade_psp/ecssd")),
    HQSegSubset("MSRA10K", "train", PurePosixPath("cascade_psp/MSRA_10K"), PurePosixPath("cascade_psp/MSRA_10K")),
    HQSegSubset("DIS5K-VD", "validation", PurePosixPath("DIS5K/DIS-VD/im"), PurePosixPath("DIS5K/DIS-VD/gt")),
    HQSegSubset(
        "COIFT",
        "validation",
        PurePosixPath("thin_object_detection/COIFT/images"),
        PurePosixPath("thin_object_detection/COIFT/masks"),
    ),
    HQSegSubset(
        "HRSOD",
        "validation",
        PurePosixPath("thin_object_detection/HRSOD/images"),
        PurePosixPath("thin_object_detection/HRSOD/masks_max255"),
    ),
    HQSegSubset(
        "ThinObject5k-TE",
        "validation",
        PurePosixPath("thin_object_detection/ThinObject5K/images_test"),
        PurePosixPath("thin_object_detection/ThinObject5K/masks_test"),
    ),
)

HQSEG_SPLITS = ("train", "validation")

HQSEG_FEATURES = Features(
    {"image": ImageFeature(), "mask": ImageFeature(), "dataset": ValueFeature("string"), "id": ValueFeature("string")}
)

# Order of the per-sample `skipped` vector; the last two are augmentation events, not bad files
SKIP_REASONS = (
    "unreadable_image",
    "unreadable_mask",
    "size_mismatch",
    "empty_mask",
    "empty_after_jitter",
    "occluder_covers_target",
)


def hqseg_subsets(split: str | None = None) -> tuple[HQSegSubset, ...]:
    """The HQSeg-44K subsets of `split` ("train" or "validation"), or all of them when `split` is None."""
    if split is not None and split not in HQSEG_SPLITS:
        raise ValueError(f"`split` must be one of {HQSEG_SPLITS} or None, got {split!r}.")
    return tuple(subset for subset in HQSEG44K_SUBSETS if split is None or subset.split == split)


class BadSampleError(ValueError):
    """A sample that cannot be trained on; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"`reason` must be one of {SKIP_REASONS}, got {reason!r}.")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SkipCounter:
    """Counts what did not make it into training, by reason (see `SKIP_REASONS`).

    Mergeable across processes and DataLoader workers: `as_dict()` / `to_tensor()` give the counts, `update()` adds
    a counter, a mapping or a tensor whose last dimension follows `SKIP_REASONS` (such as a batch's `skipped`).
    `state_dict()` / `load_state_dict()` make it checkpointable (`accelerator.register_for_checkpointing`).
    """

    def __init__(self, counts: Mapping[str, int] | None = None):
        self._counts = dict.fromkeys(SKIP_REASONS, 0)
        if counts is not None:
            self.update(counts)

    def add(self, reason: str, count: int = 1) -> None:
        if reason not in self._counts:
            raise ValueError(f"`reason` must be one of {SKIP_REASONS}, got {reason!r}.")
        self._counts[reason] += int(count)

    def update(self, other: "SkipCounter | Mapping[str, int] | torch.Tensor") -> None:
        if isinstance(other, torch.Tensor):
            if other.shape[-1:] != (len(SKIP_REASONS),):
                raise ValueError(
                    f"`other` must have a last dimension of size {len(SKIP_REASONS)}, got shape {tuple(other.shape)}."
                )
            other = dict(zip(SKIP_REASONS, other.reshape(-1, len(SKIP_REASONS)).sum(0).tolist()))
        elif isinstance(other, SkipCounter):
            other = other.as_dict()
        elif not isinstance(other, Mapping):
            raise TypeError(f"`other` must be a SkipCounter, a mapping or a tensor, got {type(other).__name__}.")
        for reason, count in other.items():
            self.add(reason, count)

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def to_tensor(self) -> torch.Tensor:
        """Counts as an int64 tensor of shape `(len(SKIP_REASONS),)`, e.g. for `accelerator.reduce(..., "sum")`."""
        return torch.tensor([self._counts[reason] for reason in SKIP_REASONS], dtype=torch.int64)

    def total(self) -> int:
        return sum(self._counts.values())

    def state_dict(self) -> dict[str, int]:
        return self.as_dict()

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        self._counts = dict.fromkeys(SKIP_REASONS, 0)
        self.update(state_dict)

    def report(self) -> str:
        if self.total() == 0:
            return "Skipped nothing."
        details = ", ".join(f"{reason}={count}" for reason, count in self._counts.items() if count)
        return f"Skipped {self.total()}: {details}."

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


# Decoding


def _open_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path") is not None:
            return Image.open(value["path"])
        raise ValueError("neither `bytes` nor `path` is set")
    if isinstance(value, (str, Path)):
        return Image.open(value)
    raise TypeError(f"expected a PIL image, bytes, a path or a {{'bytes', 'path'}} dict, got {type(value).__name__}")


# PIL modes whose pixel arrays are already gray, RGB(A) or plain 16/32-bit values
_ARRAY_MODES = {"L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _load_array(value: Any, is_mask: bool) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value
    image = _open_image(value)
    image.load()
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode not in _ARRAY_MODES and not (is_mask and image.mode == "P"):
        # Palette images, CMYK, YCbCr...: their colours; a palette mask keeps its indices
        image = image.convert("L" if is_mask else "RGB")
    return np.asarray(image)


def _image_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    # RGBA and other extra channels: drop them
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    peak = values.max(initial=0.0)
    if np.issubdtype(array.dtype, np.floating) and peak <= 1.0:
        values = values * 255.0
    elif peak > 255:
        # 16-bit range
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _binarize_mask(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"expected a mask of shape (H, W) or (H, W, C), got {array.shape}")
    peak = array.max(initial=0)
    if peak <= 1:
        return array > 0
    if peak > 255:
        # 16-bit masks: the 8-bit threshold 128 scaled to 16 bits
        return array > 128 * 257
    return array > 128


def decode_sample(sample: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes one sample's `image` and `mask`.

    `image` and `mask` may be PIL images, encoded bytes, `{"bytes", "path"}` dicts (a `datasets` Image column with
    `decode=False`), paths, numpy arrays or tensors (`(H, W)` or `(H, W, C)`). Grayscale, RGBA, palette and 16-bit
    images become 8-bit RGB (palette and CMYK images by their colours). A mask keeps its first channel (a palette mask
    its indices) and is binarised with `> 128` (`> 0` when its maximum is 1).

    Returns:
        image (`torch.Tensor` of shape `(3, height, width)`, uint8) and mask (`torch.Tensor` of shape
        `(height, width)`, bool).

    Raises:
        BadSampleError: with `reason` "unreadable_image", "unreadable_mask", "size_mismatch" or "empty_mask".
    """
    # Any decoder failure is a bad file, reported by reason
    try:
        image = _image_to_uint8(_load_array(sample["image"], is_mask=False))
    except Exception as error:
        raise BadSampleError("unreadable_image", f"{type(error).__name__}: {error}") from error
    try:
        mask = _binarize_mask(_load_array(sample["mask"], is_mask=True))
    except Exception as error:
        raise BadSampleError("unreadable_mask", f"{type(error).__name__}: {error}") from error
    if mask.shape != image.shape[:2]:
        raise BadSampleError("size_mismatch", f"mask is {mask.shape}, image is {image.shape[:2]}")
    if not mask.any():
        raise BadSampleError("empty_mask", "the mask has no foreground pixel")
    image = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # 3 x H x W
    return image, torch.from_numpy(np.array(mask))


# Large-scale jitter (HQ-SAM `train/utils/dataloader.py`: RandomHFlip then LargeScaleJitter)


class JitterParams(NamedTuple):
    flip: bool
    resized_size: tuple[int, int]
    crop_top: int
    crop_left: int


def draw_jitter_params(
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    output_size: int = 1024,
    scale_range: tuple[float, float] = (0.1, 2.0),
    flip_prob: float = 0.5,
) -> JitterParams:
    """Draws a flip, a scale of `output_size` for the longest side, and a crop offset, in that order."""
    flip = bool(torch.rand((), generator=generator) < flip_prob)
    scale_min, scale_max = scale_range
    scale = scale_min + float(torch.rand((), generator=generator)) * (scale_max - scale_min)
    target = round(scale * output_size)
    factor = min(target / height, target / width)
    resized = (max(1, round(height * factor)), max(1, round(width * factor)))
    margin_h = max(resized[0] - output_size, 0)
    margin_w = max(resized[1] - output_size, 0)
    crop_top = int(torch.randint(0, margin_h + 1, (), generator=generator))
    crop_left = int(torch.randint(0, margin_w + 1, (), generator=generator))
    return JitterParams(flip, resized, crop_top, crop_left)


def apply_jitter(tensor: torch.Tensor, params: JitterParams, *, output_size: int, pad_value: float) -> torch.Tensor:
    """Flips, resizes (bilinear), crops and pads (bottom and right) a float `(channels, height, width)` tensor."""
    if params.flip:
        tensor = tensor.flip(-1)
    tensor = F.interpolate(tensor[None], size=params.resized_size, mode="bilinear", align_corners=False)[0]
    tensor = tensor[
        :, params.crop_top : params.crop_top + output_size, params.crop_left : params.crop_left + output_size
    ]
    pad_h, pad_w = output_size - tensor.shape[1], output_size - tensor.shape[2]
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=pad_value)


def jitter_mask(mask: torch.Tensor, params: JitterParams, *, output_size: int) -> torch.Tensor:
    """`mask` (`torch.Tensor` of shape `(height, width)`, bool) -> `(output_size, output_size)` bool, padded with 0."""
    return apply_jitter(mask[None].float(), params, output_size=output_size, pad_value=0.0)[0] > 0.5


def jitter_image(image: torch.Tensor, params: JitterParams, *, output_size: int) -> torch.Tensor:
    """`image` (`torch.Tensor` of shape `(3, height, width)`, uint8) -> `(3, output_size, output_size)` uint8, padded
    with 128."""
    jittered = apply_jitter(image.float(), params, output_size=output_size, pad_value=128.0)
    return jittered.round_().clamp_(0, 255).to(torch.uint8)


def large_scale_jitter(
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    output_size: int = 1024,
    scale_range: tuple[float, float] = (0.1, 2.0),
    flip_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Large-scale jitter as HQ-SAM: random horizontal flip, resize so that the longest side is a random
    `scale_range` fraction of `output_size` (aspect kept), random crop to at most `output_size`, pad bottom/right to
    `output_size` with 128 (image) and 0 (mask).

    Args:
        image (`torch.Tensor` of shape `(3, height, width)`, uint8)
        mask (`torch.Tensor` of shape `(height, width)`, bool)
        generator (`torch.Generator`): the only source of randomness.

    Returns:
        image (`torch.Tensor` of shape `(3, output_size, output_size)`, uint8) and mask (`torch.Tensor` of shape
        `(output_size, output_size)`, bool). The mask can be empty when the crop misses the object.
    """
    _check_image_mask(image, mask)
    params = draw_jitter_params(
        image.shape[1],
        image.shape[2],
        generator,
        output_size=output_size,
        scale_range=scale_range,
        flip_prob=flip_prob,
    )
    return jitter_image(image, params, output_size=output_size), jitter_mask(mask, params, output_size=output_size)


def _check_image_mask(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"`image` must be a uint8 tensor of shape (3, H, W), got {image.dtype} {tuple(image.shape)}.")
    if mask.dtype != torch.bool or mask.shape != image.shape[1:]:
        raise ValueError(
            f"`mask` must be a bool tensor of shape {tuple(image.shape[1:])}, got {mask.dtype} {tuple(mask.shape)}."
        )


# Occlusion synthesis (Stable-SAM appendix, "Occlusion Image Synthesis")


def _shift(tensor: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    # Translate the last two dims by (dy, dx), filling with zeros
    height, width = tensor.shape[-2:]
    out = torch.zeros_like(tensor)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src_y, dst_y = slice(max(0, -dy), min(height, height - dy)), slice(max(0, dy), min(height, height + dy))
    src_x, dst_x = slice(max(0, -dx), min(width, width - dx)), slice(max(0, dx), min(width, width + dx))
    out[..., dst_y, dst_x] = tensor[..., src_y, src_x]
    return out


def spans_two_pixels(mask: torch.Tensor) -> bool:
    """Whether the mask's box is at least 2 pixels wide and high: thinner objects have no usable box prompt."""
    rows, cols = mask.any(dim=1), mask.any(dim=0)
    if not rows.any():
        return False
    row_index, col_index = rows.nonzero(), cols.nonzero()
    return bool(row_index[-1] > row_index[0]) and bool(col_index[-1] > col_index[0])


def paste_occluder(
    image: torch.Tensor,
    mask: torch.Tensor,
    occluder_image: torch.Tensor,
    occluder_mask: torch.Tensor,
    generator: torch.Generator,
    *,
    min_visible_fraction: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int] | None]:
    """Pastes the object of another image over the target so that the occluder's box centre lies inside the target's
    box, and removes the occluded pixels from the target mask.

    Args:
        image (`torch.Tensor` of shape `(3, height, width)`, uint8): the target image.
        mask (`torch.Tensor` of shape `(height, width)`, bool): the target object, non-empty.
        occluder_image (`torch.Tensor` of shape `(3, height, width)`, uint8): the image the occluder comes from.
        occluder_mask (`torch.Tensor` of shape `(height, width)`, bool): the occluder object, non-empty.
        generator (`torch.Generator`): draws the point of the target box the occluder's centre goes to.
        min_visible_fraction (`float`): below this visible fraction of its area the target counts as fully
            occluded, and the occluder is dropped (also when the visible part is less than 2 pixels wide or high).

    Returns:
        `(image, mask, shift)`: the occluded image and mask and the `(dy, dx)` translation applied to the occluder, or
        the unchanged inputs and `None` when the target would be (nearly) fully occluded.
    """
    _check_image_mask(image, mask)
    _check_image_mask(occluder_image, occluder_mask)
    if occluder_mask.shape != mask.shape:
        raise ValueError(
            f"`occluder_mask` must have the shape of `mask` {tuple(mask.shape)}, got {tuple(occluder_mask.shape)}."
        )
    # Inclusive boxes `[x0, y0, x1, y1]` of the target and the occluder
    (tx0, ty0, tx1, ty1), (ox0, oy0, ox1, oy1) = masks_to_boxes(torch.stack([mask, occluder_mask])).int().tolist()
    target_y = int(torch.randint(ty0, ty1 + 1, (), generator=generator))
    target_x = int(torch.randint(tx0, tx1 + 1, (), generator=generator))
    dy, dx = target_y - (oy0 + oy1) // 2, target_x - (ox0 + ox1) // 2
    occluder = _shift(occluder_mask, dy, dx)
    occluded_mask = mask & ~occluder
    visible = int(occluded_mask.sum())
    if visible == 0 or visible < min_visible_fraction * int(mask.sum()) or not spans_two_pixels(occluded_mask):
        return image, mask, None
    occluded_image = torch.where(occluder[None], _shift(occluder_image, dy, dx), image)
    return occluded_image, occluded_mask, (dy, dx)


# Streams


def load_segmentation_subsets(
    dataset: str,
    split: str = "train",
    dataset_names: Sequence[str] | None = None,
    streaming: bool = True,
    *,
    decode: bool = False,
) -> dict[str, IterableDataset | Dataset]:
    """Loads the `split` of each subset of a dataset written by `training/prepare_hqseg44k.py`, from a local folder
    or a Hub id, with `datasets.load_dataset(dataset, subset, split=split, streaming=streaming)`.

    Args:
        dataset (`str`): local folder or Hub dataset id.
        split (`str`): "train" or "validation" for HQSeg-44K.
        dataset_names (`Sequence[str]`, *optional*): subsets (configs) to read, e.g. `["DIS5K-VD"]`; all the
            dataset's configs that have `split` when None.
        streaming (`bool`): `datasets.IterableDataset`s when True, `datasets.Dataset`s otherwise.
        decode (`bool`): when False (the default) `image` and `mask` stay `{"bytes", "path"}` dicts so that a bad file
            reaches `decode_sample` instead of failing inside `datasets`.

    Returns:
        Subset name -> its samples, with columns `image`, `mask`, `dataset` and `id`.
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"`dataset` must be a local folder or a Hub dataset id, got {dataset!r}.")
    available = [name for name in get_dataset_config_names(dataset) if split in get_dataset_split_names(dataset, name)]
    if not available:
        raise ValueError(f"`split` {split!r} is not in any config of {dataset!r}.")
    if dataset_names is None:
        dataset_names = available
    elif isinstance(dataset_names, str) or not dataset_names:
        raise ValueError(f"`dataset_names` must be a non-empty list of config names or None, got {dataset_names!r}.")
    unknown = [name for name in dataset_names if name not in available]
    if unknown:
        raise ValueError(f"`dataset_names` {unknown} have no {split!r} split in {dataset!r}; available: {available}.")
    subsets = {}
    for name in dataset_names:
        part = load_dataset(dataset, name, split=split, streaming=streaming)
        if not decode:
            part = part.cast_column("image", ImageFeature(decode=False)).cast_column(
                "mask", ImageFeature(decode=False)
            )
        subsets[name] = part
    return subsets


def load_segmentation_stream(
    dataset: str,
    split: str = "train",
    dataset_names: Sequence[str] | None = None,
    streaming: bool = True,
    *,
    decode: bool = False,
) -> IterableDataset | Dataset:
    """The subsets of `load_segmentation_subsets` one after the other, in order (same arguments)."""
    subsets = list(load_segmentation_subsets(dataset, split, dataset_names, streaming, decode=decode).values())
    return subsets[0] if len(subsets) == 1 else concatenate_datasets(subsets)


def _num_examples(part: IterableDataset, split: str) -> int | None:
    splits = part.info.splits
    if splits is None or split not in splits or not splits[split].num_examples:
        return None
    return splits[split].num_examples


def _iter_rows(stream: IterableDataset, batch_size: int = 16) -> Iterator[dict[str, Any]]:
    # `.iter()` rather than `__iter__`: the latter re-shards by DataLoader worker on its own
    for batch in stream.iter(batch_size=batch_size):
        for index in range(len(batch["id"])):
            yield {key: values[index] for key, values in batch.items()}


@dataclass
class TrainStreamArguments:
    """Data and augmentation options of the training stream (usable in an `HfArgumentParser`)."""

    dataset: str = field(metadata={"help": "Local folder or Hub dataset id written by training/prepare_hqseg44k.py."})
    dataset_names: list[str] | None = field(
        default=None, metadata={"help": "Subsets (configs) to train on; all the dataset's training subsets if unset."}
    )
    output_size: int = field(default=1024, metadata={"help": "Side of the square jittered images and masks."})
    jitter_scale_min: float = field(default=0.1, metadata={"help": "Smallest large-scale-jitter scale."})
    jitter_scale_max: float = field(default=2.0, metadata={"help": "Largest large-scale-jitter scale."})
    flip_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    occlusion_prob: float = field(default=0.5, metadata={"help": "Probability of pasting an occluder on a sample."})
    occluder_pool_size: int = field(
        default=8, metadata={"help": "Number of previous samples (per DataLoader worker) occluders are drawn from."}
    )
    min_visible_fraction: float = field(
        default=0.05,
        metadata={"help": "An occluder leaving less than this fraction of the target visible is dropped."},
    )
    max_jitter_tries: int = field(
        default=5, metadata={"help": "Jitter draws per sample before a sample whose object is cropped out is skipped."}
    )
    shuffle_buffer_size: int = field(
        default=256, metadata={"help": "Streaming shuffle buffer, in samples per subset and DataLoader worker."}
    )

    def __post_init__(self):
        if self.output_size < 1:
            raise ValueError(f"`output_size` must be a positive integer, got {self.output_size}.")
        if not 0 < self.jitter_scale_min <= self.jitter_scale_max:
            raise ValueError(
                "`jitter_scale_min` and `jitter_scale_max` must satisfy 0 < min <= max, got "
                f"{self.jitter_scale_min} and {self.jitter_scale_max}."
            )
        for name in ("flip_prob", "occlusion_prob", "min_visible_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        for name in ("occluder_pool_size", "max_jitter_tries", "shuffle_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")


# An endless stream gives up after this many epochs in a row without a usable sample
_MAX_EMPTY_EPOCHS = 10


class SegmentationTrainStream(torch.utils.data.IterableDataset):
    """Training samples: stream -> decode (bad samples skipped and counted) -> large-scale jitter -> occlusion.

    Each sample is a dict with `image` (`torch.Tensor` of shape `(3, output_size, output_size)`, uint8, not
    normalised), `mask` (`torch.Tensor` of shape `(output_size, output_size)`, bool), `dataset` and `id` (str),
    `occluded` (bool) and `skipped` (`torch.Tensor` of shape `(len(SKIP_REASONS),)`, int64: what was skipped since the
    previous sample of the same worker, plus a dropped occluder of this sample).

    Order: each subset is cut into its parquet row groups (`IterableDataset.reshard`), shuffled (row-group order and
    a buffer of `shuffle_buffer_size` samples per subset and worker), and the subsets are interleaved at random in
    proportion to their sizes, each sample once an epoch. (`datasets.interleave_datasets` would do the same but
    pauses 5 s whenever a parquet stream ends.)

    Splitting: every subset is split by `datasets.distributed.split_dataset_by_node` over `world_size * num_workers`
    nodes, node `rank * num_workers + worker_id`: whole row groups when there are at least as many as nodes, every
    n-th sample otherwise. Leave `rank=0, world_size=1` when `accelerate` dispatches batches from the main process
    (its default for iterable datasets); pass them when each process reads its own share.

    Determinism: the order is fixed by `seed`; every random draw of a sample comes from a generator seeded by (`seed`,
    rank, world size, worker, number of workers, epoch, position in the worker's stream). Occluders are the previous
    `occluder_pool_size` samples of the same worker, before their own occlusion.

    Resuming: `resume_from(num_samples, batch_size)` makes the next iteration skip the first `num_samples` samples
    the DataLoader yielded; each worker re-decodes its share but skips the augmentation of all but the last few, and
    worker k takes over the stream of worker (k + batches consumed) mod num_workers, since a DataLoader starts with
    worker 0. The result is exactly the uninterrupted stream's continuation when the DataLoader keeps its batch size,
    number of workers and in-order delivery, and `num_epochs` is None (workers never run dry).

    The stream repeats epoch after epoch (reshuffled) when `num_epochs` is None: drive training by steps.
    """

    def __init__(
        self,
        dataset: str,
        split: str = "train",
        dataset_names: Sequence[str] | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_epochs: int | None = None,
        output_size: int = 1024,
        scale_range: tuple[float, float] = (0.1, 2.0),
        flip_prob: float = 0.5,
        occlusion_prob: float = 0.5,
        occluder_pool_size: int = 8,
        min_visible_fraction: float = 0.05,
        max_jitter_tries: int = 5,
        shuffle_buffer_size: int = 256,
    ):
        super().__init__()
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size) with `world_size` >= 1, got {rank} and {world_size}.")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"`num_epochs` must be a positive integer or None, got {num_epochs}.")
        # Validates the augmentation options
        TrainStreamArguments(
            dataset=dataset,
            output_size=output_size,
            jitter_scale_min=scale_range[0],
            jitter_scale_max=scale_range[1],
            flip_prob=flip_prob,
            occlusion_prob=occlusion_prob,
            occluder_pool_size=occluder_pool_size,
            min_visible_fraction=min_visible_fraction,
            max_jitter_tries=max_jitter_tries,
            shuffle_buffer_size=shuffle_buffer_size,
        )
        self.seed, self.rank, self.world_size, self.num_epochs = seed, rank, world_size, num_epochs
        self.output_size, self.scale_range, self.flip_prob = output_size, tuple(scale_range), flip_prob
        self.occlusion_prob, self.occluder_pool_size = occlusion_prob, occluder_pool_size
        self.min_visible_fraction, self.max_jitter_tries = min_visible_fraction, max_jitter_tries
        self.shuffle_buffer_size = shuffle_buffer_size
        subsets = load_segmentation_subsets(dataset, split, dataset_names, streaming=True)
        # One shard per parquet row group: finer shuffling and splitting
        self._subsets = [part.reshard() for part in subsets.values()]
        sizes = [_num_examples(part, split) for part in subsets.values()]
        if None in sizes:
            logger.warning(
                "Subset sizes of %r are unknown: interleaving its subsets with equal probabilities.", dataset
            )
            sizes = [1] * len(sizes)
        self._weights = np.asarray(sizes, dtype=np.float64)
        self._resume = (0, 1)
        # Skips counted when iterating in this process; DataLoader workers count in their own copies, so a training
        # loop sums the batches' `skipped` instead
        self.skip_counter = SkipCounter()

    def resume_from(self, num_samples: int, batch_size: int = 1) -> None:
        """Makes the following iterations start after the first `num_samples` samples that a DataLoader with
        `batch_size` (and any number of workers) yielded from this stream; `num_samples` is a multiple of
        `batch_size`, e.g. `completed_steps * gradient_accumulation_steps * batch_size` (times the number of
        processes when `accelerate` dispatches batches from the main process)."""
        if num_samples < 0 or batch_size < 1 or num_samples % batch_size:
            raise ValueError(
                "`num_samples` must be a non-negative multiple of `batch_size` >= 1, got "
                f"{num_samples} and {batch_size}."
            )
        self._resume = (int(num_samples), int(batch_size))

    def _worker_role(self, worker_id: int, num_workers: int) -> tuple[int, int]:
        # The DataLoader takes whole batches from its workers in turn, always starting with worker 0: after `consumed`
        # batches, worker k continues the stream of worker (k + consumed) % num_workers
        num_samples, batch_size = self._resume
        consumed = num_samples // batch_size
        role = (worker_id + consumed) % num_workers
        return role, batch_size * ((consumed - role + num_workers - 1) // num_workers)

    def _item_generator(self, node: tuple[int, int, int, int], epoch: int, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *node, epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _epoch_rows(self, node: tuple[int, int, int, int], epoch: int) -> Iterator[dict[str, Any]]:
        rank, world_size, worker_id, num_workers = node
        num_nodes = world_size * num_workers
        rows = []
        for part in self._subsets:
            part = part.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size, max_buffer_input_shards=1)
            if num_nodes > 1:
                strategy = "shards" if part.num_shards >= num_nodes else "examples"
                part = split_dataset_by_node(
                    part, rank=rank * num_workers + worker_id, world_size=num_nodes, strategy=strategy
                )
            part.set_epoch(epoch)
            rows.append(_iter_rows(part))
        # Pick the next subset in proportion to its size until all are exhausted
        rng = np.random.default_rng([self.seed, *node, epoch])
        active = list(range(len(rows)))
        while active:
            weights = self._weights[active]
            choice = active[int(rng.choice(len(active), p=weights / weights.sum()))]
            row = next(rows[choice], None)
            if row is None:
                active.remove(choice)
            else:
                yield row

    def _jitter(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, with_image: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        for _ in range(self.max_jitter_tries):
            params = draw_jitter_params(
                mask.shape[0],
                mask.shape[1],
                generator,
                output_size=self.output_size,
                scale_range=self.scale_range,
                flip_prob=self.flip_prob,
            )
            jittered_mask = jitter_mask(mask, params, output_size=self.output_size)
            if spans_two_pixels(jittered_mask):
                jittered_image = jitter_image(image, params, output_size=self.output_size) if with_image else None
                return jittered_image, jittered_mask
        raise BadSampleError(
            "empty_after_jitter",
            f"the object was cropped out or shrunk below 2 pixels {self.max_jitter_tries} times",
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if worker is not None:
            # As `datasets` does in workers: fsspec's event-loop lock does not survive the fork
            fsspec.asyn.reset_lock()
        role, to_skip = self._worker_role(worker_id, num_workers)
        yield from self._generate((self.rank, self.world_size, role, num_workers), to_skip)

    def _generate(self, node: tuple[int, int, int, int], to_skip: int) -> Iterator[dict[str, Any]]:
        pool: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=self.occluder_pool_size)
        pending = SkipCounter()
        produced = 0
        epoch = empty_epochs = 0
        while self.num_epochs is None or epoch < self.num_epochs:
            seen = produced_this_epoch = 0
            for index, row in enumerate(self._epoch_rows(node, epoch)):
                seen += 1
                replaying = produced < to_skip
                generator = self._item_generator(node, epoch, index)
                try:
                    image, mask = decode_sample(row)
                    # While replaying, only the samples that end up in the occluder pool need their image jittered
                    with_image = not replaying or produced >= to_skip - self.occluder_pool_size
                    image, mask = self._jitter(image, mask, generator, with_image)
                except BadSampleError as error:
                    if not replaying:
                        self._skip(pending, error.reason, row, str(error))
                    continue
                produced += 1
                produced_this_epoch += 1
                if replaying:
                    if image is not None:
                        pool.append((image, mask))
                    continue
                occluded_image, occluded_mask, occluded = image, mask, False
                if pool and float(torch.rand((), generator=generator)) < self.occlusion_prob:
                    occluder_image, occluder_mask = pool[int(torch.randint(len(pool), (), generator=generator))]
                    occluded_image, occluded_mask, shift = paste_occluder(
                        image,
                        mask,
                        occluder_image,
                        occluder_mask,
                        generator,
                        min_visible_fraction=self.min_visible_fraction,
                    )
                    occluded = shift is not None
                    if not occluded:
                        pending.add("occluder_covers_target")
                        self.skip_counter.add("occluder_covers_target")
                        logger.info("Dropped an occluder that would hide %s sample %r.", row["dataset"], row["id"])
                pool.append((image, mask))
                skipped = pending.to_tensor()
                pending = SkipCounter()
                yield {
                    "image": occluded_image,
                    "mask": occluded_mask,
                    "dataset": row["dataset"],
                    "id": row["id"],
                    "occluded": occluded,
                    "skipped": skipped,
                }
            if seen == 0:
                raise ValueError(
                    f"Node {node} got no sample: the stream has fewer samples than world_size x num_workers "
                    f"({self.world_size} x {node[3]})."
                )
            empty_epochs = 0 if produced_this_epoch else empty_epochs + 1
            if self.num_epochs is None and empty_epochs == _MAX_EMPTY_EPOCHS:
                raise RuntimeError(
                    f"No usable sample in {empty_epochs} epochs of node {node}: {self.skip_counter.report()}"
                )
            epoch += 1

    def _skip(self, pending: SkipCounter, reason: str, row: Mapping[str, Any], message: str) -> None:
        pending.add(reason)
        self.skip_counter.add(reason)
        logger.warning("Skipping %s sample %r (%s)", row.get("dataset"), row.get("id"), message)


def build_train_dataset(
    args: TrainStreamArguments,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    num_epochs: int | None = None,
) -> SegmentationTrainStream:
    """The training stream described by `args` (see `SegmentationTrainStream`)."""
    return SegmentationTrainStream(
        args.dataset,
        split,
        args.dataset_names,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_epochs=num_epochs,
        output_size=args.output_size,
        scale_range=(args.jitter_scale_min, args.jitter_scale_max),
        flip_prob=args.flip_prob,
        occlusion_prob=args.occlusion_prob,
        occluder_pool_size=args.occluder_pool_size,
        min_visible_fraction=args.min_visible_fraction,
        max_jitter_tries=args.max_jitter_tries,
        shuffle_buffer_size=args.shuffle_buffer_size,
    )


__all__ = [
    "HQSEG44K_SUBSETS",
    "HQSEG_FEATURES",
    "HQSEG_SPLITS",
    "SKIP_REASONS",
    "BadSampleError",
    "HQSegSubset",
    "JitterParams",
    "SegmentationTrainStream",
    "SkipCounter",
    "TrainStreamArguments",
    "apply_jitter",
    "build_train_dataset",
    "decode_sample",
    "draw_jitter_params",
    "hqseg_subsets",
    "jitter_image",
    "jitter_mask",
    "large_scale_jitter",
    "load_segmentation_stream",
    "paste_occluder",
]
