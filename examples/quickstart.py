"""The offline demo: train Stable-SAM's plugins on a frozen toy SAM and compare them with it under poor prompts.

    python examples/quickstart.py                      # offline, the toy SAM shipped in models/toy-sam-128
    python examples/quickstart.py --methods stable lora adapter decoder   # and the baselines, same budget each
    # The real recipe and the paper's evaluation (every object, 20 prompts each), where the Hub and a GPU are available
    python examples/quickstart.py --base_model facebook/sam-vit-base --dataset data/hqseg44k \\
        --max_train_steps 1385 --total_batch_size 32 --max_objects_per_dataset 0 --num_prompts 20

Steps, each through the project's own scripts so the demo exercises the real paths:
1. data: synthetic scenes (`stable_sam_toy.synthetic`) written in HQSeg-44K's folder layout and turned into a streamed
   parquet dataset by `training/prepare_hqseg44k.py` (skipped when `--dataset` is given). Like HQSeg-44K, each scene
   annotates one object (`--scene_config`; the toy base was trained on scenes with every object labelled, as SAM was
   on SA-1B). Training scenes go where DIS5K-TR would be; held-out scenes of the training domain where DIS5K-VD
   would be; a shifted domain (shapes, colours and textures never seen in training) where COIFT would be; with
   `--num_coco_like_scenes`, SA-1B-like scenes (every object labelled, as in MS COCO) where HRSOD would be, and the
   same scenes as a COCO instance set: the toy's stand-in for the paper's COCO evaluation after HQ training (appendix
   Table 9), by mIoU and by COCO mask mAP under noisy boxes of IoU 0.5 to 0.6;
2. training: `accelerate launch training/train.py` once per method, with the same data, prompts, loss and steps;
3. evaluation: `training/evaluate_model.py` under GT box, noisy box, 1 point and 3 points, seeded prompts shared by
   every model; then the table, the plots and a side-by-side figure of SAM and Stable-SAM on noisy boxes (around a
   held-out synthetic object, or with `--dataset` the first readable object of its first validation subset).
"""

import csv
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, HfArgumentParser

from stable_sam_toy.worlds import COCO_LIKE_START, HELD_OUT_START, HQ_LIKE_SCENES, TOY_BASE, TRAIN_START


if TYPE_CHECKING:
    from stable_sam_toy.synthetic import SceneConfig


ROOT = Path(__file__).resolve().parents[1]
# Where the synthetic splits stand in the HQSeg-44K layout, and the names the demo table gives them
SYNTHETIC_SUBSETS = {
    "train": ("DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    "held-out": ("DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
    "shifted": ("thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
    "coco-like": ("thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"),
}
DATASET_LABELS = {"DIS5K-VD": "held-out scenes", "COIFT": "shifted domain", "HRSOD": "COCO-like scenes"}
# With `--dataset` the subsets keep their names; evaluate_model.py's mean over them is, on HQSeg-44K, the paper's
# "four HQ datasets"
REAL_DATASET_LABELS = {"average": "average over the validation subsets"}
# The COCO-like scenes again, as a COCO instance set (images/ + instances.json) for evaluate_model.py's COCO protocol
COCO_LIKE_FOLDER = "coco-like"
# Adam rates: the paper's 1e-3 for plugins and adapters, 1e-4 where SAM's whole mask decoder trains
METHOD_LEARNING_RATES = {
    "stable": 1e-3,
    "lora": 1e-3,
    "adapter": 1e-3,
    "decoder": 1e-4,
    "stable_decoder": 1e-3,
    "stable_spatial": 1e-3,
    "heads": 1e-3,
    "hq": 1e-3,
}
# The rate of SAM's own decoder parameters where it differs: stable_decoder's plugins train at 1e-3, its decoder at 1e-4
METHOD_DECODER_LEARNING_RATES = {"stable_decoder": 1e-4}

logger = logging.getLogger("quickstart")


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Where data, runs and results go."})
    base_model: str = field(default=str(TOY_BASE), metadata={"help": "Frozen SAM checkpoint (folder or Hub id)."})
    dataset: str | None = field(
        default=None, metadata={"help": "Prepared dataset (folder or Hub id); default: synthetic scenes made here."}
    )
    methods: list[str] = field(
        default_factory=lambda: ["stable"],
        metadata={
            "help": "Methods to train, same budget each, each compared with the frozen base: stable, lora, adapter, "
            "decoder, stable_decoder, stable_spatial, heads, hq (default: stable)."
        },
    )
    output_size: int | None = field(
        default=None,
        metadata={"help": "Model input size; default: the base model's (128 for the toy SAM, 1024 for SAM's)."},
    )
    max_train_steps: int = field(default=150, metadata={"help": "Optimizer steps per method."})
    total_batch_size: int = field(default=16, metadata={"help": "Objects per optimizer step."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Objects per forward."})
    projection_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "Learning-rate multiplier of Stable-SAM's DSP projection (train.py's option; 1.0: the paper's)."
        },
    )
    scene_config: list[str] = field(
        default_factory=lambda: list(HQ_LIKE_SCENES),
        metadata={
            "help": "Scene generator knobs for the training and held-out scenes, `name=value` (SceneConfig fields; "
            "unnamed knobs keep SceneConfig's defaults). The default: HQSeg-like scenes, one labelled object each."
        },
    )
    num_train_scenes: int = field(default=2400, metadata={"help": "Synthetic training scenes."})
    num_eval_scenes: int = field(default=60, metadata={"help": "Synthetic held-out scenes per domain."})
    num_coco_like_scenes: int = field(
        default=0,
        metadata={
            "help": "SA-1B-like held-out scenes (the base's own world: 4 to 8 objects, every one labelled, as in MS "
            "COCO) evaluated beside the others, as the paper evaluates its HQ-trained models on COCO (Table 9); "
            "about 6 objects each, and at most --max_objects_per_dataset of them are evaluated. 0 leaves them out."
        },
    )
    max_objects_per_dataset: int = field(
        default=60,
        metadata={"help": "Objects evaluated per dataset, the first ones; 0: every object (the paper's benchmarks)."},
    )
    prompt_types: list[str] = field(
        default_factory=lambda: ["box", "noisy_box", "points_1", "points_3"],
        metadata={"help": "Evaluation prompt types."},
    )
    num_prompts: int = field(default=3, metadata={"help": "Seeded prompts per object and prompt type (K)."})
    seed: int = field(default=0, metadata={"help": "Seed of scenes, training and prompts."})
    routing_sweep: bool = field(
        default=False,
        metadata={
            "help": "Also score Stable-SAM with alpha_1 forced to 0, 0.5 and 1 (the paper's Table 8) and plot mIoU "
            "against it; three more evaluations of the Stable-SAM run."
        },
    )

    def __post_init__(self):
        for name, least in (
            ("num_train_scenes", 1),
            ("num_eval_scenes", 1),
            ("num_coco_like_scenes", 0),
            ("max_objects_per_dataset", 0),
        ):
            if getattr(self, name) < least:
                raise ValueError(f"`{name}` must be an integer >= {least}, got {getattr(self, name)}.")
        if self.dataset is not None and self.num_coco_like_scenes > 0:
            raise ValueError(
                "`num_coco_like_scenes` adds synthetic scenes to the synthetic dataset; with `dataset` there is none: "
                "evaluate on MS COCO with training/evaluate_model.py --coco_annotations instead."
            )
        unknown = [method for method in self.methods if method not in METHOD_LEARNING_RATES]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            raise ValueError(
                f"`methods` must name distinct methods among {list(METHOD_LEARNING_RATES)}, got {self.methods}."
            )


def run(args: QuickstartArguments, command: list[str], log: Path) -> None:
    """Runs one step of the demo, its output in `log`; a failure stops the demo with the log's tail."""
    start = time.perf_counter()
    with log.open("w") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(args))
    if result.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}); end of {log}:\n{tail}")
    logger.info("  done in %.0f s (log: %s)", time.perf_counter() - start, log)


def _cpu_threads() -> int:
    """OMP_NUM_THREADS when set, else the cores this process may run on (torch's own default)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def child_env(args: QuickstartArguments) -> dict:
    """The steps' environment: offline (HF_HUB_OFFLINE=1 unless set) when the base model and the dataset are local
    folders, as in the offline default; a Hub id such as facebook/sam-vit-base is downloaded by the steps."""
    local = Path(args.base_model).is_dir() and (args.dataset is None or Path(args.dataset).is_dir())
    return {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")} if local else dict(os.environ)


# Marks a folder as the quickstart's own: only there does a rerun replace the scenes and runs it wrote before
OUTPUT_MARKER = ".stable-sam-quickstart"


def claim_output_dir(output_dir: Path) -> None:
    """Makes `output_dir` the quickstart's, refusing a non-empty folder that an earlier quickstart did not write."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; expected a folder (new, empty, or the quickstart's)")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / OUTPUT_MARKER).is_file():
        raise ValueError(
            f"--output_dir {output_dir} holds files the quickstart did not write, and a rerun replaces its scenes and "
            "runs there; choose a new or empty folder"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / OUTPUT_MARKER).write_text("Written by examples/quickstart.py; reruns replace its scenes and runs.\n")


def make_synthetic_dataset(args: QuickstartArguments, config: "SceneConfig", output_dir: Path) -> Path:
    from stable_sam_toy.synthetic import SceneConfig, write_coco_scenes, write_scene_tree

    raw = output_dir / "scenes"
    shutil.rmtree(raw, ignore_errors=True)
    # Scenes the toy base never saw: its training used scene indices below TRAIN_START
    plan = {
        "train": ("train", TRAIN_START, args.num_train_scenes, config),
        "held-out": ("train", HELD_OUT_START, args.num_eval_scenes, config),
        "shifted": ("shifted", HELD_OUT_START, args.num_eval_scenes, config),
        # The base's own world, every object labelled, whatever `--scene_config` says
        "coco-like": ("train", COCO_LIKE_START, args.num_coco_like_scenes, SceneConfig()),
    }
    shutil.rmtree(output_dir / COCO_LIKE_FOLDER, ignore_errors=True)
    # Scenes are independent of each other: chunks of them are written in parallel, one process per core
    chunk = 300
    with ProcessPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, 4))) as pool:
        futures = []
        for split, (domain, start, count, split_config) in plan.items():
            image_dir, mask_dir = SYNTHETIC_SUBSETS[split]
            common = os.path.commonpath([image_dir, mask_dir])
            for first in range(start, start + count, chunk):
                futures.append(
                    pool.submit(
                        write_scene_tree,
                        raw,
                        min(chunk, start + count - first),
                        size=args.output_size,
                        domain=domain,
                        seed=args.seed,
                        start=first,
                        dataset_name=common,
                        image_dir=os.path.relpath(image_dir, common),
                        mask_dir=os.path.relpath(mask_dir, common),
                        config=split_config,
                    )
                )
        if args.num_coco_like_scenes:
            futures.append(
                pool.submit(
                    write_coco_scenes,
                    output_dir / COCO_LIKE_FOLDER,
                    args.num_coco_like_scenes,
                    size=args.output_size,
                    seed=args.seed,
                    start=COCO_LIKE_START,
                    config=SceneConfig(),
                )
            )
        for future in futures:
            future.result()
    dataset = output_dir / "data"
    logger.info("Preparing the synthetic dataset in HQSeg-44K's layout")
    run(
        args,
        [sys.executable, "training/prepare_hqseg44k.py", "--source", str(raw), "--output_dir", str(dataset)]
        + ["--overwrite_output_dir", "--row_group_size", "64"],
        output_dir / "prepare.log",
    )
    return dataset


def train(args: QuickstartArguments, method: str, dataset: Path, output_dir: Path) -> Path:
    from stable_sam_hf.methods import PLUGIN_METHODS

    run_dir = output_dir / "runs" / method
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    logger.info("Training `%s` for %d steps", method, args.max_train_steps)
    # accelerate launch gives a single CPU process one thread unless told otherwise; torch's default (one per core)
    # trains about 1.5 times faster on 2 cores
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    command += ["--num_cpu_threads_per_process", str(_cpu_threads()), "training/train.py"]
    command += ["--method", method, "--base_model", args.base_model, "--dataset", str(dataset)]
    command += ["--output_dir", str(run_dir), "--output_size", str(args.output_size)]
    command += ["--max_train_steps", str(args.max_train_steps), "--total_batch_size", str(args.total_batch_size)]
    command += ["--per_device_train_batch_size", str(args.per_device_train_batch_size)]
    command += ["--learning_rate", str(METHOD_LEARNING_RATES[method]), "--seed", str(args.seed)]
    command += ["--report_to", "none", "--checkpointing_steps", "0", "--logging_steps", "25"]
    # One worker process prepares the next batch (decoding, jitter, occlusion, prompts) while this one trains: the
    # same batches in the same order, about 10 % less time on 2 cores
    command += ["--dataloader_num_workers", "1"]
    if method in PLUGIN_METHODS:
        command += ["--projection_lr_scale", str(args.projection_lr_scale)]
    if method in METHOD_DECODER_LEARNING_RATES:
        command += ["--decoder_learning_rate", str(METHOD_DECODER_LEARNING_RATES[method])]
    run(args, command, run_dir / "train.log")
    return run_dir


def evaluate(args: QuickstartArguments, runs: dict[str, Path], dataset: Path, output_dir: Path) -> Path:
    eval_dir = output_dir / "eval"
    models = [f"base=sam:{args.base_model}"] + [f"{method}={path}" for method, path in runs.items()]
    logger.info("Evaluating %s", ", ".join(model.split("=")[0] for model in models))
    command = [sys.executable, "training/evaluate_model.py", "--dataset", str(dataset), "--output_dir", str(eval_dir)]
    command += ["--models", *models, "--prompt_types", *args.prompt_types, "--num_prompts", str(args.num_prompts)]
    command += ["--seed", str(args.seed)]
    if args.max_objects_per_dataset:
        command += ["--max_objects_per_dataset", str(args.max_objects_per_dataset)]
    if args.routing_sweep and "stable" in runs:
        command += ["--routing_weight", "0", "0.5", "1"]
    if args.num_coco_like_scenes:
        coco = output_dir / COCO_LIKE_FOLDER
        command += ["--coco_annotations", str(coco / "instances.json"), "--coco_images", str(coco / "images")]
    run(args, command, output_dir / "evaluate.log")
    return eval_dir


def held_out_example(args: QuickstartArguments, config: "SceneConfig", output_dir: Path) -> tuple[Path, list[float]]:
    """The image and GT box the side-by-side figure is drawn on: the largest object of the first held-out synthetic
    scene, or with `--dataset` the first readable object of the dataset's first validation subset (HQSeg-44K's order)."""
    from PIL import Image

    from stable_sam_hf.data import BadSampleError, decode_sample, hqseg_subsets, load_segmentation_subsets
    from stable_sam_hf.prompts import masks_to_boxes
    from stable_sam_toy.synthetic import generate_scene

    if args.dataset is None:
        image, masks = generate_scene(
            HELD_OUT_START, size=args.output_size, domain="train", seed=args.seed, config=config
        )
        mask = torch.from_numpy(masks[int(masks.reshape(len(masks), -1).sum(1).argmax())])
    else:
        subsets = load_segmentation_subsets(args.dataset, "validation")
        order = [subset.name for subset in hqseg_subsets("validation")]
        first = min(subsets, key=lambda name: (order.index(name) if name in order else len(order), name))
        for sample in subsets[first]:
            try:
                image, mask = decode_sample(sample)
                break
            except BadSampleError as error:
                logger.warning("Side-by-side figure: skipping %s/%s (%s)", first, sample["id"], error.reason)
        else:
            raise ValueError(f"`dataset` {args.dataset!r}: no readable sample in its validation subset {first}.")
        image = image.permute(1, 2, 0).numpy()  # H x W x 3
    image_path = output_dir / "held_out_example.png"
    Image.fromarray(image).save(image_path)
    return image_path, masks_to_boxes(mask[None])[0].tolist()


def side_by_side(args: QuickstartArguments, config: "SceneConfig", stable_run: Path, output_dir: Path) -> Path:
    """SAM (alpha_1 = 0) and Stable-SAM on the same noisy boxes around one held-out object."""
    image_path, box = held_out_example(args, config, output_dir)
    figure = output_dir / "compare_with_sam.png"
    command = [sys.executable, "examples/compare_with_sam.py", str(image_path), "--box", *[f"{v:g}" for v in box]]
    command += ["--model", str(stable_run), "--out", str(figure), "--num_prompts", "4", "--seed", str(args.seed)]
    logger.info("Drawing SAM and Stable-SAM side by side on noisy boxes")
    run(args, command, output_dir / "compare.log")
    return figure


def _difference(row: dict[str, str]) -> str:
    """`+1.2 [+0.4, +2.0]`: a results.csv row's mIoU difference to the base and its bootstrap interval."""
    low, high = float(row["mIoU_diff_low"]), float(row["mIoU_diff_high"])
    return f"{float(row['mIoU_diff']):+.1f} [{low:+.1f}, {high:+.1f}]"


def summary_table(eval_dir: Path, trainable: dict[str, int], labels: dict[str, str]) -> str:
    """mIoU per model and prompt type, one block per dataset (named by `labels`, else by its subset name), with
    alpha_1 and the trainable parameter count, then each model's difference to the frozen base with its bootstrap
    interval."""
    with (eval_dir / "results.csv").open() as stream:
        rows = [row for row in csv.DictReader(stream) if row["routing_weight"] in ("", "None")]
    coco = [row for row in rows if row["dataset"] == "COCO"]
    rows = [row for row in rows if row["dataset"] != "COCO"]
    prompt_types = list(dict.fromkeys(row["prompt_type"] for row in rows))
    by_cell = {(row["model"], row["dataset"], row["prompt_type"]): row for row in rows}
    lines = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        label = labels.get(dataset, dataset)
        lines += [f"\n{label} (mIoU %; alpha_1 for Stable-SAM)", ""]
        lines += [
            "| model | trainable | " + " | ".join(prompt_types) + " |",
            "|---|---:|" + "---:|" * len(prompt_types),
        ]
        for model in dict.fromkeys(row["model"] for row in rows):
            cells = []
            for prompt_type in prompt_types:
                row = by_cell[(model, dataset, prompt_type)]
                cell = f"{float(row['mIoU']):.1f}"
                if row["alpha_1"] not in ("", "None"):
                    cell += f" (a1 {float(row['alpha_1']):.2f})"
                cells.append(cell)
            count = f"{trainable[model]:,}" if model in trainable else "0 (frozen)"
            lines.append(f"| {model} | {count} | " + " | ".join(cells) + " |")
        lines += [
            f"\n{label}: mIoU difference to the frozen base in points, on the same objects and prompts "
            "[95 % bootstrap interval over the objects]",
            "",
            "| model | " + " | ".join(prompt_types) + " |",
            "|---|" + "---:|" * len(prompt_types),
        ]
        for model in dict.fromkeys(row["model"] for row in rows if row["mIoU_diff"] not in ("", "None")):
            cells = []
            for prompt_type in prompt_types:
                cells.append(_difference(by_cell[(model, dataset, prompt_type)]))
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if coco:
        lines += [
            "\nCOCO-like scenes, COCO protocol: mask mAP / mAP50 (%) with one noisy box per object of IoU 0.5 to 0.6 "
            "with its GT box, detections scored by the predicted IoU; mIoU of those masks and its difference to the "
            "frozen base [95 % bootstrap interval]",
            "",
            "| model | mAP | mAP50 | mIoU | difference | objects |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in coco:
            difference = _difference(row) if row["mIoU_diff"] not in ("", "None") else "-"
            lines.append(
                f"| {row['model']} | {float(row['mAP']):.1f} | {float(row['mAP50']):.1f} | {float(row['mIoU']):.1f} | "
                f"{difference} | {row['num_objects']} |"
            )
    return "\n".join(lines)


def main(argv=None):
    (args,) = HfArgumentParser(QuickstartArguments, description=__doc__).parse_args_into_dataclasses(args=argv)
    from stable_sam_toy.synthetic import SceneConfig

    config = SceneConfig.from_strings(args.scene_config)  # a bad knob fails here, before any work
    if args.output_size is None:
        args.output_size = AutoConfig.from_pretrained(args.base_model).vision_config.image_size
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    output_dir = Path(args.output_dir)
    claim_output_dir(output_dir)
    start = time.perf_counter()

    dataset = Path(args.dataset) if args.dataset else make_synthetic_dataset(args, config, output_dir)
    runs = {method: train(args, method, dataset, output_dir) for method in args.methods}
    trainable = {}
    for method, run_dir in runs.items():
        log = (run_dir / "train.log").read_text()
        trainable[method] = int(log.split("trainable parameters=")[1].split()[0].replace(",", ""))
    eval_dir = evaluate(args, runs, dataset, output_dir)

    figure = side_by_side(args, config, runs["stable"], output_dir) if "stable" in runs else None
    # The synthetic subsets stand where HQSeg-44K's would be: name them for what they hold; real subsets keep their names
    table = summary_table(eval_dir, trainable, DATASET_LABELS if args.dataset is None else REAL_DATASET_LABELS)
    (output_dir / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nFull results: {eval_dir / 'results.md'}; plots: {sorted(p.name for p in eval_dir.glob('*.png'))}")
    if figure is not None:
        print(f"Side by side on noisy boxes: {figure}")
    print(f"Base: {args.base_model}; prompt seed {args.seed}; {time.perf_counter() - start:.0f} s in all.")


if __name__ == "__main__":
    main()
