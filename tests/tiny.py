"""Tiny in-memory SAM configurations for the tests; the common ones come from `stable_sam_hf.testing_utils`."""

from stable_sam_hf.testing_utils import (  # noqa: F401 (the tests' names)
    IMAGE_SIZE,
    perturb_plugins_,
    tiny_sam_config,
    tiny_sam_kwargs,
    tiny_stable_sam_config,
)


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
