import math
import socket

import numpy as np
import pytest
import torch

from stable_sam_hf import metrics
from stable_sam_hf.metrics import (
    binarize_ground_truth,
    binarize_prediction,
    bootstrap_interval,
    boundary_dilation,
    boundary_iou,
    load_metric,
    mask_iou,
    mask_to_boundary,
    pairwise_mask_iou,
    resize_logits_to,
    stability,
    summarize,
)


# Independent slow references (HQ-SAM's numpy/cv2 procedure, written out with loops)


def reference_erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """cv2.erode with a 3x3 kernel: each pixel becomes the min of its neighbours that lie inside the array."""
    out = mask.copy()
    height, width = out.shape
    for _ in range(iterations):
        previous = out.copy()
        for i in range(height):
            for j in range(width):
                out[i, j] = previous[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].min()
    return out


def reference_mask_to_boundary(mask: np.ndarray, dilation_ratio: float) -> np.ndarray:
    height, width = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(height**2 + width**2))))
    padded = np.zeros((height + 2, width + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    eroded = reference_erode(padded, dilation)[1 : height + 1, 1 : width + 1]
    return mask - eroded


def reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    intersection = union = 0
    for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()):
        intersection += int(x and y)
        union += int(x or y)
    return intersection / union if union else float("nan")


def random_blobs(generator: torch.Generator, num: int, height: int, width: int) -> torch.Tensor:
    """Smoothed thresholded noise: blobs of varied size, some touching the image border."""
    noise = torch.rand(num, 1, height, width, generator=generator)
    smooth = torch.nn.functional.avg_pool2d(noise, kernel_size=5, stride=1, padding=2, count_include_pad=False)
    thresholds = torch.rand(num, 1, 1, 1, generator=generator) * 0.1 + 0.47
    return (smooth > thresholds)[:, 0]


def square(height: int, width: int, top: int, left: int, size: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


# Binarization and resizing


def test_binarize_ground_truth_scales():
    gt_255 = torch.tensor([[0, 128, 129, 255]], dtype=torch.uint8)
    assert binarize_ground_truth(gt_255).tolist() == [[False, False, True, True]]
    gt_01 = torch.tensor([[0, 1, 1, 0]], dtype=torch.uint8)
    assert binarize_ground_truth(gt_01).tolist() == [[False, True, True, False]]
    gt_float = torch.tensor([[0.0, 1.0], [0.4, 0.6]])
    assert binarize_ground_truth(gt_float).tolist() == [[False, True], [False, True]]
    gt_bool = torch.tensor([[True, False]])
    assert binarize_ground_truth(gt_bool) is gt_bool
    assert binarize_ground_truth(gt_255).dtype == torch.bool


def test_binarize_ground_truth_rejects_bad_values():
    with pytest.raises(ValueError, match="gt"):
        binarize_ground_truth(torch.tensor([[-1.0, 2.0]]))
    with pytest.raises(ValueError, match="gt"):
        binarize_ground_truth(torch.tensor([[0, 256]]))
    with pytest.raises(TypeError, match="gt"):
        binarize_ground_truth(np.zeros((2, 2)))


def test_binarize_prediction_at_zero():
    logits = torch.tensor([[-1.0, 0.0, 1e-3, 5.0]])
    assert binarize_prediction(logits).tolist() == [[False, False, True, True]]


def test_resize_logits_bilinear_half_pixel():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    resized = resize_logits_to(logits, (4, 4))
    assert resized.shape == (1, 4, 4)
    torch.testing.assert_close(resized[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(resized[0, :, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    assert resize_logits_to(logits, (2, 2)) is logits
    with pytest.raises(TypeError, match="logits"):
        resize_logits_to(logits > 0, (4, 4))
    with pytest.raises(ValueError, match="size"):
        resize_logits_to(logits, (4, 0))


# Mask IoU


def test_mask_iou_overlapping_squares():
    pred = square(10, 10, 0, 0, 4)
    gt = square(10, 10, 2, 2, 4)
    # 2x2 overlap, 16 + 16 - 4 union
    iou = mask_iou(pred[None], gt[None])
    assert iou.shape == (1,)
    assert iou.item() == pytest.approx(4 / 28)


def test_mask_iou_ring_and_filled_square():
    filled = square(9, 9, 1, 1, 7)
    ring = filled & ~square(9, 9, 3, 3, 3)
    assert mask_iou(filled[None], ring[None]).item() == pytest.approx(40 / 49)
    assert mask_iou(ring[None], ring[None]).item() == 1.0


def test_mask_iou_empty_prediction_and_single_pixels():
    gt = torch.zeros(3, 6, 6, dtype=torch.bool)
    gt[:, 2, 3] = True
    pred = torch.zeros(3, 6, 6, dtype=torch.bool)
    pred[1, 2, 3] = True
    pred[2, 2, 4] = True
    assert mask_iou(pred, gt).tolist() == [0.0, 1.0, 0.0]


def test_empty_ground_truth_is_nan_and_skipped():
    gt = torch.stack([square(8, 8, 1, 1, 4), torch.zeros(8, 8, dtype=torch.bool), square(8, 8, 0, 0, 2)])
    pred = torch.stack([square(8, 8, 1, 1, 4), square(8, 8, 4, 4, 3), square(8, 8, 0, 0, 1)])
    iou = mask_iou(pred, gt)
    assert iou[0].item() == 1.0 and math.isnan(iou[1].item()) and iou[2].item() == pytest.approx(0.25)
    assert math.isnan(boundary_iou(pred, gt)[1].item())
    summary = summarize(iou)
    assert summary.mean == pytest.approx((1.0 + 0.25) / 2)
    assert (summary.num_objects, summary.num_skipped) == (2, 1)
    all_empty = summarize(torch.full((3,), float("nan")))
    assert math.isnan(all_empty.mean) and (all_empty.num_objects, all_empty.num_skipped) == (0, 3)


def test_mask_iou_matches_reference_and_leading_dims():
    generator = torch.Generator().manual_seed(0)
    pred = random_blobs(generator, 6, 13, 17).reshape(2, 3, 13, 17)
    gt = random_blobs(generator, 6, 13, 17).reshape(2, 3, 13, 17)
    iou = mask_iou(pred, gt)
    assert iou.shape == (2, 3)
    expected = [reference_iou(p.numpy(), g.numpy()) for p, g in zip(pred.reshape(6, 13, 17), gt.reshape(6, 13, 17))]
    torch.testing.assert_close(iou.reshape(-1), torch.tensor(expected, dtype=torch.float64), equal_nan=True)


def test_shape_and_dtype_errors_name_the_argument():
    pred = torch.zeros(2, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"`pred` has shape \(2, 5, 5\) but `gt` has shape \(2, 5, 6\)"):
        mask_iou(pred, torch.zeros(2, 5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="`pred`.*`gt`"):
        boundary_iou(pred, torch.zeros(3, 5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="`gt` must be a boolean mask"):
        mask_iou(pred, torch.zeros(2, 5, 5))
    with pytest.raises(TypeError, match="`pred` must be a torch.Tensor"):
        mask_iou(np.zeros((2, 5, 5), dtype=bool), pred)
    with pytest.raises(ValueError, match="`mask`"):
        mask_to_boundary(torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="dilation_ratio"):
        mask_to_boundary(pred, dilation_ratio=0.0)


# Boundary


def test_boundary_dilation_from_diagonal():
    assert boundary_dilation(1024, 1024) == 29  # 0.02 * 1448.2
    assert boundary_dilation(480, 640) == 16  # 0.02 * 800
    assert boundary_dilation(10, 10) == 1  # 0.28 rounds to 0, floor of 1
    assert boundary_dilation(100, 100, dilation_ratio=0.05) == 7  # 0.05 * 141.4


def test_boundary_of_filled_square():
    # 50x50: dilation 1, the band is the square minus its 8x8 interior
    assert mask_to_boundary(square(50, 50, 20, 20, 10)).sum().item() == 100 - 64
    # Dilation 4 (0.05 * 70.7 = 3.5): interior (10 - 8)^2
    assert mask_to_boundary(square(50, 50, 20, 20, 10), dilation_ratio=0.05).sum().item() == 100 - 4
    # Dilation 5 erodes the whole square
    assert torch.equal(mask_to_boundary(square(50, 50, 20, 20, 10), dilation_ratio=0.07), square(50, 50, 20, 20, 10))


def test_boundary_at_image_border():
    # The image border counts as background: a full mask has a band along the frame
    full = torch.ones(1, 20, 20, dtype=torch.bool)
    boundary = mask_to_boundary(full)
    assert boundary.sum().item() == 400 - 18 * 18
    assert not boundary[0, 1:-1, 1:-1].any()
    # A square in the corner: the same band as in the middle
    assert mask_to_boundary(square(50, 50, 0, 0, 10)).sum().item() == 100 - 64


def test_boundary_of_thin_structures():
    # A 1-pixel line is all boundary; shifted by one pixel it shares none
    line = torch.zeros(1, 12, 12, dtype=torch.bool)
    line[0, 5, 2:10] = True
    assert torch.equal(mask_to_boundary(line), line)
    assert boundary_iou(line, line).item() == 1.0
    assert boundary_iou(torch.roll(line, 1, dims=1), line).item() == 0.0
    pixel = torch.zeros(1, 12, 12, dtype=torch.bool)
    pixel[0, 0, 0] = True
    assert torch.equal(mask_to_boundary(pixel), pixel)


def test_boundary_of_ring():
    filled = square(40, 40, 5, 5, 20)
    ring = filled & ~square(40, 40, 11, 11, 8)
    # Dilation 1: outer band 20^2 - 18^2 plus inner band 10^2 - 8^2
    assert mask_to_boundary(ring).sum().item() == (400 - 324) + (100 - 64)
    # The filled square's band is the ring's outer band
    expected = (400 - 324) / ((400 - 324) + (100 - 64))
    assert boundary_iou(filled[None], ring[None]).item() == pytest.approx(expected)


@pytest.mark.parametrize(("height", "width", "dilation_ratio"), [(14, 19, 0.02), (21, 16, 0.1), (9, 30, 0.2)])
def test_boundary_matches_reference(height, width, dilation_ratio):
    generator = torch.Generator().manual_seed(height * width)
    pred = random_blobs(generator, 4, height, width)
    gt = random_blobs(generator, 4, height, width)
    boundaries = mask_to_boundary(torch.cat([pred, gt]), dilation_ratio)
    expected = [reference_mask_to_boundary(m.numpy().astype(np.uint8), dilation_ratio) for m in torch.cat([pred, gt])]
    assert torch.equal(boundaries, torch.from_numpy(np.stack(expected)).bool())
    expected_iou = [reference_iou(expected[i], expected[i + 4]) for i in range(4)]
    torch.testing.assert_close(
        boundary_iou(pred, gt, dilation_ratio), torch.tensor(expected_iou, dtype=torch.float64), equal_nan=True
    )


# Stability


def test_stability_hand_computed():
    a = square(6, 6, 1, 1, 3)
    empty = torch.zeros(6, 6, dtype=torch.bool)
    # Pairs (a, a) = 1, (a, empty) = 0 twice
    assert stability(torch.stack([a, a, empty])).item() == pytest.approx(1 / 3)
    assert stability(torch.stack([empty, empty])).item() == 1.0
    b = square(6, 6, 2, 2, 3)
    # IoU(a, b) = 4 / 14
    assert stability(torch.stack([a, b])[None]).tolist() == pytest.approx([4 / 14])


def test_stability_matches_double_loop():
    generator = torch.Generator().manual_seed(1)
    masks = random_blobs(generator, 3 * 5, 11, 9).reshape(3, 5, 11, 9)
    masks[1, 2] = False
    masks[1, 4] = False
    expected = []
    for group in masks.numpy():
        pairs = []
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                iou = reference_iou(group[i], group[j])
                pairs.append(1.0 if math.isnan(iou) else iou)
        expected.append(sum(pairs) / len(pairs))
    result = stability(masks)
    assert result.shape == (3,)
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64))


def test_pairwise_iou_chunking_is_exact(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    masks = random_blobs(generator, 8, 10, 13).reshape(2, 4, 10, 13)
    whole = pairwise_mask_iou(masks)
    monkeypatch.setattr(metrics, "_PIXEL_CHUNK", 7)
    assert torch.equal(pairwise_mask_iou(masks), whole)
    assert torch.equal(torch.diagonal(whole, dim1=-2, dim2=-1), torch.ones(2, 4, dtype=torch.float64))


def test_stability_needs_two_predictions():
    with pytest.raises(ValueError, match="masks"):
        stability(torch.zeros(3, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="masks"):
        stability(torch.zeros(3, 2, 4, 4))


# The evaluate module


@pytest.fixture
def offline(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_evaluate_module_offline_matches_functions(offline, tmp_path):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 12, 15, generator=generator) * 2
    references = random_blobs(generator, 4, 12, 15).to(torch.uint8) * 255
    references[2] = 0
    metric = load_metric(cache_dir=str(tmp_path), keep_in_memory=True)
    result = metric.compute(predictions=logits.numpy(), references=references.numpy())

    pred, gt = binarize_prediction(logits), binarize_ground_truth(references)
    assert result["mean_iou"] == pytest.approx(summarize(mask_iou(pred, gt)).mean)
    assert result["mean_boundary_iou"] == pytest.approx(summarize(boundary_iou(pred, gt)).mean)
    assert (result["num_objects"], result["num_skipped"]) == (3, 1)
    assert "stability" not in result

    with pytest.raises(ValueError, match=r"predictions\[0\].*references\[0\]"):
        metric.compute(predictions=logits[:1].numpy(), references=references[:1, :, :14].numpy())


def test_evaluate_module_grouped_stability(offline, tmp_path):
    generator = torch.Generator().manual_seed(4)
    masks = random_blobs(generator, 3 * 4, 10, 10).reshape(3, 4, 10, 10)
    references = random_blobs(generator, 3, 10, 10)
    metric = load_metric("grouped", cache_dir=str(tmp_path), keep_in_memory=True)
    # Binary masks as predictions: 0/1 values binarize like logits
    result = metric.compute(predictions=masks.float().numpy(), references=references.float().numpy())

    expanded = references[:, None].expand_as(masks)
    assert result["mean_iou"] == pytest.approx(mask_iou(masks, expanded).mean().item())
    assert result["mean_boundary_iou"] == pytest.approx(boundary_iou(masks, expanded).mean().item())
    assert result["stability"] == pytest.approx(stability(masks).mean().item())
    assert (result["num_objects"], result["num_skipped"]) == (3, 0)


def test_bootstrap_interval_of_a_mean():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2000, generator=generator, dtype=torch.float64)
    low, high = bootstrap_interval(values, num_resamples=2000)
    mean, half_width = values.mean().item(), 1.96 * values.std().item() / math.sqrt(len(values))
    # The percentile interval of a mean of 2,000 normal values is the normal-theory one, within resampling noise
    assert low < mean < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert bootstrap_interval(values, num_resamples=2000) == (low, high)  # seeded
    assert bootstrap_interval(values, num_resamples=2000, seed=1) != (low, high)
    narrower = bootstrap_interval(values, num_resamples=2000, confidence=0.5)
    assert low < narrower[0] < narrower[1] < high
    # NaN values (objects without a metric) are dropped; constant values have no spread
    assert bootstrap_interval(torch.cat([values, torch.tensor([math.nan])]), num_resamples=2000) == (low, high)
    assert bootstrap_interval(torch.full((5,), 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_interval([torch.tensor([math.nan])]))


def test_bootstrap_interval_averages_group_means():
    # Two datasets of very different sizes: the statistic is the mean of the two means, not the pooled mean
    small = torch.full((10,), 1.0)
    large = torch.zeros(1000)
    assert bootstrap_interval([small, large]) == (0.5, 0.5)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(50, generator=generator), torch.rand(500, generator=generator) + 1
    low, high = bootstrap_interval([a, b], num_resamples=2000)
    assert low < (a.mean().item() + b.mean().item()) / 2 < high
    # Resampling within groups: the spread comes mostly from the small group (about its own half-width / 2)
    half_width_a = bootstrap_interval(a, num_resamples=2000)
    assert (high - low) == pytest.approx((half_width_a[1] - half_width_a[0]) / 2, rel=0.25)


def test_bootstrap_interval_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_interval(torch.ones(3), num_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(torch.ones(3), confidence=1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_ground_truth_is_refused(bad):
    gt = torch.tensor([[0.0, 255.0], [255.0, bad]])
    with pytest.raises(ValueError, match="`gt` contains NaN or infinite"):
        binarize_ground_truth(gt)


def test_ground_truth_on_no_known_scale_is_refused_not_skipped():
    # A 0-100 mask: the 0-255 threshold (> 128) would make it empty and the mean would skip it
    gt = torch.tensor([[0, 100], [100, 0]], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"`gt` values lie in \[0, 100\]"):
        binarize_ground_truth(gt)
    # On either known scale the same object is kept
    assert binarize_ground_truth(gt * 255 // 100).tolist() == [[False, True], [True, False]]
    assert binarize_ground_truth(gt // 100).tolist() == [[False, True], [True, False]]


def test_nan_prediction_is_refused():
    with pytest.raises(ValueError, match="`logits` contains 1 NaN"):
        binarize_prediction(torch.tensor([[1.0, float("nan")]]))


def test_evaluate_module_refuses_nan_and_0_100_references(offline, tmp_path):
    metric = load_metric(cache_dir=str(tmp_path), keep_in_memory=True)
    logits = np.full((1, 4, 4), -5.0)
    logits[0, 1:3, 1:3] = 5.0
    nan_reference = np.zeros((1, 4, 4))
    nan_reference[0, 1:3, 1:3] = 1.0
    nan_reference[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metric.compute(predictions=logits, references=nan_reference)
    percent_reference = (nan_reference[0] == 1.0)[None] * 100
    with pytest.raises(ValueError, match=r"none above 128"):
        metric.compute(predictions=logits, references=percent_reference)
    assert metric.compute(predictions=logits, references=percent_reference * 255 // 100)["mean_iou"] == 1.0
