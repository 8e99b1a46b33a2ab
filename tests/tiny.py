"""Tiny in-memory SAM / Stable-SAM configurations shared by the tests."""

import torch
from transformers import SamConfig

from stable_sam_hf import StableSamConfig


IMAGE_SIZE = 64


def tiny_sam_kwargs(decoder_hidden_size: int = 32) -> dict:
    """Sub-configs of a SAM small enough for CPU tests; initializer_range 0.2 keeps activations O(1)."""
    return {
        "vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "output_channels": decoder_hidden_size,
            "window_size": 4,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "num_pos_feats": decoder_hidden_size // 2,
            "initializer_range": 0.2,
        },
        "prompt_encoder_config": {
            "hidden_size": decoder_hidden_size,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "mask_input_channels": 8,
        },
        "mask_decoder_config": {
            "hidden_size": decoder_hidden_size,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        "initializer_range": 0.2,
    }


def tiny_sam_config(**kwargs) -> SamConfig:
    return SamConfig(**{**tiny_sam_kwargs(), **kwargs})


def tiny_stable_sam_config(**kwargs) -> StableSamConfig:
    return StableSamConfig(**{**tiny_sam_kwargs(), **kwargs})


def perturb_plugins_(model, seed: int = 0, std: float = 0.3):
    """Moves every plugin weight away from its SAM-equivalent initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.plugin_named_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model
