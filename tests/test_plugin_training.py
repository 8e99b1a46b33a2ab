"""Plugin training on the shipped toy SAM, on a reduced budget: the claim of the offline demo, checked in CI.

Only the DSP + DRP plugins train (Adam, Stable-SAM's learning rate, a prompt mix with noisy boxes), on image
embeddings of synthetic training scenes; held-out scenes of the same domain then show a lower loss and a higher
noisy-box mIoU than the frozen toy base (the same model at `routing_weight=0`, which is SAM exactly).
"""

from pathlib import Path

import pytest
import torch

from stable_sam_hf import StableSamModel
from stable_sam_hf.methods import SAM_PIXEL_MEAN, SAM_PIXEL_STD, optimizer_parameter_groups, segmentation_loss
from stable_sam_hf.prompts import masks_to_boxes, noisy_boxes, sample_points
from stable_sam_hf.synthetic import generate_scenes


TOY_BASE = Path(__file__).resolve().parents[1] / "models" / "toy-sam-128"
TRAIN_SCENES, HELD_OUT_SCENES = 240, 60
STEPS, IMAGES_PER_STEP, OBJECTS_PER_IMAGE = 240, 8, 4
TRAIN_PROMPT_TYPES = ("noisy_box", "box", "points_1", "noisy_box", "points_3", "noisy_box", "points_10")


def encode(model, images) -> torch.Tensor:
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    pixels = (pixels - torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    return torch.cat([model.get_image_embeddings(pixels[i : i + 60]) for i in range(0, len(pixels), 60)])


def prompt_inputs(masks: torch.Tensor, prompt_type: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Inputs for masks `(n, P, H, W)` under one prompt type."""
    n, p, height, width = masks.shape
    flat = masks.flatten(0, 1)
    if prompt_type.startswith("points_"):
        k = int(prompt_type.split("_")[1])
        points, labels = sample_points(flat, k, generator=generator)
        return {"input_points": points.view(n, p, k, 2), "input_labels": labels.view(n, p, k)}
    boxes = masks_to_boxes(flat)
    if prompt_type == "noisy_box":
        boxes = noisy_boxes(boxes, (height, width), noise_scale=0.4, min_iou=0.5, generator=generator)
    return {"input_boxes": boxes.view(n, p, 4)}


def objects_of(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of every scene: scene index `(M,)` and bool mask `(M, H, W)`."""
    counts = labels.flatten(1).amax(1).long()
    scene = torch.repeat_interleave(torch.arange(len(labels)), counts)
    object_id = torch.cat([torch.arange(1, int(c) + 1) for c in counts]).to(labels.dtype)
    return scene, labels[scene] == object_id[:, None, None]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = StableSamModel.from_pretrained(TOY_BASE, torch_dtype=torch.float32)
    model.freeze_base_model()
    model.eval()
    images, labels = generate_scenes(TRAIN_SCENES, size=128, domain="train", seed=0)
    held_images, held_labels = generate_scenes(HELD_OUT_SCENES, size=128, domain="train", seed=1)
    held_scene, held_masks = objects_of(torch.from_numpy(held_labels))
    held_inputs = prompt_inputs(held_masks[:, None], "noisy_box", torch.Generator().manual_seed(1))
    return {
        "model": model,
        "embeddings": encode(model, images),
        "labels": torch.from_numpy(labels),
        "held_embeddings": encode(model, held_images)[held_scene],
        "held_masks": held_masks,
        "held_inputs": held_inputs,
    }


@torch.no_grad()
def held_out_noisy_box(setup, routing_weight=None) -> tuple[float, float, float]:
    """Mean loss, mIoU (%) and mean alpha_1 on the held-out objects under their seeded noisy boxes."""
    model, masks = setup["model"], setup["held_masks"]
    losses, ious, alphas = [], [], []
    for start in range(0, len(masks), 64):
        rows = slice(start, start + 64)
        outputs = model(
            image_embeddings=setup["held_embeddings"][rows],
            multimask_output=False,
            routing_weight=routing_weight,
            **{name: value[rows] for name, value in setup["held_inputs"].items()},
        )
        logits = outputs.pred_masks[:, 0, 0]
        losses.append(segmentation_loss(logits, masks[rows]) * len(logits))
        upsampled = torch.nn.functional.interpolate(logits[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0]
        predicted, truth = upsampled > 0, masks[rows]
        ious.append((predicted & truth).flatten(1).sum(1) / (predicted | truth).flatten(1).sum(1).clamp(min=1))
        alphas.append(outputs.routing_weights[:, 0, 0])
    return (torch.stack(losses).sum() / len(masks)).item(), 100 * torch.cat(ious).mean().item(), torch.cat(alphas)


def train_plugins(setup) -> list[float]:
    model, embeddings, labels = setup["model"], setup["embeddings"], setup["labels"]
    optimizer = torch.optim.Adam(optimizer_parameter_groups(model, 1e-3), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    counts = labels.flatten(1).amax(1).long()
    model.train()
    losses = []
    for step in range(STEPS):
        scenes = torch.randint(len(labels), (IMAGES_PER_STEP,), generator=generator)
        ids = torch.stack(
            [torch.randint(int(counts[s]), (OBJECTS_PER_IMAGE,), generator=generator) + 1 for s in scenes]
        ).to(labels.dtype)
        masks = labels[scenes][:, None] == ids[:, :, None, None]  # n x P x H x W
        prompt_type = TRAIN_PROMPT_TYPES[step % len(TRAIN_PROMPT_TYPES)]
        outputs = model(
            image_embeddings=embeddings[scenes],
            multimask_output=False,
            **prompt_inputs(masks, prompt_type, generator),
        )
        loss = segmentation_loss(outputs.pred_masks.flatten(0, 2), masks.flatten(0, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def held_out_alpha(setup, prompt_type: str) -> float:
    """Mean DRP weight alpha_1 of the held-out objects under one prompt type."""
    inputs = prompt_inputs(setup["held_masks"][:, None], prompt_type, torch.Generator().manual_seed(2))
    outputs = setup["model"](image_embeddings=setup["held_embeddings"], multimask_output=False, **inputs)
    return outputs.routing_weights[..., 0].mean().item()


@pytest.fixture(scope="module")
def trained(setup):
    base_loss, base_miou, _ = held_out_noisy_box(setup, routing_weight=0.0)
    untrained_loss, _, _ = held_out_noisy_box(setup)
    losses = train_plugins(setup)
    return {"base_loss": base_loss, "base_miou": base_miou, "untrained_loss": untrained_loss, "losses": losses}


def test_plugin_training_beats_the_frozen_toy_base_under_noisy_boxes(setup, trained):
    base_loss, base_miou = trained["base_loss"], trained["base_miou"]
    # Fresh plugins are SAM, whatever DRP routes
    assert trained["untrained_loss"] == pytest.approx(base_loss, abs=1e-5)

    loss, miou, alphas = held_out_noisy_box(setup)
    print(f"held-out noisy box: loss {base_loss:.4f} -> {loss:.4f}, mIoU {base_miou:.2f} -> {miou:.2f}")
    assert loss < base_loss
    assert miou > base_miou + 0.5
    # Forcing alpha_1 = 0 after training still gives the frozen base
    assert held_out_noisy_box(setup, routing_weight=0.0)[1] == pytest.approx(base_miou, abs=1e-6)


def test_routing_gives_fewer_points_more_deformable_sampling(setup, trained):
    alphas = {prompt_type: held_out_alpha(setup, prompt_type) for prompt_type in ("points_1", "points_3", "points_10")}
    print("alpha_1 by prompt:", {name: round(value, 3) for name, value in alphas.items()})
    assert alphas["points_1"] > alphas["points_3"] > alphas["points_10"]
