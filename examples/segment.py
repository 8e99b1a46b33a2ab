"""Segment one object of an image with a box and/or points, and draw the result.

    python examples/segment.py photo.jpg --box 95 255 930 780 --model path/to/stable-sam --out mask.png
    python examples/segment.py photo.jpg --point 480 400 1 --point 300 120 0 --model path/to/stable-sam --out mask.png

Coordinates are pixels of the image as a viewer shows it (EXIF orientation applied); a point's label is 1 for the
object, 0 for background. Writes OUT (the binary mask, white on black, the image's size) and an overlay
(OUT's stem + "_overlay.png": the image with the mask, its outline, the prompts and alpha_1), and prints the DRP
routing weight alpha_1 (how much Stable-SAM relied on deformable sampling for this prompt) and the predicted IoU.

The loading, prediction and drawing helpers live in `stable_sam_hf.inference` and `stable_sam_hf.visualization`.
"""

import argparse
import sys
import warnings

import numpy as np
import PIL.Image

from stable_sam_hf.inference import (
    check_box,
    check_point,
    default_device,
    load_image,
    load_model_and_processor,
    predict,
)
from stable_sam_hf.visualization import BOX_COLOR, overlay_path, png_path, render_overlay, save_png


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "image", metavar="IMAGE", help="Image file (any format PIL reads: RGB, RGBA, grayscale, 16-bit)."
    )
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X0", "Y0", "X1", "Y1"),
        help="Box prompt in image pixels (one; run once per object).",
    )
    parser.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        metavar=("X", "Y", "LABEL"),
        help="Point prompt in image pixels, LABEL 1 (object) or 0 (background); repeat for more points.",
    )
    parser.add_argument(
        "--model", required=True, help="Stable-SAM folder or Hub id (a SAM checkpoint works too: untrained plugins)."
    )
    parser.add_argument("--out", required=True, metavar="OUT.png", help="Mask PNG to write (white = object).")
    parser.add_argument("--overlay", metavar="PNG", help="Overlay PNG to write (default: OUT's stem + _overlay.png).")
    parser.add_argument(
        "--multimask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Predict SAM's 3 masks and keep the best-scored (default: on for a single point without a box).",
    )
    parser.add_argument("--device", default=None, help="Torch device (default: cuda when available, else cpu).")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the command line; returns the written paths, `alpha_1` and the predicted IoU `score`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.box is None and not args.point:
        parser.error("give a prompt: --box X0 Y0 X1 Y1 and/or --point X Y LABEL.")
    if args.box is not None and len(args.box) > 1:
        parser.error(f"--box was given {len(args.box)} times; one mask takes one box (run once per object).")
    args.box = args.box[0] if args.box is not None else None
    out = png_path(parser, args.out)
    overlay = png_path(parser, args.overlay, "--overlay") if args.overlay else overlay_path(out)
    try:
        image = load_image(args.image)
        box = check_box(args.box, image.size) if args.box is not None else None
        checked = [check_point(point, image.size) for point in args.point or []]
        model, processor = load_model_and_processor(args.model, args.device or default_device())
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    points = [point for point, _ in checked] or None
    labels = [label for _, label in checked] or None
    multimask = args.multimask if args.multimask is not None else (box is None and len(checked) == 1)

    with warnings.catch_warnings():
        # A box partly outside the image is clipped by the processor, which says so
        warnings.simplefilter("always", UserWarning)
        prediction = predict(
            model,
            processor,
            image,
            boxes=[box] if box else None,
            points=points,
            labels=labels,
            multimask_output=multimask,
        )
    mask = prediction.masks[0].numpy()
    alpha_1, score = prediction.alpha_1[0].item(), prediction.scores[0].item()

    save_png(PIL.Image.fromarray(mask.astype(np.uint8) * 255), out)
    boxes = [(box, BOX_COLOR, False)] if box else []
    text = f"alpha_1 = {alpha_1:.3f}   predicted IoU = {score:.3f}"
    save_png(render_overlay(image, mask, boxes=boxes, points=points, labels=labels, text=text), overlay)

    print(f"alpha_1 = {alpha_1:.3f} (alpha_2 = {1.0 - alpha_1:.3f}), predicted IoU = {score:.3f}")
    print(f"mask: {out} ({int(mask.sum())} of {mask.size} pixels)\noverlay: {overlay}")
    return {"mask": out, "overlay": overlay, "alpha_1": alpha_1, "score": score}


if __name__ == "__main__":
    main(sys.argv[1:])
