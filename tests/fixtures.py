"""A tiny tree in the layout of HQ-SAM's unpacked training archives, for tests (not a test module).

The folders below are written out independently of `stable_sam_hf.data.HQSEG44K_SUBSETS` so that tests cross-check
that table against the layout.
"""

import importlib.util
import io
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image


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


def load_prepare_script() -> ModuleType:
    """`training/prepare_hqseg44k.py` as a module (the training folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "training" / "prepare_hqseg44k.py"
    spec = importlib.util.spec_from_file_location("prepare_hqseg44k", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_hqseg_dataset(root: str | Path, row_group_size: int = 2, **tree_kwargs) -> tuple[FixtureTree, str]:
    """`make_hqseg_tree(root / "raw", **tree_kwargs)` prepared by `training/prepare_hqseg44k.py` into
    `root / "hqseg"`; returns the tree and the dataset folder, ready for `load_dataset(folder, streaming=True)`."""
    root = Path(root)
    tree = make_hqseg_tree(root / "raw", **tree_kwargs)
    prepare = load_prepare_script()
    folder = prepare.prepare(
        prepare.PrepareArguments(output_dir=str(root / "hqseg"), source=str(tree.root), row_group_size=row_group_size)
    )
    return tree, str(folder)
