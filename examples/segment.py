"""Segment one object of an image with a box and/or points, and draw the result.

    python examples/segment.py photo.jpg --box 95 255 930 780 --model path/to/stable-sam --out mask.png
    python examples/segment.py photo.jpg --point 480 400 1 --point 300 120 0 --model path/to/stable-sam --out mask.png

Coordinates are pixels of the image as a viewer shows it (EXIF orientation applied); a point's label is 1 for the
object, 0 for background. Writes OUT (the binary mask, white on black, the image's size) and an overlay
(OUT's stem + "_overlay.png": the image with the mask, its outline, the prompts and alpha_1), and prints the DRP
routing weight alpha_1 (how much Stable-SAM relied on deformable sampling for this prompt) and the predicted IoU.

The drawing and loading helpers here are shared by `automatic_masks.py` and `compare_with_sam.py`.
"""

import argparse
import colorsys
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from PIL import ImageDraw, ImageFilter, ImageFont

from stable_sam_hf import StableSamImageProcessor, StableSamModel, StableSamProcessor
from stable_sam_hf.image_processing_stable_sam import HIGH_BIT_DEPTH_MODES, to_uint8_by_range


MASK_COLOR = (30, 144, 255)
POSITIVE_COLOR = (40, 200, 70)
NEGATIVE_COLOR = (230, 40, 40)
BOX_COLOR = (255, 215, 0)
REFERENCE_BOX_COLOR = (255, 255, 255)
MASK_OPACITY = 0.45

# PIL modes whose values go past 255: scaled by their range, as StableSamImageProcessor does
# Loading


def load_image(path: str | Path) -> PIL.Image.Image:
    """The image as a viewer shows it: EXIF orientation applied, 8-bit RGB (16-bit and float images scaled by range).

    Raises:
        `FileNotFoundError` when `path` is not a file, `ValueError` when PIL cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IMAGE {str(path)!r} does not exist or is not a file.")
    try:
        with PIL.Image.open(path) as image:
            image.load()
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise ValueError(f"IMAGE {str(path)!r} is not an image that PIL can read ({error}).") from None
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = PIL.Image.fromarray(to_uint8_by_range(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels shown on white, as an image viewer does
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def default_image_processor(model: StableSamModel) -> StableSamImageProcessor:
    """An image processor with the model's input size, for checkpoints saved without a processor."""
    image_size = model.config.vision_config.image_size
    mask_size = 4 * model.config.prompt_encoder_config.image_embedding_size
    return StableSamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": mask_size},
        mask_pad_size={"height": mask_size, "width": mask_size},
    )


def load_model_and_processor(
    name: str, device: str | torch.device = "cpu"
) -> tuple[StableSamModel, StableSamProcessor]:
    """A `StableSamModel` in eval mode on `device` and its `StableSamProcessor`, from a folder or Hub id.

    A SAM checkpoint loads too: its plugins are then untrained and Stable-SAM computes exactly what SAM computes.

    Raises:
        `ValueError` naming `--model` when no model can be loaded from `name`.
    """
    try:
        model = StableSamModel.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {name!r}: no Stable-SAM or SAM checkpoint could be loaded ({error}).") from None
    try:
        image_processor = StableSamImageProcessor.from_pretrained(name)
    except OSError:
        image_processor = default_image_processor(model)
    return model.to(device).eval(), StableSamProcessor(image_processor=image_processor)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# Prediction


@dataclass
class Prediction:
    """Masks for the prompts of one image, at the image's size.

    masks (`torch.Tensor` of shape `(num_prompts, height, width)`): binary masks, bool.
    scores (`torch.Tensor` of shape `(num_prompts,)`): predicted IoU of each mask.
    alpha_1 (`torch.Tensor` of shape `(num_prompts,)`): DRP weight of the deformably sampled features.
    """

    masks: torch.Tensor
    scores: torch.Tensor
    alpha_1: torch.Tensor


@torch.inference_mode()
def predict(
    model: StableSamModel,
    processor: StableSamProcessor,
    image: PIL.Image.Image,
    boxes: list[list[float]] | None = None,
    points: list[list[float]] | None = None,
    labels: list[int] | None = None,
    multimask_output: bool = False,
    routing_weight: float | None = None,
    image_embeddings: torch.Tensor | None = None,
) -> Prediction:
    """
    Segments with box prompts (one object per box) or with one object's points (and optionally one box).

    Args:
        boxes (`list` of `[x0, y0, x1, y1]`, *optional*): boxes in image pixels; several boxes are several objects.
        points (`list` of `[x, y]`, *optional*): the points of one object, in image pixels.
        labels (`list[int]`, *optional*): 1 (object) or 0 (background) per point.
        multimask_output (`bool`): predict SAM's three masks per prompt and keep the one with the best score.
        routing_weight (`float`, *optional*): forces alpha_1 (`0.0` is SAM exactly).
        image_embeddings (`torch.Tensor` of shape `(1, hidden_size, height, width)`, *optional*): reused when given.
    """
    if boxes is None and points is None:
        raise ValueError("Give at least one prompt: `boxes` or `points`.")
    if points is not None and boxes is not None and len(boxes) != 1:
        raise ValueError(f"Points describe one object, so at most one box goes with them; got {len(boxes)} boxes.")
    inputs = processor(
        images=image,
        input_boxes=[boxes] if boxes is not None else None,
        input_points=[[points]] if points is not None else None,
        input_labels=[[labels]] if labels is not None else None,
        return_tensors="pt",
    )
    device = model.device
    if image_embeddings is None:
        image_embeddings = model.get_image_embeddings(inputs["pixel_values"].to(device))
    prompts = {key: inputs[key].to(device) for key in ("input_boxes", "input_points", "input_labels") if key in inputs}
    outputs = model(
        image_embeddings=image_embeddings,
        multimask_output=multimask_output,
        routing_weight=routing_weight,
        **prompts,
    )
    masks = processor.post_process_masks(
        outputs.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]  # num_prompts x num_masks x H x W
    scores = outputs.iou_scores[0].cpu()  # num_prompts x num_masks
    best = scores.argmax(dim=-1)
    rows = torch.arange(scores.shape[0])
    return Prediction(
        masks=masks[rows, best], scores=scores[rows, best], alpha_1=outputs.routing_weights[0, :, 0].cpu()
    )


# Drawing


def palette(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct, saturated colours (golden-ratio steps around the hue circle)."""
    colors = []
    for index in range(count):
        red, green, blue = colorsys.hsv_to_rgb((0.58 + index * 0.618034) % 1.0, 0.70, 0.95)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def line_width(size: tuple[int, int]) -> int:
    """Outline width in pixels for an image of `(width, height)`: visible on small and large images alike."""
    return max(2, round(max(size) / 250))


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    # Pixels of the mask within `width` pixels of its edge
    image = PIL.Image.fromarray(mask.astype(np.uint8) * 255)
    eroded = np.asarray(image.filter(ImageFilter.MinFilter(2 * width + 1))) > 0
    return mask & ~eroded


def draw_masks(
    image: PIL.Image.Image,
    masks: list[np.ndarray] | np.ndarray | torch.Tensor,
    colors: list[tuple[int, int, int]],
    opacity: float = MASK_OPACITY,
) -> PIL.Image.Image:
    """The image with each mask (`(height, width)` bool, at the image's size) tinted in its colour and outlined."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    width = line_width(image.size)
    for mask, color in zip(masks, colors):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != canvas.shape[:2]:
            raise ValueError(f"A mask has shape {mask.shape}; the image is {canvas.shape[:2]} (height, width).")
        color = np.array(color, dtype=np.float32)
        canvas[mask] = (1.0 - opacity) * canvas[mask] + opacity * color
        canvas[_outline(mask, width)] = color
    return PIL.Image.fromarray(canvas.round().astype(np.uint8))


def _dashed_line(draw: ImageDraw.ImageDraw, start, end, color, width: int, dash: float) -> None:
    length = math.dist(start, end)
    steps = max(1, int(length // dash))
    for step in range(0, steps, 2):
        t0, t1 = step / steps, min(step + 1, steps) / steps
        draw.line(
            [
                (start[0] + (end[0] - start[0]) * t0, start[1] + (end[1] - start[1]) * t0),
                (start[0] + (end[0] - start[0]) * t1, start[1] + (end[1] - start[1]) * t1),
            ],
            fill=color,
            width=width,
        )


def draw_box(
    image: PIL.Image.Image, box, color=BOX_COLOR, dashed: bool = False, width: int | None = None
) -> PIL.Image.Image:
    """Draws a `[x0, y0, x1, y1]` box on `image` (in place) with a dark halo, solid or dashed; returns `image`."""
    width = width or line_width(image.size)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    for halo, fill in ((width + 2, (0, 0, 0)), (width, color)):
        for start, end in zip(corners[:-1], corners[1:]):
            if dashed:
                _dashed_line(draw, start, end, fill, halo, dash=max(4.0, 4.0 * width))
            else:
                draw.line([start, end], fill=fill, width=halo)
    return image


def draw_points(image: PIL.Image.Image, points, labels, radius: int | None = None) -> PIL.Image.Image:
    """Draws points (green: object, red: background) with a white ring on `image` (in place); returns `image`."""
    radius = radius or max(4, 3 * line_width(image.size))
    draw = ImageDraw.Draw(image)
    for (x, y), label in zip(points, labels):
        color = POSITIVE_COLOR if int(label) == 1 else NEGATIVE_COLOR
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline=(255, 255, 255), width=2)
    return image


def draw_label(image: PIL.Image.Image, text: str, corner: tuple[int, int] = (0, 0), size: int | None = None):
    """Writes `text` on a dark box at `corner` of `image` (in place); returns `image`."""
    size = size or max(10, round(max(image.size) / 36))
    text_font = font(size)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=text_font)
    pad = max(2, size // 4)
    x, y = corner
    draw.rectangle([x, y, x + right - left + 2 * pad, y + bottom - top + 2 * pad], fill=(0, 0, 0))
    draw.multiline_text((x + pad - left, y + pad - top), text, font=text_font, fill=(255, 255, 255))
    return image


def render_overlay(
    image: PIL.Image.Image,
    mask,
    color=MASK_COLOR,
    boxes=(),
    points=None,
    labels=None,
    text: str | None = None,
    scale: float = 1.0,
) -> PIL.Image.Image:
    """
    The image (resized by `scale`) with `mask` (`(height, width)` bool at the image's size), box prompts
    (`(box, color, dashed)` triples in image pixels), point prompts and a text label.
    """
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        mask = np.asarray(PIL.Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(size)) > 127
    picture = draw_masks(image, [mask], [color])
    for box, box_color, dashed in boxes:
        draw_box(picture, [v * scale for v in box], box_color, dashed=dashed)
    if points:
        draw_points(picture, [(x * scale, y * scale) for x, y in points], labels)
    if text:
        draw_label(picture, text)
    return picture


def save_png(image: PIL.Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


# Command line


def check_box(box: list[float], image_size: tuple[int, int], option: str = "--box") -> list[float]:
    """Checks a `[x0, y0, x1, y1]` box: finite, x0 < x1, y0 < y1, overlapping the `(width, height)` image."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{option} {box}: coordinates must be finite numbers.")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{option} {box}: expected x0 y0 x1 y1 with x0 < x1 and y0 < y1.")
    width, height = image_size
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"{option} {box} lies outside the {width}x{height} image.")
    return [float(v) for v in box]


def check_point(point: list[float], image_size: tuple[int, int]) -> tuple[list[float], int]:
    """Checks a `[x, y, label]` point: finite, inside the `(width, height)` image, label 0 or 1."""
    x, y, label = point
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"--point {point}: coordinates must be finite numbers.")
    if label not in (0, 1):
        raise ValueError(f"--point {point}: the label must be 1 (object) or 0 (background), got {label:g}.")
    width, height = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"--point {point} lies outside the {width}x{height} image.")
    return [float(x), float(y)], int(label)


def overlay_path(out: Path) -> Path:
    return out.with_name(out.stem + "_overlay.png")


def png_path(parser: argparse.ArgumentParser, value: str, option: str = "--out") -> Path:
    path = Path(value)
    if path.suffix.lower() != ".png":
        parser.error(f"{option} {value!r} must be a .png file.")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "image", metavar="IMAGE", help="Image file (any format PIL reads: RGB, RGBA, grayscale, 16-bit)."
    )
    parser.add_argument(
        "--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="Box prompt in image pixels."
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
