"""Tiny in-memory SAM configurations for the tests; the common ones come from `stable_sam_hf.testing_utils`."""

from stable_sam_hf.testing_utils import (  # noqa: F401 (the tests' names)
    IMAGE_SIZE,
    perturb_plugins_,
    tiny_sam_config,
    tiny_sam_kwargs,
    tiny_stable_sam_config,
)


def tiny_sam2_config():
    """A SAM 2 small enough for CPU tests (transformers' own tester's sizes). The global-attention block is the second
    of stage 3: Sam2MultiScaleBlock divides by the window size where a stage starts, which is 0 in a global block."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=IMAGE_SIZE,
        blocks_per_stage=[1, 1, 2, 1],
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


def tiny_sam3_tracker_config():
    """SAM 3's promptable tracker small enough for CPU tests (transformers' own tester's sizes, a 56-pixel input)."""
    from transformers import Sam3TrackerConfig, Sam3VisionConfig, Sam3ViTConfig

    image_size, patch_size = 56, 14  # 4 x 4 patches; feature maps at 4x, 2x and 1x of them
    backbone = Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
        window_size=2,
        global_attn_indexes=[0, 1],
    )
    vision = Sam3VisionConfig(
        backbone_config=backbone,
        fpn_hidden_size=32,
        scale_factors=[4.0, 2.0, 1.0],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
    )
    return Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 32, "image_size": image_size, "patch_size": patch_size},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 4, "iou_head_hidden_dim": 32},
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
