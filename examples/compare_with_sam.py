"""SAM and Stable-SAM side by side on the same noisy box prompts.

    python examples/compare_with_sam.py photo.jpg --box 95 255 930 780 --model path/to/stable-sam --out compare.png
    python examples/compare_with_sam.py photo.jpg --box 95 255 930 780 --model path/to/stable-sam --out compare.png \
        --noise_scale 0.4 --num_prompts 4 --seed 0

Your box is jittered the way the paper's noisy-box protocol does it (`stable_sam_hf.prompts.noisy_boxes`: noise
scale 0.4 on centre and size, resampled until the IoU with your box is at least `--min_iou`), with a fixed seed.
SAM is the same model with the routing weight forced to `alpha_1 = 0`, which is SAM exactly, so both columns share
every weight and differ only by the plugins. The figure has one row per prompt (your box first, then the noisy
boxes): the mask of each model, the prompt (yellow) and your box (white, dashed). Each panel gives the predicted IoU,
Stable-SAM's alpha_1 and the IoU of the mask with that model's mask for your box. The footer gives each model's
stability: the mean IoU between the masks of every pair of noisy prompts (1.0: the prompt noise changed nothing).
"""

import argparse
import sys
import warnings
from pathlib import Path

import PIL.Image
import torch
from PIL import ImageDraw

from stable_sam_hf.inference import check_box, default_device, load_image, load_model_and_processor, predict
from stable_sam_hf.metrics import pairwise_mask_iou, stability
from stable_sam_hf.prompts import noisy_boxes
from stable_sam_hf.visualization import BOX_COLOR, REFERENCE_BOX_COLOR, font, png_path, render_overlay, save_png


SAM_COLOR, STABLE_SAM_COLOR = (30, 144, 255), (236, 64, 122)
MARGIN = 12
COLUMNS = (("SAM", "SAM (alpha_1 = 0)"), ("Stable-SAM", "Stable-SAM"))


def jitter_box(box: list[float], image_size: tuple[int, int], args) -> torch.Tensor:
    """`args.num_prompts` noisy versions of `box`, seeded by `args.seed`: `torch.Tensor` of shape `(num_prompts, 4)`."""
    width, height = image_size
    # noisy_boxes takes pixel-index boxes inside the image
    inside = [min(max(v, 0.0), limit) for v, limit in zip(box, (width - 1, height - 1, width - 1, height - 1))]
    if inside != box:
        warnings.warn(f"--box {box} reaches outside the {width}x{height} image; jittering {inside}.", stacklevel=2)
    generator = torch.Generator().manual_seed(args.seed)
    gt = torch.tensor([inside], dtype=torch.float64).expand(args.num_prompts, 4)
    return noisy_boxes(gt, (height, width), noise_scale=args.noise_scale, min_iou=args.min_iou, generator=generator)


def panel_scale(image_size: tuple[int, int], panel_size: int) -> float:
    return panel_size / max(image_size)


def compose_figure(
    image: PIL.Image.Image,
    boxes: torch.Tensor,
    predictions: dict,
    agreement: dict,
    footer: str,
    panel_size: int,
) -> PIL.Image.Image:
    """
    A grid, one row per box (the user's box first) and one column per model: titles on top, row names on the left,
    a caption under each panel and a footer.

    Args:
        boxes (`torch.Tensor` of shape `(num_rows, 4)`): the prompts, in image pixels.
        predictions (`dict[str, Prediction]`): by column name, masks of shape `(num_rows, height, width)`.
        agreement (`dict[str, torch.Tensor]`): by column name, IoU of each mask with the mask for the user's box.
    """
    scale = panel_scale(image.size, panel_size)
    panels, captions = {}, {}
    for (name, _), color in zip(COLUMNS, (SAM_COLOR, STABLE_SAM_COLOR)):
        prediction = predictions[name]
        panels[name], captions[name] = [], []
        for row, box in enumerate(boxes.tolist()):
            prompts = [(boxes[0].tolist(), REFERENCE_BOX_COLOR, True)] if row > 0 else []
            prompts.append((box, BOX_COLOR, False))
            panels[name].append(
                render_overlay(image, prediction.masks[row].numpy(), color, boxes=prompts, scale=scale)
            )
            caption = [f"predicted IoU = {prediction.scores[row]:.2f}"]
            if name == "Stable-SAM":
                caption.append(f"alpha_1 = {prediction.alpha_1[row]:.3f}")
            if row > 0:
                caption.append(f"IoU with your box's mask = {agreement[name][row]:.2f}")
            captions[name].append(caption)

    panel_width, panel_height = panels["SAM"][0].size
    title_font, text_font = font(max(14, panel_size // 16)), font(max(11, panel_size // 27))
    row_labels = ["your box"] + [f"noisy box {row}" for row in range(1, len(boxes))]
    label_width = max(round(text_font.getlength(label)) for label in row_labels) + 2 * MARGIN
    line_height = round(text_font.size * 1.3)
    # A caption on one line when it fits under its panel, else one item a line
    captions = {
        name: [
            "   ".join(items) if text_font.getlength("   ".join(items)) <= panel_width else "\n".join(items)
            for items in column
        ]
        for name, column in captions.items()
    }
    caption_lines = max(caption.count("\n") + 1 for column in captions.values() for caption in column)
    text_width = max(
        text_font.getlength(line) for column in captions.values() for caption in column for line in caption.split("\n")
    )
    column_width = max(panel_width, round(text_width))
    title_height = title_font.size + 2 * MARGIN
    row_height = panel_height + caption_lines * line_height + 2 * MARGIN
    footer_height = (footer.count("\n") + 1) * line_height + 2 * MARGIN
    footer_width = max(text_font.getlength(line) for line in footer.split("\n")) + 2 * MARGIN
    width = max(label_width + len(COLUMNS) * (column_width + MARGIN), round(footer_width))
    height = title_height + len(boxes) * row_height + footer_height
    figure = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    for column, (name, title) in enumerate(COLUMNS):
        x = label_width + column * (column_width + MARGIN)
        draw.text((x + panel_width / 2, title_height / 2), title, font=title_font, fill=(0, 0, 0), anchor="mm")
        for row, (panel, caption) in enumerate(zip(panels[name], captions[name])):
            y = title_height + row * row_height
            figure.paste(panel, (x, y))
            draw.multiline_text(
                (x, y + panel_height + MARGIN // 2),
                caption,
                font=text_font,
                fill=(40, 40, 40),
                spacing=line_height - text_font.size,
            )
    for row, label in enumerate(row_labels):
        y = title_height + row * row_height + panel_height / 2
        draw.text((MARGIN, y), label, font=text_font, fill=(0, 0, 0), anchor="lm")
    y = title_height + len(boxes) * row_height
    draw.multiline_text((MARGIN, y), footer, font=text_font, fill=(0, 0, 0), spacing=line_height - text_font.size)
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", metavar="IMAGE", help="Image file (any format PIL reads).")
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        required=True,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="Your box, in image pixels.",
    )
    parser.add_argument(
        "--model", required=True, help="Stable-SAM folder or Hub id; SAM is the same model with alpha_1 = 0."
    )
    parser.add_argument("--out", required=True, metavar="OUT.png", help="Figure to write.")
    parser.add_argument("--noise_scale", type=float, default=0.4, help="Box noise, relative to the box size (0.4).")
    parser.add_argument("--num_prompts", type=int, default=4, help="Number of noisy boxes (default 4).")
    parser.add_argument("--min_iou", type=float, default=0.5, help="Smallest IoU of a noisy box with yours (0.5).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the box noise.")
    parser.add_argument("--panel_size", type=int, default=320, help="Longest side of each panel, in pixels.")
    parser.add_argument("--device", default=None, help="Torch device (default: cuda when available, else cpu).")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the command line; returns the figure path, the boxes, alpha_1 per prompt and each model's stability."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = png_path(parser, args.out)
    if not 1 <= args.num_prompts <= 16:
        parser.error(f"--num_prompts must be between 1 and 16, got {args.num_prompts}.")
    if not 0 <= args.noise_scale <= 2:
        parser.error(f"--noise_scale must be between 0 and 2, got {args.noise_scale}.")
    if not 0 <= args.min_iou < 1:
        parser.error(f"--min_iou must lie in [0, 1), got {args.min_iou}.")
    if not 64 <= args.panel_size <= 2048:
        parser.error(f"--panel_size must be between 64 and 2048 pixels, got {args.panel_size}.")
    try:
        image = load_image(args.image)
        box = check_box(args.box, image.size)
        boxes = torch.cat([torch.tensor([box], dtype=torch.float64), jitter_box(box, image.size, args)])
        model, processor = load_model_and_processor(args.model, args.device or default_device())
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    # One image embedding for both models and every prompt
    pixel_values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        embeddings = model.get_image_embeddings(pixel_values.to(model.device))
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        predictions = {
            name: predict(
                model, processor, image, boxes=boxes.tolist(), routing_weight=weight, image_embeddings=embeddings
            )
            for name, weight in (("SAM", 0.0), ("Stable-SAM", None))
        }
    agreement = {name: pairwise_mask_iou(p.masks)[0].float() for name, p in predictions.items()}
    stable = {
        name: stability(p.masks[1:]).item() if len(boxes) > 2 else float("nan") for name, p in predictions.items()
    }

    print(f"{'prompt':<12} {'box (x0 y0 x1 y1)':<28} {'alpha_1':>8} {'SAM IoU w/ box mask':>20} {'Stable-SAM':>11}")
    for row, prompt in enumerate(boxes.tolist()):
        name = "your box" if row == 0 else f"noisy box {row}"
        coords = " ".join(f"{v:.0f}" for v in prompt)
        print(
            f"{name:<12} {coords:<28} {predictions['Stable-SAM'].alpha_1[row]:>8.3f} "
            f"{agreement['SAM'][row]:>20.3f} {agreement['Stable-SAM'][row]:>11.3f}"
        )
    footer = [
        f"{args.num_prompts} noisy boxes: noise scale {args.noise_scale:g}, IoU with your box >= {args.min_iou:g}, "
        f"seed {args.seed}",
        f"model: {Path(args.model).name or args.model}",
    ]
    if len(boxes) > 2:
        summary = f"SAM {stable['SAM']:.3f}, Stable-SAM {stable['Stable-SAM']:.3f}"
        footer.append(f"stability (mean pairwise IoU of the noisy-box masks): {summary}")
        print(f"stability (mean pairwise IoU of the noisy-box masks): {summary}")
    else:
        footer.append("stability needs at least 2 noisy boxes")
    figure = compose_figure(image, boxes, predictions, agreement, "\n".join(footer), args.panel_size)
    save_png(figure, out)
    print(f"figure: {out}")
    return {
        "figure": out,
        "boxes": boxes,
        "alpha_1": predictions["Stable-SAM"].alpha_1,
        "stability": stable,
        "predictions": predictions,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
