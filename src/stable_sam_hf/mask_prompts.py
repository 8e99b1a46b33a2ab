"""SAM's mask prompts: checking masks and resizing them into the mask-prompt frame as logits."""

import numpy as np
import torch
import torch.nn.functional as F

from .image_processing_stable_sam import preprocess_shape


DEFAULT_MASK_LOGIT = 20.0


def as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"`{name}` must be a torch.Tensor or np.ndarray, got {type(value).__name__}.")


def binarize_masks(masks, name: str = "masks", ndim: int = 3) -> torch.Tensor:
    """Checks masks and returns them as bool.

    Args:
        masks (`torch.Tensor` or `np.ndarray` of shape `(num_masks, height, width)`):
            Bool, integer 0/1, integer 0-255 (foreground > 128) or floating 0-1 (foreground > 0.5) masks.
        name (`str`): the argument name used in error messages.
        ndim (`int`): the expected number of dimensions.

    Returns:
        `torch.Tensor` of dtype bool and the same shape.
    """
    masks = as_tensor(masks, name)
    if masks.ndim != ndim:
        expected = "(num_masks, height, width)" if ndim == 3 else "(height, width)"
        raise ValueError(f"`{name}` must have shape {expected}, got shape {tuple(masks.shape)}.")
    if masks.shape[-1] == 0 or masks.shape[-2] == 0:
        raise ValueError(f"`{name}` must have a non-zero height and width, got shape {tuple(masks.shape)}.")
    if masks.dtype == torch.bool:
        return masks
    if masks.is_floating_point():
        if torch.isnan(masks).any():
            raise ValueError(f"`{name}` contains NaN.")
        if masks.numel() and (masks.min() < 0 or masks.max() > 1):
            raise ValueError(
                f"Floating-point `{name}` must lie in [0, 1], got values in [{masks.min()}, {masks.max()}]."
            )
        return masks > 0.5
    if masks.is_complex():
        raise TypeError(f"`{name}` must be bool, an integer 0/1 or 0-255 mask, or floating 0-1, got {masks.dtype}.")
    if masks.dtype in (torch.uint16, torch.uint32, torch.uint64):
        # Few kernels support these: compare in int64
        masks = masks.to(torch.int64)
    if masks.numel() and (masks.min() < 0 or masks.max() > 255):
        raise ValueError(
            f"Integer `{name}` must hold 0/1 or 0-255 values, got values in [{masks.min()}, {masks.max()}]."
        )
    if masks.numel() and masks.max() > 1:
        return masks > 128
    return masks > 0


def resize_masks_to_prompt_frame(
    masks,
    longest_edge: int = 256,
    pad_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft foreground fraction of masks in SAM's mask-prompt frame: longest side to `longest_edge`, then pad.

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`):
            Bool, 0/1, 0-255 or floating 0-1 masks.
        longest_edge (`int`, *optional*, defaults to 256):
            Length of the longest side after resizing.
        pad_size (`tuple[int, int]`, *optional*):
            `(height, width)` to pad to at the bottom and right; `(longest_edge, longest_edge)` by default.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the fraction (`torch.Tensor` of shape `(num_masks, 1, pad_height,
        pad_width)`, float32 in [0, 1], 0 in the padding) and the valid region (`torch.Tensor` of shape
        `(pad_height, pad_width)`, bool, False in the padding).
    """
    masks = binarize_masks(masks)
    pad_height, pad_width = pad_size if pad_size is not None else (longest_edge, longest_edge)
    new_height, new_width = preprocess_shape(*masks.shape[-2:], longest_edge)  # the image processor's resize
    if new_height > pad_height or new_width > pad_width:
        raise ValueError(
            f"`pad_size` {(pad_height, pad_width)} is smaller than the resized mask {(new_height, new_width)}."
        )
    fraction = masks[:, None].float()
    if fraction.shape[-2:] != (new_height, new_width):
        fraction = F.interpolate(
            fraction, (new_height, new_width), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
    fraction = F.pad(fraction, (0, pad_width - new_width, 0, pad_height - new_height))
    valid = torch.zeros((pad_height, pad_width), dtype=torch.bool, device=masks.device)
    valid[:new_height, :new_width] = True
    return fraction, valid


def masks_to_prompt_logits(
    masks,
    longest_edge: int = 256,
    pad_size: tuple[int, int] | None = None,
    logit_scale: float = DEFAULT_MASK_LOGIT,
) -> torch.Tensor:
    """Exact mask prompts: masks resized into SAM's mask-prompt frame as logits.

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`):
            Bool, 0/1, 0-255 or floating 0-1 masks at the image's resolution.
        longest_edge (`int`, *optional*, defaults to 256): see `resize_masks_to_prompt_frame`.
        pad_size (`tuple[int, int]`, *optional*): see `resize_masks_to_prompt_frame`.
        logit_scale (`float`, *optional*, defaults to 20.0):
            Logit of a fully foreground pixel; background is `-logit_scale`, boundary pixels lie in between.

    Returns:
        `torch.Tensor` of shape `(num_masks, 1, pad_height, pad_width)`, float32.
    """
    fraction, _ = resize_masks_to_prompt_frame(masks, longest_edge, pad_size)
    return (2 * fraction - 1) * logit_scale


__all__ = [
    "DEFAULT_MASK_LOGIT",
    "as_tensor",
    "binarize_masks",
    "masks_to_prompt_logits",
    "resize_masks_to_prompt_frame",
]
