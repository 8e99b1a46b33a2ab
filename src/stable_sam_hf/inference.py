"""Loading a model and an image, checking prompts and predicting one image's masks: what the example scripts share.

>>> from stable_sam_hf.inference import load_image, load_model_and_processor, predict
>>> model, processor = load_model_and_processor("models/toy-sam-128")  # doctest: +SKIP
>>> prediction = predict(model, processor, load_image("photo.jpg"), boxes=[[95, 255, 930, 780]])  # doctest: +SKIP
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .image_processing_stable_sam import HIGH_BIT_DEPTH_MODES, StableSamImageProcessor, to_uint8_by_range
from .modeling_stable_sam import StableSamModel
from .processing_stable_sam import StableSamProcessor


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


__all__ = [
    "Prediction",
    "check_box",
    "check_point",
    "default_device",
    "default_image_processor",
    "load_image",
    "load_model_and_processor",
    "predict",
]
