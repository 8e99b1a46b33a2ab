"""transformers' "mask-generation" pipeline on Stable-SAM: loads from a saved folder and runs the plugins."""

import inspect

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import SamModel, pipeline

from stable_sam_hf import StableSamImageProcessor, StableSamModel, StableSamProcessor, is_plugin_parameter

from tiny import IMAGE_SIZE, perturb_plugins_, tiny_sam_config, tiny_stable_sam_config


# tiny.py's SAM: 64 x 64 input, patch 8 -> 8 x 8 image embeddings -> 32 x 32 low-resolution masks and mask prompts
IMAGE_PROCESSOR_KWARGS = {
    "size": {"longest_edge": IMAGE_SIZE},
    "pad_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "mask_size": {"longest_edge": 32},
    "mask_pad_size": {"height": 32, "width": 32},
}
POINTS_PER_SIDE = 4
# No score filtering and no suppression: every grid prompt's masks reach the output, so outputs can be compared
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crops_nms_thresh": 1.0}


def save_full(model: StableSamModel, folder) -> None:
    # A self-contained folder (weights of SAM and plugins) once save_pretrained can also write adapters only
    if "full_checkpoint" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(folder, full_checkpoint=True)
    else:
        model.save_pretrained(folder)


def image(height: int = 48, width: int = 80, seed: int = 0) -> PIL.Image.Image:
    """An RGB image with two flat shapes on a noisy background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    pixels[((cols - width / 4) / (width / 6)) ** 2 + ((rows - height / 2) / (height / 4)) ** 2 < 1] = (220, 120, 40)
    pixels[height // 5 : 4 * height // 5, 3 * width // 5 : 9 * width // 10] = (60, 180, 90)
    return PIL.Image.fromarray(pixels)


def image_processor() -> StableSamImageProcessor:
    return StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS)


def stable_sam(perturbed: bool = True) -> StableSamModel:
    torch.manual_seed(0)
    model = StableSamModel(tiny_stable_sam_config()).eval()
    return perturb_plugins_(model) if perturbed else model


def sam_with_same_weights(model: StableSamModel) -> SamModel:
    sam = SamModel(tiny_sam_config()).eval()
    sam.load_state_dict({k: v for k, v in model.state_dict().items() if not is_plugin_parameter(k)})
    return sam


def generate(model, **kwargs) -> dict:
    generator = pipeline("mask-generation", model=model, image_processor=image_processor())
    return generator(image(), points_per_crop=POINTS_PER_SIDE, crops_n_layers=0, **{**KEEP_ALL, **kwargs})


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_stable_sam")
    save_full(stable_sam(), folder)
    StableSamProcessor(image_processor=image_processor()).save_pretrained(folder)
    return folder


def test_pipeline_from_saved_folder_returns_masks_and_scores(saved_folder):
    generator = pipeline("mask-generation", model=str(saved_folder))
    assert isinstance(generator.model, StableSamModel)
    assert isinstance(generator.image_processor, StableSamImageProcessor)

    outputs = generator(image(), points_per_crop=POINTS_PER_SIDE, points_per_batch=8, crops_n_layers=0, **KEEP_ALL)
    masks, scores = outputs["masks"], outputs["scores"]
    # Multimask output: 3 masks per grid prompt, all kept
    assert len(masks) == scores.shape[0] == 3 * POINTS_PER_SIDE**2
    for mask in masks:
        assert mask.dtype == bool and mask.shape == (48, 80)
    assert any(mask.any() for mask in masks)
    assert torch.all(scores[:-1] >= scores[1:])  # by decreasing score


def test_pipeline_default_filters_and_nms_give_a_subset(saved_folder):
    generator = pipeline("mask-generation", model=str(saved_folder))
    everything = generator(image(), points_per_crop=POINTS_PER_SIDE, crops_n_layers=0, **KEEP_ALL)
    filtered = generator(
        image(), points_per_crop=POINTS_PER_SIDE, crops_n_layers=0, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert 1 <= len(filtered["masks"]) < len(everything["masks"])
    # Kept masks are among the unsuppressed ones, with the same scores
    kept = {round(score, 5) for score in everything["scores"].tolist()}
    assert all(round(score, 5) in kept for score in filtered["scores"].tolist())


def test_pipeline_runs_the_plugins_on_every_grid_prompt():
    model = stable_sam()
    plugin_layer = model.mask_decoder.plugin_layers[0]
    routed, sampled = [], []
    handles = [
        plugin_layer.drp.register_forward_hook(lambda module, args, output: routed.append(output)),
        plugin_layer.dsp.register_forward_hook(lambda module, args, output: sampled.append(args[0].shape[0])),
    ]
    try:
        generate(model, points_per_batch=6)
    finally:
        for handle in handles:
            handle.remove()

    # Batches of at most 6 prompts, the DRP sees every grid prompt once and the DSP samples features for each
    assert [weights.shape[1] for weights in routed] == [6, 6, 4]
    weights = torch.cat([w.reshape(-1, 2) for w in routed])
    assert weights.shape == (POINTS_PER_SIDE**2, 2)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(POINTS_PER_SIDE**2))
    assert weights[:, 0].std() > 0  # the routing depends on the prompt
    assert sum(sampled) == POINTS_PER_SIDE**2


def test_pipeline_output_is_sam_for_fresh_plugins_and_differs_once_they_are_trained():
    fresh = stable_sam(perturbed=False)
    sam = sam_with_same_weights(fresh)
    expected = generate(sam)
    fresh_outputs = generate(fresh)
    torch.testing.assert_close(fresh_outputs["scores"], expected["scores"], atol=1e-5, rtol=0)
    agreement = np.mean([np.mean(a == b) for a, b in zip(fresh_outputs["masks"], expected["masks"])])
    assert agreement > 0.999

    # Only the plugin weights change: the pipeline's scores and masks move away from SAM's
    trained = perturb_plugins_(fresh)
    trained_outputs = generate(trained)
    assert len(trained_outputs["scores"]) == len(expected["scores"])
    assert (trained_outputs["scores"] - expected["scores"]).abs().max() > 1e-3
    changed = np.mean([np.mean(a != b) for a, b in zip(trained_outputs["masks"], expected["masks"])])
    assert changed > 0.01
