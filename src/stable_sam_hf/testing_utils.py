"""Tiny in-memory models and a tiny HQSeg-44K tree, for tests and benchmarks (as `transformers.testing_utils`).

The HQSeg folders below are written out independently of `stable_sam_hf.data.HQSEG44K_SUBSETS` so that tests
cross-check that table against the layout.
"""

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import SamConfig

from .configuration_stable_sam import StableSamConfig


IMAGE_SIZE = 64


def tiny_sam_kwargs(decoder_hidden_size: int = 32) -> dict:
    """Sub-configs of a SAM small enough for CPU tests; initializer_range 0.2 keeps activations O(1)."""
    return {
        "vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "output_channels": decoder_hidden_size,
            "window_size": 4,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "num_pos_feats": decoder_hidden_size // 2,
            "initializer_range": 0.2,
        },
        "prompt_encoder_config": {
            "hidden_size": decoder_hidden_size,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "mask_input_channels": 8,
        },
        "mask_decoder_config": {
            "hidden_size": decoder_hidden_size,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        "initializer_range": 0.2,
    }


def tiny_sam_config(**kwargs) -> SamConfig:
    return SamConfig(**{**tiny_sam_kwargs(), **kwargs})


def tiny_stable_sam_config(**kwargs) -> StableSamConfig:
    return StableSamConfig(**{**tiny_sam_kwargs(), **kwargs})


def perturb_plugins_(model, seed: int = 0, std: float = 0.3):
    """Moves every plugin weight away from its SAM-equivalent initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.plugin_named_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model


# (HQ-SAM dataset name, image folder, mask folder) as in the unpacked DIS5K, thin_object_detection, cascade_psp archives
FIXTURE_TRAIN_FOLDERS = (
    ("DIS5K-TR", "DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    (
        "ThinObject5k-TR",
        "thin_object_detection/ThinObject5K/images_train",
        "thin_object_detection/ThinObject5K/masks_train",
    ),
    ("DUTS-TR", "cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR"),
)
FIXTURE_VALIDATION_FOLDERS = (
    ("DIS5K-VD", "DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
    ("COIFT", "thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
    ("HRSOD", "thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"),
    (
        "ThinObject5k-TE",
        "thin_object_detection/ThinObject5K/images_test",
        "thin_object_detection/ThinObject5K/masks_test",
    ),
)
# One bad sample per training subset: (subset, id, reason the decoder must report)
FIXTURE_BAD_SAMPLES = (
    ("DIS5K-TR", "bad_unreadable", "unreadable_image"),
    ("ThinObject5k-TR", "bad_size", "size_mismatch"),
    ("DUTS-TR", "bad_empty", "empty_mask"),
)


@dataclass
class FixtureTree:
    root: Path
    # subset name -> ids of the readable samples
    good: dict[str, list[str]] = field(default_factory=dict)
    # subset name -> {id: skip reason}
    bad: dict[str, dict[str, str]] = field(default_factory=dict)
    # subset name -> split
    splits: dict[str, str] = field(default_factory=dict)

    def ids(self, split: str, with_bad: bool = True) -> set[str]:
        """Ids of all the samples of `split` (bad ones included unless `with_bad` is False)."""
        names = [name for name, subset_split in self.splits.items() if subset_split == split]
        ids = {sample_id for name in names for sample_id in self.good[name]}
        if with_bad:
            ids |= {sample_id for name in names for sample_id in self.bad.get(name, {})}
        return ids


def _draw_object(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    if rng.random() < 0.5:
        return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
    return (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)


def _encode(array: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **({"quality": 95} if format == "JPEG" else {}))
    return buffer.getvalue()


def _image_for(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    # Dark noisy background, bright object: the image itself tells where the object is
    height, width = mask.shape
    image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    colour = rng.integers(200, 256, size=3, dtype=np.uint8)
    image[mask] = colour
    return image


def _write_pair(root: Path, image_dir: str, mask_dir: str, sample_id: str, image: bytes, mask: bytes) -> None:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    (root / image_dir / f"{sample_id}.jpg").write_bytes(image)
    (root / mask_dir / f"{sample_id}.png").write_bytes(mask)


def make_hqseg_tree(
    root: str | Path,
    n_per_dataset: int = 3,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    bad_samples: bool = True,
) -> FixtureTree:
    """Writes three training subsets and the four validation subsets of HQSeg-44K in the unpacked-archive layout.

    Each subset gets `n_per_dataset` samples of `size` `(height, width)`: a `.jpg` image with one bright ellipse or
    rectangle on a dark background and a same-stem 0/255 `.png` mask. With `bad_samples`, each training subset also
    gets one bad sample (see `FIXTURE_BAD_SAMPLES`): a truncated `.jpg`, a mask of the wrong size, an empty mask.
    """
    root = Path(root)
    height, width = size
    rng = np.random.default_rng(seed)
    tree = FixtureTree(root=root)
    folders = [(*entry, "train") for entry in FIXTURE_TRAIN_FOLDERS]
    folders += [(*entry, "validation") for entry in FIXTURE_VALIDATION_FOLDERS]
    for name, image_dir, mask_dir, split in folders:
        tree.splits[name] = split
        tree.good[name] = []
        for index in range(n_per_dataset):
            sample_id = f"{name.lower()}_{index:03d}"
            mask = _draw_object(rng, height, width)
            image = _image_for(rng, mask)
            _write_pair(
                root,
                image_dir,
                mask_dir,
                sample_id,
                _encode(image, "JPEG"),
                _encode(mask.astype(np.uint8) * 255, "PNG"),
            )
            tree.good[name].append(sample_id)
    if bad_samples:
        folder_of = {name: (image_dir, mask_dir) for name, image_dir, mask_dir, _ in folders}
        for name, sample_id, reason in FIXTURE_BAD_SAMPLES:
            mask = _draw_object(rng, height, width)
            image = _encode(_image_for(rng, mask), "JPEG")
            mask_png = _encode(mask.astype(np.uint8) * 255, "PNG")
            if reason == "unreadable_image":
                image = image[: len(image) // 3]
            elif reason == "size_mismatch":
                mask_png = _encode(np.full((height + 8, width), 255, dtype=np.uint8), "PNG")
            elif reason == "empty_mask":
                mask_png = _encode(np.zeros((height, width), dtype=np.uint8), "PNG")
            _write_pair(root, *folder_of[name], sample_id, image, mask_png)
            tree.bad.setdefault(name, {})[sample_id] = reason
    return tree


__all__ = [
    "FIXTURE_BAD_SAMPLES",
    "FIXTURE_TRAIN_FOLDERS",
    "FIXTURE_VALIDATION_FOLDERS",
    "IMAGE_SIZE",
    "FixtureTree",
    "make_hqseg_tree",
    "perturb_plugins_",
    "tiny_sam_config",
    "tiny_sam_kwargs",
    "tiny_stable_sam_config",
]
