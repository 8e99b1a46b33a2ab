"""How well transformers' "mask-generation" pipeline finds the objects of held-out synthetic scenes, per model.

    python toy/toy_automatic_masks.py
    python toy/toy_automatic_masks.py --models base=sam:models/toy-sam-128 stable=outputs/quickstart/runs/stable \
        decoder=outputs/quickstart/runs/decoder --world hq --num_scenes 24

For every model and scene the pipeline runs with a grid of `--points_per_side`^2 single-point prompts, SAM's three
masks per prompt, its filters (predicted IoU >= `--pred_iou_thresh`, stability >= `--stability_score_thresh`) and
non-maximum suppression. The kept masks are then matched to the scene's labelled objects:
- precision: the share of kept masks whose IoU with some labelled object is at least 0.5;
- recall: the share of labelled objects that some kept mask covers with IoU at least 0.5;
- predicted / actual IoU: the kept masks' mean predicted IoU (the score the pipeline filters and ranks by) and their
  mean IoU with the labelled object they overlap best; predicted above actual means the model is over-confident.
`--world sa1b` scenes label every object (the toy base's world); `--world hq` scenes are the quickstart's, one
labelled object and up to two unlabelled ones, so there precision counts masks of unlabelled objects as misses.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import pipeline

from stable_sam_hf.evaluation import load_model, parse_model_spec
from stable_sam_hf.inference import default_image_processor

from .synthetic import SceneConfig, generate_scene
from .worlds import COCO_LIKE_START, HELD_OUT_START, HQ_LIKE_SCENES, TOY_BASE


# Held-out scene indices of each world: the quickstart's held-out HQSeg-like scenes and its COCO-like ones (the toy
# base trained on indices below 10,000)
WORLDS = {"sa1b": (COCO_LIKE_START, ()), "hq": (HELD_OUT_START, HQ_LIKE_SCENES)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=[f"base=sam:{TOY_BASE}"],
        help="NAME=METHOD:PATH as in training/evaluate_model.py: sam=sam:models/toy-sam-128, a Stable-SAM checkpoint "
        "or run folder, or any run folder of training/train.py (lora, adapter, decoder, ...).",
    )
    parser.add_argument("--base_model", default=None, help="Base SAM of run folders (overrides the runs' own).")
    parser.add_argument("--world", choices=sorted(WORLDS), default="sa1b", help="Which scenes (see above).")
    parser.add_argument("--domain", choices=["train", "shifted"], default="train", help="Scene domain.")
    parser.add_argument("--num_scenes", type=int, default=24, help="Held-out scenes.")
    parser.add_argument("--seed", type=int, default=0, help="Scene seed (the quickstart's default: 0).")
    parser.add_argument("--points_per_side", type=int, default=16, help="Grid of prompt points per side.")
    parser.add_argument("--pred_iou_thresh", type=float, default=0.88, help="Smallest predicted IoU kept (SAM: 0.88).")
    parser.add_argument(
        "--stability_score_thresh", type=float, default=0.95, help="Smallest stability kept (SAM: 0.95)."
    )
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    return parser


def parse_models(parser: argparse.ArgumentParser, specs: list[str], base_model: str | None) -> dict:
    models = {}
    for text in specs:
        try:
            spec = parse_model_spec(text, base_model)
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"--models: {error}")
        if spec.name in models:
            parser.error(f"--models names {spec.name!r} twice.")
        models[spec.name] = spec
    return models


def match(masks: list[np.ndarray], objects: np.ndarray) -> np.ndarray:
    """IoU of every kept mask `(K, H, W)` with every labelled object `(N, H, W)`: `(K, N)`."""
    if not masks:
        return np.zeros((0, len(objects)))
    kept = np.stack([np.asarray(mask, dtype=bool) for mask in masks]).reshape(len(masks), -1).astype(np.float32)
    truth = objects.reshape(len(objects), -1).astype(np.float32)
    intersection = kept @ truth.T
    union = kept.sum(1)[:, None] + truth.sum(1)[None, :] - intersection
    return intersection / np.maximum(union, 1)


def score_model(generator, scenes, args) -> dict[str, float]:
    kept = good = found = objects = 0
    predicted, actual = [], []
    for image, truth in scenes:
        result = generator(
            image,
            points_per_crop=args.points_per_side,
            points_per_batch=64,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
        )
        ious = match(result["masks"], truth)
        kept += len(ious)
        objects += len(truth)
        if len(ious):
            good += int((ious.max(1) >= 0.5).sum())
            found += int((ious.max(0) >= 0.5).sum())
            predicted += result["scores"].float().tolist()
            actual += ious.max(1).tolist()
    return {
        "masks_per_image": kept / len(scenes),
        "precision": 100 * good / kept if kept else float("nan"),
        "recall": 100 * found / objects,
        "predicted_iou": 100 * float(np.mean(predicted)) if predicted else float("nan"),
        "actual_iou": 100 * float(np.mean(actual)) if actual else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_scenes < 1 or args.points_per_side < 1:
        parser.error("--num_scenes and --points_per_side must be >= 1.")
    for option in ("pred_iou_thresh", "stability_score_thresh"):
        if not 0 <= getattr(args, option) <= 1:
            parser.error(f"--{option} must lie in [0, 1], got {getattr(args, option)}.")
    models = parse_models(parser, args.models, args.base_model)
    start, knobs = WORLDS[args.world]
    config = SceneConfig.from_strings(list(knobs)) if knobs else SceneConfig()
    scenes = []
    for index in range(start, start + args.num_scenes):
        image, masks = generate_scene(index, 128, args.domain, args.seed, config)
        scenes.append((PIL.Image.fromarray(image), masks))

    results = {}
    for name, spec in models.items():
        model = load_model(spec)
        generator = pipeline("mask-generation", model=model, image_processor=default_image_processor(model))
        with torch.inference_mode():
            results[name] = score_model(generator, scenes, args)

    print(
        f"{args.num_scenes} held-out {args.world} scenes ({args.domain} domain), a {args.points_per_side}x"
        f"{args.points_per_side} grid, predicted IoU >= {args.pred_iou_thresh}, stability >= "
        f"{args.stability_score_thresh}\n"
    )
    print("| model | masks / image | precision | recall | predicted IoU | actual IoU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in results.items():
        print(
            f"| {name} | {values['masks_per_image']:.1f} | {values['precision']:.1f} | {values['recall']:.1f} | "
            f"{values['predicted_iou']:.1f} | {values['actual_iou']:.1f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return results
