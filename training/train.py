"""Train Stable-SAM's plugins (or a baseline) on a frozen SAM over a streamed segmentation dataset.

The recipe of the Stable-SAM paper's appendix: HQSeg-44K with large-scale jitter and occlusion synthesis, a prompt
drawn per object from {GT box, 1/3/5/10 points, noisy box, coarse mask}, BCE + dice loss, Adam at lr 1e-3 with no
weight decay, a total batch of 32, one epoch. Runs on a CPU, one GPU or many through accelerate:

    accelerate launch training/train.py --dataset data/hqseg44k --base_model facebook/sam-vit-base --output_dir out
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 training/train.py ...  # two CPU processes

Streaming has no length, so training runs for `--max_train_steps` optimizer steps (default: one epoch of
HQSeg-44K, 44,320 samples / 32 = 1,385 steps). Checkpoints (`save_state`) hold the trainable weights only, are
written to `checkpoint-N.incomplete` and renamed `checkpoint-N` when complete; `--resume_from_checkpoint latest`
continues from the newest complete one. A folder that already holds a run is refused unless the run resumes or
`--overwrite_output_dir` is given (which removes only what a run of this script wrote). See docs/training.md.
"""

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.logging import get_logger
from accelerate.utils import OPTIMIZER_NAME, RNG_STATE_NAME, SCHEDULER_NAME, set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from stable_sam_hf.data import SkipCounter, TrainStreamArguments, build_train_dataset
from stable_sam_hf.methods import (
    METHODS,
    PEFT_WEIGHTS_NAME,
    PLUGIN_ONLY_METHODS,
    TRAINABLE_WEIGHTS_NAME,
    PromptCollator,
    build_segmenter,
    optimizer_parameter_groups,
    segmentation_loss,
)
from stable_sam_hf.prompts import TRAINING_PROMPT_TYPES, parse_prompt_type


logger = get_logger(__name__)

HQSEG44K_TRAIN_SAMPLES = 44_320
STATE_FILE = "training_state.json"
SUMMARY_FILE = "training_summary.json"
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
# A checkpoint is written under this suffix and renamed when complete
INCOMPLETE_SUFFIX = ".incomplete"
# What accelerate's save_state and the save hook write into every checkpoint, besides the trainable weights
CHECKPOINT_FILES = (STATE_FILE, f"{OPTIMIZER_NAME}.bin", f"{SCHEDULER_NAME}.bin", f"{RNG_STATE_NAME}_0.pkl")


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
        default=None,
        metadata={
            "help": "'latest' (the newest complete checkpoint-N in output_dir; incomplete ones are skipped with a "
            "warning) or a checkpoint folder written by this script."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an output_dir that holds a run of this script: its checkpoints and the files "
            "its final save wrote are removed first (nothing else). Without it such a folder must be resumed."
        },
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
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise ValueError("`overwrite_output_dir` and `resume_from_checkpoint` exclude each other; pass one.")


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


class TrainingProgress:
    """What a checkpoint holds besides weights, optimizer, scheduler and RNG states: the optimizer steps done, the
    loss of each step and the samples skipped so far, so that a resumed run's summary covers the whole run."""

    def __init__(self):
        self.completed_steps = 0
        self.losses: list[float] = []
        # The step whose loss is losses[0]: above 1 after resuming a checkpoint that recorded no losses
        self.losses_first_step = 1
        self.skipped = SkipCounter()

    def state_dict(self) -> dict:
        return {
            "completed_steps": self.completed_steps,
            "losses": self.losses,
            "losses_first_step": self.losses_first_step,
            "skipped": self.skipped.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.completed_steps = int(state["completed_steps"])
        self.skipped.load_state_dict(state["skipped"])
        if "losses" not in state:
            # Written by train.py before step losses were checkpointed (commit de7b16c): resumed, history partial
            logger.warning(
                f"This checkpoint's {STATE_FILE} records no step losses (written by a train.py older than the one "
                f"that checkpoints them): resuming at step {self.completed_steps}; the summary's `losses` start at "
                f"step {self.completed_steps + 1} and `losses_partial` is true."
            )
            self.losses, self.losses_first_step = [], self.completed_steps + 1
            return
        self.losses = [float(loss) for loss in state["losses"]]
        self.losses_first_step = int(state.get("losses_first_step", 1))
        if len(self.losses) != self.completed_steps - self.losses_first_step + 1:
            raise ValueError(
                f"A checkpoint's {STATE_FILE} holds {len(self.losses)} step losses for steps "
                f"{self.losses_first_step}-{self.completed_steps}."
            )


def register_checkpoint_hooks(accelerator: Accelerator, progress: TrainingProgress) -> None:
    """Checkpoints hold the trainable weights only (the frozen SAM is the base checkpoint) and `progress`."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_trainable(output_dir)
            # JSON through the hook rather than register_for_checkpointing: accelerate unpickles custom state unsafely
            (Path(output_dir) / STATE_FILE).write_text(json.dumps(progress.state_dict()))
        weights.clear()

    def load_hook(models, input_dir):
        while models:
            accelerator.unwrap_model(models.pop()).load_trainable(input_dir)
        state_file = Path(input_dir) / STATE_FILE
        try:
            progress.load_state_dict(json.loads(state_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{state_file} is not a training state of this script: {error}") from error

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def missing_checkpoint_files(checkpoint: Path) -> list[str]:
    """The files a complete checkpoint of this script holds that `checkpoint` lacks."""
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    weights = (TRAINABLE_WEIGHTS_NAME, PEFT_WEIGHTS_NAME)
    if not any((checkpoint / name).is_file() for name in weights):
        missing.append(" or ".join(weights))
    return missing


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest step first (incomplete ones included)."""
    folders = [path for path in output_dir.glob("checkpoint-*") if path.is_dir()]
    folders = [path for path in folders if CHECKPOINT_PATTERN.fullmatch(path.name)]
    return sorted(folders, key=lambda path: int(path.name.split("-")[1]))


def find_checkpoint(output_dir: Path, resume_from_checkpoint: str) -> Path:
    """The checkpoint to resume from: a named folder (which must be complete), or for 'latest' the newest complete
    `checkpoint-N` of `output_dir`; incomplete ones (a save that was killed) are skipped with a warning."""
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"`resume_from_checkpoint` {path} is not a folder.")
        missing = missing_checkpoint_files(path)
        if missing:
            raise FileNotFoundError(
                f"`resume_from_checkpoint` {path} is not a complete checkpoint of this script: it lacks {missing}."
            )
        return path
    for partial in sorted(output_dir.glob(f"checkpoint-*{INCOMPLETE_SUFFIX}")):
        logger.warning(f"Skipping {partial}: a checkpoint whose save did not finish.")
    for checkpoint in reversed(list_checkpoints(output_dir)):
        missing = missing_checkpoint_files(checkpoint)
        if not missing:
            return checkpoint
        logger.warning(f"Skipping the incomplete checkpoint {checkpoint}: it lacks {missing}.")
    raise FileNotFoundError(
        f"`resume_from_checkpoint` is 'latest' but {output_dir} has no complete checkpoint-* folder."
    )


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    if limit is None:
        return
    # Complete checkpoints only: an incomplete one never stands in for a newer complete one
    checkpoints = [path for path in list_checkpoints(output_dir) if not missing_checkpoint_files(path)]
    for old in checkpoints[: max(0, len(checkpoints) - limit)]:
        shutil.rmtree(old)


def check_output_dir(output_dir: Path) -> None:
    """Raises before any training when `output_dir` is not a folder this process can create and write to."""
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"`output_dir` {output_dir} exists and is not a folder.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"`output_dir` {output_dir} is not a folder this run can write to: {error}") from error


def previous_run(output_dir: Path) -> list[Path]:
    """What an earlier run of this script left in `output_dir`: checkpoints (complete or not) and its summary."""
    partial = [path for path in output_dir.glob(f"checkpoint-*{INCOMPLETE_SUFFIX}") if path.is_dir()]
    summary = [output_dir / SUMMARY_FILE] if (output_dir / SUMMARY_FILE).is_file() else []
    return [*list_checkpoints(output_dir), *partial, *summary]


def remove_previous_run(output_dir: Path) -> None:
    """Removes the checkpoints of an earlier run and the files its final save wrote (listed in its summary)."""
    written = []
    if (output_dir / SUMMARY_FILE).is_file():
        try:
            written = json.loads((output_dir / SUMMARY_FILE).read_text()).get("files", [])
        except ValueError as error:
            raise ValueError(
                f"{output_dir / SUMMARY_FILE} is not a training summary of this script: {error}"
            ) from error
    for path in previous_run(output_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in written:
        path = output_dir / name
        if Path(name).name == name and path.is_file():
            path.unlink()
    logger.info(
        f"--overwrite_output_dir: removed the earlier run's checkpoints and {len(written)} files of {output_dir}"
    )


def refuse_base_model_folder(output_dir: Path, base_model: str) -> None:
    """Raises when `output_dir` is the local `base_model` folder: the final save would replace its config.json."""
    base = Path(base_model)
    if output_dir.exists() and base.exists() and os.path.samefile(output_dir, base):
        raise ValueError(
            f"`--output_dir` {output_dir} is the `--base_model` folder {base_model}: the run's final save would "
            "replace that SAM checkpoint's files. Pass another --output_dir."
        )


def previous_run_files(output_dir: Path) -> list[str]:
    """The files the final save of an earlier run wrote into `output_dir`, as its summary lists them."""
    if not (output_dir / SUMMARY_FILE).is_file():
        return []
    try:
        return list(json.loads((output_dir / SUMMARY_FILE).read_text()).get("files", []))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{output_dir / SUMMARY_FILE} is not a training summary of this script: {error}") from error


def write_final(segmenter, folder: Path, model_args: ModelArguments) -> list[str]:
    """Writes what the final save holds into `folder` and returns the file names."""
    segmenter.save_trainable(folder)
    if model_args.method in PLUGIN_ONLY_METHODS:
        model = segmenter.sam
        model.config.base_model_name_or_path = model_args.base_model
        model.save_pretrained(folder)
    files = sorted(path.name for path in folder.iterdir())
    if any((folder / name).is_dir() for name in files):
        raise RuntimeError(f"The final save wrote folders into {folder}: {files}.")
    return files


def refuse_foreign_files(output_dir: Path, files: list[str], own: list[str]) -> None:
    """Raises when a file the final save writes already exists in `output_dir` and no earlier run wrote it."""
    foreign = [name for name in files if (output_dir / name).exists() and name not in own]
    if foreign:
        raise FileExistsError(
            f"`output_dir` {output_dir} holds {foreign}, which the final save writes and no run of this script "
            "wrote there; the run would replace them. Move them or pass another --output_dir."
        )


def refuse_previous_run(output_dir: Path, args: "RecipeArguments") -> bool:
    """Whether `output_dir` holds an earlier run that `--overwrite_output_dir` asked to remove; raises when it holds
    one and the arguments neither resume nor overwrite it."""
    found = previous_run(output_dir)
    if not found or args.resume_from_checkpoint:
        return False
    if not args.overwrite_output_dir:
        names = ", ".join(path.name for path in found[:5])
        raise FileExistsError(
            f"`output_dir` {output_dir} already holds a training run ({names}). Pass --resume_from_checkpoint latest "
            "to continue it, or --overwrite_output_dir to start a new run there."
        )
    return True


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

    # Before any model or data is loaded: a folder that cannot hold the results, or holds another run, stops here
    refuse_base_model_folder(project_dir, model_args.base_model)
    check_output_dir(project_dir)
    overwrite = refuse_previous_run(project_dir, args)
    # Files of the earlier run being resumed, which its final save may replace
    own_files = previous_run_files(project_dir) if args.resume_from_checkpoint else []
    checkpoint = find_checkpoint(project_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    accelerator.wait_for_everyone()
    if overwrite and accelerator.is_main_process:
        remove_previous_run(project_dir)
    accelerator.wait_for_everyone()

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
    # A trial final save names the files the real one writes: the user's files of those names stop the run now
    with tempfile.TemporaryDirectory(dir=project_dir, prefix=".final-names-") as trial:
        refuse_foreign_files(project_dir, write_final(segmenter, Path(trial), model_args), own_files)

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
    progress_state = TrainingProgress()
    register_checkpoint_hooks(accelerator, progress_state)

    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
    )
    segmenter, optimizer, dataloader, scheduler = accelerator.prepare(segmenter, optimizer, dataloader, scheduler)
    if checkpoint is not None:
        # The hooks restore the trainable weights and `progress_state`; the stream then skips what was consumed
        accelerator.load_state(str(checkpoint))
        micro_batches = progress_state.completed_steps * accelerator.gradient_accumulation_steps
        micro_batches *= accelerator.num_processes
        dataset.resume_from(micro_batches * args.per_device_train_batch_size, args.per_device_train_batch_size)
        logger.info(f"Resumed from {checkpoint} at step {progress_state.completed_steps}")
    completed_steps, skipped, losses = progress_state.completed_steps, progress_state.skipped, progress_state.losses

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
    step_loss, step_count = 0.0, 0
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
        progress_state.completed_steps = completed_steps
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
            save_checkpoint(accelerator, project_dir, completed_steps, args.checkpoints_total_limit)
        if completed_steps >= args.max_train_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    if skipped.total():
        logger.warning(f"Skipped samples and dropped occluders: {skipped.report()}")
    else:
        logger.info("Skipped samples: none")
    if accelerator.is_main_process:
        save_final(
            accelerator.unwrap_model(segmenter),
            project_dir,
            model_args,
            completed_steps,
            skipped,
            losses,
            losses_first_step=progress_state.losses_first_step,
            own_files=own_files,
        )
    accelerator.end_training()
    return completed_steps


def save_checkpoint(accelerator: Accelerator, project_dir: Path, step: int, limit: int | None) -> None:
    """`save_state` into `checkpoint-N.incomplete`, renamed `checkpoint-N` once every process has written its part."""
    checkpoint = project_dir / f"checkpoint-{step}"
    partial = project_dir / f"{checkpoint.name}{INCOMPLETE_SUFFIX}"
    if accelerator.is_main_process and partial.exists():
        # A save of this step that was killed earlier
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if checkpoint.exists():
            # This step's checkpoint of the run being resumed from an earlier one: replaced by the new save
            replaced = partial.with_name(f"{checkpoint.name}.replaced")
            checkpoint.rename(replaced)
            partial.rename(checkpoint)
            shutil.rmtree(replaced)
        else:
            partial.rename(checkpoint)
        rotate_checkpoints(project_dir, limit)
    accelerator.wait_for_everyone()


def save_final(
    segmenter,
    project_dir: Path,
    model_args: ModelArguments,
    steps: int,
    skipped: SkipCounter,
    losses: list[float],
    losses_first_step: int = 1,
    own_files: list[str] = (),
) -> None:
    """Trainable weights of any method (a peft adapter for lora), plus a loadable StableSamModel folder for
    plugins-only methods, and last `training_summary.json`, which lists the files written. Files of those names
    that no run wrote (not in `own_files`) are never replaced: the save raises instead."""
    with tempfile.TemporaryDirectory(dir=project_dir, prefix=".final-") as staging:
        staging = Path(staging)
        # Written aside, then moved in file by file: the run's files are known, and a failed save leaves none
        files = write_final(segmenter, staging, model_args)
        refuse_foreign_files(project_dir, files, list(own_files))
        for name in files:
            os.replace(staging / name, project_dir / name)
    summary = {
        "method": model_args.method,
        "base_model": model_args.base_model,
        "steps": steps,
        "skipped": skipped.as_dict(),
        "losses": losses,
        # losses[0] is the loss of this step; partial when a resumed checkpoint recorded no earlier losses
        "losses_first_step": losses_first_step,
        "losses_partial": losses_first_step > 1,
        "files": files,
    }
    partial = project_dir / f"{SUMMARY_FILE}{INCOMPLETE_SUFFIX}"
    partial.write_text(json.dumps(summary, indent=2))
    os.replace(partial, project_dir / SUMMARY_FILE)
    logger.info(f"Saved the trained `{model_args.method}` weights to {project_dir}")


if __name__ == "__main__":
    main()
