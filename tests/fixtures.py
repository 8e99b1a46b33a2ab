"""A tiny tree in the layout of HQ-SAM's unpacked training archives, for tests (not a test module): the tree itself
is written by `stable_sam_hf.testing_utils.make_hqseg_tree`, prepared here by `training/prepare_hqseg44k.py`."""

import importlib.util
from pathlib import Path
from types import ModuleType

from stable_sam_hf.testing_utils import (  # noqa: F401 (the tests' names)
    FIXTURE_BAD_SAMPLES,
    FIXTURE_TRAIN_FOLDERS,
    FIXTURE_VALIDATION_FOLDERS,
    FixtureTree,
    make_hqseg_tree,
)


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
