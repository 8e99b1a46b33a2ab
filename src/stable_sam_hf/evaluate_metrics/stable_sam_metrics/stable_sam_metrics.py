"""`evaluate` module for Stable-SAM's mask metrics: mIoU, mBIoU and, for grouped predictions, stability ST."""

import datasets
import evaluate
import numpy as np
import torch

from stable_sam_hf.metrics import (
    binarize_ground_truth,
    binarize_prediction,
    boundary_iou,
    mask_iou,
    stability,
    summarize,
)


_CITATION = """\
@inproceedings{cheng2021boundary,
  title={Boundary IoU: Improving Object-Centric Image Segmentation Evaluation},
  author={Cheng, Bowen and Girshick, Ross and Doll{\'a}r, Piotr and Berg, Alexander C and Kirillov, Alexander},
  booktitle={CVPR},
  year={2021}
}
"""

_DESCRIPTION = """\
Mask IoU and boundary IoU (dilation ratio 0.02 of the image diagonal, as HQ-SAM's evaluation) averaged over
objects, and the stability ST of Stable-SAM's evaluation: the mean pairwise IoU of the masks predicted for one
object under K random prompts of one type. Predictions are binarized at logit > 0 and must already be at the
ground truth's resolution; ground truths are thresholded > 128 (0-255 masks) or > 0 (0/1 masks). Objects with an
empty ground truth are skipped and counted in `num_skipped`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per object, mask logits or 0/1 masks of shape `(height, width)`; with the "grouped" config,
        the `K >= 2` predictions under the object's K prompts, shape `(num_prompts, height, width)`.
    references: per object, the ground-truth mask of shape `(height, width)`, 0/1 or 0-255.
    dilation_ratio: boundary band width as a fraction of the image diagonal (default 0.02).
Returns:
    mean_iou: mean over objects of the mask IoU (grouped: of its mean over the object's predictions).
    mean_boundary_iou: the same for boundary IoU.
    stability: mean over objects of ST (grouped config only).
    num_objects: number of objects averaged.
    num_skipped: number of objects skipped for an empty ground truth.
Examples:
    >>> metric = evaluate.load("path/to/stable_sam_metrics")
    >>> metric.compute(predictions=[[[2.0, -1.0], [-1.0, -1.0]]], references=[[[255, 0], [0, 0]]])["mean_iou"]
    1.0
"""

_CONFIGS = ("default", "grouped")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StableSamMetrics(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise ValueError(f"`config_name` must be one of {_CONFIGS}, got {self.config_name!r}.")
        prediction = datasets.List(datasets.List(datasets.Value("float32")))
        if self.config_name == "grouped":
            prediction = datasets.List(prediction)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": prediction, "references": datasets.List(datasets.List(datasets.Value("float32")))}
            ),
            reference_urls=["https://arxiv.org/abs/2103.16562"],
        )

    def _compute(self, predictions, references, dilation_ratio=0.02):
        grouped = self.config_name == "grouped"
        ious, boundary_ious, stabilities = [], [], []
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            prediction = torch.from_numpy(np.asarray(prediction, dtype=np.float32))
            reference = torch.from_numpy(np.asarray(reference, dtype=np.float32))
            expected_dims = 3 if grouped else 2
            if prediction.ndim != expected_dims or reference.ndim != 2:
                raise ValueError(
                    f"predictions[{index}] must have {expected_dims} dimensions and references[{index}] 2, got shapes "
                    f"{tuple(prediction.shape)} and {tuple(reference.shape)}."
                )
            if prediction.shape[-2:] != reference.shape:
                raise ValueError(
                    f"predictions[{index}] has shape {tuple(prediction.shape)} but references[{index}] has shape "
                    f"{tuple(reference.shape)}; resize the logits to the ground truth's resolution first."
                )
            pred_mask = binarize_prediction(prediction)
            gt_mask = binarize_ground_truth(reference).expand_as(pred_mask)
            ious.append(mask_iou(pred_mask, gt_mask).mean())
            boundary_ious.append(boundary_iou(pred_mask, gt_mask, dilation_ratio).mean())
            if grouped:
                # Objects with an empty ground truth are skipped for ST too
                value = stability(pred_mask) if gt_mask.any() else torch.tensor(float("nan"), dtype=torch.float64)
                stabilities.append(value)

        iou = summarize(torch.stack(ious)) if ious else summarize(torch.empty(0))
        result = {
            "mean_iou": iou.mean,
            "mean_boundary_iou": summarize(torch.stack(boundary_ious)).mean if ious else float("nan"),
        }
        if grouped:
            result["stability"] = summarize(torch.stack(stabilities)).mean if ious else float("nan")
        result["num_objects"] = iou.num_objects
        result["num_skipped"] = iou.num_skipped
        return result
