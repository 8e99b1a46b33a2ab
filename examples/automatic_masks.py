"""Segment everything in an image with transformers' "mask-generation" pipeline and draw all masks in colours.

    python examples/automatic_masks.py photo.jpg --model path/to/stable-sam --out masks.png
    python examples/automatic_masks.py photo.jpg --model path/to/stable-sam --out masks.png --points_per_side 16

The pipeline prompts the model with a grid of `points_per_side` x `points_per_side` points, keeps the masks whose
predicted IoU and stability pass the thresholds and removes duplicates by non-maximum suppression (pure torch, no
torchvision). Stable-SAM's plugins run on every grid prompt; the script prints how many masks survived, their scores
and the DRP routing weight alpha_1 over the grid prompts. OUT is the image, the image's size, with every mask tinted
in its own colour and outlined (large masks below small ones).
"""

import argparse
import sys

import numpy as np
import torch
from transformers import pipeline

from stable_sam_hf import StableSamModel
from stable_sam_hf.inference import default_device, load_image, load_model_and_processor
from stable_sam_hf.visualization import draw_label, draw_masks, palette, png_path, save_png


# Bounds of the prompt grid: 128 per side is 16,384 prompts per crop; 3 crop layers are 1 + 4 + 16 + 64 crops (8
# layers ended in a ZeroDivisionError inside transformers)
MAX_POINTS_PER_SIDE = 128
MAX_CROPS_N_LAYERS = 3


def collect_routing(model: StableSamModel) -> tuple[list[torch.Tensor], list]:
    """Records the alpha_1 that the DRP of the last plugin layer gives each prompt; returns (records, hook handles)."""
    records = []

    def hook(module, inputs, output):
        records.append(output[..., 0].detach().flatten().cpu())

    handle = model.mask_decoder.plugin_layers[-1].drp.register_forward_hook(hook)
    return records, [handle]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", metavar="IMAGE", help="Image file (any format PIL reads).")
    parser.add_argument("--model", required=True, help="Stable-SAM folder or Hub id.")
    parser.add_argument("--out", required=True, metavar="OUT.png", help="Picture of all masks to write.")
    parser.add_argument("--points_per_side", type=int, default=32, help="Grid of prompt points per side (SAM: 32).")
    parser.add_argument("--points_per_batch", type=int, default=64, help="Prompts decoded together.")
    parser.add_argument("--pred_iou_thresh", type=float, default=0.88, help="Smallest predicted IoU kept (0.88).")
    parser.add_argument("--stability_score_thresh", type=float, default=0.95, help="Smallest stability kept (0.95).")
    parser.add_argument("--crops_nms_thresh", type=float, default=0.7, help="Box IoU above which duplicates go (0.7).")
    parser.add_argument("--crops_n_layers", type=int, default=0, help="Extra layers of image crops (0: whole image).")
    parser.add_argument("--device", default=None, help="Torch device (default: cuda when available, else cpu).")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    if not 1 <= args.points_per_side <= MAX_POINTS_PER_SIDE:
        parser.error(
            f"--points_per_side must lie in [1, {MAX_POINTS_PER_SIDE}] (SAM: 32; the prompts grow as its square), "
            f"got {args.points_per_side}."
        )
    if args.points_per_batch < 1:
        parser.error(f"--points_per_batch must be >= 1, got {args.points_per_batch}.")
    if not 0 <= args.crops_n_layers <= MAX_CROPS_N_LAYERS:
        parser.error(
            f"--crops_n_layers must lie in [0, {MAX_CROPS_N_LAYERS}] (layer i adds 4^i crops), got {args.crops_n_layers}."
        )
    for option in ("pred_iou_thresh", "stability_score_thresh", "crops_nms_thresh"):
        value = getattr(args, option)
        if not 0 <= value <= 1:
            parser.error(f"--{option} must lie in [0, 1], got {value}.")


def main(argv: list[str] | None = None) -> dict:
    """Runs the command line; returns the picture path, the masks, their scores and alpha_1 per grid prompt."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    out = png_path(parser, args.out)
    try:
        image = load_image(args.image)
        model, processor = load_model_and_processor(args.model, args.device or default_device())
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    generator = pipeline(
        "mask-generation", model=model, image_processor=processor.image_processor, device=model.device
    )
    records, handles = collect_routing(model)
    try:
        result = generator(
            image,
            points_per_crop=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            crops_nms_thresh=args.crops_nms_thresh,
            crops_n_layers=args.crops_n_layers,
        )
    finally:
        for handle in handles:
            handle.remove()
    alpha_1 = torch.cat(records)
    masks, scores = result["masks"], result["scores"].cpu()

    # Large masks first, so that small ones stay visible on top
    order = sorted(range(len(masks)), key=lambda index: -int(masks[index].sum()))
    picture = draw_masks(image, [masks[index] for index in order], palette(len(order)))
    draw_label(picture, f"{len(masks)} masks from {alpha_1.numel()} prompts")
    save_png(picture, out)

    print(
        f"{len(masks)} masks from {alpha_1.numel()} grid prompts; alpha_1 over the prompts: mean {alpha_1.mean():.3f}, "
        f"min {alpha_1.min():.3f}, max {alpha_1.max():.3f}"
    )
    for rank, index in enumerate(sorted(range(len(masks)), key=lambda index: -float(scores[index]))[:10]):
        print(f"  mask {rank}: predicted IoU {scores[index]:.3f}, {int(np.sum(masks[index]))} pixels")
    if not masks:
        print("no mask passed the thresholds: lower --pred_iou_thresh / --stability_score_thresh")
    print(f"picture: {out}")
    return {"picture": out, "masks": masks, "scores": scores, "alpha_1": alpha_1}


if __name__ == "__main__":
    main(sys.argv[1:])
