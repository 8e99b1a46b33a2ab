"""The toy worlds the quickstart and the toy studies share: the shipped toy SAM, scene knobs and scene ranges."""

from pathlib import Path


# The toy SAM shipped in the repository (models/toy-sam-128); the toy package runs from a checkout
TOY_BASE = Path(__file__).resolve().parents[2] / "models" / "toy-sam-128"

# The toy base trained on scene indices below 10,000: the quickstart's training scenes start at 10,000, its held-out
# ones at 20,000 and its SA-1B-like (COCO-like) ones at 30,000
TRAIN_START = 10_000
HELD_OUT_START = 20_000
COCO_LIKE_START = 30_000
# HQSeg-like scenes (SceneConfig knobs): one large labelled object and up to two smaller unlabelled ones, as HQSeg-44K
# and the paper's HQ benchmarks annotate one foreground object per image. The toy base was trained the way SAM was, on
# SA-1B-like scenes where every object is labelled (SceneConfig's defaults); docs/toy-demo.md, "Why the world decides
# the gain", measures the worlds in between.
HQ_LIKE_SCENES = (
    "salient_min_radius=0.2",
    "salient_max_radius=0.3",
    "min_objects=1",
    "max_objects=3",
    "min_radius=0.08",
    "max_radius=0.16",
)

__all__ = ["COCO_LIKE_START", "HELD_OUT_START", "HQ_LIKE_SCENES", "TOY_BASE", "TRAIN_START"]
