"""The trainable methods that training and evaluation compare, on one frozen SAM.

- `stable`: Stable-SAM's DSP + DRP plugins (81,828 parameters).
- `lora`: LoRA rank 4 (peft) on every ViT encoder FFN linear, plus SAM's mask prediction heads.
- `adapter`: AdaptFormer bottleneck-64 adapters parallel to every ViT encoder FFN, plus the prediction heads.
- `decoder`: the whole mask decoder.
- `stable_decoder`: the plugins and the whole mask decoder, the paper's "Stable-SAM (finetuning decoder)" (appendix
  Table 9: conventional deformable attention, which trains the offset network and the model around it).
- `stable_spatial`: the plugins with DSP replaced by spatial attention, the paper's "Stable-SAM (spatial attention)"
  (appendix Table 9): one learnt weight per pixel instead of offsets (`StableSamConfig(sampling="spatial")`).
- `heads`: SAM's prediction layer alone, the part of the LoRA and adapter baselines outside the image encoder; a
  control that tells what the encoder adaptation adds.
- `hq`: transformers' `SamHQModel` (HQ-SAM), its HQ parts only.

Appendix of the Stable-SAM paper, "LoRA and adapters": the adapters and LoRA sit on the FFN of each ViT layer, and
"SAM's prediction layer" trains with them; here that is the mask decoder's hypernetwork MLPs.
"""

import warnings
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import SamHQConfig, SamHQModel, SamModel

from .image_processing_stable_sam import StableSamImageProcessor
from .modeling_stable_sam import StableSamModel, is_plugin_parameter
from .prompts import parse_prompt_type, sample_prompt


METHODS = ("stable", "lora", "adapter", "decoder", "stable_decoder", "stable_spatial", "heads", "hq")
# The methods whose model is a StableSamModel (DSP or spatial attention, and DRP), and those that train its plugins only
PLUGIN_METHODS = ("stable", "stable_decoder", "stable_spatial")
PLUGIN_ONLY_METHODS = ("stable", "stable_spatial")

# Every ViT encoder FFN linear; a bare "lin1" would also match the mask decoder's MLPs
LORA_TARGET_MODULES = r"vision_encoder\.layers\.\d+\.mlp\.(lin1|lin2)"
LORA_RANK = 4
ADAPTER_BOTTLENECK = 64
ADAPTER_SCALE = 0.1
# The mask prediction heads (the IoU head gets no gradient from a mask loss)
PREDICTION_HEAD_PREFIXES = ("mask_decoder.output_hypernetworks_mlps.",)
HQ_PARAMETER_PREFIXES = (
    "mask_decoder.hq_token.",
    "mask_decoder.hq_mask_mlp.",
    "mask_decoder.compress_vit_",
    "mask_decoder.encoder_",
    "mask_decoder.mask_conv",
    "mask_decoder.mask_norm",
)
TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"
# The lora method's weights are a peft adapter folder: `PeftModel.from_pretrained(SamModel..., folder)` loads it
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def trainable_weights_name(method: str) -> str:
    """The weights file that `PromptedSegmenter.save_trainable` writes for `method`."""
    return PEFT_WEIGHTS_NAME if method == "lora" else TRAINABLE_WEIGHTS_NAME


class ParallelAdapter(nn.Module):
    """AdaptFormer's adapter: `scale * up(GELU(down(x)))`, added to the FFN output (Chen et al., 2022)."""

    def __init__(self, hidden_size: int, *, bottleneck: int = ADAPTER_BOTTLENECK, scale: float = ADAPTER_SCALE):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden_size)
        # Zero up-projection: the adapted model starts as SAM
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(hidden_states)))


def add_parallel_adapters(model: SamModel, bottleneck: int = ADAPTER_BOTTLENECK, scale: float = ADAPTER_SCALE):
    """Adds a `ParallelAdapter` as `vision_encoder.layers.N.adapter` beside each encoder FFN (SAM keys unchanged)."""
    for layer in model.vision_encoder.layers:
        if hasattr(layer, "adapter"):
            raise ValueError("`model` already has parallel adapters.")
        hidden_size = layer.mlp.lin1.in_features
        layer.adapter = ParallelAdapter(hidden_size, bottleneck=bottleneck, scale=scale).to(layer.mlp.lin1.weight)
        layer.mlp.register_forward_hook(lambda module, args, output, adapter=layer.adapter: output + adapter(args[0]))
    return model


# Prompt kinds of a collated batch (`collate_prompts`): boxes (GT or noisy), points, coarse masks
PROMPT_KIND_BOX, PROMPT_KIND_POINTS, PROMPT_KIND_MASK = 0, 1, 2


def pixel_statistics(image_processor: StableSamImageProcessor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image processor's pixel mean and std as `(1, 3, 1, 1)` tensors on the uint8 scale (`image_mean /
    rescale_factor`), so that `(images - mean) / std` normalises uint8 `(batch_size, 3, H, W)` images as the processor
    does; a default `StableSamImageProcessor` (SAM's statistics) when none is given."""
    image_processor = image_processor if image_processor is not None else StableSamImageProcessor()
    scale = 1 / image_processor.rescale_factor
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * scale
    std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1) * scale
    return mean, std


def collate_prompts(
    prompts: list[dict[str, torch.Tensor]], max_points: int, mask_size: int
) -> dict[str, torch.Tensor]:
    """Stacks per-object prompts (`prompts.sample_prompt` dicts) of mixed kinds into fixed-shape tensors.

    Returns:
        `dict` with `prompt_kind` (`(batch_size,)`), `num_points` (`(batch_size,)`), `input_boxes`
        (`(batch_size, 4)`), `input_points` (`(batch_size, max_points, 2)`), `input_labels`
        (`(batch_size, max_points)`, -10 for padding) and `input_masks` (`(batch_size, mask_size, mask_size)`);
        the entries of other kinds are zeros.
    """
    batch_size = len(prompts)
    batch = {
        "prompt_kind": torch.zeros(batch_size, dtype=torch.long),
        "num_points": torch.zeros(batch_size, dtype=torch.long),
        "input_boxes": torch.zeros(batch_size, 4),
        "input_points": torch.zeros(batch_size, max_points, 2),
        "input_labels": torch.full((batch_size, max_points), -10, dtype=torch.long),
        "input_masks": torch.zeros(batch_size, mask_size, mask_size),
    }
    for index, prompt in enumerate(prompts):
        if "input_boxes" in prompt:
            batch["prompt_kind"][index] = PROMPT_KIND_BOX
            batch["input_boxes"][index] = prompt["input_boxes"][0]
        elif "input_points" in prompt:
            count = prompt["input_points"].shape[1]
            if count > max_points:
                raise ValueError(f"A prompt has {count} points, more than `max_points` ({max_points}).")
            batch["prompt_kind"][index] = PROMPT_KIND_POINTS
            batch["num_points"][index] = count
            batch["input_points"][index, :count] = prompt["input_points"][0]
            batch["input_labels"][index, :count] = prompt["input_labels"][0]
        elif "input_masks" in prompt:
            batch["prompt_kind"][index] = PROMPT_KIND_MASK
            batch["input_masks"][index] = prompt["input_masks"][0]
        else:
            raise ValueError(f"Prompt {index} has none of input_boxes, input_points, input_masks: {sorted(prompt)}.")
    return batch


class PromptCollator:
    """Stacks samples and draws one prompt per object, seeded by the object itself (the same on any process)."""

    def __init__(self, prompt_types: list[str], seed: int, noise_scale: float, mask_prompt_size: int):
        self.prompt_types = prompt_types
        self.seed = seed
        self.noise_scale = noise_scale
        self.mask_prompt_size = mask_prompt_size
        self.max_points = max([parse_prompt_type(t)[1] for t in prompt_types] + [1])

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        prompts = []
        for sample in samples:
            key = f"{sample['dataset']}/{sample['id']}/{int(sample['mask'].sum())}".encode()
            generator = torch.Generator().manual_seed(zlib.crc32(key) ^ self.seed)
            prompt_type = self.prompt_types[int(torch.randint(len(self.prompt_types), (), generator=generator))]
            prompts.append(
                sample_prompt(
                    sample["mask"],
                    prompt_type,
                    generator,
                    noise_scale=self.noise_scale,
                    mask_prompt_size=self.mask_prompt_size,
                )
            )
        batch = collate_prompts(prompts, self.max_points, self.mask_prompt_size)
        batch["images"] = torch.stack([sample["image"] for sample in samples])
        batch["masks"] = torch.stack([sample["mask"] for sample in samples])
        batch["skipped"] = torch.stack([sample["skipped"] for sample in samples])
        return batch


def _prompt_groups(prompt_kind: torch.Tensor, num_points: torch.Tensor):
    """Indices of the objects that can share one decoder call: same kind and, for points, same count."""
    keys = prompt_kind * 10_000 + num_points
    for key in keys.unique().tolist():
        yield key // 10_000, key % 10_000, (keys == key).nonzero().squeeze(1)


class PromptedSegmenter(nn.Module):
    """One image per object, one prompt per object: uint8 images + collated prompts -> low-res mask logits.

    The whole computation is one `forward`, so that a distributed wrapper sees every trainable parameter in it.
    """

    def __init__(self, method: str, model: nn.Module, encoder_trainable: bool):
        super().__init__()
        self.method = method
        self.model = model
        self.encoder_trainable = encoder_trainable
        pixel_mean, pixel_std = pixel_statistics()
        self.register_buffer("pixel_mean", pixel_mean, persistent=False)
        self.register_buffer("pixel_std", pixel_std, persistent=False)

    @property
    def sam(self) -> nn.Module:
        """The SAM-like model itself (under the peft wrapper for LoRA)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: param.detach() for name, param in self.model.named_parameters() if param.requires_grad}

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def save_trainable(self, folder: str | Path) -> Path:
        """Writes the trainable weights only (safetensors): a checkpoint that stays small for any method; for
        `lora`, peft's adapter folder (`adapter_config.json` + `adapter_model.safetensors`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.is_peft:
            self.model.save_pretrained(str(folder))
            return folder / PEFT_WEIGHTS_NAME
        path = folder / TRAINABLE_WEIGHTS_NAME
        save_file({k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}, str(path))
        return path

    def load_trainable(self, folder: str | Path) -> None:
        if self.is_peft:
            return self._load_peft_adapter(Path(folder))
        path = Path(folder) / TRAINABLE_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No {TRAINABLE_WEIGHTS_NAME} in {folder}.")
        state = load_file(str(path))
        expected = {name for name, param in self.model.named_parameters() if param.requires_grad}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{path} does not fit the `{self.method}` model: missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
        self.model.load_state_dict(state, strict=False)

    def _load_peft_adapter(self, folder: Path) -> None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        path = folder / PEFT_WEIGHTS_NAME
        if not path.is_file() or not (folder / PEFT_CONFIG_NAME).is_file():
            raise FileNotFoundError(f"No peft adapter ({PEFT_CONFIG_NAME} + {PEFT_WEIGHTS_NAME}) in {folder}.")
        state = load_file(str(path))
        expected = set(get_peft_model_state_dict(self.model))
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{path} does not fit the `{self.method}` model: missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
        set_peft_model_state_dict(self.model, state)

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder outputs for uint8 `images` `(batch_size, 3, size, size)`; no gradient unless the encoder trains."""
        pixel_values = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        with torch.set_grad_enabled(self.encoder_trainable and torch.is_grad_enabled()):
            outputs = self.sam.vision_encoder(pixel_values)
        features = {"image_embeddings": outputs.last_hidden_state}
        if self.method == "hq":
            features["intermediate_embeddings"] = outputs.intermediate_embeddings
        return features

    def forward(self, images: torch.Tensor, prompts: dict[str, torch.Tensor], **model_kwargs) -> torch.Tensor:
        """
        Args:
            images (`torch.Tensor` of shape `(batch_size, 3, size, size)`): uint8 RGB, `size` the model's input size.
            prompts (`dict`): a `collate_prompts` batch, coordinates in the images' pixel frame.
            model_kwargs: passed to the model (e.g. `routing_weight` for Stable-SAM).
        Returns:
            `torch.Tensor` of shape `(batch_size, mask_size, mask_size)`: low-resolution mask logits.
        """
        features = self.image_features(images)
        extra = {"hq_token_only": True} if self.method == "hq" else {}
        logits = None
        for kind, count, index in _prompt_groups(prompts["prompt_kind"], prompts["num_points"]):
            group = {name: value[index] for name, value in features.items() if name != "intermediate_embeddings"}
            if "intermediate_embeddings" in features:
                group["intermediate_embeddings"] = [value[index] for value in features["intermediate_embeddings"]]
            if kind == PROMPT_KIND_BOX:
                group["input_boxes"] = prompts["input_boxes"][index, None]  # B x 1 x 4
            elif kind == PROMPT_KIND_POINTS:
                group["input_points"] = prompts["input_points"][index, None, :count]  # B x 1 x k x 2
                group["input_labels"] = prompts["input_labels"][index, None, :count]
            else:
                group["input_masks"] = prompts["input_masks"][index, None]  # B x 1 x S x S
            group_kwargs = {**model_kwargs}
            if "routing_weight" in group_kwargs and torch.is_tensor(group_kwargs["routing_weight"]):
                group_kwargs["routing_weight"] = group_kwargs["routing_weight"][index, None]
            outputs = self.model(**group, **group_kwargs, multimask_output=False, **extra)
            group_logits = outputs.pred_masks[:, 0, 0]  # B x S x S
            if logits is None:
                logits = group_logits.new_zeros(images.shape[0], *group_logits.shape[-2:])
            logits = logits.index_copy(0, index, group_logits)
        return logits


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BCE + dice of logits `(batch_size, h, w)` upsampled (when smaller) to bool `masks` `(batch_size, H, W)`: the
    mean over the batch, or with `reduction="none"` one loss per mask `(batch_size,)`."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}.")
    logits = logits.float()
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    target = masks.float().flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits.flatten(1), target, reduction="none").mean(1)
    probs = logits.sigmoid().flatten(1)
    dice = 1 - (2 * (probs * target).sum(-1) + 1) / (probs.sum(-1) + target.sum(-1) + 1)
    losses = bce + dice
    return losses.mean() if reduction == "mean" else losses


# The DSP projection starts as the identity; see `optimizer_parameter_groups`
DSP_PROJECTION_PATTERN = ".dsp.proj."


def _is_sam_decoder_parameter(name: str) -> bool:
    """A trainable parameter of SAM's own mask decoder (not a plugin): `model.mask_decoder.…`, under peft too."""
    return ".mask_decoder." in f".{name}" and not is_plugin_parameter(name)


def optimizer_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    projection_lr_scale: float = 1.0,
    decoder_learning_rate: float | None = None,
) -> list[dict]:
    """The trainable parameters of `model` as optimizer groups; the DSP projection and SAM's own mask-decoder
    parameters can get their own learning rates.

    Adam moves every parameter by about the learning rate per step whatever its gradient's size, so at Stable-SAM's
    1e-3 the 256 x 256 identity projection of the DSP drifts far from the identity within a few hundred steps. A
    smaller rate for it alone is a recipe option (`--projection_lr_scale` of `training/train.py`); see
    docs/toy-demo.md for what it changes on the toy base.

    Args:
        model (`nn.Module`): the model (or `PromptedSegmenter`) whose `requires_grad` parameters train.
        learning_rate (`float`): the learning rate of every other parameter.
        projection_lr_scale (`float`, *optional*, defaults to 1.0): multiplier of the DSP projection's rate.
        decoder_learning_rate (`float`, *optional*): the rate of SAM's own trainable mask-decoder parameters (the
            whole decoder for `decoder` and `stable_decoder`, the prediction heads for `heads`, `lora` and
            `adapter`); `None` gives them `learning_rate`.

    Returns:
        `list[dict]`: up to three non-empty groups (other, DSP projection, SAM's decoder), each with its `lr`.
    """
    if projection_lr_scale <= 0:
        raise ValueError(f"`projection_lr_scale` must be > 0, got {projection_lr_scale}.")
    if decoder_learning_rate is not None and decoder_learning_rate <= 0:
        raise ValueError(f"`decoder_learning_rate` must be > 0, got {decoder_learning_rate}.")
    projection, decoder, other = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if DSP_PROJECTION_PATTERN in f".{name}":
            projection.append(parameter)
        elif decoder_learning_rate is not None and _is_sam_decoder_parameter(name):
            decoder.append(parameter)
        else:
            other.append(parameter)
    groups = [
        {"params": other, "lr": learning_rate},
        {"params": projection, "lr": learning_rate * projection_lr_scale},
        {"params": decoder, "lr": decoder_learning_rate},
    ]
    return [group for group in groups if group["params"]]


def _freeze_all_but(model: nn.Module, keep) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))


def build_segmenter(method: str, base_model_name_or_path: str | Path, **from_pretrained_kwargs) -> PromptedSegmenter:
    """Loads the base SAM checkpoint for `method` and leaves exactly that method's parameters trainable."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    base = str(base_model_name_or_path)
    if method in PLUGIN_METHODS:
        if method == "stable_spatial":
            from_pretrained_kwargs = {**from_pretrained_kwargs, "sampling": "spatial"}
        model = StableSamModel.from_pretrained(base, **from_pretrained_kwargs)
        if method in PLUGIN_ONLY_METHODS:
            _freeze_all_but(model, is_plugin_parameter)
        else:
            _freeze_all_but(model, lambda name: name.startswith("mask_decoder."))
        return PromptedSegmenter(method, model, encoder_trainable=False)
    if method == "hq":
        # HQ-SAM fuses ViT features of the encoder's own width
        config = SamHQConfig.from_pretrained(base)
        config.mask_decoder_config.vit_dim = config.vision_config.hidden_size
        model = SamHQModel.from_pretrained(base, config=config, **from_pretrained_kwargs)
        _freeze_all_but(model, lambda name: name.startswith(HQ_PARAMETER_PREFIXES))
        return PromptedSegmenter(method, model, encoder_trainable=False)
    model = SamModel.from_pretrained(base, **from_pretrained_kwargs)
    if method == "decoder":
        _freeze_all_but(model, lambda name: name.startswith("mask_decoder."))
        return PromptedSegmenter(method, model, encoder_trainable=False)
    if method == "heads":
        _freeze_all_but(model, lambda name: name.startswith(PREDICTION_HEAD_PREFIXES))
        return PromptedSegmenter(method, model, encoder_trainable=False)
    if method == "adapter":
        add_parallel_adapters(model)
        _freeze_all_but(model, lambda name: ".adapter." in name or name.startswith(PREDICTION_HEAD_PREFIXES))
        return PromptedSegmenter(method, model, encoder_trainable=True)
    from peft import LoraConfig, get_peft_model

    # peft trains the heads as `modules_to_save`, one per mask token (SAM indexes the ModuleList, so not the list)
    heads = [f"{PREDICTION_HEAD_PREFIXES[0]}{i}" for i in range(len(model.mask_decoder.output_hypernetworks_mlps))]
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGET_MODULES, modules_to_save=heads)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: its warning is not the user's to fix
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    return PromptedSegmenter(method, peft_model, encoder_trainable=True)


__all__ = [
    "ADAPTER_BOTTLENECK",
    "LORA_RANK",
    "LORA_TARGET_MODULES",
    "METHODS",
    "PLUGIN_METHODS",
    "PLUGIN_ONLY_METHODS",
    "ParallelAdapter",
    "PromptCollator",
    "PromptedSegmenter",
    "add_parallel_adapters",
    "build_segmenter",
    "collate_prompts",
    "pixel_statistics",
    "segmentation_loss",
    "trainable_weights_name",
]
