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


def tiny_sam2_config():
    """A SAM 2 small enough for CPU tests (transformers' own tester's sizes, one block per stage)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=IMAGE_SIZE,
        blocks_per_stage=[1, 1, 1, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[IMAGE_SIZE // 4] * 2, [IMAGE_SIZE // 8] * 2, [IMAGE_SIZE // 16] * 2],
        fpn_hidden_size=32,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
            "mask_input_channels": 8,
        },
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        initializer_range=0.2,
    )


def tiny_sam_hq_config():
    from transformers import SamHQConfig

    kwargs = tiny_sam_kwargs()
    kwargs["mask_decoder_config"] = {
        **kwargs["mask_decoder_config"],
        "vit_dim": kwargs["vision_config"]["hidden_size"],
    }
    return SamHQConfig(**kwargs)
