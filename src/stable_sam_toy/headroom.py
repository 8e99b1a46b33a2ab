"""How much of the toy base's prompt gap can training on its decoder side recover?

On the shipped toy SAM, this trains, on cached image embeddings of synthetic scenes (no augmentation), the
Stable-SAM plugins (once per `--projection_lr_scales` value) and, as an upper bound for anything that leaves the
image encoder frozen, the whole mask decoder (30 times the plugins' parameters); `--methods ... heads` adds SAM's mask
heads alone (the part of the LoRA and adapter baselines outside the encoder), `--methods ... full` the whole model,
encoder included (trained on pixels, so slower). It reports held-out mIoU per prompt type on both synthetic
domains, by object shape, and under noisy boxes by whether the box cuts its target; each run's paired difference to the
base with a bootstrap interval; Stable-SAM's mean `alpha_1` per prompt type (the paper's Table 7) and how far its DSP
offsets move. `--scene_config` changes the scenes (training and held-out alike) to ask how the gaps depend on the
world; `--object_features` adds a mark of each object to the image features (an oracle the decoder first learns to read
in `--base_decoder_steps` of clean-prompt training) to ask how they depend on the features.

    python toy/toy_headroom.py
    python toy/toy_headroom.py --methods stable decoder full   # and the whole model
    python toy/toy_headroom.py --max_train_steps 1600 --projection_lr_scales 0.1   # the paper's budget
    python toy/toy_headroom.py --projection_lr_scales 0.1 --methods stable --plugin_layers 0 1 --offset_range 4
    python toy/toy_headroom.py --projection_lr_scales 0.1 --scene_config p_similar_colour=0 p_two_tone=0
    python toy/toy_headroom.py --projection_lr_scales 0.1 --scene_config salient_min_radius=0.2 \
        salient_max_radius=0.3 min_objects=1 max_objects=3 min_radius=0.08 max_radius=0.16   # the quickstart's world
    python toy/toy_headroom.py --projection_lr_scales 0.1 --base_decoder_steps 3000 --base_decoder_lr 3e-4 \
        --object_features 1      # features that mark each object; without --object_features: the control

`tests/test_plugin_training.py` runs the same loop on a reduced budget; what it found is in docs/toy-demo.md.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import HfArgumentParser, SamModel
from transformers.utils import logging as transformers_logging

from stable_sam_hf import StableSamModel
from stable_sam_hf.methods import PREDICTION_HEAD_PREFIXES, optimizer_parameter_groups, segmentation_loss
from stable_sam_hf.metrics import bootstrap_interval, mask_iou
from stable_sam_hf.prompts import box_iou, masks_to_boxes, noisy_boxes, parse_prompt_type, sample_points

from .losses import instance_loss, segment_separation
from .synthetic import SceneConfig, generate_scenes
from .train_base import to_pixel_values
from .worlds import TOY_BASE


METHODS = ("stable", "heads", "decoder", "full", "base")
METHOD_LEARNING_RATES = {"stable": 1e-3, "heads": 1e-3, "decoder": 1e-4, "full": 1e-4}  # as the quickstart
ALPHA_PROMPT_TYPES = ("box", "noisy_box", "points_1", "points_3", "points_10")
# Clean prompts, as the base was trained (`train_toy_base.py`: GT boxes about half the time, else 3-10 points)
BASE_PROMPT_TYPES = ("box", "points_3", "box", "points_5", "box", "points_10")

logger = logging.getLogger("toy_headroom")


@dataclass
class ToyHeadroomArguments:
    output_dir: str = field(default="outputs/toy_headroom", metadata={"help": "Where results.json and .md go."})
    base_model: str = field(default=str(TOY_BASE), metadata={"help": "Frozen SAM (a folder or Hub id)."})
    methods: list[str] = field(
        default_factory=lambda: ["stable", "decoder"],
        metadata={
            "help": "stable (plugins), heads (SAM's mask heads, the LoRA and adapter baselines' part outside the "
            "encoder), decoder (whole decoder), full (whole model, encoder included); `base` alone evaluates the "
            "frozen base only (and probes its embeddings)."
        },
    )
    projection_lr_scales: list[float] = field(
        default_factory=lambda: [1.0, 0.1],
        metadata={"help": "One Stable-SAM run per value: learning-rate multiplier of the DSP projection."},
    )
    plugin_layers: list[int] = field(
        default_factory=lambda: [1],
        metadata={"help": "Two-way layers that get the plugins (the paper: [1]; [0, 1] is the both-layers ablation)."},
    )
    offset_range: float = field(default=2.0, metadata={"help": "Largest DSP offset, in image-embedding pixels."})
    offset_init_std: float = field(
        default=0.0,
        metadata={
            "help": "Start the last DSP offset layer at random weights of this std instead of zero (seeded by `seed`), "
            "so that offsets and hence alpha's gradient are nonzero from the first step. alpha_1 = 0 is still SAM."
        },
    )
    num_train_scenes: int = field(default=1000, metadata={"help": "Training scenes (domain `train`, seed 0)."})
    num_eval_scenes: int = field(default=300, metadata={"help": "Held-out scenes per domain (seed 1)."})
    max_train_steps: int = field(default=400, metadata={"help": "Optimizer steps per run."})
    images_per_step: int = field(default=8, metadata={"help": "Scenes per step."})
    objects_per_image: int = field(default=4, metadata={"help": "Objects (prompts) per scene and step."})
    prompt_types: list[str] = field(
        default_factory=lambda: ["box", "noisy_box", "points_1", "points_3", "points_5", "points_10"],
        metadata={"help": "Training prompt mix, one type per step in turn."},
    )
    eval_prompt_types: list[str] = field(
        default_factory=lambda: ["box", "noisy_box", "points_1", "points_3"],
        metadata={"help": "Held-out prompt types."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of batches and prompts."})
    base_decoder_steps: int = field(
        default=0,
        metadata={
            "help": "First train the base's mask decoder for this many steps on the cached embeddings with clean "
            "prompts only (GT boxes, 3, 5, 10 points; Adam at `base_decoder_lr`), the way the base was trained; "
            "every run then starts from that base. With `object_features` this adapts the base to the changed "
            "features; alone it is the control."
        },
    )
    base_decoder_lr: float = field(default=1e-4, metadata={"help": "Learning rate of `base_decoder_steps`."})
    object_features: float = field(
        default=0.0,
        metadata={
            "help": "Oracle features: add to every image embedding, over each object's pixels, a random direction of "
            "this length times the embeddings' mean per-pixel norm (a new direction per object and scene, none for "
            "the background), so the features carry the objects exactly. Needs `base_decoder_steps`."
        },
    )
    object_probe_steps: int = field(
        default=300,
        metadata={
            "help": "Steps of a 1x1 probe (32 wide, Adam 1e-3, 8 scenes a step) fitted with the instance loss on the "
            "base's cached training embeddings, to report how well its features tell objects apart (0 skips it)."
        },
    )
    scene_config: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Scene generator knobs for training and held-out scenes, `name=value` (SceneConfig fields), "
            "e.g. `p_similar_colour=0 p_two_tone=0`."
        },
    )

    def __post_init__(self):
        if self.object_probe_steps < 0:
            raise ValueError(f"`object_probe_steps` must be >= 0, got {self.object_probe_steps}.")
        if self.base_decoder_steps < 0 or self.object_features < 0:
            raise ValueError(
                f"`base_decoder_steps` and `object_features` must be >= 0, got {self.base_decoder_steps} and "
                f"{self.object_features}."
            )
        if not self.base_decoder_lr > 0:
            raise ValueError(f"`base_decoder_lr` must be > 0, got {self.base_decoder_lr}.")
        if self.object_features > 0 and "full" in self.methods:
            raise ValueError("`object_features` works on cached embeddings: drop `full` from `methods`.")
        if self.object_features > 0 and self.base_decoder_steps == 0:
            raise ValueError(
                "`object_features` needs `base_decoder_steps` > 0: the frozen base never saw such features."
            )
        for name in ("num_train_scenes", "num_eval_scenes", "max_train_steps", "images_per_step", "objects_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods or ("base" in self.methods and len(self.methods) > 1):
            raise ValueError(f"`methods` must be among {list(METHODS)}, or `base` alone, got {self.methods}.")
        if not self.offset_range > 0:
            raise ValueError(f"`offset_range` must be > 0, got {self.offset_range}.")
        if self.offset_init_std < 0:
            raise ValueError(f"`offset_init_std` must be >= 0, got {self.offset_init_std}.")
        if any(scale <= 0 for scale in self.projection_lr_scales):
            raise ValueError(f"`projection_lr_scales` must be > 0, got {self.projection_lr_scales}.")
        for prompt_type in self.prompt_types + self.eval_prompt_types:
            if parse_prompt_type(prompt_type)[0] not in ("box", "noisy_box", "points"):
                raise ValueError(f"`prompt_types` may hold box, noisy_box and points_<k> only, got {prompt_type!r}.")
        SceneConfig.from_strings(self.scene_config)


def pixel_values(images) -> torch.Tensor:
    """`(N, H, W, 3)` uint8 scenes as SAM's normalised `(N, 3, H, W)` pixel values."""
    return to_pixel_values(images)


def encode_scenes(model: SamModel, images, chunk_size: int = 64) -> torch.Tensor:
    """Image embeddings of `(N, H, W, 3)` uint8 scenes."""
    pixels = pixel_values(images)
    return torch.cat(
        [model.get_image_embeddings(pixels[i : i + chunk_size]) for i in range(0, len(pixels), chunk_size)]
    )


def add_object_features(
    embeddings: torch.Tensor, labels: torch.Tensor, strength: float, generator: torch.Generator
) -> torch.Tensor:
    """Image embeddings `(N, C, h, w)` of scenes `labels` `(N, H, W)` plus, over each object's pixels, a random
    direction of length `strength` times the mean per-pixel norm of `embeddings` (a new one per object and scene;
    weighted by the share of each embedding pixel the object covers; nothing for the background)."""
    num_scenes, channels, height, width = embeddings.shape
    num_ids = int(labels.max()) + 1
    cover = F.one_hot(labels.long(), num_ids).permute(0, 3, 1, 2).float()  # N x K+1 x H x W
    cover = F.adaptive_avg_pool2d(cover, (height, width))[:, 1:]  # object shares per embedding pixel, N x K x h x w
    directions = F.normalize(torch.randn(num_scenes, num_ids - 1, channels, generator=generator), dim=-1)
    length = strength * embeddings.norm(dim=1).mean()
    return embeddings + length * torch.einsum("nkhw,nkc->nchw", cover, directions)


def all_objects(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of label maps `(N, H, W)`: its scene index `(M,)` and bool mask `(M, H, W)`."""
    counts = labels.flatten(1).amax(1).long()
    scene = torch.repeat_interleave(torch.arange(len(labels)), counts)
    object_id = torch.cat([torch.arange(1, int(count) + 1) for count in counts]).to(labels.dtype)
    return scene, labels[scene] == object_id[:, None, None]


def prompt_inputs(masks: torch.Tensor, prompt_type: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Model inputs for bool masks `(n, P, H, W)` under one prompt type (noisy boxes: scale 0.4, IoU >= 0.5)."""
    n, p, height, width = masks.shape
    kind, num_points = parse_prompt_type(prompt_type)
    flat = masks.flatten(0, 1)
    if kind == "points":
        points, labels = sample_points(flat, num_points, generator=generator)
        return {"input_points": points.view(n, p, num_points, 2), "input_labels": labels.view(n, p, num_points)}
    boxes = masks_to_boxes(flat)
    if kind == "noisy_box":
        boxes = noisy_boxes(boxes, (height, width), noise_scale=0.4, min_iou=0.5, generator=generator)
    return {"input_boxes": boxes.view(n, p, 4)}


def train_on_embeddings(
    model: SamModel,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    prompt_types,
    learning_rate: float,
    projection_lr_scale: float = 1.0,
    images_per_step: int = 8,
    objects_per_image: int = 4,
    seed: int = 0,
    pixels: torch.Tensor | None = None,
) -> list[float]:
    """Adam on `model`'s trainable parameters; each step is one prompt type (in turn) on random scenes and objects.

    With `pixels` (`(N, 3, H, W)`, `pixel_values` of the same scenes) the image embeddings are recomputed at every
    step, so a trainable encoder trains too; otherwise the cached `embeddings` are used.

    Returns:
        `list[float]`: the training loss (BCE + dice) of every step.
    """
    optimizer = torch.optim.Adam(optimizer_parameter_groups(model, learning_rate, projection_lr_scale))
    generator = torch.Generator().manual_seed(seed)
    counts = labels.flatten(1).amax(1).long()
    model.train()
    losses = []
    for step in range(steps):
        scenes = torch.randint(len(labels), (images_per_step,), generator=generator)
        object_ids = torch.stack(
            [torch.randint(int(counts[scene]), (objects_per_image,), generator=generator) + 1 for scene in scenes]
        ).to(labels.dtype)
        masks = labels[scenes][:, None] == object_ids[:, :, None, None]  # n x P x H x W
        inputs = prompt_inputs(masks, prompt_types[step % len(prompt_types)], generator)
        if pixels is None:
            image_embeddings = embeddings[scenes]
        else:
            image_embeddings = model.vision_encoder(pixels[scenes]).last_hidden_state
        outputs = model(image_embeddings=image_embeddings, multimask_output=False, **inputs)
        loss = segmentation_loss(outputs.pred_masks.flatten(0, 2), masks.flatten(0, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def held_out_scores(
    model: SamModel,
    embeddings: torch.Tensor,
    masks: torch.Tensor,
    prompt_type: str,
    *,
    seed: int = 1,
    routing_weight: float | None = None,
    groups: dict[str, torch.Tensor] | None = None,
    chunk_size: int = 64,
) -> dict:
    """Loss, mIoU (%), mean `alpha_1` and DSP offset lengths (Stable-SAM only) of objects `masks` `(M, H, W)` with
    embeddings `(M, ...)`.

    Prompts are seeded by `seed` and the prompt type only, so every model sees the same ones. `groups` maps names to
    bool selections `(M,)` of the objects; their mIoU goes to `miou_by_group`.
    """
    inputs = prompt_inputs(masks[:, None], prompt_type, torch.Generator().manual_seed(seed))
    extra = {} if routing_weight is None else {"routing_weight": routing_weight}
    is_stable = isinstance(model, StableSamModel)
    if is_stable:
        extra["output_sampling_offsets"] = True
    loss, ious, alphas, offset_lengths = 0.0, [], [], []
    for start in range(0, len(masks), chunk_size):
        rows = slice(start, start + chunk_size)
        outputs = model(
            image_embeddings=embeddings[rows],
            multimask_output=False,
            **{name: value[rows] for name, value in inputs.items()},
            **extra,
        )
        if is_stable and outputs.sampling_offsets:  # one (B, P, H, W, 2) per plugin layer; none at alpha_1 = 0
            offset_lengths.append(torch.stack([o.norm(dim=-1).flatten() for o in outputs.sampling_offsets]))
        logits, truth = outputs.pred_masks[:, 0, 0], masks[rows]
        loss += segmentation_loss(logits, truth).item() * len(logits)
        predicted = F.interpolate(logits[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0] > 0
        ious.append(mask_iou(predicted, truth))
        if getattr(outputs, "routing_weights", None) is not None:
            alphas.append(outputs.routing_weights[:, 0, 0])
    ious = torch.cat(ious)
    by_box_fit = {}
    if "input_boxes" in inputs:  # boxes that cut the target (under 90 % of its pixels inside) and boxes that hold it
        inside = box_share_inside(inputs["input_boxes"][:, 0], masks)
        by_box_fit = {"cut": 100 * ious[inside < 0.9].mean().item(), "whole": 100 * ious[inside >= 0.9].mean().item()}
        by_box_fit["cut_share"] = 100 * (inside < 0.9).float().mean().item()
    offset_lengths = torch.cat(offset_lengths, dim=1) if offset_lengths else None
    return {
        "loss": loss / len(masks),
        "miou": 100 * ious.mean().item(),
        "object_iou": ious,  # per object, for paired differences between runs (not written to results.json)
        "alpha_1": torch.cat(alphas).mean().item() if alphas else None,
        # Length of the DSP sampling offsets in image-embedding pixels, per plugin layer: mean and 90th percentile
        "offset_mean": offset_lengths.mean(1).tolist() if offset_lengths is not None else None,
        "offset_p90": offset_lengths.quantile(0.9, dim=1).tolist() if offset_lengths is not None else None,
        "miou_by_group": {name: 100 * ious[selected].mean().item() for name, selected in (groups or {}).items()},
        "miou_by_box_fit": by_box_fit,
    }


def box_regions(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pixels of each box (`(M, 4)` xyxy in pixels) whose centres lie inside the rounded box: `(M, H, W)` bool."""
    corners = boxes.round()
    rows = torch.arange(height, dtype=boxes.dtype)
    columns = torch.arange(width, dtype=boxes.dtype)
    in_rows = (rows[None] >= corners[:, 1:2]) & (rows[None] <= corners[:, 3:4])  # M x H
    in_columns = (columns[None] >= corners[:, 0:1]) & (columns[None] <= corners[:, 2:3])  # M x W
    return in_rows[:, :, None] & in_columns[:, None, :]


def box_share_inside(boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each object's pixels inside its box (`(M, 4)` xyxy, see `box_regions`). `masks` `(M, H, W)` bool ->
    `(M,)`."""
    region = box_regions(boxes, *masks.shape[-2:])
    return (masks & region).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)


def boundary_share(masks: torch.Tensor) -> torch.Tensor:
    """Share of each object's pixels on its one-pixel inner boundary (3x3 erosion): about 0.1 for a compact blob of
    radius 20, 1 for a one-pixel wire. `masks` `(M, H, W)` bool -> `(M,)`."""
    eroded = -F.max_pool2d(-masks[:, None].float(), kernel_size=3, stride=1, padding=1)[:, 0]
    return (masks.float() - eroded).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)


# Objects by shape: compact ones have at most a quarter of their pixels on the boundary, thin ones over half
SHAPE_GROUPS = {"compact": (0.0, 0.25), "thin": (0.5, 1.0)}


def shape_groups(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """`SHAPE_GROUPS` selections `(M,)` of objects `masks` `(M, H, W)` by `boundary_share`."""
    share = boundary_share(masks)
    return {name: (share > low) & (share <= high) for name, (low, high) in SHAPE_GROUPS.items()}


def noisy_box_ambiguity(labels: torch.Tensor, seed: int = 1) -> dict[str, float]:
    """How ambiguous the evaluation's noisy boxes are in scenes `labels` `(N, H, W)`, the model aside.

    Returns (in %): `nearer_another_object`, noisy boxes whose box IoU is higher with another object's GT box of the
    scene than with their own object's; `target_inside`, the mean share of the target's pixels inside its noisy box;
    `target_mostly_outside`, noisy boxes that leave over 20 % of the target outside; and `clutter_per_target`, the
    median ratio of other objects' pixels to target pixels inside the noisy box.
    """
    scene, masks = all_objects(labels)
    gt_boxes = masks_to_boxes(masks)
    generator = torch.Generator().manual_seed(seed)
    boxes = noisy_boxes(gt_boxes, tuple(masks.shape[-2:]), noise_scale=0.4, min_iou=0.5, generator=generator)
    regions = box_regions(boxes, *masks.shape[-2:])
    inside = box_share_inside(boxes, masks)
    nearer, clutter = 0, []
    for index in range(len(masks)):
        same = torch.nonzero(scene == scene[index]).flatten()
        ious = box_iou(boxes[index].expand(len(same), 4), gt_boxes[same])
        nearer += int(same[ious.argmax()] != index)
        target_in = (masks[index] & regions[index]).sum().item()
        others_in = (masks[same].any(0) & ~masks[index] & regions[index]).sum().item()
        clutter.append(others_in / max(target_in, 1))
    return {
        "nearer_another_object": 100 * nearer / len(masks),
        "target_inside": 100 * inside.mean().item(),
        "target_mostly_outside": 100 * (inside < 0.8).float().mean().item(),
        "clutter_per_target": torch.tensor(clutter).median().item(),
    }


def object_probe(
    embeddings: torch.Tensor, labels: torch.Tensor, held_out: dict, steps: int, seed: int, dim: int = 32
) -> dict[str, dict[str, float]]:
    """How well image embeddings tell a scene's objects apart, per held-out domain.

    `raw_separation` is `segment_separation` of the embeddings themselves and `probe_separation` that of a 1x1
    projection to `dim` channels fitted for `steps` steps with `instance_loss` on the training `embeddings`
    `(N, C, g, g)` and label maps `labels` `(N, H, W)`; `held_out` maps a domain to its `(embeddings, labels)`.
    Percentages; `probe_loss` is the held-out instance loss through the probe.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Conv2d(embeddings.shape[1], dim, 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        rows = torch.randint(len(embeddings), (8,), generator=generator)
        loss = instance_loss(head(embeddings[rows]), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    results = {}
    with torch.no_grad():
        for domain, (held_embeddings, held_labels) in held_out.items():
            probed = head(held_embeddings)
            results[domain] = {
                "raw_separation": 100 * segment_separation(held_embeddings, held_labels),
                "probe_separation": 100 * segment_separation(probed, held_labels),
                "probe_loss": instance_loss(probed, held_labels).item(),
            }
    return results


def load_trainable(method: str, base_model: str, **plugin_kwargs) -> SamModel:
    """Stable-SAM with only its plugins trainable (`plugin_kwargs` configure them), or SAM with its mask heads, its mask
    decoder or everything trainable (float32)."""
    if method == "stable":
        model = StableSamModel.from_pretrained(base_model, dtype=torch.float32, **plugin_kwargs)
        model.freeze_base_model()
    else:
        model = SamModel.from_pretrained(base_model, dtype=torch.float32)
        trains = {
            "heads": lambda name: name.startswith(PREDICTION_HEAD_PREFIXES),
            "decoder": lambda name: name.startswith("mask_decoder."),
            "full": lambda name: True,
        }[method]
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trains(name))
    return model.eval()


@torch.no_grad()
def randomise_offsets_(model: StableSamModel, std: float, generator: torch.Generator) -> None:
    """Draws the weights of every plugin layer's last DSP offset layer from N(0, std^2) (its bias stays zero)."""
    for layer in model.mask_decoder.plugin_layers:
        weight = layer.dsp.offset_proj.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def _table(results: dict, prompt_types: list[str]) -> str:
    lines = []
    for domain in ("train", "shifted"):
        lines += [
            "",
            f"held-out `{domain}` scenes: mIoU % (alpha_1 for Stable-SAM)",
            "",
            "| run | trainable | " + " | ".join(prompt_types) + " |",
            "|---|---:|" + "---:|" * len(prompt_types),
        ]
        for name, run in results["runs"].items():
            cells = []
            for prompt_type in prompt_types:
                score = run["eval"][domain][prompt_type]
                alpha = f" ({score['alpha_1']:.2f})" if score["alpha_1"] is not None else ""
                cells.append(f"{score['miou']:.1f}{alpha}")
            lines.append(f"| {name} | {run['trainable']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _difference_table(results: dict, prompt_types: list[str]) -> str:
    lines = [
        "",
        "held-out `train` scenes: mIoU difference to the base in points, on the same objects and prompts "
        "[95 % bootstrap interval over the objects]",
        "",
        "| run | " + " | ".join(prompt_types) + " |",
        "|---|" + "---:|" * len(prompt_types),
    ]
    for name, run in results["runs"].items():
        if name == "base":
            continue
        cells = []
        for prompt_type in prompt_types:
            score = run["eval"]["train"][prompt_type]
            low, high = score["miou_diff_interval"]
            cells.append(f"{score['miou_diff']:+.1f} [{low:+.1f}, {high:+.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(ToyHeadroomArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # The load report lists the plugins as newly initialised, which is expected here
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    encoder = load_trainable("stable", args.base_model)
    size = encoder.config.vision_config.image_size
    scene_config = SceneConfig.from_strings(args.scene_config)
    images, labels = generate_scenes(args.num_train_scenes, size=size, domain="train", seed=0, config=scene_config)
    embeddings, labels = encode_scenes(encoder, images), torch.from_numpy(labels)
    oracle = torch.Generator().manual_seed(args.seed + 2)
    if args.object_features > 0:
        embeddings = add_object_features(embeddings, labels, args.object_features, oracle)
    held_out, held_out_images, ambiguity, held_out_scenes = {}, {}, {}, {}
    for domain in ("train", "shifted"):
        held_images, held_labels = generate_scenes(
            args.num_eval_scenes, size=size, domain=domain, seed=1, config=scene_config
        )
        held_labels = torch.from_numpy(held_labels)
        scene, masks = all_objects(held_labels)
        held_embeddings = encode_scenes(encoder, held_images)
        if args.object_features > 0:
            held_embeddings = add_object_features(held_embeddings, held_labels, args.object_features, oracle)
        held_out[domain] = (held_embeddings[scene], masks)
        held_out_scenes[domain] = (held_embeddings, held_labels)
        held_out_images[domain] = (held_images, scene)
        ambiguity[domain] = noisy_box_ambiguity(held_labels)
    logger.info("scenes generated and encoded in %.0f s", time.perf_counter() - start)
    separation = {}
    if args.object_probe_steps:
        separation = object_probe(embeddings, labels, held_out_scenes, args.object_probe_steps, args.seed)
        for domain, values in separation.items():
            logger.info(
                "object separation of the base's embeddings [%s]: raw %.1f %%, probe %.1f %% (loss %.3f)",
                domain,
                values["raw_separation"],
                values["probe_separation"],
                values["probe_loss"],
            )
    del held_out_scenes

    base_model = args.base_model
    if args.base_decoder_steps:  # the base's decoder trained on (these) embeddings with clean prompts only
        model = load_trainable("decoder", base_model)
        run_start = time.perf_counter()
        losses = train_on_embeddings(
            model,
            embeddings,
            labels,
            steps=args.base_decoder_steps,
            prompt_types=BASE_PROMPT_TYPES,
            learning_rate=args.base_decoder_lr,
            images_per_step=args.images_per_step,
            objects_per_image=args.objects_per_image,
            seed=args.seed + 1,
        )
        base_model = str(output_dir / "base")
        model.save_pretrained(base_model)
        logger.info(
            "base decoder: %d steps with clean prompts in %.0f s, loss %.3f -> %.3f (means of the first and last 50)",
            args.base_decoder_steps,
            time.perf_counter() - run_start,
            sum(losses[:50]) / len(losses[:50]),
            sum(losses[-50:]) / len(losses[-50:]),
        )

    runs = [("base", "stable", None)]
    if "stable" in args.methods:
        runs += [(f"stable (proj lr x{scale:g})", "stable", scale) for scale in args.projection_lr_scales]
    runs += [(method, method, 1.0) for method in ("heads", "decoder", "full") if method in args.methods]
    results = {"args": asdict(args), "noisy_box_ambiguity": ambiguity, "object_separation": separation, "runs": {}}
    plugin_kwargs = {"plugin_layers": args.plugin_layers, "offset_range": args.offset_range}
    for name, method, scale in runs:
        model = load_trainable(method, base_model, **(plugin_kwargs if method == "stable" else {}))
        if method == "stable" and scale is not None and args.offset_init_std > 0:
            randomise_offsets_(model, args.offset_init_std, torch.Generator().manual_seed(args.seed))
        trainable = 0
        losses = []
        if scale is not None:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            run_start = time.perf_counter()
            losses = train_on_embeddings(
                model,
                embeddings,
                labels,
                steps=args.max_train_steps,
                prompt_types=args.prompt_types,
                learning_rate=METHOD_LEARNING_RATES[method],
                projection_lr_scale=scale,
                images_per_step=args.images_per_step,
                objects_per_image=args.objects_per_image,
                seed=args.seed,
                pixels=pixel_values(images) if method == "full" else None,
            )
            logger.info("%s: %d steps in %.0f s", name, args.max_train_steps, time.perf_counter() - run_start)
        prompt_types = list(
            dict.fromkeys(args.eval_prompt_types + (list(ALPHA_PROMPT_TYPES) if method == "stable" else []))
        )
        routing_weight = 0.0 if name == "base" else None
        if method == "full":  # its encoder changed: embed the held-out scenes again
            held_out = {
                domain: (encode_scenes(model, held_images)[scene], held_out[domain][1])
                for domain, (held_images, scene) in held_out_images.items()
            }
        evaluation = {
            domain: {
                prompt_type: held_out_scores(
                    model,
                    *held_out[domain],
                    prompt_type,
                    routing_weight=routing_weight,
                    groups=shape_groups(held_out[domain][1]),
                )
                for prompt_type in prompt_types
            }
            for domain in held_out
        }
        if name == "base":
            base_ious = {
                (domain, prompt_type): score["object_iou"]
                for domain, scores in evaluation.items()
                for prompt_type, score in scores.items()
            }
            for scores in evaluation.values():
                for score in scores.values():
                    score["alpha_1"] = None
        for domain, scores in evaluation.items():
            for prompt_type, score in scores.items():
                # Paired with the base on the same objects and prompts: the difference and its 95 % bootstrap interval
                difference = score.pop("object_iou") - base_ious[(domain, prompt_type)]
                score["miou_diff"] = 100 * difference.mean().item()
                score["miou_diff_interval"] = [100 * v for v in bootstrap_interval(difference)]
        results["runs"][name] = {"trainable": trainable, "losses": losses, "eval": evaluation}
        summary = ", ".join(f"{t} {evaluation['train'][t]['miou']:.1f}" for t in args.eval_prompt_types)
        logger.info("%s held-out [train]: %s", name, summary)

    table = _table(results, args.eval_prompt_types) + _difference_table(results, args.eval_prompt_types)
    alpha_lines = [
        "",
        f"Stable-SAM mean alpha_1 on held-out `train` scenes, and how far DSP samples (offset_range {args.offset_range:g})",
        "",
    ]
    for name, run in results["runs"].items():
        if name.startswith("stable"):
            alphas = ", ".join(f"{t} {run['eval']['train'][t]['alpha_1']:.3f}" for t in ALPHA_PROMPT_TYPES)
            box = run["eval"]["train"]["box"]
            offsets = "; ".join(
                f"layer {layer}: mean {mean:.2f}, 90th percentile {p90:.2f}"
                for layer, mean, p90 in zip(args.plugin_layers, box["offset_mean"], box["offset_p90"])
            )
            alpha_lines.append(f"- {name}: {alphas}; DSP offset length (embedding pixels) {offsets}")
    ambiguity_lines = ["", "Noisy boxes of the held-out scenes, the model aside", ""]
    if scene_config.salient:
        ambiguity_lines[1] += " (labelled objects only: these HQSeg-like scenes leave their clutter unlabelled)"
    for domain, values in ambiguity.items():
        ambiguity_lines.append(
            f"- `{domain}`: nearer (box IoU) to another object's box {values['nearer_another_object']:.1f} %; target "
            f"pixels inside {values['target_inside']:.1f} % on average, under 80 % for "
            f"{values['target_mostly_outside']:.1f} % of boxes; other objects' pixels inside per target pixel inside: "
            f"median {values['clutter_per_target']:.2f}"
        )
    counts = {name: int(selected.sum()) for name, selected in shape_groups(held_out["train"][1]).items()}
    shape_types = [t for t in ("box", "noisy_box", "points_1") if t in args.eval_prompt_types]
    shape_lines = [
        "",
        "held-out `train` scenes by object shape (boundary share: compact <= 0.25, thin > 0.5; "
        + ", ".join(f"{count} {name}" for name, count in counts.items())
        + f" of {len(held_out['train'][1])} objects): mIoU %",
        "",
        "| run | " + " | ".join(f"{group}: {t}" for group in SHAPE_GROUPS for t in shape_types) + " |",
        "|---|" + "---:|" * (len(SHAPE_GROUPS) * len(shape_types)),
    ]
    for name, run in results["runs"].items():
        cells = [
            f"{run['eval']['train'][t]['miou_by_group'][group]:.1f}" for group in SHAPE_GROUPS for t in shape_types
        ]
        shape_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    fit_lines = []
    if "noisy_box" in args.eval_prompt_types:
        cut_share = results["runs"]["base"]["eval"]["train"]["noisy_box"]["miou_by_box_fit"]["cut_share"]
        fit_lines = [
            "",
            f"held-out `train` scenes under noisy boxes, by what the box does to its target ({cut_share:.0f} % of "
            "boxes cut it, leaving over 10 % of its pixels outside): mIoU %",
            "",
            "| run | box cuts the target | box holds the target |",
            "|---|---:|---:|",
        ]
        for name, run in results["runs"].items():
            fit = run["eval"]["train"]["noisy_box"]["miou_by_box_fit"]
            fit_lines.append(f"| {name} | {fit['cut']:.1f} | {fit['whole']:.1f} |")
    separation_lines = []
    if separation:
        separation_lines = [
            "",
            "The base's image embeddings: how well they tell a scene's objects apart (share of embedding cells nearer "
            "their own segment's mean direction than any other segment's, same scene; through a 1x1 probe fitted "
            f"for {args.object_probe_steps} steps with the instance loss of `train_toy_base.py`)",
            "",
        ]
        for domain, values in separation.items():
            separation_lines.append(
                f"- `{domain}`: raw {values['raw_separation']:.1f} %, probe {values['probe_separation']:.1f} % "
                f"(probe instance loss {values['probe_loss']:.3f})"
            )
    report = table + "\n".join(shape_lines + fit_lines + alpha_lines + ambiguity_lines + separation_lines) + "\n"
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "results.md").write_text(report)
    print(report)
    return results
