"""Trains the toy base's three multimask outputs (SAM's ambiguity-aware masks), leaving its single-mask output as it is.

`train_toy_base.py` trains only the single-mask output (`multimask_output=False`), the one that Stable-SAM's recipe and
the demo's evaluation use. The three multimask outputs, which transformers' `pipeline("mask-generation")` and a
single click (`examples/segment.py`) use, keep their random initialisation there, so on the toy base every
automatic mask is noise and its predicted IoU is about 0.01: the pipeline keeps nothing.

This script trains them the way SAM does, on cached image embeddings of the base's own training scenes: one positive
point per object (the ambiguous prompt), three masks per point, the mask loss of the best of the three only (SAM's
minimum over its outputs), and the IoU head's mean-square error on all three. Only what the single-mask output never
reads is trained:
- the hypernetwork MLPs of mask tokens 1-3 (`mask_decoder.output_hypernetworks_mlps.{1,2,3}`; each starts as a copy of
  mask token 0's, so the three start from the base's single mask applied to their own tokens);
- rows 1-3 of the IoU head's last layer (`mask_decoder.iou_prediction_head.proj_out`); row 0 and every shared layer
  stay fixed.
So the single-mask masks and IoU predictions, and every figure measured on them, are unchanged to the bit; the script
checks that before it writes the model.

    python toy/train_toy_multimask.py --base_model models/toy-sam-128 --output_dir outputs/toy_multimask
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamModel

from stable_sam_hf.prompts import masks_to_boxes, sample_points

from .train_base import SceneBank, save_final_model, to_pixel_values, upsample_logits


logger = logging.getLogger(__name__)

MULTIMASK_CARD_HEADING = "## Multimask outputs"


@dataclass
class MultimaskTrainingArguments:
    base_model: str = field(
        default="models/toy-sam-128", metadata={"help": "The toy base (a saved SamModel folder) whose outputs train."}
    )
    output_dir: str = field(
        default="outputs/toy_multimask", metadata={"help": "Where the model with trained multimask outputs goes."}
    )
    num_train_scenes: int = field(default=4000, metadata={"help": "Training scenes (the base's `train` domain)."})
    num_eval_scenes: int = field(default=64, metadata={"help": "Held-out scenes per domain."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the training scenes (the base's: 0)."})
    eval_seed: int = field(default=1, metadata={"help": "Seed of the held-out scenes (the base's: 1)."})
    max_train_steps: int = field(default=1500, metadata={"help": "Adam steps."})
    batch_size: int = field(default=64, metadata={"help": "Objects (one point each) per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate (no weight decay)."})
    iou_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the IoU-head MSE."})
    init_noise: float = field(
        default=0.01,
        metadata={"help": "Std of the noise, relative to each weight's std, added to the copies of head 0."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the noise, the batches and the points."})
    logging_steps: int = field(default=100, metadata={"help": "Log the mean loss every this many steps."})
    num_threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)."})

    def __post_init__(self):
        for name in ("num_train_scenes", "num_eval_scenes", "max_train_steps", "batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "iou_loss_weight", "init_noise", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.data_seed == self.eval_seed:
            raise ValueError("`eval_seed` must differ from `data_seed`, or the evaluation scenes are training scenes.")
        if not (Path(self.base_model) / "config.json").is_file():
            raise ValueError(f"`base_model` must be a saved SamModel folder, got {self.base_model!r}.")


def multimask_parameters(model: SamModel) -> list[torch.nn.Parameter]:
    """Freezes `model` except the multimask heads and the IoU head's last layer, whose row 0 gets no gradient."""
    model.requires_grad_(False)
    decoder = model.mask_decoder
    parameters = []
    for head in decoder.output_hypernetworks_mlps[1:]:
        head.requires_grad_(True)
        parameters += list(head.parameters())
    proj_out = decoder.iou_prediction_head.proj_out
    keep = torch.ones(proj_out.out_features)
    keep[0] = 0.0  # the single-mask output's IoU prediction
    for parameter in (proj_out.weight, proj_out.bias):
        parameter.requires_grad_(True)
        row_mask = keep.view(-1, *([1] * (parameter.ndim - 1)))
        parameter.register_hook(lambda grad, row_mask=row_mask: grad * row_mask)
        parameters.append(parameter)
    return parameters


def copy_head_zero(model: SamModel, noise: float, generator: torch.Generator) -> None:
    """Starts each multimask head as mask token 0's trained head, plus a little noise to break their symmetry."""
    heads = model.mask_decoder.output_hypernetworks_mlps
    with torch.no_grad():
        for head in heads[1:]:
            for target, source in zip(head.parameters(), heads[0].parameters()):
                scale = noise * source.std() if source.numel() > 1 else 0.0
                target.copy_(source + scale * torch.randn(source.shape, generator=generator))


def object_table(bank: SceneBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene index and object id of every object in `bank`."""
    scene_index = torch.repeat_interleave(torch.arange(len(bank.images)), bank.num_objects)
    object_id = torch.cat([torch.arange(1, count + 1) for count in bank.num_objects.tolist()])
    return scene_index, object_id


@torch.no_grad()
def embed(model: SamModel, bank: SceneBank, chunk_size: int = 64) -> torch.Tensor:
    return torch.cat(
        [
            model.get_image_embeddings(to_pixel_values(bank.images[start : start + chunk_size]))
            for start in range(0, len(bank.images), chunk_size)
        ]
    )


def multimask_loss(
    pred_masks: torch.Tensor, iou_scores: torch.Tensor, masks: torch.Tensor, iou_loss_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ambiguity-aware loss: BCE + dice of the best of the three masks, IoU-head MSE on all three.

    Args:
        pred_masks (`torch.Tensor` of shape `(N, 3, H, W)`): mask logits at the masks' resolution.
        iou_scores (`torch.Tensor` of shape `(N, 3)`): predicted IoUs.
        masks (`torch.Tensor` of shape `(N, H, W)`): bool ground truth.
        iou_loss_weight (`float`): weight of the IoU-head term.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the mean loss and the IoUs of the thresholded masks (`(N, 3)`).
    """
    target = masks[:, None].float().expand_as(pred_masks)
    bce = F.binary_cross_entropy_with_logits(pred_masks, target, reduction="none").flatten(2).mean(2)
    probabilities = pred_masks.sigmoid().flatten(2)
    flat_target = target.flatten(2)
    dice = 1 - (2 * (probabilities * flat_target).sum(2) + 1) / (probabilities.sum(2) + flat_target.sum(2) + 1)
    with torch.no_grad():
        predicted = (pred_masks > 0).flatten(2)
        truth = masks[:, None].flatten(2)
        iou = (predicted & truth).sum(2) / (predicted | truth).sum(2).clamp(min=1)
    mask_loss = (bce + dice).min(dim=1).values
    iou_loss = ((iou_scores - iou) ** 2).mean(dim=1)
    return (mask_loss + iou_loss_weight * iou_loss).mean(), iou


@torch.no_grad()
def evaluate_points(
    model: SamModel, embeddings: torch.Tensor, bank: SceneBank, seed: int, chunk_size: int = 128
) -> dict[str, float]:
    """One seeded positive point per object: mIoU of the single-mask output, of the multimask output the IoU head
    scores best (what a click uses), of the best of the three (an oracle), and the multimask masks' mean absolute
    IoU-prediction error; all 0-100."""
    scene_index, object_id = object_table(bank)
    masks = bank.labels[scene_index] == object_id[:, None, None].to(bank.labels.dtype)
    points, labels = sample_points(masks, 1, generator=torch.Generator().manual_seed(seed))
    size = tuple(masks.shape[-2:])
    single, chosen, oracle, error = [], [], [], []
    for start in range(0, len(masks), chunk_size):
        rows = slice(start, start + chunk_size)
        inputs = {
            "image_embeddings": embeddings[scene_index[rows]],
            "input_points": points[rows, None],
            "input_labels": labels[rows, None],
        }
        truth = masks[rows]
        one = model(**inputs, multimask_output=False)
        three = model(**inputs, multimask_output=True)
        predicted = upsample_logits(one.pred_masks, size)[:, 0] > 0
        single.append((predicted & truth).flatten(1).sum(1) / (predicted | truth).flatten(1).sum(1).clamp(min=1))
        logits = three.pred_masks[:, 0]  # n x 3 x h x w
        _, iou = multimask_loss(
            F.interpolate(logits, size=size, mode="bilinear", align_corners=False),
            three.iou_scores[:, 0],
            truth,
            0.0,
        )
        best = three.iou_scores[:, 0].argmax(1)
        chosen.append(iou.gather(1, best[:, None])[:, 0])
        oracle.append(iou.max(1).values)
        error.append((three.iou_scores[:, 0] - iou).abs().mean(1))
    return {
        name: 100 * torch.cat(values).mean().item()
        for name, values in (
            ("single", single),
            ("best_scored", chosen),
            ("oracle", oracle),
            ("iou_error", error),
        )
    }


@torch.no_grad()
def single_mask_outputs(model: SamModel, embeddings: torch.Tensor, bank: SceneBank, seed: int) -> dict:
    """The single-mask output under boxes and 1 / 3 points on `bank`'s objects (to check that it is unchanged)."""
    scene_index, object_id = object_table(bank)
    masks = bank.labels[scene_index] == object_id[:, None, None].to(bank.labels.dtype)
    generator = torch.Generator().manual_seed(seed)
    outputs = {}
    prompts = {"box": {"input_boxes": masks_to_boxes(masks)[:, None]}}
    for count in (1, 3):
        points, labels = sample_points(masks, count, generator=generator)
        prompts[f"points_{count}"] = {"input_points": points[:, None], "input_labels": labels[:, None]}
    for name, prompt in prompts.items():
        result = model(image_embeddings=embeddings[scene_index], multimask_output=False, **prompt)
        outputs[name] = (result.pred_masks, result.iou_scores)
    return outputs


def card_section(args: MultimaskTrainingArguments, results: dict, seconds: float) -> str:
    rows = [
        f"| {domain} | {values['single']:.1f} | {values['best_scored']:.1f} | {values['oracle']:.1f} | "
        f"{values['iou_error']:.1f} |"
        for domain, values in results.items()
    ]
    return f"""{MULTIMASK_CARD_HEADING}
The three multimask outputs (what `pipeline("mask-generation")` and single clicks use) were trained afterwards by
`toy/train_toy_multimask.py`: {args.max_train_steps} Adam steps (lr {args.learning_rate}) of {args.batch_size}
objects of {args.num_train_scenes} training scenes (seed {args.data_seed}), one positive point each, the BCE + dice of
the best of the three masks and the IoU-head MSE on all three (SAM's ambiguity-aware loss), on cached image
embeddings ({seconds / 60:.1f} minutes on CPU). Only mask tokens 1-3's hypernetwork MLPs (each started as a copy of
token 0's) and rows 1-3 of the IoU head's last layer trained, so the single-mask output is unchanged to the bit.

One positive point per object of {args.num_eval_scenes} held-out scenes per domain (seed {args.eval_seed}); mIoU
(0-100) of the single-mask output, of the multimask output the IoU head scores best, of the best of the three (an
oracle), and the multimask outputs' mean absolute IoU-prediction error (points):

| domain | single mask | best scored of 3 | best of 3 | IoU error |
|---|---|---|---|---|
{chr(10).join(rows)}

The toy's IoU head scores its masks about 0.5 to 0.7, so `pipeline("mask-generation")` with SAM's thresholds
(`pred_iou_thresh=0.88`, `stability_score_thresh=0.95`) keeps nothing; use 0.5 and 0.8 with it.
"""


def main(args: MultimaskTrainingArguments) -> dict:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    start = time.perf_counter()
    model = SamModel.from_pretrained(args.base_model, dtype=torch.float32).eval()
    reference = SamModel.from_pretrained(args.base_model, dtype=torch.float32).eval()
    train_bank = SceneBank.generate(
        args.num_train_scenes, model.config.vision_config.image_size, "train", args.data_seed
    )
    eval_banks = {
        domain: SceneBank.generate(args.num_eval_scenes, model.config.vision_config.image_size, domain, args.eval_seed)
        for domain in ("train", "shifted")
    }
    train_embeddings = embed(model, train_bank)
    eval_embeddings = {domain: embed(model, bank) for domain, bank in eval_banks.items()}
    scene_index, object_id = object_table(train_bank)
    logger.info(
        "embedded %d training scenes (%d objects) and %d held-out scenes per domain in %.0f s",
        len(train_bank.images),
        len(object_id),
        args.num_eval_scenes,
        time.perf_counter() - start,
    )
    before = {
        domain: evaluate_points(model, eval_embeddings[domain], bank, args.eval_seed)
        for domain, bank in eval_banks.items()
    }
    for domain, values in before.items():
        logger.info("before [%s]: %s", domain, ", ".join(f"{k} {v:.1f}" for k, v in values.items()))

    generator = torch.Generator().manual_seed(args.seed)
    copy_head_zero(model, args.init_noise, generator)
    parameters = multimask_parameters(model)
    optimizer = torch.optim.Adam(parameters, lr=args.learning_rate)
    size = tuple(train_bank.labels.shape[-2:])
    train_start, window = time.perf_counter(), []
    for step in range(1, args.max_train_steps + 1):
        rows = torch.randint(len(object_id), (args.batch_size,), generator=generator)
        scenes = scene_index[rows]
        masks = train_bank.labels[scenes] == object_id[rows][:, None, None].to(train_bank.labels.dtype)
        points, labels = sample_points(masks, 1, generator=generator)
        outputs = model(
            image_embeddings=train_embeddings[scenes],
            input_points=points[:, None],
            input_labels=labels[:, None],
            multimask_output=True,
        )
        logits = F.interpolate(outputs.pred_masks[:, 0], size=size, mode="bilinear", align_corners=False)
        loss, _ = multimask_loss(logits, outputs.iou_scores[:, 0], masks, args.iou_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if step % args.logging_steps == 0 or step == args.max_train_steps:
            logger.info("step %d/%d loss %.4f", step, args.max_train_steps, sum(window) / len(window))
            window = []
    seconds = time.perf_counter() - train_start

    model.eval()
    after = {
        domain: evaluate_points(model, eval_embeddings[domain], bank, args.eval_seed)
        for domain, bank in eval_banks.items()
    }
    for domain, values in after.items():
        logger.info("after [%s]: %s", domain, ", ".join(f"{k} {v:.1f}" for k, v in values.items()))
    for domain, bank in eval_banks.items():
        expected = single_mask_outputs(reference, eval_embeddings[domain], bank, args.eval_seed)
        actual = single_mask_outputs(model, eval_embeddings[domain], bank, args.eval_seed)
        for name in expected:
            if not all(torch.equal(a, b) for a, b in zip(expected[name], actual[name])):
                raise RuntimeError(f"the single-mask output changed under {name} prompts on {domain} scenes")
    logger.info("the single-mask output is unchanged on every held-out object")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_final_model(model, output_dir, "float16")
    card_path = Path(args.base_model) / "README.md"
    card = card_path.read_text() if card_path.is_file() else ""
    if MULTIMASK_CARD_HEADING in card:
        card = card[: card.index(MULTIMASK_CARD_HEADING)].rstrip() + "\n"
    card = card.replace(
        "- Only the single-mask output is trained: call it with `multimask_output=False`.",
        "- The single-mask output (`multimask_output=False`) is the one the demo uses; the three multimask outputs\n"
        "  were trained afterwards (below).",
    )
    (output_dir / "README.md").write_text(card.rstrip() + "\n\n" + card_section(args, after, seconds))
    results_path = Path(args.base_model) / "eval_results.json"
    if results_path.is_file() and results_path.resolve() != (output_dir / "eval_results.json").resolve():
        (output_dir / "eval_results.json").write_text(results_path.read_text())
    (output_dir / "multimask_results.json").write_text(
        json.dumps({"args": asdict(args), "before": before, "after": after, "train_seconds": seconds}, indent=2) + "\n"
    )
    logger.info("wrote %s in %.0f s", output_dir, time.perf_counter() - start)
    return {"before": before, "after": after}
