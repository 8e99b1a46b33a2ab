import io
import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    SamImageProcessorPil,
    SamModel,
    SamProcessor,
)

from stable_sam_hf import StableSamModel
from stable_sam_hf.image_processing_stable_sam import StableSamImageProcessor, batched_nms, nms, pairwise_box_iou
from stable_sam_hf.processing_stable_sam import StableSamProcessor, register_processors

from tiny import IMAGE_SIZE, perturb_plugins_, tiny_sam_config, tiny_stable_sam_config


# tiny.py's SAM: 64 x 64 input, patch 8 -> 8 x 8 image embeddings -> 32 x 32 mask prompts and low-res masks
IMAGE_PROCESSOR_KWARGS = {
    "size": {"longest_edge": IMAGE_SIZE},
    "pad_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "mask_size": {"longest_edge": 32},
    "mask_pad_size": {"height": 32, "width": 32},
}


@pytest.fixture
def processor() -> StableSamProcessor:
    return StableSamProcessor(StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS))


@pytest.fixture
def sam_processor() -> SamProcessor:
    return SamProcessor(SamImageProcessorPil(**IMAGE_PROCESSOR_KWARGS))


def noise_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)


@pytest.fixture
def images() -> list[PIL.Image.Image]:
    return [noise_image(30, 40, seed=0), noise_image(50, 20, seed=1)]


class TestSameAsSamProcessor:
    @pytest.mark.parametrize(
        "prompts",
        [
            {"input_points": [[[5, 6]], [[7, 8], [9, 10]]], "input_labels": [[1], [1, 0]]},
            {"input_points": [[[[5, 6]]], [[[7, 8]]]], "input_labels": [[[1]], [[0]]]},
            {"input_points": [[[[5, 6], [3, 4]], [[1, 2], [0, 0]]], [[[7, 8], [9, 9]], [[2, 2], [4, 4]]]]},
            {"input_boxes": [[[1, 2, 30, 25]], [[3, 4, 15, 40]]]},
            {"input_boxes": [[[1, 2, 30, 25], [0, 0, 10, 10]], [[3, 4, 15, 40], [1, 1, 2, 2]]]},
            {"input_points": [[[[5, 6]]], [[[7, 8]]]], "input_boxes": [[[1, 2, 30, 25]], [[3, 4, 15, 40]]]},
        ],
    )
    def test_prompts(self, processor, sam_processor, images, prompts):
        ours = processor(images, **prompts, return_tensors="pt")
        theirs = sam_processor(images, **prompts, return_tensors="pt")
        assert set(ours.keys()) == set(theirs.keys())
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype, key
            assert torch.equal(ours[key], theirs[key]), key

    def test_tensor_prompts(self, processor, sam_processor, images):
        points = torch.tensor([[[[5.0, 6.0]]], [[[7.0, 8.0]]]])
        ours = processor(images, input_points=points, return_tensors="pt")
        theirs = sam_processor(images, input_points=points, return_tensors="pt")
        assert torch.equal(ours["input_points"], theirs["input_points"])

    def test_batch_of_prompts_for_one_image(self, processor, sam_processor, images):
        boxes = [[[1, 2, 30, 25]], [[3, 4, 15, 20]]]
        ours = processor(images[0], input_boxes=boxes, return_tensors="pt")
        theirs = sam_processor(images[0], input_boxes=boxes, return_tensors="pt")
        assert torch.equal(ours["input_boxes"], theirs["input_boxes"])


def test_original_sizes_replace_images(processor, images):
    # Prompts for images already encoded: the same scaled prompts as with the images, and no pixels
    prompts = {
        "input_points": [[[[5, 6], [50, 7]]], [[[7, 8], [9, 10]]]],
        "input_labels": [[[1, 0]], [[1, 1]]],
        "input_boxes": [[[1, 2, 30, 25]], [[3, 4, 15, 40]]],
    }
    sizes = [image.size[::-1] for image in images]
    with pytest.warns(UserWarning, match="input_points"):  # (50, 7) is outside the 40-pixel-wide image
        with_images = processor(images, **prompts, return_tensors="pt")
    with pytest.warns(UserWarning, match="input_points"):
        with_sizes = processor(original_sizes=sizes, **prompts, return_tensors="pt")
    assert "pixel_values" not in with_sizes
    for key in ("original_sizes", "reshaped_input_sizes"):
        assert torch.equal(with_sizes[key], with_images[key]), key
    # Whole-number floats are sizes too (a float tensor, as images' sizes often are)
    floats = processor(original_sizes=torch.tensor(sizes, dtype=torch.float32), input_boxes=prompts["input_boxes"])
    assert floats["input_boxes"].tolist() == with_images["input_boxes"].tolist()
    for key in prompts:
        assert torch.equal(with_sizes[key], with_images[key]), key
    for bad in ([[30, 0]], [[30.5, 40]], [30, 40], [[48, 64], [32]], [["a", "b"]]):
        with pytest.raises(ValueError, match="original_sizes"):
            processor(original_sizes=bad, input_boxes=[[[1, 2, 3, 4]]])
    with pytest.raises(ValueError, match="not both"):
        processor(images, original_sizes=sizes, input_boxes=prompts["input_boxes"])
    with pytest.raises(ValueError, match="Pass `images`, or `original_sizes`"):
        processor(input_boxes=prompts["input_boxes"])
    with pytest.raises(ValueError, match="input_boxes"):
        processor(original_sizes=sizes, input_boxes=[[[1, 2, 3, 4]]] * 3)


def test_ragged_points_are_padded(processor):
    # Objects with different numbers of points, which SamProcessor cannot stack
    image = noise_image(32, 32)
    inputs = processor(
        image, input_points=[[[[1, 2], [3, 4]], [[5, 6]]]], input_labels=[[[1, 0], [1]]], return_tensors="pt"
    )
    assert inputs["input_points"].shape == (1, 2, 2, 2)
    assert inputs["input_labels"].tolist() == [[[1, 0], [1, -10]]]
    assert inputs["input_points"][0, 1, 1].tolist() == [-10.0, -10.0]
    # Without labels the padding still needs labels, or the model would read the pads as clicks
    inputs = processor(image, input_points=[[[[1, 2], [3, 4]], [[5, 6]]]], return_tensors="pt")
    assert inputs["input_labels"].tolist() == [[[1, 1], [1, -10]]]


class TestPromptValidation:
    @pytest.mark.parametrize(
        "prompts, message",
        [
            ({"input_points": [[[float("nan"), 1.0]]]}, r"`input_points` entry 0 contains NaN"),
            ({"input_points": [[[1.0, 1.0]]], "input_labels": [[2]]}, r"`input_labels` entry 0 has labels \[2"),
            ({"input_points": [[[1.0, 1.0]]], "input_labels": [[1, 1]]}, r"`input_labels` must have one label"),
            ({"input_boxes": [[[5, 5, 1, 9]]]}, r"`input_boxes` entry 0 has boxes with x1 < x0"),
            ({"input_boxes": [[[1, 5, 2, 1]]]}, r"`input_boxes` entry 0 has boxes with x1 < x0 or y1 < y0"),
            ({"input_boxes": [[[1, float("nan"), 2, 3]]]}, r"`input_boxes` entry 0 contains NaN"),
            ({"input_boxes": [[[50, 50, 60, 60]]]}, r"`input_boxes` entry 0 has boxes outside the 40x30 image"),
            ({"input_boxes": [[1, 2, 3, 4]]}, r"`input_boxes\[0\]` has shape \(4,\); expected \[image\]\[box\]"),
            (
                {"input_points": [[[[1, 2, 3]]]]},
                r"`input_points\[0\]\[0\]` has shape \(1, 3\); expected \[image\]\[object\]\[point\]\[x, y\]",
            ),
            ({"input_labels": [[1]]}, r"`input_labels` was given without `input_points`"),
        ],
    )
    def test_errors_name_the_prompt(self, processor, prompts, message):
        with pytest.raises(ValueError, match=message):
            processor(noise_image(30, 40), **prompts)

    def test_labels_allowed(self, processor):
        inputs = processor(
            noise_image(30, 40),
            input_points=[[[1, 1], [2, 2], [3, 3], [4, 4]]],
            input_labels=[[1, 0, -1, -10]],
            return_tensors="pt",
        )
        assert inputs["input_labels"].tolist() == [[[1, 0, -1, -10]]]

    def test_partly_outside_box_clipped_with_warning(self, processor, sam_processor):
        image = noise_image(30, 40)
        with pytest.warns(UserWarning, match=r"`input_boxes` entry 0 has boxes partly outside"):
            clipped = processor(image, input_boxes=[[[-5, 2, 50, 20]]], return_tensors="pt")
        expected = sam_processor(image, input_boxes=[[[0, 2, 40, 20]]], return_tensors="pt")
        assert torch.equal(clipped["input_boxes"], expected["input_boxes"])

    def test_box_on_the_border_is_not_warned(self, processor):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            processor(noise_image(30, 40), input_boxes=[[[0, 0, 40, 30]]])

    def test_points_outside_clipped_with_warning_like_boxes(self, processor, sam_processor):
        image = noise_image(30, 40)
        with pytest.warns(UserWarning, match=r"`input_points` entry 0 has points outside the 40x30 image, clipped"):
            clipped = processor(image, input_points=[[[1e39, 5], [-3, 2], [10, 10]]], return_tensors="pt")
        expected = sam_processor(image, input_points=[[[40, 5], [0, 2], [10, 10]]], return_tensors="pt")
        assert torch.equal(clipped["input_points"], expected["input_points"])

    def test_unread_points_are_not_clipped(self, processor, sam_processor):
        # Label -1 (not a point) and padding points carry no position the model reads
        prompts = {"input_points": [[[5, 5], [-10, -10], [99, 99]]], "input_labels": [[1, -10, -1]]}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            inputs = processor(noise_image(30, 40), **prompts, return_tensors="pt")
        expected = sam_processor(noise_image(30, 40), **prompts, return_tensors="pt")
        assert torch.equal(inputs["input_points"], expected["input_points"])

    def test_huge_coordinates_never_give_nan(self, processor):
        model = StableSamModel(tiny_stable_sam_config()).eval()
        image = noise_image(30, 40)
        for prompts in (
            {"input_points": [[[1e39, 5.0]]], "input_labels": [[1]]},
            {"input_boxes": [[[0.0, 0.0, 1e39, 20.0]]]},
        ):
            with pytest.warns(UserWarning, match="clipped"):
                inputs = processor(image, **prompts, return_tensors="pt")
            with torch.no_grad():
                outputs = model(**{key: value for key, value in inputs.items() if "sizes" not in key})
            for name in ("pred_masks", "iou_scores", "routing_weights"):
                assert torch.isfinite(outputs[name]).all(), (prompts, name)


class TestMaskPrompts:
    def test_original_size_binary_mask(self, processor):
        # 30 x 40 image -> 24 x 32 inside the 32 x 32 prompt frame
        image = noise_image(30, 40)
        mask = np.zeros((30, 40), dtype=np.uint8)
        mask[:, 20:] = 255
        inputs = processor(
            image, input_boxes=[[[20, 0, 39, 29]]], input_masks=[mask], mask_logit_scale=5.0, return_tensors="pt"
        )
        masks = inputs["input_masks"]
        assert masks.shape == (1, 1, 32, 32) and masks.dtype == torch.float32
        assert (masks[0, 0, 24:] == -5).all()
        assert torch.allclose(masks[0, 0, :24, :15], torch.tensor(-5.0))
        assert torch.allclose(masks[0, 0, :24, 17:], torch.tensor(5.0))

    def test_low_res_logits_pass_through(self, processor, images):
        logits = [torch.randn(32, 32), torch.randn(32, 32)]
        inputs = processor(images, input_masks=logits, return_tensors="pt")
        assert torch.equal(inputs["input_masks"][:, 0], torch.stack(logits))

    def test_float_logits_at_original_size_are_resized(self, processor):
        logits = torch.full((30, 40), 3.0)
        inputs = processor(noise_image(30, 40), input_masks=[logits], return_tensors="pt")
        assert torch.allclose(inputs["input_masks"][0, 0, :24], torch.tensor(3.0))
        assert (inputs["input_masks"][0, 0, 24:] == -processor.mask_logit_scale).all()

    def test_array_and_nested_forms(self, processor, images):
        mask = torch.zeros(2, 30, 40, dtype=torch.bool)
        mask[:, 5:20, 10:30] = True
        square = [noise_image(30, 40), noise_image(30, 40, seed=3)]
        from_tensor = processor(square, input_masks=mask, return_tensors="pt")["input_masks"]
        from_nested = processor(square, input_masks=[[mask[0]], [mask[1]]], return_tensors="pt")["input_masks"]
        assert from_tensor.shape == (2, 1, 32, 32)
        assert torch.equal(from_tensor, from_nested)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"input_masks": [np.zeros((10, 10))]}, r"`input_masks\[0\]` has shape \(10, 10\)"),
            ({"input_masks": [[np.zeros((30, 40)), np.zeros((30, 40))]]}, r"`input_masks` entry 0 has 2 masks"),
            ({"input_masks": [np.zeros((30, 40)), np.zeros((30, 40))]}, r"`input_masks` has 2 entries for 1 images"),
            (
                {"input_masks": [np.zeros((30, 40))], "input_boxes": [[[0, 0, 5, 5], [1, 1, 6, 6]]]},
                r"`input_masks` gives one mask prompt per image",
            ),
            ({"input_masks": [np.full((30, 40), np.nan)]}, r"`input_masks\[0\]` contains NaN"),
            ({"input_masks": [np.full((30, 40), 300)]}, r"Integer `input_masks\[0\]` must hold 0/1 or 0-255 values"),
        ],
    )
    def test_errors(self, processor, kwargs, message):
        with pytest.raises(ValueError, match=message):
            processor(noise_image(30, 40), **kwargs)


class TestImages:
    @pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
    def test_modes(self, processor, mode):
        inputs = processor(noise_image(30, 40).convert(mode), return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert inputs["original_sizes"].tolist() == [[30, 40]]

    @pytest.mark.parametrize("dtype, mode", [(np.uint16, "I;16"), (np.int32, "I"), (np.float32, "F")])
    def test_high_bit_depth_scaled_not_clipped(self, dtype, mode):
        image_processor = StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS, do_normalize=False)
        values = np.linspace(1000, 60000, 32 * 32).reshape(32, 32).astype(dtype)
        image = PIL.Image.fromarray(values)
        assert image.mode == mode
        pixels = image_processor(image, return_tensors="pt")["pixel_values"][0]
        # PIL's own RGB conversion would saturate every pixel at 255
        assert pixels.min() < 0.01 and pixels.max() > 0.99
        assert torch.equal(pixels[0], pixels[1]) and len(pixels.unique()) > 100

    def test_high_bit_depth_arrays(self):
        image_processor = StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS, do_normalize=False)
        values = np.linspace(1000, 60000, 30 * 40).reshape(30, 40).astype(np.uint16)
        for image in (values, torch.from_numpy(values.astype(np.int32)), np.stack([values] * 3, axis=-1)):
            inputs = image_processor(image, return_tensors="pt")
            assert inputs["original_sizes"].tolist() == [[30, 40]]
            assert inputs["pixel_values"].max() > 0.9

    def test_8_bit_values_in_wide_integer_arrays_are_kept(self):
        image_processor = StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS)
        values = np.random.default_rng(0).integers(0, 201, (30, 40, 3))
        as_int64 = image_processor(values, return_tensors="pt")["pixel_values"]
        as_uint8 = image_processor(values.astype(np.uint8), return_tensors="pt")["pixel_values"]
        assert torch.equal(as_int64, as_uint8)

    def test_grayscale_array(self, processor):
        inputs = processor([np.zeros((30, 40), np.uint8), np.zeros((10, 40), np.uint8)], return_tensors="pt")
        assert inputs["original_sizes"].tolist() == [[30, 40], [10, 40]]
        assert inputs["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)

    def test_exif_orientation(self, processor):
        image = noise_image(30, 40)
        exif = image.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise for display
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", exif=exif)
        buffer.seek(0)
        stored = PIL.Image.open(buffer)
        assert stored.size == (40, 30)
        inputs = processor(stored, input_boxes=[[[0, 0, 29, 39]]], return_tensors="pt")
        assert inputs["original_sizes"].tolist() == [[40, 30]]
        assert inputs["reshaped_input_sizes"].tolist() == [[64, 48]]

    @pytest.mark.parametrize("size", [(1, 1), (7, 300), (300, 7), (64, 64)])
    def test_any_size(self, processor, size):
        inputs = processor(noise_image(*size), return_tensors="pt")
        assert inputs["original_sizes"].tolist() == [list(size)]
        assert inputs["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)

    @pytest.mark.parametrize("size", [(3, 5000), (5000, 3)])
    def test_extreme_aspect_ratio(self, processor, size):
        # The short side resizes to 3 * 64 / 5000 < 0.5 pixel: SAM's rounding made it 0 and the resize failed
        height, width = size
        mask = np.zeros(size, dtype=bool)
        mask[:, : width // 2] = True
        inputs = processor(
            noise_image(*size),
            input_boxes=[[[0, 0, width // 2, height]]],
            input_masks=[mask],
            return_tensors="pt",
        )
        short_is_height = height < width
        assert inputs["reshaped_input_sizes"].tolist() == [[1, IMAGE_SIZE] if short_is_height else [IMAGE_SIZE, 1]]
        assert inputs["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert inputs["input_masks"].shape == (1, 1, 32, 32)
        model = StableSamModel(tiny_stable_sam_config()).eval()
        with torch.no_grad():
            outputs = model(
                pixel_values=inputs["pixel_values"],
                input_boxes=inputs["input_boxes"],
                input_masks=inputs["input_masks"],
            )
        masks = processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        assert masks[0].shape == (1, 3, height, width)


class TestRoundTripWithSamModel:
    def test_forward_and_post_process(self, processor, images):
        torch.manual_seed(0)
        model = SamModel(tiny_sam_config()).eval()
        masks = [np.zeros((30, 40), bool), np.zeros((50, 20), bool)]
        masks[0][5:20, 10:30] = True
        masks[1][5:40, 5:15] = True
        inputs = processor(
            images,
            input_boxes=[[[10, 5, 29, 19]], [[5, 5, 14, 39]]],
            input_points=[[[[12, 8]]], [[[11, 9]]]],
            input_masks=masks,
            return_tensors="pt",
        )
        model_inputs = {
            key: value for key, value in inputs.items() if key not in ("original_sizes", "reshaped_input_sizes")
        }
        with torch.no_grad():
            outputs = model(**model_inputs)
            without_masks = model(**{key: value for key, value in model_inputs.items() if key != "input_masks"})
        assert outputs.pred_masks.shape == (2, 1, 3, 32, 32)
        assert not torch.allclose(outputs.pred_masks, without_masks.pred_masks)
        post = processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        assert [tuple(mask.shape) for mask in post] == [(1, 3, 30, 40), (1, 3, 50, 20)]
        assert post[0].dtype == torch.bool

    def test_stable_sam_model_forward(self, processor, images):
        torch.manual_seed(0)
        model = perturb_plugins_(StableSamModel(tiny_stable_sam_config())).eval()
        mask = np.zeros((30, 40), bool)
        mask[5:20, 10:30] = True
        inputs = processor(
            images[0], input_points=[[[12, 8], [1, 1]]], input_labels=[[1, 0]], input_masks=[mask], return_tensors="pt"
        )
        with torch.no_grad():
            outputs = model(
                pixel_values=inputs["pixel_values"],
                input_points=inputs["input_points"],
                input_labels=inputs["input_labels"],
                input_masks=inputs["input_masks"],
                multimask_output=False,
            )
        assert outputs.pred_masks.shape == (1, 1, 1, 32, 32)
        post = processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        assert post[0].shape == (1, 1, 30, 40)


def slow_nms(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor, threshold: float) -> list[int]:
    def iou(a, b):
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        if all(categories[i] != categories[j] or iou(boxes[i].tolist(), boxes[j].tolist()) <= threshold for j in kept):
            kept.append(i)
    return kept


class TestNms:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("threshold", [0.3, 0.7])
    def test_matches_reference(self, seed, threshold):
        generator = torch.Generator().manual_seed(seed)
        # Jittered copies of 6 boxes, so that suppression happens at both thresholds
        corners = torch.rand(6, 2, 2, generator=generator) * 50
        centres = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values + 8], dim=1)
        boxes = centres.repeat_interleave(10, dim=0) + torch.rand(60, 4, generator=generator) * 4
        scores = torch.randperm(60, generator=generator).float() / 60
        categories = torch.randint(0, 3, (60,), generator=generator)
        assert nms(boxes, scores, threshold).tolist() == slow_nms(boxes, scores, torch.zeros(60), threshold)
        kept = batched_nms(boxes, scores, categories, threshold)
        assert kept.tolist() == slow_nms(boxes, scores, categories, threshold)
        assert len(kept) < 60

    def test_empty_and_iou(self):
        assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
        boxes = torch.tensor([[0.0, 0, 2, 2], [1.0, 0, 3, 2]])
        assert torch.allclose(pairwise_box_iou(boxes, boxes), torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0]]))

    def test_post_process_for_mask_generation(self):
        image_processor = StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS)
        logits = torch.full((1, 3, 20, 30), -5.0)
        logits[0, 0, 2:12, 3:15] = 5.0
        logits[0, 1, 2:12, 3:14] = 5.0  # near-duplicate of mask 0, lower score
        logits[0, 2, 14:19, 20:28] = 5.0
        scores = torch.tensor([[0.9, 0.8, 0.7]])
        rles, kept_scores, boxes = image_processor.filter_masks(
            logits, scores, (20, 30), [0, 0, 30, 20], pred_iou_thresh=0.0, stability_score_thresh=0.0
        )
        masks, nms_scores, nms_rles, nms_boxes = image_processor.post_process_for_mask_generation(
            rles, kept_scores, boxes, 0.7
        )
        assert nms_scores.tolist() == pytest.approx([0.9, 0.7])
        assert np.array_equal(masks[0], (logits[0, 0] > 0).numpy())
        assert np.array_equal(masks[1], (logits[0, 2] > 0).numpy())
        assert nms_boxes.tolist() == [[3, 2, 14, 11], [20, 14, 27, 18]]


def test_auto_classes_round_trip(tmp_path):
    register_processors()
    register_processors()  # idempotent
    processor = StableSamProcessor(StableSamImageProcessor(**IMAGE_PROCESSOR_KWARGS))
    processor.save_pretrained(tmp_path)
    StableSamModel(tiny_stable_sam_config()).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "StableSamProcessor"
    assert saved["image_processor"]["image_processor_type"] == "StableSamImageProcessor"

    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is StableSamProcessor
    assert type(loaded.image_processor) is StableSamImageProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is StableSamImageProcessor
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    image = noise_image(30, 40)
    before = processor(image, input_boxes=[[[10, 5, 29, 19]]], input_masks=[mask], return_tensors="pt")
    after = loaded(image, input_boxes=[[[10, 5, 29, 19]]], input_masks=[mask], return_tensors="pt")
    for key in before:
        assert torch.equal(before[key], after[key]), key
