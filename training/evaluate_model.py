"""A prompt-robustness benchmark for every SAM in transformers: SAM, HQ-SAM, SAM 2, SAM 3's tracker, Stable-SAM and
any run of training/train.py, side by side under poor prompts and under simulated clicks.

    python training/evaluate_model.py --dataset data/hqseg44k --output_dir eval \\
        --models sam=sam:facebook/sam-vit-base hq=hq:syscv-community/sam-hq-vit-base \\
        sam2=sam2:facebook/sam2.1-hiera-tiny sam3=sam3_tracker:facebook/sam3 stable=runs/stable \\
        --protocol prompts interactive sweep
    accelerate launch --multi_gpu --num_processes 4 training/evaluate_model.py ...   # objects split over GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 training/evaluate_model.py ...  # or over CPU processes
    python training/evaluate_model.py --models sam=sam:facebook/sam-vit-base stable=runs/stable --output_dir eval \\
        --coco_annotations coco/annotations/instances_val2017.json --coco_images coco/val2017

Model kinds (NAME=KIND:PATH): sam, hq (HQ-SAM's default fused output), hq_token_only, sam2, sam3_tracker, stable, and
the methods of train.py for run folders; each model goes through its own processor's pre- and post-processing.
Datasets: any folder or Hub dataset in the layout training/prepare_hqseg44k.py writes (the HQ validation sets, or your
own), and COCO-format annotations (mask AP under noisy boxes).

Protocols (--protocol): `prompts` prompts each object `--num_prompts` times per prompt type (the GT box once: it is
the same every time); `sweep` adds noisy boxes at noise scales 0.1 to 0.6 and 1 to 5 points; `interactive` simulates
clicks (the first at the object's centre, each next one at the deepest point of the larger error region, the previous
low-res logits fed back as the mask prompt) and reports NoC@85, NoC@90 and mIoU after each click. Draw k of type t
for object o of dataset d comes from a generator seeded by (seed, d, o, t, k), so every model sees the same prompts.
Per-object results are appended to `<output_dir>/per_object.rank<N>.jsonl` as they are computed; a rerun with the
same settings and the same model and data files reuses them and computes only what is missing, so an interrupted run
loses nothing. Then `results.csv`, `results.md`, `results.json` and PNG curves are written and the table is printed:
every mIoU and NoC with a 95 % bootstrap interval (objects resampled within each dataset) and every model's mIoU
difference to `--reference_model` (the first model by default) on the same objects and prompts, with its paired
interval.
"""

import hashlib
import json
import logging
import math
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

from stable_sam_hf.clicks import MAX_CLICKS, simulate_clicks
from stable_sam_hf.contenders import make_predictor
from stable_sam_hf.data import BadSampleError, SkipCounter, decode_sample, hqseg_subsets, load_segmentation_subsets
from stable_sam_hf.evaluation import (
    COCO_PROMPT_TYPE,
    MODEL_KINDS,
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
from stable_sam_hf.evaluation_report import (
    COCO_DATASET,
    INTERACTIVE,
    markdown_tables,
    summarize_records,
    write_csv,
    write_markdown,
    write_plots,
    write_results_json,
)
from stable_sam_hf.prompts import EVALUATION_PROMPT_TYPES, parse_prompt_type


logger = get_logger(__name__)

PROTOCOLS = {
    "prompts": "each object prompted --num_prompts times per --prompt_types (the GT box once): mIoU, mBIoU, ST",
    "interactive": "clicks to quality: the first click at the object's centre (the pixel farthest from its boundary), "
    "then up to --max_clicks corrective clicks, each at the pixel farthest from the boundary of the largest error "
    "region (positive in a missed region, negative in a false one; largest = farthest inside itself, as RITM), the "
    "previous low-res logits fed back as the mask prompt: NoC@85, NoC@90 (the cap when never reached), objects never "
    "reaching 85 %, and mIoU after 1..max_clicks clicks",
    "sweep": "noisy-box mIoU at noise scales 0.1 to 0.6 (prompt types noisy_box@<scale>) and point mIoU with 1 to 5 "
    "points (points_1 .. points_5), one curve per model",
}
# The COCO-format objects as a dataset of the per-object protocols (`--coco_per_object`)
COCO_OBJECTS = "COCO-objects"
SWEEP_NOISE_SCALES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
SWEEP_POINTS = (1, 2, 3, 4, 5)

RECORDS_GLOB = "per_object.rank*.jsonl"


@dataclass
class EvaluationArguments:
    models: list[str] = field(
        metadata={
            "help": "Models as NAME=KIND:PATH, e.g. sam=sam:facebook/sam-vit-base stable=stable:runs/stable. KIND is one "
            "of: " + "; ".join(f"{kind}: {text}" for kind, text in MODEL_KINDS.items()) + ". A run folder of "
            "training/train.py alone (runs/adapter) names its method and base SAM in training_summary.json; a local "
            "checkpoint alone is known by its config's model_type. NAME defaults to the kind."
        }
    )
    output_dir: str = field(metadata={"help": "Where per-object results, results.csv/.md and the plots go."})
    protocol: list[str] = field(
        default_factory=lambda: ["prompts"],
        metadata={
            "help": "Protocols to run on the segmentation datasets (any of): "
            + "; ".join(f"{name}: {text}".replace("%", "%%") for name, text in PROTOCOLS.items())
            + "."
        },
    )
    max_clicks: int = field(default=MAX_CLICKS, metadata={"help": "Clicks per object in the interactive protocol."})
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
    coco_per_object: bool = field(
        default=False,
        metadata={
            "help": "Also run --protocol on each COCO-format object (any instance set: GrabCut-, Berkeley-, DAVIS- or "
            "SBD-style annotations as COCO JSON), reported as the dataset COCO-objects beside the HQ subsets."
        },
    )
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
        if self.coco_per_object and self.coco_annotations is None:
            raise ValueError("`coco_per_object` needs `coco_annotations` and `coco_images`.")
        if not self.prompt_types:
            raise ValueError("`prompt_types` must name at least one prompt type.")
        for prompt_type in self.prompt_types:
            if isinstance(prompt_type, str) and prompt_type.startswith("noisy_box@"):
                raise ValueError(
                    f"`prompt_types`: {prompt_type} names a row of the sweep; pass noisy_box with --noise_scale "
                    f"{prompt_type.split('@', 1)[1]}, or --protocol sweep for every scale."
                )
            if parse_prompt_type(prompt_type)[0] == "coarse_mask":
                raise ValueError(
                    "`prompt_types`: coarse_mask is a training prompt, not an evaluation prompt type; evaluation takes "
                    "box, noisy_box and points_<k> (the sweep's noisy_box@<scale> rows come from --protocol sweep)."
                )
        if len(set(self.prompt_types)) != len(self.prompt_types):
            raise ValueError(f"`prompt_types` has repeated entries: {self.prompt_types}.")
        unknown = [name for name in self.protocol if name not in PROTOCOLS]
        if unknown or not self.protocol or len(set(self.protocol)) != len(self.protocol):
            raise ValueError(f"`protocol` must name distinct protocols of {list(PROTOCOLS)}, got {self.protocol}.")
        for name in ("num_prompts", "decoder_batch_size", "max_objects_per_dataset", "coco_max_images", "max_clicks"):
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


def dataset_prompt_types(args: EvaluationArguments) -> list[str]:
    """The prompt types the protocols evaluate on the segmentation datasets, in report order."""
    types = list(args.prompt_types) if "prompts" in args.protocol else []
    if "sweep" in args.protocol:
        types += [f"noisy_box@{scale:g}" for scale in SWEEP_NOISE_SCALES]
        types += [f"points_{count}" for count in SWEEP_POINTS]
    if INTERACTIVE in args.protocol:
        types.append(INTERACTIVE)
    return list(dict.fromkeys(types))


def split_noise_scale(prompt_type: str, default: float) -> tuple[str, float]:
    """`noisy_box@0.3` -> (`noisy_box`, 0.3); other prompt types keep `default`."""
    if "@" not in prompt_type:
        return prompt_type, default
    base, scale = prompt_type.split("@", 1)
    return base, float(scale)


# Per-object records


def run_key(spec: ModelSpec, args: EvaluationArguments, source: str, images: str | None = None) -> str:
    """What a record depends on besides its object, prompt type and routing weight; `images` is a source's image
    folder when the `source` file does not hold the images (COCO)."""
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
        "max_clicks": args.max_clicks,
    }
    if images is not None:
        settings.update(images=images, images_files=path_fingerprint(images))
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
    encoding=None,
) -> list[dict[str, Any]]:
    """Records of one object for the `(routing_weight, prompt_type)` pairs in `missing`; the encoder runs once (or
    not at all when the image's `encoding` is given)."""
    encoding = predictor.encode(image) if encoding is None else encoding
    prompts = {}
    records = []
    for routing_weight, prompt_type in missing:
        if prompt_type == INTERACTIVE:
            records.append(
                evaluate_interactive(predictor, encoding, spec, args, key, dataset, object_id, mask, routing_weight)
            )
            continue
        if prompt_type not in prompts:
            base_type, noise_scale = split_noise_scale(prompt_type, args.noise_scale)
            prompts[prompt_type] = draw_prompts(
                mask,
                base_type,
                args.num_prompts,
                seed=args.seed,
                dataset=dataset,
                object_id=object_id,
                noise_scale=noise_scale,
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


def evaluate_interactive(predictor, encoding, spec, args, key, dataset, object_id, mask, routing_weight):
    """The interactive protocol's record of one object: IoU after each click, the clicks and alpha_1 (Stable-SAM's
    mean over every prediction of the object, None for other models)."""
    alphas = []

    def predict(points, labels, logits):
        mask, low_res, routing = predictor.predict_clicks(encoding, points, labels, logits)
        if routing is not None:
            alphas.append(routing[0].item())
        return mask, low_res

    result = simulate_clicks(predict, mask.cpu(), max_clicks=args.max_clicks)
    return {
        "run": key,
        "model": spec.name,
        "routing_weight": routing_weight,
        "dataset": dataset,
        "id": object_id,
        "prompt_type": INTERACTIVE,
        "iou": result.ious,
        "boundary_iou": [],
        "stability": None,
        "predicted_iou": [],
        "alpha_1": sum(alphas) / len(alphas) if alphas else None,
        "clicks": [list(click) for click in result.clicks],
    }


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
    wanted = [
        (weight, prompt_type)
        for weight in variants
        for prompt_type in dataset_prompt_types(args)
        if weight is None or prompt_type != INTERACTIVE
    ]
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
    check_local_or_hub(args.dataset, "dataset", repo_type="dataset")
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

    key = run_key(spec, args, args.coco_annotations, args.coco_images)
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


def evaluate_coco_objects(
    accelerator: Accelerator,
    predictor: SamPredictor,
    spec: ModelSpec,
    args: EvaluationArguments,
    coco,
    done: dict[tuple, dict],
    writer: RecordWriter,
) -> tuple[list[dict[str, Any]], SkipCounter]:
    """The per-object protocols on the COCO-format objects (dataset `COCO_OBJECTS`), gathered, and the skips."""
    from PIL import Image

    key = run_key(spec, args, args.coco_annotations, args.coco_images)
    variants = [None] + (list(args.routing_weight or []) if predictor.is_stable else [])
    wanted = [
        (weight, prompt_type)
        for weight in variants
        for prompt_type in dataset_prompt_types(args)
        if weight is None or prompt_type != INTERACTIVE
    ]
    image_ids = sorted(coco.getImgIds())
    if args.coco_max_images is not None:
        image_ids = image_ids[: args.coco_max_images]
    counter, mine = SkipCounter(), []
    progress = tqdm(desc=f"{spec.name} {COCO_OBJECTS}", unit="image", disable=not accelerator.is_local_main_process)
    for image_id in image_ids[accelerator.process_index :: accelerator.num_processes]:
        objects, empty = coco_objects(coco, image_id)
        for _ in range(empty):
            counter.add("empty_mask")
        keys = {
            (obj.annotation_id, pair): (key, spec.name, pair[0], COCO_OBJECTS, str(obj.annotation_id), pair[1])
            for obj in objects
            for pair in wanted
        }
        encoding = None
        for obj in objects:
            missing = [pair for pair in wanted if keys[(obj.annotation_id, pair)] not in done]
            if missing and encoding is None:
                info = coco.loadImgs([image_id])[0]
                path = Path(args.coco_images) / info["file_name"]
                try:
                    image = torch.from_numpy(_rgb_array(Image.open(path))).permute(2, 0, 1).contiguous()  # 3 x H x W
                except OSError as error:
                    counter.add("unreadable_image", len(objects))
                    logger.warning(f"Skipping COCO image {path}: {error}", main_process_only=False)
                    break
                encoding = predictor.encode(image)
            if missing:
                new = evaluate_hq_object(
                    predictor, spec, args, key, COCO_OBJECTS, str(obj.annotation_id), None, obj.mask, missing, encoding
                )
                for record in new:
                    writer.write(record)
                    done[record_key(record)] = record
            mine.extend(done[keys[(obj.annotation_id, pair)]] for pair in wanted)
        progress.update(1)
    progress.close()
    records = accelerator.gather_for_metrics(mine, use_gather_object=True)
    total = accelerator.reduce(counter.to_tensor().to(accelerator.device), reduction="sum").cpu()
    skipped = SkipCounter()
    skipped.update(total)
    return records, skipped


def _rgb_array(image) -> np.ndarray:
    return np.array(image.convert("RGB"))


# Main


def main(argv=None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    specs = [parse_model_spec(spec, args.base_model) for spec in args.models]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Model names must be unique, got {names}: name them as NAME=KIND:PATH.")
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
        predictor = make_predictor(model, spec, decoder_batch_size=args.decoder_batch_size)
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
            if args.coco_per_object:
                model_records, skipped.setdefault(spec.name, {})[COCO_OBJECTS] = evaluate_coco_objects(
                    accelerator, predictor, spec, args, coco, done, writer
                )
                records.extend(model_records)
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
        rows = summarize_records(records, specs, args, dataset_prompt_types(args), skipped, coco_ap, coco_skipped)
        write_csv(rows, output_dir / "results.csv")
        table = markdown_tables(rows, specs, args, dataset_prompt_types(args))
        write_markdown(table, output_dir / "results.md")
        (output_dir / "run_config.json").write_text(
            json.dumps({**asdict(args), "model_ids": {s.name: s.model_id for s in specs}}, indent=2)
        )
        write_results_json(rows, specs, args, output_dir / "results.json")
        plots = write_plots(rows, specs, output_dir)
        print(table)
        logger.info(f"Wrote results.csv, results.md, results.json and {len(plots)} plots to {output_dir}")
    accelerator.end_training()
    return rows


if __name__ == "__main__":
    main()
