"""Drawing masks, boxes, points and labels on images, for the example scripts' figures."""

import argparse
import colorsys
import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from PIL import ImageDraw, ImageFilter, ImageFont


MASK_COLOR = (30, 144, 255)
POSITIVE_COLOR = (40, 200, 70)
NEGATIVE_COLOR = (230, 40, 40)
BOX_COLOR = (255, 215, 0)
REFERENCE_BOX_COLOR = (255, 255, 255)
MASK_OPACITY = 0.45


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


def overlay_path(out: Path) -> Path:
    return out.with_name(out.stem + "_overlay.png")


def png_path(parser: argparse.ArgumentParser, value: str, option: str = "--out") -> Path:
    path = Path(value)
    if path.suffix.lower() != ".png":
        parser.error(f"{option} {value!r} must be a .png file.")
    if path.is_dir():
        parser.error(f"{option} {value!r} is a folder; give the path of a .png file.")
    # save_png makes missing folders: the nearest existing one must be a folder this process can write to
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"{option} {value!r} cannot be written: {str(folder)!r} is not a writable folder.")
    return path


__all__ = [
    "BOX_COLOR",
    "MASK_COLOR",
    "MASK_OPACITY",
    "NEGATIVE_COLOR",
    "POSITIVE_COLOR",
    "REFERENCE_BOX_COLOR",
    "draw_box",
    "draw_label",
    "draw_masks",
    "draw_points",
    "font",
    "line_width",
    "overlay_path",
    "palette",
    "png_path",
    "render_overlay",
    "save_png",
]
