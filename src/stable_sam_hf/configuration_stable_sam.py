# Copyright 2026 The stable-sam-hf Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Stable-SAM model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import SamConfig


# What the sampling plugin does: Stable-SAM's deformable sampling, or the paper's spatial-attention ablation
SAMPLING_MODES = ("deformable", "spatial")


@strict
class StableSamConfig(SamConfig):
    r"""
    Configuration of a [`StableSamModel`]: a [`SamConfig`] plus the settings of the two plugins that Stable-SAM adds
    to SAM's mask decoder, the deformable sampling plugin (DSP) and the dynamic routing plugin (DRP).

    Args:
        plugin_layers (`list[int]`, *optional*, defaults to `(1,)`):
            Indices of the two-way transformer layers whose token-to-image attention gets DSP + DRP. SAM's decoder
            has two layers; the paper places the plugins in the second one.
        offset_range (`float`, *optional*, defaults to 2.0):
            Largest sampling offset in feature-map pixels: offsets are `offset_range * tanh(raw)`.
        offset_kernel_size (`int`, *optional*, defaults to 5):
            Kernel size of the depthwise convolution of the DSP offset network (odd).
        routing_hidden_size (`int`, *optional*, defaults to 32):
            Hidden width of the DRP router MLP.
        routing_token_index (`int`, *optional*, defaults to 0):
            Which output token routes: 0 is the IoU-prediction token, 1.. are the mask tokens.
        sampling (`str`, *optional*, defaults to `"deformable"`):
            What the sampling plugin does. `"deformable"` is Stable-SAM's DSP: it samples the re-projected features
            at learnt offsets. `"spatial"` is the paper's ablation "Stable-SAM (spatial attention)" (appendix Table
            9): the same offset network predicts one weight per pixel (`2 * sigmoid`, 1 at the start) that scales
            the re-projected features where they are, a soft sampling without offsets.
        base_model_name_or_path (`str`, *optional*):
            The SAM checkpoint (Hub id or folder) that these plugins were trained on. An adapter saved with only
            plugin weights is loaded on top of it.

    Example:

    ```python
    >>> from stable_sam_hf import StableSamConfig, StableSamModel

    >>> config = StableSamConfig(plugin_layers=[1], offset_range=2.0)
    >>> model = StableSamModel(config)
    ```
    """

    model_type = "stable_sam"

    plugin_layers: list[int] | tuple[int, ...] = (1,)
    offset_range: float | int = 2.0
    offset_kernel_size: int = 5
    routing_hidden_size: int = 32
    routing_token_index: int = 0
    sampling: str = "deformable"
    base_model_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        self.plugin_layers = [int(index) for index in self.plugin_layers]
        super().__post_init__(**kwargs)
        self._validate_plugins()

    def _validate_plugins(self):
        # Plain ValueErrors naming the field: strict's own validators wrap errors in another type
        decoder = self.mask_decoder_config
        num_layers = decoder.num_hidden_layers if decoder is not None else 2
        if len(self.plugin_layers) == 0:
            raise ValueError("`plugin_layers` must name at least one two-way transformer layer, got an empty list.")
        for index in self.plugin_layers:
            if not 0 <= index < num_layers:
                raise ValueError(
                    f"`plugin_layers` contains {index}, but the mask decoder has {num_layers} two-way layers "
                    f"(valid indices 0..{num_layers - 1})."
                )
        if len(set(self.plugin_layers)) != len(self.plugin_layers):
            raise ValueError(f"`plugin_layers` has repeated indices: {self.plugin_layers}.")
        if not self.offset_range > 0:
            raise ValueError(f"`offset_range` must be > 0 (feature-map pixels), got {self.offset_range}.")
        if self.offset_kernel_size < 1 or self.offset_kernel_size % 2 == 0:
            raise ValueError(f"`offset_kernel_size` must be a positive odd integer, got {self.offset_kernel_size}.")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"`sampling` must be one of {SAMPLING_MODES}, got {self.sampling!r}.")
        if self.routing_hidden_size < 1:
            raise ValueError(f"`routing_hidden_size` must be >= 1, got {self.routing_hidden_size}.")
        num_tokens = (decoder.num_multimask_outputs + 2) if decoder is not None else 5
        if not 0 <= self.routing_token_index < num_tokens:
            raise ValueError(
                f"`routing_token_index` must index one of the decoder's {num_tokens} output tokens "
                f"(0 = IoU token, 1..{num_tokens - 1} = mask tokens), got {self.routing_token_index}."
            )

    @classmethod
    def from_sam_config(cls, sam_config: SamConfig, **plugin_kwargs) -> "StableSamConfig":
        """Builds a `StableSamConfig` with the sizes of `sam_config` and the given plugin settings."""
        if not isinstance(sam_config, SamConfig):
            raise TypeError(f"`sam_config` must be a transformers `SamConfig`, got {type(sam_config).__name__}.")
        config_dict = sam_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            config_dict.pop(key, None)
        config_dict.update(plugin_kwargs)
        return cls(**config_dict)


__all__ = ["StableSamConfig"]
