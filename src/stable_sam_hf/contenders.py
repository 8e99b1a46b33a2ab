"""Contenders of the benchmark: a predictor for each model kind of `evaluation.MODEL_KINDS`, each through its own
processor's pre- and post-processing.

SAM, HQ-SAM, Stable-SAM and the train.py baselines share `evaluation.SamPredictor` (SAM's image processor, with the
checkpoint's own pixel statistics when it ships a `preprocessor_config.json`); SAM 2 and SAM 3's tracker go through
`Sam2Processor` / `Sam3TrackerProcessor` (their own resize to a square, statistics, prompt scaling and
`post_process_masks`).

transformers' SAM 2 and SAM 3 image processors run on torchvision, whose PyPI wheels beside a CPU-only torch do not
load. Where torchvision is missing, `Sam2TorchImageProcessor` does the same arithmetic with torch alone (torchvision's
tensor resize is `torch.nn.functional.interpolate`); `tests/test_benchmark.py` checks it against pixel values of
transformers' processor, and against the processor itself where torchvision loads.
"""

import logging
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    PILImageResampling,
)
from transformers.utils import is_torchvision_available

from .evaluation import ImageEncoding, ModelSpec, Prediction, SamPredictor, _describe
from .image_processing_stable_sam import StableSamImageProcessor


logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
# The kinds whose processor resizes to a square: (processor class, image processor class) in transformers, and
# that image processor's defaults
_SQUARE_KINDS = {
    "sam2": ("Sam2Processor", "Sam2ImageProcessor"),
    "sam3_tracker": ("Sam3TrackerProcessor", "Sam3ImageProcessor"),
}
_SQUARE_KIND_DEFAULTS = {
    "sam2": {
        "size": {"height": 1024, "width": 1024},
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
    },
    "sam3_tracker": {
        "size": {"height": 1008, "width": 1008},
        "image_mean": IMAGENET_STANDARD_MEAN,
        "image_std": IMAGENET_STANDARD_STD,
    },
}


class Sam2TorchImageProcessor(BaseImageProcessor):
    """
    The image side of `Sam2ImageProcessor` (and `Sam3ImageProcessor`, which differs in its defaults) without
    torchvision, for RGB uint8 arrays and tensors and PIL images of any mode: the image is resized to `size` (no
    aspect ratio kept) by antialiased bilinear interpolation as torchvision's `resize` does on CPU (on uint8 where
    torch has the native kernel, else in float32 rounded back to uint8), then rescaled and normalised in float32;
    `post_process_masks` is `Sam2ImageProcessor`'s bilinear upsampling to the original size. It reads the same
    `preprocessor_config.json` and refuses settings it does not implement, at construction and per call.

    Args:
        size (`dict`, *optional*, defaults to `{"height": 1024, "width": 1024}`): the model's input size.
        image_mean (`list[float]`, *optional*, defaults to ImageNet's): mean per channel, in [0, 1].
        image_std (`list[float]`, *optional*, defaults to ImageNet's): standard deviation per channel, in [0, 1].
        rescale_factor (`float`, *optional*, defaults to 1/255): pixel values' scale.
    """

    model_input_names = ["pixel_values"]
    # Settings of transformers' processors this one does only one way: their value here, or None
    _FIXED_SETTINGS = {
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": PILImageResampling.BILINEAR,
        "do_center_crop": False,
        "do_pad": False,
    }

    def __init__(
        self,
        size: dict[str, int] | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        rescale_factor: float = 1 / 255,
        **kwargs,
    ):
        self._check_fixed_settings(kwargs, "the configuration")
        kwargs = {key: value for key, value in kwargs.items() if key not in self._FIXED_SETTINGS}
        super().__init__(**kwargs)
        defaults = _SQUARE_KIND_DEFAULTS["sam2"]
        size = defaults["size"] if size is None else size
        if (
            not isinstance(size, dict)
            or set(size) != {"height", "width"}
            or not all(isinstance(v, int) and v >= 1 for v in size.values())
        ):
            raise ValueError(f"`size` must be {{'height': int, 'width': int}} with positive sides, got {size!r}.")
        image_mean = defaults["image_mean"] if image_mean is None else image_mean
        image_std = defaults["image_std"] if image_std is None else image_std
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            if not isinstance(value, (list, tuple)) or len(value) != 3:
                raise ValueError(f"`{name}` must be a list of 3 floats (one per RGB channel), got {value!r}.")
        self.size = dict(size)
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.rescale_factor = rescale_factor

    @classmethod
    def _check_fixed_settings(cls, settings: dict, where: str) -> None:
        unsupported = {
            key: settings[key]
            for key, value in cls._FIXED_SETTINGS.items()
            if settings.get(key) is not None and settings[key] != value
        }
        if unsupported:
            raise ValueError(
                f"Sam2TorchImageProcessor implements SAM 2's processing only (RGB, bilinear resize, rescale, "
                f"normalisation; no crop or pad); {where} asks for {unsupported}. Install torchvision to use "
                "transformers' processor."
            )

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        # torchvision.transforms.v2.functional.resize_image on a CPU uint8 tensor: torch's native uint8 kernel where
        # torchvision uses it (_do_native_uint8_resize_on_cpu), else float32 rounded back to uint8
        size = [self.size["height"], self.size["width"]]
        if tuple(image.shape[-2:]) == tuple(size):
            return image
        native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        if native or platform.machine() in ("aarch64", "arm64"):
            return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return resized[0].round_().to(torch.uint8)

    def _to_tensor(self, image) -> torch.Tensor:
        # PIL images as transformers converts them (transparency composited onto white); arrays channels first when
        # their first axis has 3 entries, as transformers infers it
        if isinstance(image, Image.Image):
            return torch.from_numpy(convert_to_rgb(image, return_numpy=True)).permute(2, 0, 1)
        tensor = torch.as_tensor(image) if isinstance(image, (torch.Tensor, np.ndarray)) else None
        if (
            tensor is None
            or tensor.dtype != torch.uint8
            or tensor.ndim != 3
            or 3 not in (tensor.shape[0], tensor.shape[-1])
        ):
            raise ValueError(
                "`images` must be PIL images or uint8 RGB arrays or tensors of shape (height, width, 3) or "
                f"(3, height, width), got {_describe(image)}."
            )
        return tensor if tensor.shape[0] == 3 else tensor.permute(2, 0, 1)

    def preprocess(self, images, return_tensors=None, segmentation_maps=None, **kwargs) -> BatchFeature:
        """`images`: one or a list of PIL images or uint8 RGB arrays or tensors, `(height, width, 3)` or
        `(3, height, width)`. Returns `pixel_values` and `original_sizes`."""
        if segmentation_maps is not None:
            raise ValueError("Sam2TorchImageProcessor does not process `segmentation_maps`.")
        self._check_fixed_settings(kwargs, "this call")
        other = sorted(set(kwargs) - set(self._FIXED_SETTINGS))
        if other:
            raise ValueError(f"Sam2TorchImageProcessor.preprocess does not take {other}; set them at construction.")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("`images` must hold at least one image, got none.")
        pixel_values, original_sizes = [], []
        # Rescaling folded into the statistics, in float32, as TorchvisionBackend.rescale_and_normalize does
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None] * (1.0 / self.rescale_factor)
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None] * (1.0 / self.rescale_factor)
        for image in images:
            tensor = self._to_tensor(image).contiguous()
            original_sizes.append(list(tensor.shape[-2:]))
            pixel_values.append((self._resize(tensor).float() - mean) / std)
        return BatchFeature(
            {"pixel_values": torch.stack(pixel_values), "original_sizes": original_sizes}, tensor_type=return_tensors
        )

    def post_process_masks(
        self,
        masks,
        original_sizes,
        mask_threshold: float = 0.0,
        binarize: bool = True,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        apply_non_overlapping_constraints: bool = False,
    ):
        """Upsamples each image's `(num_prompts, channels, h, w)` logits to its original size (bilinear), then
        thresholds them when `binarize`; the hole and sprinkle filling and the non-overlap constraint are refused."""
        if max_hole_area or max_sprinkle_area or apply_non_overlapping_constraints:
            raise ValueError(
                "Sam2TorchImageProcessor.post_process_masks does not implement `max_hole_area`, `max_sprinkle_area` "
                "or `apply_non_overlapping_constraints`."
            )
        outputs = []
        for logits, original_size in zip(masks, original_sizes):
            logits = torch.as_tensor(logits)
            upsampled = F.interpolate(logits, [int(v) for v in original_size], mode="bilinear", align_corners=False)
            outputs.append(upsampled > mask_threshold if binarize else upsampled)
        return outputs


def square_input_processor(kind: str, folder: str | None, model: nn.Module | None):
    """`Sam2Processor` or `Sam3TrackerProcessor` for a model of `kind`, with the checkpoint's image processor
    settings (`folder`'s `preprocessor_config.json`, else `model`'s input size and the kind's defaults):
    transformers' image processor where torchvision is installed, else `Sam2TorchImageProcessor`, given the kind's
    defaults for the settings the configuration leaves out, as transformers' class would."""
    import transformers

    processor_name, image_processor_name = _SQUARE_KINDS[kind]
    defaults = dict(_SQUARE_KIND_DEFAULTS[kind])
    if folder is None:
        size = model.config.vision_config.backbone_config.image_size
        size = size if isinstance(size, int) else size[0]
        defaults["size"] = {"height": size, "width": size}
    if is_torchvision_available():
        image_processor_class = getattr(transformers, image_processor_name)
        image_processor = (
            image_processor_class.from_pretrained(folder) if folder is not None else image_processor_class(**defaults)
        )
    else:
        logger.info("torchvision is not installed: %s runs through Sam2TorchImageProcessor.", kind)
        config = Sam2TorchImageProcessor.get_image_processor_dict(folder)[0] if folder is not None else {}
        image_processor = Sam2TorchImageProcessor.from_dict({**defaults, **config})
    size = image_processor.size
    if size["height"] != size["width"]:
        # The processor scales prompts by one target size for both axes
        raise ValueError(f"{processor_name} needs a square input size; the checkpoint's image processor has {size}.")
    return getattr(transformers, processor_name)(image_processor=image_processor)


def _processor_folder(spec: ModelSpec) -> str | None:
    """Where the spec's preprocessor_config.json would be: the checkpoint, or a run folder's base model."""
    for path in (spec.path, spec.base_model):
        if path is None:
            continue
        if not Path(path).exists() or (Path(path) / PREPROCESSOR_CONFIG_NAME).is_file():
            return path
    return None


class Sam2Predictor:
    """
    `SamPredictor`'s interface for a `Sam2Model` or `Sam3TrackerModel`: the processor (`Sam2Processor`,
    `Sam3TrackerProcessor`) resizes and normalises the image and scales the prompts; its `post_process_masks` brings
    the low-resolution logits back to the original size.

    Args:
        model (`Sam2Model` or `Sam3TrackerModel`): the model, frozen.
        processor (`Sam2Processor` or `Sam3TrackerProcessor`): its processor.
        decoder_batch_size (`int`, *optional*, defaults to 20): prompts per decoder call.
    """

    is_stable = False
    is_hq = False

    def __init__(self, model: nn.Module, processor, *, decoder_batch_size: int = 20):
        if decoder_batch_size < 1:
            raise ValueError(f"`decoder_batch_size` must be a positive int, got {decoder_batch_size}.")
        self.model = model
        self.processor = processor
        self.decoder_batch_size = decoder_batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> ImageEncoding:
        """Runs the image encoder on `image` (`torch.Tensor` of shape `(3, height, width)`, uint8)."""
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"`image` must be a uint8 tensor of shape (3, height, width), got {_describe(image)}.")
        inputs = self.processor(images=image.permute(1, 2, 0).numpy(), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        features = {"image_embeddings": self.model.get_image_embeddings(pixel_values)}
        original = tuple(int(v) for v in inputs["original_sizes"][0])
        return ImageEncoding(features, original, original)

    def _prompt_inputs(self, prompts: dict[str, torch.Tensor], encoding: ImageEncoding) -> dict[str, torch.Tensor]:
        # The processor scales original-frame prompts to the model's input, as for its own users
        kwargs = {key: [value.tolist()] for key, value in prompts.items()}  # 1 image x K prompts x ...
        inputs = self.processor(original_sizes=[list(encoding.original_size)], **kwargs, return_tensors="pt")
        return {key: inputs[key].to(self.device) for key in prompts}

    def _postprocess(self, low_res: torch.Tensor, encoding: ImageEncoding) -> torch.Tensor:
        # K x H x W logits -> K x height x width bool
        (masks,) = self.processor.post_process_masks([low_res[:, None].float().cpu()], [encoding.original_size])
        return masks[:, 0].bool()

    @torch.no_grad()
    def predict(
        self, encoding: ImageEncoding, prompts: dict[str, torch.Tensor], routing_weight: float | None = None
    ) -> Prediction:
        """Masks for `num_prompts` prompts of one kind (see `SamPredictor.predict`)."""
        if routing_weight is not None:
            raise ValueError("`routing_weight` can only be forced on a Stable-SAM model.")
        num_prompts = next(iter(prompts.values())).shape[0]
        masks, scores = [], []
        for start in range(0, num_prompts, self.decoder_batch_size):
            chunk = {key: value[start : start + self.decoder_batch_size] for key, value in prompts.items()}
            outputs = self.model(**encoding.features, **self._prompt_inputs(chunk, encoding), multimask_output=False)
            masks.append(self._postprocess(outputs.pred_masks[0, :, 0], encoding))
            scores.append(outputs.iou_scores[0, :, 0].float().cpu())
        return Prediction(torch.cat(masks), torch.cat(scores), None)

    @torch.no_grad()
    def predict_clicks(
        self, encoding: ImageEncoding, points: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """One mask for a set of clicks and the previous low-res logits (see `SamPredictor.predict_clicks`); SAM 2 has
        no routing weights."""
        inputs = self._prompt_inputs({"input_points": points[None], "input_labels": labels[None]}, encoding)
        if mask_logits is not None:
            inputs["input_masks"] = mask_logits[None, None].to(self.device, self.model.dtype)  # 1 x 1 x H x W
        outputs = self.model(**encoding.features, **inputs, multimask_output=False)
        low_res = outputs.pred_masks[0, 0, 0]
        return self._postprocess(low_res[None], encoding)[0], low_res, None


def make_predictor(model: nn.Module, spec: ModelSpec, *, decoder_batch_size: int = 20):
    """The predictor of `spec`'s kind for `model` (from `evaluation.load_model`), with the checkpoint's processor."""
    folder = _processor_folder(spec)
    if spec.method in _SQUARE_KINDS:
        processor = square_input_processor(spec.method, folder, model)
        return Sam2Predictor(model, processor, decoder_batch_size=decoder_batch_size)
    image_processor = StableSamImageProcessor.from_pretrained(folder) if folder is not None else None
    # A released HQ-SAM answers with its default (fused) output; a train.py hq run with the HQ token it trained
    hq_token_only = spec.method == "hq_token_only" or (spec.method == "hq" and spec.run_folder)
    return SamPredictor(
        model, decoder_batch_size=decoder_batch_size, image_processor=image_processor, hq_token_only=hq_token_only
    )


__all__ = ["Sam2Predictor", "Sam2TorchImageProcessor", "make_predictor", "square_input_processor"]
