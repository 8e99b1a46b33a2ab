"""Stable-SAM: SAM with a deformable sampling plugin (DSP) and a dynamic routing plugin (DRP) in its mask decoder.

The plugins follow "Stable Segment Anything Model" (Fan et al., arXiv 2311.15776); the subclass-and-swap layout
follows transformers' `SamHQModel`.
"""

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel
from transformers import initialization as init
from transformers.models.sam.modeling_sam import (
    SamImageSegmentationOutput,
    SamMaskDecoder,
    SamTwoWayAttentionBlock,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs

from .adapter import StableSamAdapterMixin
from .configuration_stable_sam import StableSamConfig


# Prompts per DSP call at inference: bounds the plugin's temporary feature maps (each 4 MB a prompt at ViT-B sizes)
DSP_INFERENCE_CHUNK = 2

# Parameter names containing one of these module names belong to the plugins: "trainable" and "saved" filter on it
PLUGIN_MODULE_NAMES = ("dsp", "drp")


def is_plugin_parameter(name: str) -> bool:
    """Whether a parameter or state-dict key belongs to the DSP / DRP plugins."""
    return any(part in PLUGIN_MODULE_NAMES for part in name.split("."))


@dataclass
class StableSamImageSegmentationOutput(SamImageSegmentationOutput):
    r"""
    iou_scores (`torch.Tensor` of shape `(batch_size, point_batch_size, num_masks)`):
        The iou scores of the predicted masks.
    pred_masks (`torch.Tensor` of shape `(batch_size, point_batch_size, num_masks, height, width)`):
        The predicted low resolution masks. Needs to be post-processed by the processor.
    routing_weights (`torch.Tensor` of shape `(batch_size, point_batch_size, 2)`):
        The DRP weights `(alpha_1, alpha_2)` of each prompt: `alpha_1` weighs the deformably sampled features,
        `alpha_2` SAM's regular-grid features. From the last plugin layer when several are configured.
    sampling_offsets (`tuple(torch.Tensor)`, *optional*, returned when `output_sampling_offsets=True`):
        One tensor per plugin layer of shape `(batch_size, point_batch_size, height, width, 2)`: the `(dx, dy)`
        sampling offsets, in image-embedding pixels, at each position of the image embedding.
    """

    routing_weights: torch.Tensor | None = None
    sampling_offsets: tuple[torch.Tensor, ...] | None = None


@dataclass
class _PluginCall:
    """Per-forward options for the plugin layers, and what they report back."""

    routing_weight: torch.Tensor | None = None
    output_sampling_offsets: bool = False
    routing_weights: list[torch.Tensor] = field(default_factory=list)
    sampling_offsets: list[torch.Tensor] = field(default_factory=list)


class StableSamIdentityLinear(nn.Linear):
    """A square linear layer that starts as the identity."""

    def reset_parameters(self):
        nn.init.eye_(self.weight)
        nn.init.zeros_(self.bias)


class StableSamZeroLinear(nn.Linear):
    """A linear layer that starts at zero."""

    def reset_parameters(self):
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class _StableSamSamplingTrunk(nn.Module):
    """
    What the sampling plugins share: the re-projection of the image features ("amplitudes", identity at the start) and
    the trunk of the offset network (depthwise conv -> LayerNorm over channels -> GELU). Works channels-last, as SAM's
    decoder keeps its image stream, so no layout copies are needed around the linears.
    """

    def __init__(self, hidden_size: int, *, kernel_size: int = 5, eps: float = 1e-6):
        super().__init__()
        self.proj = StableSamIdentityLinear(hidden_size, hidden_size)
        self.offset_conv = nn.Conv2d(
            hidden_size, hidden_size, kernel_size=kernel_size, padding=kernel_size // 2, groups=hidden_size
        )
        self.offset_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.offset_act = nn.GELU()

    def trunk(self, features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features (`torch.Tensor` of shape `(batch_size, 1, height * width, hidden_size)`):
                The image stream of the two-way transformer.
        Returns:
            projected (`torch.Tensor` of shape `(batch_size, 1, height * width, hidden_size)`) and the trunk's
            output (`torch.Tensor` of shape `(batch_size, height, width, hidden_size)`).
        """
        batch_size, _, _, hidden_size = features.shape
        projected = self.proj(features)
        # B x C x H x W view of channels-last memory: convolution and sampling need no copy
        spatial = projected.view(batch_size, height, width, hidden_size).permute(0, 3, 1, 2)
        hidden = self.offset_conv(spatial.contiguous(memory_format=torch.channels_last))
        hidden = hidden.permute(0, 2, 3, 1)  # B x H x W x C
        return projected, self.offset_act(self.offset_norm(hidden))


class StableSamDeformableSampling(_StableSamSamplingTrunk):
    """DSP: re-projects the image features ("amplitudes") and samples them at learnt offsets from the regular grid."""

    def __init__(self, hidden_size: int, *, kernel_size: int = 5, offset_range: float = 2.0, eps: float = 1e-6):
        super().__init__(hidden_size, kernel_size=kernel_size, eps=eps)
        self.offset_range = float(offset_range)
        self.offset_proj = StableSamZeroLinear(hidden_size, 2)

    def forward(self, features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features (`torch.Tensor` of shape `(batch_size, 1, height * width, hidden_size)`):
                The image stream of the two-way transformer.
        Returns:
            sampled (`torch.Tensor` of shape `(batch_size, 1, height * width, hidden_size)`) and offsets
            (`torch.Tensor` of shape `(batch_size, height, width, 2)`), `(dx, dy)` in feature-map pixels.
        """
        batch_size, _, _, hidden_size = features.shape
        projected, hidden = self.trunk(features, height, width)
        offsets = self.offset_range * torch.tanh(self.offset_proj(hidden))  # B x H x W x 2
        spatial = projected.view(batch_size, height, width, hidden_size).permute(0, 3, 1, 2)

        # Regular grid at the pixel centres (align_corners=True), shifted by the offsets; float32, since a half-precision
        # grid is off by up to half a pixel and CPU grid_sample is inexact in half precision
        grid = _reference_grid(height, width, device=features.device)
        scale = grid.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
        grid = torch.addcmul(grid, offsets.float(), scale)
        sampled = F.grid_sample(spatial.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        sampled = sampled.to(features.dtype).permute(0, 2, 3, 1)  # B x H x W x C
        return sampled.reshape(batch_size, 1, height * width, hidden_size), offsets


class StableSamSpatialAttention(_StableSamSamplingTrunk):
    """
    The paper's ablation "Stable-SAM (spatial attention)" (appendix Table 9): DSP with its offsets replaced by one
    weight per pixel. The offset network's trunk predicts `2 * sigmoid(raw)` (1 at the start, so a fresh model is
    SAM), which scales the re-projected features where they are: a soft feature sampling that moves nothing.
    """

    def __init__(self, hidden_size: int, *, kernel_size: int = 5, eps: float = 1e-6):
        super().__init__(hidden_size, kernel_size=kernel_size, eps=eps)
        self.weight_proj = StableSamZeroLinear(hidden_size, 1)

    def forward(self, features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, None]:
        """`features` as `StableSamDeformableSampling.forward`; returns the weighted features and no offsets."""
        batch_size, _, hw, _ = features.shape
        projected, hidden = self.trunk(features, height, width)
        weights = 2.0 * torch.sigmoid(self.weight_proj(hidden))  # B x H x W x 1
        return projected * weights.reshape(batch_size, 1, hw, 1), None


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return tuple(torch.broadcast_shapes(shape, target)) == tuple(target)
    except RuntimeError:
        return False


def _reference_grid(height: int, width: int, *, device) -> torch.Tensor:
    """Normalised float32 `(x, y)` coordinates of the pixel centres, shape `(1, height, width, 2)`, for
    `align_corners=True`."""
    ys = torch.linspace(-1.0, 1.0, height, device=device) if height > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device) if width > 1 else torch.zeros(1, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)


class StableSamDynamicRouting(nn.Module):
    """DRP: softmax routing weights `(alpha_1, alpha_2)` from a prompt-conditioned output token."""

    def __init__(self, hidden_size: int, *, routing_hidden_size: int = 32, eps: float = 1e-6):
        super().__init__()
        self.dense1 = nn.Linear(hidden_size, routing_hidden_size)
        self.norm = nn.LayerNorm(routing_hidden_size, eps=eps)
        self.act = nn.GELU()
        self.dense2 = nn.Linear(routing_hidden_size, 2)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """`token` of shape `(batch_size, point_batch_size, hidden_size)` -> `(batch_size, point_batch_size, 2)`."""
        return self.dense2(self.act(self.norm(self.dense1(token)))).softmax(dim=-1)


class StableSamTwoWayAttentionBlock(SamTwoWayAttentionBlock):
    """SAM's two-way block whose token-to-image attention reads DSP features mixed in by DRP."""

    def __init__(self, config: StableSamConfig, *, skip_first_layer_pe: bool = False):
        decoder_config = config.mask_decoder_config
        super().__init__(
            decoder_config,
            attention_downsample_rate=decoder_config.attention_downsample_rate,
            skip_first_layer_pe=skip_first_layer_pe,
        )
        hidden_size = decoder_config.hidden_size
        self.routing_token_index = config.routing_token_index
        # The sampling plugin keeps the name `dsp` in either mode: adapters, freezing and learning rates find it so
        if config.sampling == "deformable":
            self.dsp = StableSamDeformableSampling(
                hidden_size,
                kernel_size=config.offset_kernel_size,
                offset_range=config.offset_range,
                eps=decoder_config.layer_norm_eps,
            )
        else:
            self.dsp = StableSamSpatialAttention(
                hidden_size, kernel_size=config.offset_kernel_size, eps=decoder_config.layer_norm_eps
            )
        self.drp = StableSamDynamicRouting(
            hidden_size, routing_hidden_size=config.routing_hidden_size, eps=decoder_config.layer_norm_eps
        )
        # Set by StableSamMaskDecoder.plugin_call for the duration of one forward
        self.plugin_call: _PluginCall | None = None

    def _sample_and_mix(
        self, keys: torch.Tensor, alpha_1: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`lerp(keys, DSP(keys), alpha_1)`; without autograd, in chunks of prompts so DSP temporaries stay small."""
        if torch.is_grad_enabled() and (
            keys.requires_grad or alpha_1.requires_grad or self.dsp.proj.weight.requires_grad
        ):
            sampled, offsets = self.dsp(keys, height, width)
            return torch.lerp(keys, sampled.to(keys.dtype), alpha_1.to(keys.dtype)), offsets
        # Under autocast the sampled features and routing weights may come in another dtype than the keys
        alpha_1 = alpha_1.to(keys.dtype)
        mixed = torch.empty_like(keys)
        offsets = []
        for start in range(0, keys.shape[0], DSP_INFERENCE_CHUNK):
            chunk = slice(start, start + DSP_INFERENCE_CHUNK)
            sampled, chunk_offsets = self.dsp(keys[chunk], height, width)
            torch.lerp(keys[chunk], sampled.to(keys.dtype), alpha_1[chunk], out=mixed[chunk])
            offsets.append(chunk_offsets)
        return mixed, None if offsets[0] is None else torch.cat(offsets)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_point_embedding: torch.Tensor,
        key_point_embedding: torch.Tensor,
        attention_similarity: torch.Tensor,
        **kwargs,
    ):
        call = self.plugin_call if self.plugin_call is not None else _PluginCall()
        batch_size, point_batch_size = queries.shape[:2]
        side = int(keys.shape[2] ** 0.5 + 0.5)  # not round(): a traced size (ONNX export) has no __round__

        # Self attention block
        if self.skip_first_layer_pe:
            queries, _ = self.self_attn(query=queries, key=queries, value=queries)
        else:
            query = queries + query_point_embedding
            attn_out, _ = self.self_attn(query=query, key=query, value=queries)
            queries = queries + attn_out
        queries = self.layer_norm1(queries)

        # Routing weights from the prompt-conditioned output token, unless forced
        if call.routing_weight is None:
            routing = self.drp(queries[:, :, self.routing_token_index, :])  # B x point_batch x 2
        else:
            alpha_1 = call.routing_weight.to(queries).expand(batch_size, point_batch_size)
            routing = torch.stack([alpha_1, 1.0 - alpha_1], dim=-1)
        call.routing_weights.append(routing)

        # Deformable sampling, mixed with the regular-grid features: alpha_1 * x*_{p+dp} + alpha_2 * x_p
        if call.routing_weight is not None and not bool(call.routing_weight.any()):
            mixed = keys
        else:
            alpha_1 = routing[..., 0].reshape(batch_size * point_batch_size, 1, 1, 1)
            mixed, offsets = self._sample_and_mix(keys, alpha_1, side, keys.shape[2] // side)
            if call.output_sampling_offsets:
                call.sampling_offsets.append(offsets.view(batch_size, point_batch_size, *offsets.shape[1:]))

        # Cross attention block, tokens attending to the mixed image embedding
        query = queries + query_point_embedding
        key = mixed + key_point_embedding
        attn_out, _ = self.cross_attn_token_to_image(
            query=query, key=key, value=mixed, attention_similarity=attention_similarity
        )
        queries = self.layer_norm2(queries + attn_out)

        # MLP block
        queries = self.layer_norm3(queries + self.mlp(queries))

        # Cross attention block, image embedding (original keys) attending to tokens
        query = queries + query_point_embedding
        key = keys + key_point_embedding
        attn_out, _ = self.cross_attn_image_to_token(query=key, key=query, value=queries)
        keys = self.layer_norm4(keys + attn_out)
        return queries, keys, attn_out


class StableSamMaskDecoder(SamMaskDecoder):
    """SAM's mask decoder with `StableSamTwoWayAttentionBlock` in the configured two-way layers."""

    def __init__(self, config: StableSamConfig):
        super().__init__(config.mask_decoder_config)
        for index in config.plugin_layers:
            self.transformer.layers[index] = StableSamTwoWayAttentionBlock(config, skip_first_layer_pe=(index == 0))

    @property
    def plugin_layers(self) -> list[StableSamTwoWayAttentionBlock]:
        return [layer for layer in self.transformer.layers if isinstance(layer, StableSamTwoWayAttentionBlock)]

    @contextlib.contextmanager
    def plugin_call(self, routing_weight: torch.Tensor | None = None, output_sampling_offsets: bool = False):
        """Options for the plugin layers during one forward; yields the `_PluginCall` that collects their outputs."""
        call = _PluginCall(routing_weight=routing_weight, output_sampling_offsets=output_sampling_offsets)
        layers = self.plugin_layers
        for layer in layers:
            layer.plugin_call = call
        try:
            yield call
        finally:
            for layer in layers:
                layer.plugin_call = None


class StableSamModel(StableSamAdapterMixin, SamModel):
    r"""
    Stable-SAM: a frozen SAM whose mask decoder gets two small plugins, DSP (deformable sampling) and DRP (dynamic
    routing), about 0.08M parameters for every SAM size. A fresh model computes exactly what SAM computes; training
    the plugins makes it robust to poor prompts.

    Example:

    ```python
    >>> from transformers import SamConfig
    >>> from stable_sam_hf import StableSamConfig, StableSamModel

    >>> model = StableSamModel.from_pretrained("facebook/sam-vit-base")  # SAM weights, fresh plugins
    >>> model.freeze_base_model()
    >>> model.num_parameters(only_trainable=True)
    81828
    ```
    """

    config_class = StableSamConfig
    config: StableSamConfig

    def __init__(self, config: StableSamConfig):
        super().__init__(config)
        self.mask_decoder = StableSamMaskDecoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        # Start as SAM: identity re-projection and zero offsets make the sampled features equal the regular ones
        if isinstance(module, StableSamIdentityLinear):
            init.eye_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, StableSamZeroLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    def plugin_named_parameters(self):
        """The DSP and DRP parameters, by name."""
        return [(name, param) for name, param in self.named_parameters() if is_plugin_parameter(name)]

    def plugin_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of the plugins only: what an adapter release contains."""
        return {name: tensor for name, tensor in self.state_dict().items() if is_plugin_parameter(name)}

    def freeze_base_model(self):
        """Makes the plugins the only trainable parameters; every SAM weight is frozen."""
        for name, param in self.named_parameters():
            param.requires_grad_(is_plugin_parameter(name))
        return self

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.LongTensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        routing_weight: float | torch.Tensor | None = None,
        output_sampling_offsets: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> StableSamImageSegmentationOutput:
        r"""
        Arguments as [`SamModel.forward`], plus:

        input_points (`torch.Tensor` of shape `(batch_size, point_batch_size, num_points_per_image, 2)`, *optional*):
            Point prompts `(x, y)` in the resized input image's pixel coordinates.
        input_labels (`torch.LongTensor` of shape `(batch_size, point_batch_size, num_points_per_image)`, *optional*):
            1 foreground, 0 background, -1 not a point, -10 padding.
        input_boxes (`torch.Tensor` of shape `(batch_size, num_boxes, 4)`, *optional*):
            Box prompts `(x0, y0, x1, y1)` in the resized input image's pixel coordinates.
        input_masks (`torch.Tensor` of shape `(batch_size, 1, mask_size, mask_size)`, *optional*):
            Low-resolution mask prompts (logits), `mask_size` = 4 x the image-embedding size (256 for SAM).
        routing_weight (`float` or `torch.Tensor` of shape `(batch_size, point_batch_size)`, *optional*):
            Forces the DRP weight `alpha_1` (and `alpha_2 = 1 - alpha_1`) instead of predicting it, as in the
            paper's Table 8. `0.0` gives SAM's outputs exactly, whatever the plugin weights are.
        output_sampling_offsets (`bool`, *optional*, defaults to `False`):
            Whether to return the DSP sampling offsets of every plugin layer.
        """
        self._check_prompts(input_points, input_labels, input_boxes, input_masks)
        self._check_prompt_batch_size(pixel_values, image_embeddings, input_points, input_boxes, input_masks)
        routing_weight = self._check_routing_weight(routing_weight, input_points, input_boxes)
        if output_sampling_offsets and self.config.sampling != "deformable":
            raise ValueError(
                f"`output_sampling_offsets` needs deformable sampling; this model's `sampling` is "
                f"{self.config.sampling!r}, which has no offsets."
            )
        with self.mask_decoder.plugin_call(routing_weight, output_sampling_offsets) as call:
            outputs = super().forward(
                pixel_values=pixel_values,
                input_points=input_points,
                input_labels=input_labels,
                input_boxes=input_boxes,
                input_masks=input_masks,
                image_embeddings=image_embeddings,
                multimask_output=multimask_output,
                **kwargs,
            )
        routing_weights = call.routing_weights[-1] if call.routing_weights else None
        sampling_offsets = tuple(call.sampling_offsets) if output_sampling_offsets else None
        if not isinstance(outputs, ModelOutput):
            return tuple(outputs) + tuple(x for x in (routing_weights, sampling_offsets) if x is not None)
        return StableSamImageSegmentationOutput(
            **outputs, routing_weights=routing_weights, sampling_offsets=sampling_offsets
        )

    def _check_prompts(self, input_points, input_labels, input_boxes, input_masks):
        """Shape checks whose errors name the prompt argument and the expected shape."""
        if input_points is not None and (input_points.ndim != 4 or input_points.shape[-1] != 2):
            raise ValueError(
                "`input_points` must have shape (batch_size, point_batch_size, num_points_per_image, 2), "
                f"got {tuple(input_points.shape)}."
            )
        if input_labels is not None:
            if input_points is None:
                raise ValueError("`input_labels` were given without `input_points`.")
            if tuple(input_labels.shape) != tuple(input_points.shape[:3]):
                raise ValueError(
                    f"`input_labels` must have shape {tuple(input_points.shape[:3])} "
                    f"(batch_size, point_batch_size, num_points_per_image) to match `input_points`, "
                    f"got {tuple(input_labels.shape)}."
                )
        if input_boxes is not None and (input_boxes.ndim != 3 or input_boxes.shape[-1] != 4):
            raise ValueError(
                f"`input_boxes` must have shape (batch_size, num_boxes, 4), got {tuple(input_boxes.shape)}."
            )
        if input_masks is not None:
            size = 4 * self.config.prompt_encoder_config.image_embedding_size
            if input_masks.ndim != 4 or tuple(input_masks.shape[1:]) != (1, size, size):
                raise ValueError(
                    f"`input_masks` must have shape (batch_size, 1, {size}, {size}), got {tuple(input_masks.shape)}."
                )

    @staticmethod
    def _check_prompt_batch_size(pixel_values, image_embeddings, input_points, input_boxes, input_masks):
        """Every prompt tensor has one entry per image, so the error names the prompt, not a `torch.cat` inside SAM."""
        images = pixel_values if pixel_values is not None else image_embeddings
        if not isinstance(images, torch.Tensor):
            return
        source = "`pixel_values`" if pixel_values is not None else "`image_embeddings`"
        for name, prompt in (
            ("input_points", input_points),
            ("input_boxes", input_boxes),
            ("input_masks", input_masks),
        ):
            if prompt is not None and prompt.shape[0] != images.shape[0]:
                raise ValueError(
                    f"`{name}` has prompts for {prompt.shape[0]} images but {source} holds {images.shape[0]}: the first "
                    f"dimension of `{name}` is the image (several prompts of one image go in its one entry, along "
                    "dimension 1)."
                )

    @staticmethod
    def _check_routing_weight(routing_weight, input_points=None, input_boxes=None) -> torch.Tensor | None:
        if routing_weight is None:
            return None
        if isinstance(routing_weight, bool) or not isinstance(routing_weight, (int, float, torch.Tensor)):
            raise TypeError(
                f"`routing_weight` must be a float in [0, 1] or a tensor of shape (batch_size, point_batch_size), "
                f"got {type(routing_weight).__name__}."
            )
        routing_weight = torch.as_tensor(routing_weight, dtype=torch.float32)
        if routing_weight.ndim > 2:
            raise ValueError(
                f"`routing_weight` must be a scalar or of shape (batch_size, point_batch_size), "
                f"got shape {tuple(routing_weight.shape)}."
            )
        prompts = input_points if input_points is not None else input_boxes
        if prompts is not None:
            # SAM turns each box into one prompt of the point batch, as each object's points
            expected = tuple(prompts.shape[:2])
            if not _broadcasts_to(routing_weight.shape, expected):
                raise ValueError(
                    f"`routing_weight` must be a scalar or of shape (batch_size, point_batch_size) = {expected} (or "
                    f"broadcast to it), got shape {tuple(routing_weight.shape)}."
                )
        if torch.isnan(routing_weight).any() or (routing_weight < 0).any() or (routing_weight > 1).any():
            raise ValueError(f"`routing_weight` (alpha_1) must lie in [0, 1], got {routing_weight.tolist()}.")
        return routing_weight


__all__ = [
    "StableSamDeformableSampling",
    "StableSamDynamicRouting",
    "StableSamImageSegmentationOutput",
    "StableSamMaskDecoder",
    "StableSamModel",
    "StableSamTwoWayAttentionBlock",
    "is_plugin_parameter",
]
