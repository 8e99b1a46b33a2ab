"""ONNX export: parity of the exported encoder and decoders with `StableSamModel` in onnxruntime, and refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import SamConfig, SamModel

from stable_sam_hf import StableSamConfig, StableSamModel
from stable_sam_hf.image_processing_stable_sam import preprocess_shape
from stable_sam_hf.inference import default_image_processor
from stable_sam_hf.onnx import export_decoder, export_encoder, export_onnx, main


ort = pytest.importorskip("onnxruntime", reason="the `onnx` extra (onnxruntime) is not installed")

from tiny import perturb_plugins_  # noqa: E402


# Each export traces a decoder (about 10 s on 2 cores)
pytestmark = pytest.mark.slow

TOY_MODEL = Path(__file__).resolve().parents[1] / "models" / "toy-sam-128"
# Prompts in the resized input frame of a 128 px model; `scale` maps them to larger models
PROMPTS = {
    "box": ([[20.0, 30.0], [90.0, 100.0]], [2, 3]),
    "1_point": ([[50.0, 60.0], [0.0, 0.0]], [1, -1]),
    "3_points": ([[50.0, 60.0], [80.0, 30.0], [20.0, 100.0], [0.0, 0.0]], [1, 0, 1, -1]),
}
LOGIT_ATOL = 1e-3
ROUTING_ATOL = 1e-4
MASK_AGREEMENT = 0.999


def _session(path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference(model, embeddings, coords, labels, mask_input, routing_weight=None):
    """`StableSamModel`'s single and multimask outputs for one prompt in segment-anything's encoding."""
    coords, labels = torch.tensor(coords)[None], torch.tensor(labels)
    kwargs = {"image_embeddings": embeddings}
    if routing_weight is not None:
        kwargs["routing_weight"] = routing_weight
    if labels.tolist() == [2, 3]:
        kwargs["input_boxes"] = coords.reshape(1, 1, 4)
    else:
        # SamModel appends the padding point itself when no box is given
        keep = labels != -1
        kwargs["input_points"] = coords[:, keep][None]
        kwargs["input_labels"] = labels[keep][None, None]
    if mask_input is not None:
        kwargs["input_masks"] = mask_input
    with torch.no_grad():
        single = model(multimask_output=False, **kwargs)
        multi = model(multimask_output=True, **kwargs)
    return single, multi


def _feeds(embeddings, coords, labels, mask_input, orig_size):
    size = 4 * embeddings.shape[-1]
    return {
        "image_embeddings": embeddings.numpy(),
        "point_coords": np.asarray(coords, dtype=np.float32)[None],
        "point_labels": np.asarray(labels, dtype=np.float32)[None],
        "mask_input": np.zeros((1, 1, size, size), np.float32) if mask_input is None else mask_input.numpy(),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.asarray(orig_size, dtype=np.float32),
    }


def _check_parity(model, session, prompt, *, with_mask, scale=1.0, orig_size=(100, 150), routing_weight=None):
    torch.manual_seed(0)
    config = model.config.prompt_encoder_config
    embeddings = torch.randn(1, config.hidden_size, config.image_embedding_size, config.image_embedding_size)
    mask_input = torch.randn(1, 1, 4 * config.image_embedding_size, 4 * config.image_embedding_size) * 3
    mask_input = mask_input if with_mask else None
    coords, labels = PROMPTS[prompt]
    coords = [[x * scale, y * scale] for x, y in coords]
    single, multi = _reference(model, embeddings, coords, labels, mask_input, routing_weight)
    masks, iou, low_res, routing = session.run(None, _feeds(embeddings, coords, labels, mask_input, orig_size))

    # segment-anything's choice: the single-mask token for more than two points, else the best multimask output
    if len(labels) > 2:
        expected_low_res, expected_iou = single.pred_masks[0, 0, 0], single.iou_scores[0, 0, 0]
    else:
        best = multi.iou_scores[0, 0].argmax()
        expected_low_res, expected_iou = multi.pred_masks[0, 0, best], multi.iou_scores[0, 0, best]
    np.testing.assert_allclose(low_res[0, 0], expected_low_res.numpy(), atol=LOGIT_ATOL, rtol=0)
    np.testing.assert_allclose(iou[0, 0], expected_iou.numpy(), atol=LOGIT_ATOL, rtol=0)
    if isinstance(model, StableSamModel):
        np.testing.assert_allclose(routing[0], single.routing_weights[0, 0].numpy(), atol=ROUTING_ATOL, rtol=0)

    # Masks at the original size against the image processor's post-processing
    height, width = orig_size
    reshaped = preprocess_shape(height, width, config.image_size)
    expected_masks = default_image_processor(model).post_process_masks(
        expected_low_res[None, None, None], [orig_size], [reshaped], binarize=True
    )[0][0, 0]
    assert masks.shape == (1, 1, height, width)
    agreement = ((masks[0, 0] > 0) == expected_masks.numpy()).mean()
    assert agreement >= MASK_AGREEMENT, f"masks agree on {agreement:.5f} of the pixels"
    return routing


@pytest.fixture(scope="module")
def toy_model():
    model = StableSamModel.from_pretrained(TOY_MODEL).eval()
    return perturb_plugins_(model, seed=0, std=0.3)


@pytest.fixture(scope="module")
def toy_export(toy_model, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("toy_onnx")
    written = export_onnx(toy_model, output_dir)
    return output_dir, written


@pytest.fixture(scope="module")
def vit_b_decoder(tmp_path_factory):
    """A Stable-SAM with ViT-B's prompt encoder and mask decoder sizes (random weights) and a tiny vision encoder."""
    config = StableSamConfig.from_sam_config(
        SamConfig(
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "global_attn_indexes": [0],
            }
        )
    )
    assert config.prompt_encoder_config.image_embedding_size == 64 and config.mask_decoder_config.hidden_size == 256
    torch.manual_seed(0)
    model = perturb_plugins_(StableSamModel(config).eval(), seed=1, std=0.3)
    path = export_decoder(model, tmp_path_factory.mktemp("vit_b_onnx") / "decoder.onnx")
    return model, _session(path)


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask_input"])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_toy_decoder_parity(toy_model, toy_export, prompt, with_mask):
    output_dir, _ = toy_export
    routing = _check_parity(toy_model, _session(output_dir / "decoder.onnx"), prompt, with_mask=with_mask)
    assert 0.0 < routing[0, 0] < 1.0


@pytest.mark.parametrize("orig_size", [(3, 5000), (5000, 3)], ids=["3x5000", "5000x3"])
def test_toy_decoder_extreme_aspect_ratio(toy_model, toy_export, orig_size):
    # The short side resizes to one pixel, not zero, as the image processor does
    output_dir, _ = toy_export
    _check_parity(toy_model, _session(output_dir / "decoder.onnx"), "box", with_mask=False, orig_size=orig_size)


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask_input"])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_vit_b_sized_decoder_parity(vit_b_decoder, prompt, with_mask):
    model, session = vit_b_decoder
    _check_parity(model, session, prompt, with_mask=with_mask, scale=8.0, orig_size=(600, 800))


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_routing_weight_zero_decoder_is_sam(toy_model, toy_export, prompt):
    """decoder_sam.onnx of a model with trained-looking plugins computes what transformers' SamModel computes."""
    output_dir, _ = toy_export
    sam = SamModel.from_pretrained(TOY_MODEL).eval()
    session = _session(output_dir / "decoder_sam.onnx")
    routing = _check_parity(sam, session, prompt, with_mask=False)
    np.testing.assert_array_equal(routing, [[0.0, 1.0]])
    # ... and differs from the Stable-SAM decoder on the same prompt
    stable = _session(output_dir / "decoder.onnx")
    feeds = _feeds(torch.randn(1, 256, 16, 16), *PROMPTS[prompt], None, (128, 128))
    assert np.abs(session.run(None, feeds)[2] - stable.run(None, feeds)[2]).max() > 1e-2


def test_toy_encoder_parity(toy_model, toy_export):
    output_dir, _ = toy_export
    pixel_values = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    (embeddings,) = _session(output_dir / "encoder.onnx").run(None, {"pixel_values": pixel_values.numpy()})
    expected = toy_model.get_image_embeddings(pixel_values)
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-3, rtol=0)


def test_multimask_export_returns_every_mask_token(toy_model, tmp_path):
    path = export_decoder(toy_model, tmp_path / "decoder.onnx", return_single_mask=False)
    embeddings = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(1))
    coords, labels = PROMPTS["1_point"]
    single, multi = _reference(toy_model, embeddings, coords, labels, None)
    _, iou, low_res, _ = _session(path).run(None, _feeds(embeddings, coords, labels, None, (128, 128)))
    expected = torch.cat([single.pred_masks[0, 0], multi.pred_masks[0, 0]])
    np.testing.assert_allclose(low_res[0], expected.numpy(), atol=LOGIT_ATOL, rtol=0)
    np.testing.assert_allclose(iou[0], torch.cat([single.iou_scores[0, 0], multi.iou_scores[0, 0]]), atol=LOGIT_ATOL)


def test_export_writes_client_metadata(toy_model, toy_export):
    output_dir, written = toy_export
    assert sorted(Path(path).name for path in written) == [
        "decoder.onnx",
        "decoder_sam.onnx",
        "encoder.onnx",
        "model.json",
    ]
    assert not list(output_dir.glob("*.tmp"))
    metadata = json.loads((output_dir / "model.json").read_text())
    assert metadata["input_size"] == 128
    assert metadata["image_embedding_shape"] == [1, 256, 16, 16]
    assert metadata["mask_input_size"] == 64
    assert metadata["files"] == {
        "encoder": "encoder.onnx",
        "decoder": "decoder.onnx",
        "sam_decoder": "decoder_sam.onnx",
    }
    np.testing.assert_allclose(metadata["pixel_mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(metadata["rescale_factor"], 1 / 255)
    assert metadata["plugins"]["sampling"] == "deformable" and metadata["plugins"]["plugin_layers"] == [1]
    assert metadata["base_model"] == str(TOY_MODEL)


def test_command_line_export_with_fixed_routing_weight(tmp_path):
    main(["export", "--model", str(TOY_MODEL), "--output_dir", str(tmp_path), "--no_encoder", "--routing_weight", "0"])
    metadata = json.loads((tmp_path / "model.json").read_text())
    assert metadata["routing_weight"] == 0.0 and metadata["files"]["encoder"] is None
    assert not (tmp_path / "encoder.onnx").exists()
    feeds = _feeds(torch.randn(1, 256, 16, 16), *PROMPTS["box"], None, (128, 128))
    decoder, sam_decoder = _session(tmp_path / "decoder.onnx"), _session(tmp_path / "decoder_sam.onnx")
    for output, sam_output in zip(decoder.run(None, feeds), sam_decoder.run(None, feeds)):
        np.testing.assert_array_equal(output, sam_output)


def test_unknown_sampling_is_refused(tmp_path):
    model = StableSamModel(StableSamConfig.from_sam_config(SamConfig.from_pretrained(TOY_MODEL)))
    model.config.sampling = "bilinear_pyramid"  # e.g. a checkpoint from a newer version of the package
    with pytest.raises(ValueError, match=r"sampling='bilinear_pyramid'"):
        export_decoder(model, tmp_path / "decoder.onnx")
    assert not list(tmp_path.iterdir())


def test_deformable_sampling_below_grid_sample_opset_is_refused(toy_model, tmp_path):
    with pytest.raises(ValueError, match=r"sampling='deformable'.*opset 15.*>= 16"):
        export_onnx(toy_model, tmp_path, opset=15)
    assert not list(tmp_path.iterdir())


def test_spatial_sampling_exports_at_opset_15(tmp_path):
    config = StableSamConfig.from_sam_config(SamConfig.from_pretrained(TOY_MODEL), sampling="spatial")
    model = perturb_plugins_(StableSamModel(config).eval(), seed=2, std=0.3)
    session = _session(export_decoder(model, tmp_path / "decoder.onnx", opset=15))
    _check_parity(model, session, "box", with_mask=False, orig_size=(128, 128))


def test_half_precision_model_is_refused(tmp_path):
    model = StableSamModel(StableSamConfig.from_sam_config(SamConfig.from_pretrained(TOY_MODEL))).half()
    with pytest.raises(ValueError, match="torch.float16"):
        export_encoder(model, tmp_path / "encoder.onnx")


def test_routing_weight_outside_unit_interval_is_refused(toy_model, tmp_path):
    with pytest.raises(ValueError, match=r"`routing_weight`.*\[0, 1\]"):
        export_decoder(toy_model, tmp_path / "decoder.onnx", routing_weight=1.5)


def test_frozen_model_exported_under_no_grad_keeps_parity(tmp_path):
    """The plugin block's inference path (in-place writes per prompt chunk) is not what gets traced."""
    model = perturb_plugins_(StableSamModel.from_pretrained(TOY_MODEL).eval(), seed=3, std=0.3)
    model.requires_grad_(False)
    with torch.no_grad():
        path = export_decoder(model, tmp_path / "decoder.onnx")
    _check_parity(model, _session(path), "1_point", with_mask=False)
    assert not any(param.requires_grad for param in model.parameters())
