"""Offline quickstart: load a SAM checkpoint into StableSamModel and check what the plugins do.

    python examples/quickstart.py                                  # a small SAM built here, no download
    python examples/quickstart.py --base_model facebook/sam-vit-base  # a real SAM, where the Hub is reachable

It loads the base SAM into `StableSamModel`, checks that the untrained plugins reproduce SAM exactly, prompts it
with a box and a noisy version of that box, and prints the DRP routing weights and the plugin parameter count.
"""

import argparse
import logging
import tempfile
from pathlib import Path

import torch
from transformers import SamConfig, SamModel

from stable_sam_hf import StableSamModel


logger = logging.getLogger("quickstart")


def build_offline_base(folder: Path) -> Path:
    """A small randomly initialised SAM (ViT 64 wide, SAM's 256-wide decoder), saved like any SAM checkpoint."""
    config = SamConfig(
        vision_config={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 256,
            "patch_size": 16,
            "global_attn_indexes": [1],
            "window_size": 4,
            "initializer_range": 0.02,
        },
        prompt_encoder_config={"image_size": 256, "patch_size": 16},
    )
    torch.manual_seed(0)
    SamModel(config).save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=None, help="SAM checkpoint (Hub id or folder); default: built here.")
    parser.add_argument("--save_base", default=None, help="Also save the small offline SAM to this folder, then stop.")
    args = parser.parse_args()
    if args.save_base:
        build_offline_base(Path(args.save_base))
        print(f"Saved a small SAM (256x256 input, random weights) to {args.save_base}")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        base = args.base_model or build_offline_base(Path(tmp) / "sam")
        sam = SamModel.from_pretrained(base).eval()
        model = StableSamModel.from_pretrained(base).eval()
    image_size = model.config.vision_config.image_size

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, image_size, image_size, generator=generator)
    box = torch.tensor([[0.25, 0.25, 0.70, 0.75]]) * image_size
    noisy_box = box + torch.tensor([[0.08, -0.05, 0.12, 0.06]]) * image_size
    boxes = torch.stack([box, noisy_box], dim=1).reshape(1, 2, 4)

    with torch.no_grad():
        expected = sam(pixel_values=pixel_values, input_boxes=boxes, multimask_output=False)
        outputs = model(pixel_values=pixel_values, input_boxes=boxes, multimask_output=False)
    difference = (outputs.pred_masks - expected.pred_masks).abs().max().item()
    model.freeze_base_model()
    logger.info("base model: %s", args.base_model or "small SAM built offline (random weights)")
    logger.info("trainable plugin parameters: %d", model.num_parameters(only_trainable=True))
    logger.info("untrained Stable-SAM vs SAM, largest mask-logit difference: %.2e", difference)
    for name, weights in zip(("GT box", "noisy box"), outputs.routing_weights[0]):
        logger.info("%-9s alpha_1 = %.3f, alpha_2 = %.3f", name, weights[0].item(), weights[1].item())


if __name__ == "__main__":
    main()
