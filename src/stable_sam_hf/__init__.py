"""Stable-SAM for transformers: SAM with deformable sampling and dynamic routing plugins in its mask decoder."""

from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration

from .configuration_stable_sam import StableSamConfig
from .image_processing_stable_sam import StableSamImageProcessor
from .modeling_stable_sam import (
    StableSamImageSegmentationOutput,
    StableSamMaskDecoder,
    StableSamModel,
    is_plugin_parameter,
)
from .processing_stable_sam import StableSamProcessor, register_processors


__version__ = "0.2.0"

AutoConfig.register(StableSamConfig.model_type, StableSamConfig, exist_ok=True)
AutoModel.register(StableSamConfig, StableSamModel, exist_ok=True)
AutoModelForMaskGeneration.register(StableSamConfig, StableSamModel, exist_ok=True)
register_processors()

__all__ = [
    "StableSamConfig",
    "StableSamImageProcessor",
    "StableSamImageSegmentationOutput",
    "StableSamMaskDecoder",
    "StableSamModel",
    "StableSamProcessor",
    "is_plugin_parameter",
]
