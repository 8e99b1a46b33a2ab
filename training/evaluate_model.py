"""Evaluate SAM, Stable-SAM and the baselines under poor prompts: mIoU, mBIoU and stability (ST) on the HQ validation
sets, alpha_1 of Stable-SAM's router, a forced-alpha_1 sweep, and COCO mask AP with noisy boxes.

    python training/evaluate_model.py --dataset data/hqseg44k --output_dir eval \\
        --models sam=sam:facebook/sam-vit-base stable=runs/stable lora=lora:runs/lora
    accelerate launch --multi_gpu --num_processes 4 training/evaluate_model.py ...   # objects split over GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 training/evaluate_model.py ...  # or over CPU processes
    python training/evaluate_model.py --models sam=sam:facebook/sam-vit-base stable=runs/stable --output_dir eval \\
        --coco_annotations coco/annotations/instances_val2017.json --coco_images coco/val2017

Each object is prompted `--num_prompts` times per prompt type (the GT box once: it is the same every time); draw k of
type t for object o of dataset d comes from a generator seeded by (seed, d, o, t, k), so every model sees the same
prompts. Per-object results are appended to `<output_dir>/per_object.rank<N>.jsonl` as they are computed; a rerun with
the same settings reuses them and computes only what is missing, so an interrupted run loses nothing. Then
`results.csv`, `results.md` and PNG plots are written and the table is printed: every mIoU with a 95 % bootstrap
interval (objects resampled within each dataset) and every model's mIoU difference to `--reference_model` (the first
model by default) on the same objects and prompts, with its paired interval.
"""

import csv
import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from stable_sam_hf.data import BadSampleError, SkipCounter, decode_sample, hqseg_subsets, load_segmentation_subsets
from stable_sam_hf.evaluation import (
    COCO_PROMPT_TYPE,
    ModelSpec,
    SamPredictor,
    check_local_or_hub,
    coco_detections,
    coco_mask_ap,
    coco_objects,
    coco_prompt_boxes,
    draw_prompts,
    load_model,
    parse_model_spec,
    path_fingerprint,
    score_object,
)
from stable_sam_hf.metrics import bootstrap_interval
from stable_sam_hf.prompts import EVALUATION_PROMPT_TYPES, parse_prompt_type


logger = get_logger(__name__)

RECORDS_GLOB = "per_object.rank*.jsonl"
COCO_DATASET = "COCO"
AVERAGE = "average"
CSV_COLUMNS = (
    "model",
    "model_id",
    "routing_weight",
    "dataset",
    "prompt_type",
    "mIoU",
    "mIoU_low",
    "mIoU_high",
    "mIoU_diff",
    "mIoU_diff_low",
    "mIoU_diff_high",
    "mBIoU",
    "ST",
    "pred_IoU",
    "alpha_1",
    "mAP",
    "mAP50",
    "num_objects",
    "num_skipped",
    "num_prompts",
    "seed",
)


@dataclass
class EvaluationArguments:
    models: list[str] = field(
        metadata={
            "help": "Models as NAME=METHOD:PATH, e.g. sam=sam:facebook/sam-vit-base (frozen SAM), "
            "stable=stable:runs/stable (a run folder or a StableSamModel checkpoint), lora=lora:runs/lora, "
            "hq=hq:<SamHQModel checkpoint or run folder>. A run folder of training/train.py alone (runs/adapter) names "
            "its method and base SAM in training_summary.json. NAME defaults to the method."
        }
    )
    output_dir: str = field(metadata={"help": "Where per-object results, results.csv/.md and the plots go."})
    dataset: str | None = field(
        default=None,
        metadata={"help": "Local folder or Hub id written by training/prepare_hqseg44k.py; its validation split."},
    )
    dataset_names: list[str] | None = field(
        default=None, metadata={"help": "Validation subsets to evaluate; all of the dataset's when unset."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base SAM for run folders, overriding the base_model of their training_summary.json."},
    )
    prompt_types: list[str] = field(
        default_factory=lambda: [str(prompt_type.value) for prompt_type in EVALUATION_PROMPT_TYPES],
        metadata={"help": "Prompt types: box (the GT box), noisy_box, points_<k>."},
    )
    num_prompts: int = field(default=20, metadata={"help": "Seeded random prompts per object and prompt type (K)."})
    seed: int = field(default=0, metadata={"help": "Prompt seed."})
    noise_scale: float = field(default=0.4, metadata={"help": "Noisy-box noise scale (IoU >= 0.5 with the GT box)."})
    routing_weight: list[float] | None = field(
        default=None,
        metadata={"help": "Forced alpha_1 values to sweep for Stable-SAM models (paper Table 8), e.g. 0 0.25 0.5 1."},
    )
    max_objects_per_dataset: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N objects of each subset (quick runs)."}
    )
    dilation_ratio: float = field(default=0.02, metadata={"help": "Boundary IoU band, fraction of the diagonal."})
    decoder_batch_size: int = field(default=20, metadata={"help": "Prompts per mask-decoder call."})
    record_prompts: bool = field(
        default=False, metadata={"help": "Store every prompt (original image frame) in the per-object records."}
    )
    coco_annotations: str | None = field(
        default=None, metadata={"help": "COCO instances JSON (e.g. instances_val2017.json) for mask mAP."}
    )
    coco_images: str | None = field(default=None, metadata={"help": "Folder of the COCO annotation file's images."})
    coco_max_images: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N COCO images (by image id)."}
    )
    coco_min_iou: float = field(default=0.5, metadata={"help": "Lowest IoU of a COCO noisy box with the GT box."})
    coco_max_iou: float = field(default=0.6, metadata={"help": "IoU a COCO noisy box stays below."})
    reference_model: str | None = field(
        default=None,
        metadata={
            "help": "NAME of the model the others are compared to (mIoU difference on the same objects and prompts, "
            "with its interval); the first of `models` when unset."
        },
    )
    bootstrap_resamples: int = field(
        default=1000,
        metadata={
            "help": "Bootstrap resamples (objects resampled within each dataset) for the 95 %% intervals of mIoU and "
            "of the difference to the reference model; 0 leaves intervals out."
        },
    )

    def __post_init__(self):
        if not self.models:
            raise ValueError("`models` must name at least one model.")
        if self.dataset is None and self.coco_annotations is None:
            raise ValueError("Nothing to evaluate: give `dataset` and/or `coco_annotations` with `coco_images`.")
        if (self.coco_annotations is None) != (self.coco_images is None):
            raise ValueError("`coco_annotations` and `coco_images` go together.")
        if not self.prompt_types:
            raise ValueError("`prompt_types` must name at least one prompt type.")
        for prompt_type in self.prompt_types:
            if parse_prompt_type(prompt_type)[0] == "coarse_mask":
                raise ValueError("`prompt_types`: coarse_mask is a training prompt, not an evaluation prompt type.")
        if len(set(self.prompt_types)) != len(self.prompt_types):
            raise ValueError(f"`prompt_types` has repeated entries: {self.prompt_types}.")
        for name in ("num_prompts", "decoder_batch_size", "max_objects_per_dataset", "coco_max_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if self.seed < 0:
            raise ValueError(f"`seed` must be >= 0, got {self.seed}.")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ValueError(f"`noise_scale` must be a finite number >= 0, got {self.noise_scale}.")
        if not (math.isfinite(self.dilation_ratio) and 0 < self.dilation_ratio < 1):
            raise ValueError(
                f"`dilation_ratio` (boundary band, fraction of the image diagonal) must lie in (0, 1), got "
                f"{self.dilation_ratio}."
            )
        if self.bootstrap_resamples < 0:
            raise ValueError(f"`bootstrap_resamples` must be >= 0 (0: no intervals), got {self.bootstrap_resamples}.")
        for weight in self.routing_weight or []:
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"`routing_weight` values (forced alpha_1) must lie in [0, 1], got {weight}.")
        if not 0.0 <= self.coco_min_iou < self.coco_max_iou <= 1.0:
            raise ValueError(
                f"`coco_min_iou` and `coco_max_iou` must satisfy 0 <= min < max <= 1, got {self.coco_min_iou} and "
                f"{self.coco_max_iou}."
            )


def parse_args(argv=None) -> EvaluationArguments:
    parser = HfArgumentParser(EvaluationArguments, description=__doc__)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


# Per-object records


def run_key(spec: ModelSpec, args: EvaluationArguments, source: str) -> str:
    """What a record depends on besides its object, prompt type and routing weight."""
    settings = {
        "model": asdict(spec),
        "source": source,
        # What the paths hold: a retrained model or a re-prepared dataset at the same path is evaluated anew
        "model_files": path_fingerprint(spec.path, model=True),
        "base_model_files": path_fingerprint(spec.base_model, model=True) if spec.run_folder else None,
        "source_files": path_fingerprint(source),
        "seed": args.seed,
        "num_prompts": args.num_prompts,
        "noise_scale": args.noise_scale,
        "dilation_ratio": args.dilation_ratio,
        "coco_iou": [args.coco_min_iou, args.coco_max_iou],
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def record_key(record: dict[str, Any]) -> tuple:
    return (
        record["run"],
        record["model"],
        record["routing_weight"],
        record["dataset"],
        record["id"],
        record["prompt_type"],
    )


def read_records(output_dir: Path) -> dict[tuple, dict[str, Any]]:
    """Every complete record of earlier runs in `output_dir`; a line cut short by an interruption is ignored."""
    records = {}
    for path in sorted(output_dir.glob(RECORDS_GLOB)):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning(f"Ignoring an incomplete line of {path}", main_process_only=False)
                continue
            records[record_key(record)] = record
    return records


class RecordWriter:
    """Appends records to this process's JSONL file, one flushed line each, after dropping a cut-off last line."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            text = path.read_bytes()
            if text and not text.endswith(b"\n"):
                with path.open("r+b") as handle:
                    handle.truncate(text.rfind(b"\n") + 1)
        self.handle = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


# Evaluation loops


def _prompts_to_lists(prompts: dict[str, torch.Tensor]) -> dict[str, list]:
    return {key: value.tolist() for key, value in prompts.items()}


def evaluate_hq_object(
    predictor: SamPredictor,
    spec: ModelSpec,
    args: EvaluationArguments,
    key: str,
    dataset: str,
    object_id: str,
    image: torch.Tensor,
    mask: torch.Tensor,
    missing: list[tuple[float | None, str]],
) -> list[dict[str, Any]]:
    """Records of one object for the `(routing_weight, prompt_type)` pairs in `missing`; the encoder runs once."""
    encoding = predictor.encode(image)
    prompts = {}
    records = []
    for routing_weight, prompt_type in missing:
        if prompt_type not in prompts:
            prompts[prompt_type] = draw_prompts(
                mask,
                prompt_type,
                args.num_prompts,
                seed=args.seed,
                dataset=dataset,
                object_id=object_id,
                noise_scale=args.noise_scale,
            )
        prediction = predictor.predict(encoding, prompts[prompt_type], routing_weight)
        scores = score_object(prediction.masks, mask.to(prediction.masks.device), dilation_ratio=args.dilation_ratio)
        record = {
            "run": key,
            "model": spec.name,
            "routing_weight": routing_weight,
            "dataset": dataset,
            "id": object_id,
            "prompt_type": prompt_type,
            "iou": scores.iou,
            "boundary_iou": scores.boundary_iou,
            "stability": scores.stability,
            "predicted_iou": prediction.iou_scores.tolist(),
            "alpha_1": None if prediction.routing_weights is None else prediction.routing_weights[:, 0].mean().item(),
        }
        if args.record_prompts:
            record["prompts"] = _prompts_to_lists(prompts[prompt_type])
        records.append(record)
    return records


def evaluate_hq(
    accelerator: Accelerator,
    predictor: SamPredictor,
    spec: ModelSpec,
    args: EvaluationArguments,
    done: dict[tuple, dict],
    writer: RecordWriter,
) -> tuple[list[dict[str, Any]], dict[str, SkipCounter]]:
    """All records of one model on the validation subsets (this process's share, gathered), and skips by subset."""
    key = run_key(spec, args, args.dataset)
    variants = [None] + (list(args.routing_weight or []) if predictor.is_stable else [])
    wanted = [(weight, prompt_type) for weight in variants for prompt_type in args.prompt_types]
    subsets = _load_subsets(args)
    records, skipped = [], {}
    for dataset, part in subsets.items():
        total = _num_examples(part, args.max_objects_per_dataset)
        if args.max_objects_per_dataset is not None:
            part = part.take(args.max_objects_per_dataset)
        if accelerator.num_processes > 1:
            part = split_dataset_by_node(part, rank=accelerator.process_index, world_size=accelerator.num_processes)
        counter, mine = SkipCounter(), []
        progress = tqdm(
            total=None if total is None else math.ceil(total / accelerator.num_processes),
            desc=f"{spec.name} {dataset}",
            unit="object",
            disable=not accelerator.is_local_main_process,
        )
        for row in part:
            try:
                image, mask = decode_sample(row)
            except BadSampleError as error:
                counter.add(error.reason)
                logger.warning(f"Skipping {dataset} object {row['id']!r}: {error}", main_process_only=False)
                continue
            object_id = str(row["id"])
            keys = {pair: (key, spec.name, pair[0], dataset, object_id, pair[1]) for pair in wanted}
            missing = [pair for pair in wanted if keys[pair] not in done]
            new = (
                evaluate_hq_object(predictor, spec, args, key, dataset, object_id, image, mask, missing)
                if missing
                else []
            )
            for record in new:
                writer.write(record)
                done[record_key(record)] = record
            mine.extend(done[keys[pair]] for pair in wanted)
            progress.update(1)
        progress.close()
        records.extend(accelerator.gather_for_metrics(mine, use_gather_object=True))
        total = accelerator.reduce(counter.to_tensor().to(accelerator.device), reduction="sum").cpu()
        skipped[dataset] = SkipCounter()
        skipped[dataset].update(total)
    return records, skipped


def _num_examples(part, limit: int | None) -> int | None:
    splits = part.info.splits
    known = splits["validation"].num_examples if splits and "validation" in splits else None
    if not known:
        return limit
    return known if limit is None else min(known, limit)


def _load_subsets(args: EvaluationArguments) -> dict:
    check_local_or_hub(args.dataset, "dataset")
    try:
        subsets = load_segmentation_subsets(args.dataset, "validation", args.dataset_names, streaming=True)
    except ValueError:
        raise
    except Exception as error:
        raise FileNotFoundError(
            f"`dataset` {args.dataset!r} could not be read as a dataset written by training/prepare_hqseg44k.py "
            f"(a local folder or a Hub dataset reachable from here): {type(error).__name__}: {error}"
        ) from error
    for name, part in subsets.items():
        # An interrupted `prepare --overwrite` leaves a subset without rows: that is no result to report
        if next(iter(part), None) is None:
            raise ValueError(
                f"`dataset` {args.dataset!r}: validation subset {name!r} has no rows; prepare it again or leave it out "
                "of `dataset_names`."
            )
    order = [subset.name for subset in hqseg_subsets("validation")]
    return dict(sorted(subsets.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def evaluate_coco(
    accelerator: Accelerator,
    predictor: SamPredictor,
    spec: ModelSpec,
    args: EvaluationArguments,
    coco,
    done: dict[tuple, dict],
    writer: RecordWriter,
) -> tuple[list[dict[str, Any]], list[int], dict[str, int]]:
    """Per-object COCO records of one model (gathered), the evaluated image ids and the objects left out by reason."""
    from PIL import Image

    key = run_key(spec, args, args.coco_annotations)
    image_ids = sorted(coco.getImgIds())
    if args.coco_max_images is not None:
        image_ids = image_ids[: args.coco_max_images]
    mine, counts = [], {"empty_mask": 0, "exact_box": 0}
    progress = tqdm(desc=f"{spec.name} COCO", unit="image", disable=not accelerator.is_local_main_process)
    for image_id in image_ids[accelerator.process_index :: accelerator.num_processes]:
        objects, empty = coco_objects(coco, image_id)
        counts["empty_mask"] += empty
        keys = [(key, spec.name, None, COCO_DATASET, str(obj.annotation_id), COCO_PROMPT_TYPE) for obj in objects]
        todo = [index for index, object_key in enumerate(keys) if object_key not in done]
        if todo:
            info = coco.loadImgs([image_id])[0]
            path = Path(args.coco_images) / info["file_name"]
            if not path.is_file():
                raise FileNotFoundError(
                    f"COCO image {info['file_name']!r} (id {image_id}) is not in {args.coco_images}."
                )
            image = torch.from_numpy(_rgb_array(Image.open(path))).permute(2, 0, 1).contiguous()  # 3 x H x W
            if tuple(image.shape[1:]) != (info["height"], info["width"]):
                raise ValueError(
                    f"COCO image {path} is {tuple(image.shape[1:])} but its annotations are for "
                    f"{(info['height'], info['width'])}."
                )
            todo_objects = [objects[index] for index in todo]
            boxes, exact = coco_prompt_boxes(
                todo_objects,
                seed=args.seed,
                noise_scale=args.noise_scale,
                min_iou=args.coco_min_iou,
                max_iou=args.coco_max_iou,
            )
            counts["exact_box"] += exact
            prediction = predictor.predict(predictor.encode(image), {"input_boxes": boxes})
            detections = coco_detections(todo_objects, prediction.masks.cpu(), prediction.iou_scores)
            alphas = prediction.routing_weights
            for position, (index, obj) in enumerate(zip(todo, todo_objects)):
                scores = score_object(prediction.masks[position, None], obj.mask, dilation_ratio=args.dilation_ratio)
                record = {
                    "run": key,
                    "model": spec.name,
                    "routing_weight": None,
                    "dataset": COCO_DATASET,
                    "id": str(obj.annotation_id),
                    "prompt_type": COCO_PROMPT_TYPE,
                    "iou": scores.iou,
                    "boundary_iou": scores.boundary_iou,
                    "stability": None,
                    "predicted_iou": [detections[position]["score"]],
                    "alpha_1": None if alphas is None else alphas[position, 0].item(),
                    "detection": detections[position],
                }
                if args.record_prompts:
                    record["prompts"] = {"input_boxes": boxes[position, None].tolist()}
                writer.write(record)
                done[keys[index]] = record
        mine.extend(done[object_key] for object_key in keys)
        progress.update(1)
    progress.close()
    records = accelerator.gather_for_metrics(mine, use_gather_object=True)
    totals = accelerator.reduce(torch.tensor(list(counts.values()), device=accelerator.device), reduction="sum")
    return records, image_ids, dict(zip(counts, totals.tolist()))


def _rgb_array(image) -> np.ndarray:
    return np.array(image.convert("RGB"))


# Tables


def _mean(values: list[float]) -> float:
    values = [value for value in values if value is not None and not math.isnan(value)]
    return sum(values) / len(values) if values else math.nan


def summarize_records(
    records: list[dict[str, Any]],
    specs: list[ModelSpec],
    args: EvaluationArguments,
    skipped: dict[str, dict[str, SkipCounter]],
    coco_ap: dict[str, tuple[float, float]],
    coco_skipped: dict[str, int],
) -> list[dict[str, Any]]:
    """One row per model x routing weight x dataset x prompt type (plus the average over the HQ datasets).

    Each row has a bootstrap interval of its mIoU and, except the reference model's own rows, the mIoU difference to
    the reference model (its unforced rows) on the objects both have, with a paired interval.
    """
    cells = defaultdict(list)
    for record in sorted(records, key=lambda r: (r["dataset"], r["id"])):
        cells[(record["model"], record["routing_weight"], record["dataset"], record["prompt_type"])].append(record)
    reference = args.reference_model or specs[0].name
    object_iou = {key: {record["id"]: _mean(record["iou"]) for record in cell} for key, cell in cells.items()}

    def add_intervals(row: dict[str, Any], datasets: list[str]) -> None:
        model, weight, prompt_type = row["model"], row["routing_weight"], row["prompt_type"]
        groups = [object_iou.get((model, weight, dataset, prompt_type), {}) for dataset in datasets]
        compared = (
            None
            if (model, weight) == (reference, None)
            else [object_iou.get((reference, None, dataset, prompt_type), {}) for dataset in datasets]
        )
        row.update(_intervals(groups, compared, args.bootstrap_resamples))

    rows = []
    for spec in specs:
        weights = sorted({key[1] for key in cells if key[0] == spec.name}, key=lambda w: (w is not None, w or 0.0))
        datasets = list(skipped.get(spec.name, {}))
        for weight in weights:
            for prompt_type in args.prompt_types:
                per_dataset = []
                for dataset in datasets:
                    cell = cells.get((spec.name, weight, dataset, prompt_type), [])
                    row = _row(spec, args, weight, dataset, prompt_type, cell, skipped[spec.name][dataset].total())
                    add_intervals(row, [dataset])
                    rows.append(row)
                    per_dataset.append(row)
                if per_dataset:
                    row = _average_row(spec, args, weight, prompt_type, per_dataset)
                    add_intervals(row, [r["dataset"] for r in per_dataset if r["num_objects"]])
                    rows.append(row)
        if spec.name in coco_ap:
            cell = cells.get((spec.name, None, COCO_DATASET, COCO_PROMPT_TYPE), [])
            row = _row(spec, args, None, COCO_DATASET, COCO_PROMPT_TYPE, cell, coco_skipped[spec.name])
            row["mAP"], row["mAP50"] = (100 * value for value in coco_ap[spec.name])
            row["num_prompts"] = 1
            add_intervals(row, [COCO_DATASET])
            rows.append(row)
    return rows


def _intervals(
    groups: list[dict[str, float]], reference: list[dict[str, float]] | None, num_resamples: int
) -> dict[str, float | None]:
    """mIoU's bootstrap interval from per-object IoUs `{id: iou}` (one dict per dataset), and the mIoU difference
    to `reference` (same layout) on the objects both have, with its paired interval; all in %."""
    row = {column: None for column in ("mIoU_low", "mIoU_high", "mIoU_diff", "mIoU_diff_low", "mIoU_diff_high")}
    values = [torch.tensor(list(group.values()), dtype=torch.float64) for group in groups if group]
    if num_resamples and values:
        row["mIoU_low"], row["mIoU_high"] = (100 * v for v in bootstrap_interval(values, num_resamples=num_resamples))
    if reference is None:
        return row
    differences = []
    for group, other in zip(groups, reference):
        common = [key for key in group if key in other]
        if common:
            differences.append(torch.tensor([group[key] - other[key] for key in common], dtype=torch.float64))
    means = [d.nanmean() for d in differences if not torch.isnan(d).all()]
    if means:
        row["mIoU_diff"] = 100 * torch.stack(means).mean().item()
        if num_resamples:
            interval = bootstrap_interval(differences, num_resamples=num_resamples)
            row["mIoU_diff_low"], row["mIoU_diff_high"] = (100 * v for v in interval)
    return row


def _row(spec, args, weight, dataset, prompt_type, cell, num_skipped) -> dict[str, Any]:
    alphas = [record["alpha_1"] for record in cell if record["alpha_1"] is not None]
    return {
        "model": spec.name,
        "model_id": spec.model_id,
        "routing_weight": weight,
        "dataset": dataset,
        "prompt_type": prompt_type,
        "mIoU": 100 * _mean([_mean(record["iou"]) for record in cell]),
        "mBIoU": 100 * _mean([_mean(record["boundary_iou"]) for record in cell]),
        "ST": 100 * _mean([record["stability"] for record in cell]),
        # The model's own estimate of its masks' IoU (SAM's IoU head); records of older runs may lack it
        "pred_IoU": 100 * _mean([_mean(record.get("predicted_iou") or []) for record in cell]),
        "alpha_1": _mean(alphas) if alphas else None,
        "mAP": None,
        "mAP50": None,
        "num_objects": len(cell),
        "num_skipped": num_skipped,
        "num_prompts": 1 if dataset != COCO_DATASET and prompt_type == "box" else args.num_prompts,
        "seed": args.seed,
    }


def _average_row(spec, args, weight, prompt_type, per_dataset) -> dict[str, Any]:
    row = dict(per_dataset[0], dataset=AVERAGE)
    used = [r for r in per_dataset if r["num_objects"]]
    for column in ("mIoU", "mBIoU", "ST", "pred_IoU"):
        row[column] = _mean([r[column] for r in used])
    alphas = [r["alpha_1"] for r in used if r["alpha_1"] is not None]
    row["alpha_1"] = _mean(alphas) if alphas else None
    row["num_objects"] = sum(r["num_objects"] for r in per_dataset)
    row["num_skipped"] = sum(r["num_skipped"] for r in per_dataset)
    return row


def _format(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row[column]) for column in CSV_COLUMNS})


def _csv_value(value):
    # Undefined values (ST of the GT box, alpha_1 of SAM, an empty cell) are empty fields
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def markdown_tables(rows: list[dict[str, Any]], specs: list[ModelSpec], args: EvaluationArguments) -> str:
    """The main table (average over datasets and mIoU per dataset), the alpha_1 sweep and COCO, as markdown."""
    hq = [row for row in rows if row["dataset"] != COCO_DATASET]
    datasets = list(dict.fromkeys(row["dataset"] for row in hq if row["dataset"] != AVERAGE))
    lines = [
        f"Prompt seed {args.seed}, K = {args.num_prompts} prompts per object and type (the GT box once). "
        "mIoU, mBIoU, ST and the predicted IoU (the model's own estimate, from SAM's IoU head) in %, averaged over "
        "the datasets; per-dataset columns are mIoU.",
        "",
        "Models: " + "; ".join(f"`{spec.name}` = {spec.model_id}" for spec in specs),
        "",
    ]
    if hq:
        header = [
            "model",
            "prompt",
            "mIoU",
            "95 % interval",
            "mBIoU",
            "ST",
            "pred. IoU",
            "alpha_1",
            *datasets,
            "objects",
            "skipped",
        ]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        by_cell = {(r["model"], r["routing_weight"], r["dataset"], r["prompt_type"]): r for r in hq}
        for spec in specs:
            for prompt_type in args.prompt_types:
                average = by_cell.get((spec.name, None, AVERAGE, prompt_type))
                if average is None:
                    continue
                per_dataset = [_format(by_cell[(spec.name, None, d, prompt_type)]["mIoU"]) for d in datasets]
                lines.append(
                    _md_row(
                        [
                            spec.name,
                            prompt_type,
                            _format(average["mIoU"]),
                            _interval(average["mIoU_low"], average["mIoU_high"]),
                            _format(average["mBIoU"]),
                            _format(average["ST"]),
                            _format(average["pred_IoU"]),
                            _format(average["alpha_1"], 3),
                            *per_dataset,
                            str(average["num_objects"]),
                            str(average["num_skipped"]),
                        ]
                    )
                )
        reference = args.reference_model or specs[0].name
        compared = [spec for spec in specs if spec.name != reference]
        if compared:
            lines += [
                "",
                f"mIoU difference to `{reference}` in points (average over the datasets), on the same objects and "
                "prompts; in brackets its 95 % bootstrap interval (objects resampled within each dataset; the "
                "evaluation's sampling only, not the variation between training runs):",
                "",
            ]
            header = ["model", *args.prompt_types]
            lines += [_md_row(header), _md_row(["---"] * len(header))]
            for spec in compared:
                cells = []
                for prompt_type in args.prompt_types:
                    row = by_cell.get((spec.name, None, AVERAGE, prompt_type))
                    cells.append("-" if row is None else _difference(row))
                lines.append(_md_row([spec.name, *cells]))
        sweep = [r for r in hq if r["dataset"] == AVERAGE and r["routing_weight"] is not None]
        if sweep:
            lines += ["", "mIoU (%) with alpha_1 forced (average over the datasets):", ""]
            header = ["model", "alpha_1", *args.prompt_types]
            lines += [_md_row(header), _md_row(["---"] * len(header))]
            for spec in specs:
                for weight in sorted({r["routing_weight"] for r in sweep if r["model"] == spec.name}):
                    cells = [_format(by_cell[(spec.name, weight, AVERAGE, t)]["mIoU"]) for t in args.prompt_types]
                    lines.append(_md_row([spec.name, f"{weight:g}", *cells]))
    coco = [row for row in rows if row["dataset"] == COCO_DATASET]
    if coco:
        lines += ["", f"COCO, noisy boxes with IoU in [{args.coco_min_iou}, {args.coco_max_iou}) to the GT box:", ""]
        header = ["model", "mAP", "mAP50", "mIoU", "mBIoU", "pred. IoU", "objects", "left out"]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for row in coco:
            values = [row["mAP"], row["mAP50"], row["mIoU"], row["mBIoU"], row["pred_IoU"]]
            lines.append(
                _md_row([row["model"], *map(_format, values), str(row["num_objects"]), str(row["num_skipped"])])
            )
    return "\n".join(lines) + "\n"


def _interval(low, high) -> str:
    if low is None or high is None:
        return "-"
    return f"[{low:.1f}, {high:.1f}]"


def _difference(row: dict[str, Any]) -> str:
    """`+1.2 [+0.4, +2.0]`: a row's mIoU difference to the reference model and its interval."""
    if row["mIoU_diff"] is None:
        return "-"
    text = f"{row['mIoU_diff']:+.1f}"
    if row["mIoU_diff_low"] is not None:
        text += f" [{row['mIoU_diff_low']:+.1f}, {row['mIoU_diff_high']:+.1f}]"
    return text


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# Plots


def _points_rows(rows, spec, column):
    points = []
    for row in rows:
        if row["model"] != spec.name or row["dataset"] != AVERAGE or row["routing_weight"] is not None:
            continue
        kind, count = parse_prompt_type(row["prompt_type"])
        if kind == "points" and row[column] is not None and not math.isnan(row[column]):
            points.append((count, row[column]))
    return sorted(points)


def write_plots(rows: list[dict[str, Any]], specs: list[ModelSpec], output_dir: Path) -> list[Path]:
    """mIoU against the number of points (Table 6), alpha_1 against the number of points (Table 7) and mIoU against
    a forced alpha_1 (Table 8), each when the results hold what it needs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(figure, axes, name, xlabel, ylabel, title):
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = output_dir / name
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)

    # Models without a router have no alpha_1: `_points_rows` leaves them out of that plot
    for column, name, ylabel, title in (
        ("mIoU", "miou_vs_points.png", "mIoU (%)", "mIoU against the number of points"),
        ("alpha_1", "alpha1_vs_points.png", "alpha_1", "alpha_1 against the number of points"),
    ):
        curves = [(spec, _points_rows(rows, spec, column)) for spec in specs]
        curves = [(spec, points) for spec, points in curves if points]
        if not curves:
            continue
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for spec, points in curves:
            axes.plot(*zip(*points), marker="o", label=spec.name)
        axes.set_xticks(sorted({count for _, points in curves for count, _ in points}))
        save(figure, axes, name, "points per prompt", ylabel, title)

    sweep = [r for r in rows if r["dataset"] == AVERAGE and r["routing_weight"] is not None]
    if sweep:
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for spec in specs:
            for prompt_type in dict.fromkeys(r["prompt_type"] for r in sweep):
                points = sorted(
                    (r["routing_weight"], r["mIoU"])
                    for r in sweep
                    if r["model"] == spec.name and r["prompt_type"] == prompt_type
                )
                if points:
                    axes.plot(*zip(*points), marker="o", label=f"{spec.name} {prompt_type}")
        save(figure, axes, "miou_vs_routing_weight.png", "forced alpha_1", "mIoU (%)", "mIoU against a forced alpha_1")
    return written


# Main


def main(argv=None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    specs = [parse_model_spec(spec, args.base_model) for spec in args.models]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Model names must be unique, got {names}: name them as NAME=METHOD:PATH.")
    if args.reference_model is not None and args.reference_model not in names:
        raise ValueError(f"`reference_model` must be one of the models' names {names}, got {args.reference_model!r}.")
    coco = None
    if args.coco_annotations is not None:
        if not Path(args.coco_annotations).is_file():
            raise FileNotFoundError(f"`coco_annotations` {args.coco_annotations} is not a file.")
        if not Path(args.coco_images).is_dir():
            raise FileNotFoundError(f"`coco_images` {args.coco_images} is not a folder.")
        import contextlib
        import io

        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(args.coco_annotations)
    if args.dataset is not None:
        # Fail on a missing or malformed dataset before any model is loaded
        _load_subsets(args)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = read_records(output_dir)
    accelerator.wait_for_everyone()
    writer = RecordWriter(output_dir / f"per_object.rank{accelerator.process_index}.jsonl")
    if done:
        logger.info(f"Found {len(done)} per-object records of earlier runs in {output_dir}")

    records, skipped, coco_ap, coco_skipped = [], {}, {}, {}
    for spec in specs:
        logger.info(f"Evaluating {spec.name} = {spec.model_id}")
        model = load_model(spec).to(accelerator.device)
        predictor = SamPredictor(model, decoder_batch_size=args.decoder_batch_size)
        if args.routing_weight and not predictor.is_stable:
            logger.info(f"{spec.name} is not a Stable-SAM model: no routing-weight sweep")
        if args.dataset is not None:
            model_records, skipped[spec.name] = evaluate_hq(accelerator, predictor, spec, args, done, writer)
            records.extend(model_records)
        if coco is not None:
            model_records, image_ids, left_out = evaluate_coco(accelerator, predictor, spec, args, coco, done, writer)
            records.extend(model_records)
            if accelerator.is_main_process:
                coco_ap[spec.name] = coco_mask_ap(coco, [r["detection"] for r in model_records], image_ids)
            coco_skipped[spec.name] = left_out["empty_mask"]
            if left_out["exact_box"]:
                logger.info(f"COCO: {left_out['exact_box']} objects had no noisy box in the IoU band: exact box used")
        del model, predictor
    writer.close()
    accelerator.wait_for_everyone()

    rows = []
    if accelerator.is_main_process:
        for spec in specs:
            for dataset, counter in skipped.get(spec.name, {}).items():
                if counter.total():
                    logger.warning(f"{spec.name} {dataset}: {counter.report()}")
        rows = summarize_records(records, specs, args, skipped, coco_ap, coco_skipped)
        write_csv(rows, output_dir / "results.csv")
        table = markdown_tables(rows, specs, args)
        (output_dir / "results.md").write_text(table)
        (output_dir / "run_config.json").write_text(
            json.dumps({**asdict(args), "model_ids": {s.name: s.model_id for s in specs}}, indent=2)
        )
        plots = write_plots(rows, specs, output_dir)
        print(table)
        logger.info(f"Wrote results.csv, results.md and {len(plots)} plots to {output_dir}")
    accelerator.end_training()
    return rows


if __name__ == "__main__":
    main()
