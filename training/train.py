"""Train Stable-SAM's plugins (or a baseline) on a frozen SAM over a streamed segmentation dataset.

The recipe of the Stable-SAM paper's appendix: HQSeg-44K with large-scale jitter and occlusion synthesis, a prompt
drawn per object from {GT box, 1/3/5/10 points, noisy box, coarse mask}, BCE + dice loss, Adam at lr 1e-3 with no
weight decay, a total batch of 32, one epoch. Runs on a CPU, one GPU or many through accelerate:

    accelerate launch training/train.py --dataset data/hqseg44k --base_model facebook/sam-vit-base --output_dir out
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 training/train.py ...  # two CPU processes

Streaming has no length, so training runs for `--max_train_steps` optimizer steps (default: one epoch of
HQSeg-44K, 44,320 samples / 32 = 1,385 steps). Checkpoints (`save_state`) hold the trainable weights only.
"""

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from stable_sam_hf.data import SkipCounter, TrainStreamArguments, build_train_dataset
from stable_sam_hf.methods import (
    METHODS,
    PLUGIN_ONLY_METHODS,
    PromptCollator,
    build_segmenter,
    optimizer_parameter_groups,
    segmentation_loss,
)
from stable_sam_hf.prompts import TRAINING_PROMPT_TYPES, parse_prompt_type


logger = get_logger(__name__)

HQSEG44K_TRAIN_SAMPLES = 44_320
STATE_FILE = "training_state.json"


@dataclass
class ModelArguments:
    base_model: str = field(
        default="facebook/sam-vit-base",
        metadata={"help": "SAM checkpoint to train on: a Hub id (facebook/sam-vit-{base,large,huge}) or a folder."},
    )
    method: str = field(
        default="stable",
        metadata={
            "help": "What trains: stable (DSP + DRP plugins), lora (rank 4 on the encoder FFNs + mask heads), "
            "adapter (AdaptFormer bottleneck 64 + mask heads), decoder (the whole mask decoder), stable_decoder "
            "(the plugins and the whole mask decoder: the paper's 'Stable-SAM (finetuning decoder)'), stable_spatial "
            "(the plugins with DSP replaced by spatial attention: 'Stable-SAM (spatial attention)'), heads (the mask "
            "heads alone), hq (HQ-SAM's parts).",
            "choices": list(METHODS),
        },
    )


@dataclass
class RecipeArguments:
    output_dir: str = field(metadata={"help": "Where checkpoints, logs and the final trained weights go."})
    seed: int = field(default=0, metadata={"help": "Seed of model initialisation, data order and prompts."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay."})
    projection_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "Learning-rate multiplier of the DSP projection (`--method stable`; 1.0 is the paper's single "
            "rate). The projection starts as the identity and Adam moves each of its 65,536 entries by about the "
            "learning rate per step; 0.1 keeps it nearer the identity, and the router then separates box from point "
            'prompts more sharply (README, "The offline demo").'
        },
    )
    decoder_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Adam learning rate of SAM's own trainable mask-decoder parameters: the whole decoder for "
            "decoder and stable_decoder, the mask heads for heads, lora and adapter (default: --learning_rate). "
            "With stable_decoder it lets the plugins train at their rate and the decoder at a fine-tuning one."
        },
    )
    total_batch_size: int = field(
        default=32,
        metadata={"help": "Objects per optimizer step over all processes; reached by gradient accumulation."},
    )
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Objects per process and forward."})
    max_train_steps: int = field(
        default=math.ceil(HQSEG44K_TRAIN_SAMPLES / 32),
        metadata={"help": "Optimizer steps (default: one epoch of HQSeg-44K at a total batch of 32)."},
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    num_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps of the scheduler."})
    prompt_types: list[str] = field(
        default_factory=lambda: [str(prompt_type.value) for prompt_type in TRAINING_PROMPT_TYPES],
        metadata={"help": "Prompt mix, one drawn per object: box, noisy_box, points_<k>, coarse_mask."},
    )
    noise_scale: float = field(default=0.4, metadata={"help": "Noisy-box noise scale."})
    checkpointing_steps: int = field(default=500, metadata={"help": "save_state every N optimizer steps (0: never)."})
    checkpoints_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted)."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder written by this script."}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker ('none' for none)."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss and lr every N optimizer steps."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    ddp_timeout: int = field(
        default=1800,
        metadata={
            "help": "Seconds a process waits in a collective (gradient all-reduce, batch dispatch, barrier) before "
            "the run fails, when several processes train; transformers' `ddp_timeout`."
        },
    )

    def __post_init__(self):
        for name in ("total_batch_size", "per_device_train_batch_size", "max_train_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.checkpointing_steps < 0:
            raise ValueError(f"`checkpointing_steps` must be >= 0, got {self.checkpointing_steps}.")
        if self.ddp_timeout < 1:
            raise ValueError(f"`ddp_timeout` must be a positive number of seconds, got {self.ddp_timeout}.")
        if self.projection_lr_scale <= 0:
            raise ValueError(f"`projection_lr_scale` must be > 0, got {self.projection_lr_scale}.")
        if self.decoder_learning_rate is not None and self.decoder_learning_rate <= 0:
            raise ValueError(f"`decoder_learning_rate` must be > 0, got {self.decoder_learning_rate}.")
        if not self.prompt_types:
            raise ValueError("`prompt_types` must name at least one prompt type.")
        for prompt_type in self.prompt_types:
            parse_prompt_type(prompt_type)


def cpu_thread_advice(device_type: str, num_processes: int, threads: int, cores: int) -> str | None:
    """A warning when one CPU process trains on one thread with more cores free (`accelerate launch` sets
    OMP_NUM_THREADS=1 for a CPU process unless `--num_cpu_threads_per_process` says otherwise), else `None`."""
    if device_type != "cpu" or num_processes != 1 or threads != 1 or cores < 2:
        return None
    return (
        f"torch trains on 1 thread while {cores} cores are free (accelerate launch sets OMP_NUM_THREADS=1 for a CPU "
        f"process): `accelerate launch --num_cpu_threads_per_process {cores} training/train.py ...` is faster."
    )


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, TrainStreamArguments, RecipeArguments), description=__doc__)
    return parser.parse_args_into_dataclasses(args=argv)


def save_trainable_hooks(accelerator: Accelerator):
    """Checkpoints hold the trainable weights only (the frozen SAM is the base checkpoint)."""

    def save_hook(models, weights, output_dir):
        for model in models:
            accelerator.unwrap_model(model).save_trainable(output_dir)
        weights.clear()

    def load_hook(models, input_dir):
        while models:
            accelerator.unwrap_model(models.pop()).load_trainable(input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def find_checkpoint(output_dir: Path, resume_from_checkpoint: str) -> Path:
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"`resume_from_checkpoint` {path} is not a checkpoint of this script.")
        return path
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"`resume_from_checkpoint` is 'latest' but {output_dir} has no checkpoint-* folder.")
    return checkpoints[-1]


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    if limit is None:
        return
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in checkpoints[: max(0, len(checkpoints) - limit)]:
        shutil.rmtree(old)


def main(argv=None):
    model_args, data_args, args = parse_args(argv)
    project_dir = Path(args.output_dir)
    accelerator = Accelerator(
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(project_dir),
        # One process reads the stream and hands every process its slice: the global batch is the same samples
        # whatever the number of processes
        dataloader_config=DataLoaderConfiguration(dispatch_batches=True),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True),
            InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout)),
        ],
    )
    per_step = args.per_device_train_batch_size * accelerator.num_processes
    if args.total_batch_size % per_step:
        raise ValueError(
            f"`total_batch_size` ({args.total_batch_size}) must be a multiple of per_device_train_batch_size x "
            f"processes ({args.per_device_train_batch_size} x {accelerator.num_processes})."
        )
    accelerator.gradient_accumulation_steps = args.total_batch_size // per_step
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    advice = cpu_thread_advice(accelerator.device.type, accelerator.num_processes, torch.get_num_threads(), cores)
    if advice:
        logger.warning(advice)

    segmenter = build_segmenter(model_args.method, model_args.base_model)
    image_size = segmenter.sam.config.vision_config.image_size
    if data_args.output_size != image_size:
        raise ValueError(
            f"`output_size` ({data_args.output_size}) must equal the model's input size ({image_size}) of "
            f"{model_args.base_model}."
        )
    mask_prompt_size = 4 * segmenter.sam.config.prompt_encoder_config.image_embedding_size
    trainable = [param for param in segmenter.parameters() if param.requires_grad]
    num_trainable = sum(param.numel() for param in trainable)

    dataset = build_train_dataset(data_args, seed=args.seed)
    collator = PromptCollator(args.prompt_types, args.seed, args.noise_scale, mask_prompt_size)
    parameter_groups = optimizer_parameter_groups(
        segmenter, args.learning_rate, args.projection_lr_scale, args.decoder_learning_rate
    )
    optimizer = torch.optim.Adam(parameter_groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    save_trainable_hooks(accelerator)

    completed_steps = 0
    skipped = SkipCounter()
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(project_dir, args.resume_from_checkpoint)
        state = json.loads((checkpoint / STATE_FILE).read_text())
        completed_steps = state["completed_steps"]
        skipped.load_state_dict(state["skipped"])
        micro_batches = completed_steps * accelerator.gradient_accumulation_steps * accelerator.num_processes
        dataset.resume_from(micro_batches * args.per_device_train_batch_size, args.per_device_train_batch_size)

    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
    )
    segmenter, optimizer, dataloader, scheduler = accelerator.prepare(segmenter, optimizer, dataloader, scheduler)
    if args.resume_from_checkpoint:
        accelerator.load_state(str(checkpoint))
        logger.info(f"Resumed from {checkpoint} at step {completed_steps}")

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(
            "stable_sam", config={**vars(model_args), **vars(args), "dataset": data_args.dataset}
        )
    logger.info(
        f"method={model_args.method} trainable parameters={num_trainable:,} total batch={args.total_batch_size} "
        f"(per device {args.per_device_train_batch_size} x {accelerator.num_processes} processes x "
        f"{accelerator.gradient_accumulation_steps} accumulation) steps={args.max_train_steps}"
    )

    progress = tqdm(total=args.max_train_steps, initial=completed_steps, disable=not accelerator.is_local_main_process)
    segmenter.train()
    running_loss, running_count = 0.0, 0
    step_loss, step_count, losses = 0.0, 0, []
    for batch in dataloader:
        skipped.update(accelerator.gather(batch.pop("skipped")).sum(0))
        with accelerator.accumulate(segmenter):
            with accelerator.autocast():
                logits = segmenter(batch["images"], batch)
            loss = segmentation_loss(logits, batch["masks"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro_loss = accelerator.gather(loss.detach()).mean().item()
        running_loss, running_count = running_loss + micro_loss, running_count + 1
        step_loss, step_count = step_loss + micro_loss, step_count + 1
        if not accelerator.sync_gradients:
            continue
        completed_steps += 1
        losses.append(step_loss / step_count)
        step_loss, step_count = 0.0, 0
        progress.update(1)
        if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
            logs = {"loss": running_loss / running_count, "lr": scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
            accelerator.log(logs, step=completed_steps)
            logger.info(f"step {completed_steps}: loss {logs['loss']:.4f}, lr {logs['lr']:.2e}")
            running_loss, running_count = 0.0, 0
        if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, project_dir, completed_steps, skipped, args.checkpoints_total_limit)
        if completed_steps >= args.max_train_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    if skipped.total():
        logger.warning(f"Skipped samples and dropped occluders: {skipped.report()}")
    else:
        logger.info("Skipped samples: none")
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(segmenter), project_dir, model_args, completed_steps, skipped, losses)
    accelerator.end_training()
    return completed_steps


def save_checkpoint(
    accelerator: Accelerator, project_dir: Path, step: int, skipped: SkipCounter, limit: int | None
) -> None:
    checkpoint = project_dir / f"checkpoint-{step}"
    accelerator.save_state(str(checkpoint))
    if accelerator.is_main_process:
        (checkpoint / STATE_FILE).write_text(json.dumps({"completed_steps": step, "skipped": skipped.state_dict()}))
        rotate_checkpoints(project_dir, limit)
    accelerator.wait_for_everyone()


def save_final(
    segmenter, project_dir: Path, model_args: ModelArguments, steps: int, skipped: SkipCounter, losses: list[float]
) -> None:
    """Trainable weights of any method, plus a loadable StableSamModel folder for plugins-only methods."""
    segmenter.save_trainable(project_dir)
    if model_args.method in PLUGIN_ONLY_METHODS:
        model = segmenter.sam
        model.config.base_model_name_or_path = model_args.base_model
        model.save_pretrained(project_dir)
    summary = {
        "method": model_args.method,
        "base_model": model_args.base_model,
        "steps": steps,
        "skipped": skipped.as_dict(),
        "losses": losses,
    }
    (project_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(f"Saved the trained `{model_args.method}` weights to {project_dir}")


if __name__ == "__main__":
    main()
