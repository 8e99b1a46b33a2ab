import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stable_sam_hf.prompts import (
    TRAINING_PROMPT_TYPES,
    PromptType,
    box_iou,
    coarse_masks,
    masks_to_boxes,
    masks_to_prompt_logits,
    noisy_boxes,
    parse_prompt_type,
    random_prompt_type,
    resize_masks_to_prompt_frame,
    sample_points,
    sample_prompt,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ellipse_masks(height: int = 48, width: int = 64) -> torch.Tensor:
    # Three objects: an ellipse, a thin bar touching the border, a single pixel
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = torch.zeros(3, height, width, dtype=torch.bool)
    masks[0] = ((rows - 20) / 12) ** 2 + ((cols - 30) / 18) ** 2 <= 1
    masks[1, :, 60:63] = True
    masks[2, 40, 5] = True
    return masks


def random_boxes(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width - 3, height - 3])
    low, high = corners.min(dim=1).values, corners.max(dim=1).values
    return torch.cat([low, torch.maximum(high, low + 2)], dim=1)


class TestMasksToBoxes:
    def test_inclusive_max_index(self):
        masks = ellipse_masks()
        boxes = masks_to_boxes(masks)
        for mask, box in zip(masks, boxes):
            rows, cols = mask.nonzero(as_tuple=True)
            expected = [cols.min(), rows.min(), cols.max(), rows.max()]
            assert box.tolist() == [float(v) for v in expected]
        assert boxes.dtype == torch.float32 and boxes.shape == (3, 4)

    @pytest.mark.parametrize(
        "convert",
        [
            lambda m: m.to(torch.uint8) * 255,
            lambda m: m.to(torch.int64),
            lambda m: m.float(),
            lambda m: m.numpy(),
            lambda m: m.numpy().astype(np.uint16) * 255,
        ],
    )
    def test_mask_encodings_agree(self, convert):
        masks = ellipse_masks()
        assert torch.equal(masks_to_boxes(convert(masks)), masks_to_boxes(masks))

    def test_0_255_threshold_is_128(self):
        masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
        masks[0, 2, 3] = 255
        masks[0, 6, 6] = 128  # below the > 128 threshold
        assert masks_to_boxes(masks).tolist() == [[3.0, 2.0, 3.0, 2.0]]

    def test_empty_mask_named(self):
        masks = ellipse_masks()
        masks[1] = False
        with pytest.raises(ValueError, match=r"masks.*empty.*\[1\]"):
            masks_to_boxes(masks)

    def test_wrong_ndim(self):
        with pytest.raises(ValueError, match=r"`masks` must have shape \(num_masks, height, width\)"):
            masks_to_boxes(torch.ones(8, 8, dtype=torch.bool))

    def test_wrong_dtype_and_values(self):
        with pytest.raises(TypeError, match="masks"):
            masks_to_boxes(torch.ones(1, 4, 4, dtype=torch.complex64))
        with pytest.raises(ValueError, match="NaN"):
            masks_to_boxes(torch.full((1, 4, 4), float("nan")))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            masks_to_boxes(torch.full((1, 4, 4), 3.0))
        with pytest.raises(TypeError, match="masks"):
            masks_to_boxes([[[1]]])


class TestNoisyBoxes:
    def test_seeded(self):
        boxes = random_boxes(16, 100, 120, seeded(0))
        first = noisy_boxes(boxes, (100, 120), generator=seeded(1))
        again = noisy_boxes(boxes, (100, 120), generator=seeded(1))
        other = noisy_boxes(boxes, (100, 120), generator=seeded(2))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)

    def test_box_iou_pairs_boxes_one_to_one_and_refuses_broadcasting(self):
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
        others = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
        assert torch.allclose(box_iou(boxes, others), torch.tensor([1.0, 50 / 150]))
        with pytest.raises(ValueError, match="`boxes1` and `boxes2` must both have shape"):
            box_iou(boxes[:1], others)

    @pytest.mark.parametrize("min_iou, max_iou", [(0.5, None), (0.5, 0.6), (0.8, None)])
    def test_iou_bound_and_image(self, min_iou, max_iou):
        height, width = 60, 90
        boxes = random_boxes(400, height, width, seeded(3))
        noisy = noisy_boxes(boxes, (height, width), min_iou=min_iou, max_iou=max_iou, generator=seeded(4))
        iou = box_iou(noisy, boxes)
        assert (iou >= min_iou).all()
        if max_iou is not None:
            assert (iou < max_iou).all()
        assert (noisy[:, [0, 2]] >= 0).all() and (noisy[:, [0, 2]] <= width - 1).all()
        assert (noisy[:, [1, 3]] >= 0).all() and (noisy[:, [1, 3]] <= height - 1).all()
        assert (noisy[:, 2] > noisy[:, 0]).all() and (noisy[:, 3] > noisy[:, 1]).all()
        assert not torch.equal(noisy, boxes)

    def test_noise_shape_follows_hq_sam(self):
        # Far from the border nothing is clipped: centre moves <= scale * size / 2, size changes <= scale * size
        boxes = torch.tensor([[400.0, 300.0, 500.0, 340.0]]).repeat(500, 1)
        scale = 0.4
        noisy = noisy_boxes(boxes, (1000, 1000), noise_scale=scale, min_iou=0.0, generator=seeded(5))
        size, noisy_size = boxes[:, 2:] - boxes[:, :2], noisy[:, 2:] - noisy[:, :2]
        centre, noisy_centre = (boxes[:, :2] + boxes[:, 2:]) / 2, (noisy[:, :2] + noisy[:, 2:]) / 2
        centre_shift = (noisy_centre - centre).abs() / size
        size_change = (noisy_size - size).abs() / size
        assert centre_shift.max() <= scale / 2 + 1e-4 and centre_shift.max() > 0.9 * scale / 2
        assert size_change.max() <= scale + 1e-4 and size_change.max() > 0.9 * scale

    def test_errors(self):
        with pytest.raises(ValueError, match=r"degenerate.*\[1\]"):
            noisy_boxes(torch.tensor([[0.0, 0, 5, 5], [3.0, 0, 3, 5]]), (10, 10))
        with pytest.raises(ValueError, match="NaN"):
            noisy_boxes(torch.tensor([[0.0, 0, float("nan"), 5]]), (10, 10))
        with pytest.raises(ValueError, match=r"`boxes` must have shape \(num_boxes, 4\)"):
            noisy_boxes(torch.zeros(4), (10, 10))
        with pytest.raises(ValueError, match="image_size"):
            noisy_boxes(torch.tensor([[0.0, 0, 5, 5]]), (10,))
        with pytest.raises(ValueError, match=r"`boxes` at index \[0\] reach outside the image"):
            noisy_boxes(torch.tensor([[0.0, 0, 10, 5]]), (10, 10))
        with pytest.raises(ValueError, match="max_iou"):
            noisy_boxes(torch.tensor([[0.0, 0, 5, 5]]), (10, 10), min_iou=0.6, max_iou=0.5)

    def test_unreachable_bound_raises(self):
        # Without noise the IoU is always 1, never below max_iou
        with pytest.raises(ValueError, match=r"within 20 tries.*index \[0\]"):
            noisy_boxes(torch.tensor([[1.0, 1, 8, 8]]), (10, 10), noise_scale=0.0, max_iou=0.9, max_tries=20)


class TestSamplePoints:
    def test_points_in_mask_and_distinct(self):
        masks = ellipse_masks()[:2]
        points, labels = sample_points(masks, 10, generator=seeded(0))
        assert points.shape == (2, 10, 2) and points.dtype == torch.float32
        assert torch.equal(labels, torch.ones(2, 10, dtype=torch.long))
        for mask, mask_points in zip(masks, points.long()):
            assert mask[mask_points[:, 1], mask_points[:, 0]].all()
            assert len({tuple(p) for p in mask_points.tolist()}) == 10

    def test_few_pixels_with_replacement(self):
        masks = ellipse_masks()[2:]
        points, _ = sample_points(masks, 3, generator=seeded(0))
        assert points.tolist() == [[[5.0, 40.0]] * 3]

    def test_uniform_over_mask(self):
        masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        masks[0, 0, 0] = masks[0, 3, 2] = True
        generator = seeded(0)
        drawn = torch.cat([sample_points(masks, 1, generator=generator)[0][0] for _ in range(200)])
        first = (drawn == torch.tensor([0.0, 0.0])).all(dim=1).float().mean()
        assert 0.35 < first < 0.65

    def test_negative_points_outside(self):
        masks = ellipse_masks()
        points, labels = sample_points(masks, 2, generator=seeded(0), negative=3)
        assert points.shape == (3, 5, 2)
        assert labels.tolist() == [[1, 1, 0, 0, 0]] * 3
        for mask, mask_points in zip(masks, points.long()):
            inside = mask[mask_points[:, 1], mask_points[:, 0]]
            assert inside[:2].all() and not inside[2:].any()

    def test_seeded(self):
        masks = ellipse_masks()
        first = sample_points(masks, 5, generator=seeded(7), negative=1)
        again = sample_points(masks, 5, generator=seeded(7), negative=1)
        other = sample_points(masks, 5, generator=seeded(8), negative=1)
        assert torch.equal(first[0], again[0])
        assert not torch.equal(first[0], other[0])

    def test_errors(self):
        masks = ellipse_masks()
        with pytest.raises(ValueError, match="num_points"):
            sample_points(masks, -1)
        with pytest.raises(ValueError, match="nothing to sample"):
            sample_points(masks, 0)
        with pytest.raises(ValueError, match=r"whole image"):
            sample_points(torch.ones(1, 4, 4, dtype=torch.bool), 1, negative=1)
        empty = masks.clone()
        empty[0] = False
        with pytest.raises(ValueError, match=r"empty.*\[0\]"):
            sample_points(empty, 1)


class TestCoarseMasks:
    def test_shape_values_seeded(self):
        masks = ellipse_masks()[:2]
        first = coarse_masks(masks, 32, generator=seeded(0), boundary_width=2)
        again = coarse_masks(masks, 32, generator=seeded(0), boundary_width=2)
        other = coarse_masks(masks, 32, generator=seeded(1), boundary_width=2)
        assert first.shape == (2, 1, 32, 32) and first.dtype == torch.float32
        assert set(first.unique().tolist()) == {-20.0, 20.0}
        assert torch.equal(first, again) and not torch.equal(first, other)

    def test_differs_only_near_boundary(self):
        masks = ellipse_masks()[:1]
        width = 2
        ground_truth = resize_masks_to_prompt_frame(masks, 32)[0] > 0.5
        coarse = coarse_masks(masks, 32, generator=seeded(0), boundary_width=width) > 0
        changed = coarse != ground_truth
        assert changed.any()
        # Every changed pixel has a pixel of the other class within `width` (Chebyshev distance)
        window = 2 * width + 1
        near_foreground = F.max_pool2d(ground_truth.float(), window, 1, width) > 0
        near_background = F.max_pool2d((~ground_truth).float(), window, 1, width) > 0
        assert (near_foreground & near_background)[changed].all()
        assert torch.equal(coarse_masks(masks, 32, noise_std=0.0, boundary_width=width) > 0, ground_truth)

    def test_padding_stays_background(self):
        masks = torch.ones(1, 20, 40, dtype=torch.bool)
        coarse = coarse_masks(masks, 32, generator=seeded(0), noise_std=5.0, boundary_width=3)
        assert (coarse[0, 0, 16:] == -20).all()
        assert (coarse[0, 0, :13] == 20).all()

    def test_errors(self):
        with pytest.raises(ValueError, match="boundary_width"):
            coarse_masks(ellipse_masks(), boundary_width=0)
        with pytest.raises(ValueError, match="noise_std"):
            coarse_masks(ellipse_masks(), noise_std=-1.0)
        with pytest.raises(ValueError, match="empty"):
            coarse_masks(torch.zeros(1, 8, 8, dtype=torch.bool))


def test_prompt_logits_geometry():
    # 30 x 40 -> longest side 16 gives 12 x 16, padded to 16 x 16 as SAM's image resize-and-pad
    masks = torch.zeros(1, 30, 40, dtype=torch.bool)
    masks[0, :, 20:] = True
    logits = masks_to_prompt_logits(masks, longest_edge=16, logit_scale=10.0)
    assert logits.shape == (1, 1, 16, 16)
    assert (logits[0, 0, 12:] == -10).all()
    assert torch.allclose(logits[0, 0, :12, :7], torch.tensor(-10.0))
    assert torch.allclose(logits[0, 0, :12, 9:], torch.tensor(10.0))


class TestSamplePrompt:
    @pytest.mark.parametrize("prompt_type", list(TRAINING_PROMPT_TYPES) + ["points_7"])
    def test_shapes(self, prompt_type):
        mask = ellipse_masks()[0]
        prompt = sample_prompt(mask, prompt_type, seeded(0))
        kind, count = parse_prompt_type(prompt_type)
        if kind in ("box", "noisy_box"):
            assert prompt["input_boxes"].shape == (1, 4)
        elif kind == "points":
            assert prompt["input_points"].shape == (1, count, 2)
            assert prompt["input_labels"].shape == (1, count)
        else:
            assert prompt["input_masks"].shape == (1, 256, 256)

    def test_box_and_noisy_box(self):
        mask = ellipse_masks()[0]
        box = sample_prompt(mask, PromptType.BOX)["input_boxes"]
        assert torch.equal(box, masks_to_boxes(mask[None]))
        noisy = sample_prompt(mask, "noisy_box", seeded(0), min_iou=0.5, max_iou=0.6)["input_boxes"]
        assert 0.5 <= box_iou(noisy, box).item() < 0.6

    def test_errors(self):
        with pytest.raises(ValueError, match="prompt_type"):
            sample_prompt(ellipse_masks()[0], "points_0")
        with pytest.raises(ValueError, match="prompt_type"):
            sample_prompt(ellipse_masks()[0], "scribble")
        with pytest.raises(ValueError, match="`mask` is empty"):
            sample_prompt(torch.zeros(8, 8, dtype=torch.bool), "box")
        with pytest.raises(ValueError, match=r"`mask` must have shape \(height, width\)"):
            sample_prompt(ellipse_masks(), "box")


def test_random_prompt_type_seeded():
    first = [random_prompt_type(generator=seeded(0)) for _ in range(3)]
    generator = seeded(0)
    drawn = [random_prompt_type(generator=generator) for _ in range(50)]
    assert first[0] == first[1] == drawn[0]
    assert set(drawn) == set(TRAINING_PROMPT_TYPES)


def test_numpy_masks_accepted():
    masks = ellipse_masks().numpy().astype(np.uint8) * 255
    points, _ = sample_points(masks, 2, generator=seeded(0))
    assert points.shape == (3, 2, 2)
