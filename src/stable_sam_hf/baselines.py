"""The trainable methods that training and evaluation compare, on one frozen SAM.

- `stable`: Stable-SAM's DSP + DRP plugins (81,828 parameters).
- `lora`: LoRA rank 4 (peft) on every ViT encoder FFN linear, plus SAM's mask prediction heads.
- `adapter`: AdaptFormer bottleneck-64 adapters parallel to every ViT encoder FFN, plus the prediction heads.
- `decoder`: the whole mask decoder.
- `hq`: transformers' `SamHQModel` (HQ-SAM), its HQ parts only.

Appendix of the Stable-SAM paper, "LoRA and adapters": the adapters and LoRA sit on the FFN of each ViT layer, and
"SAM's prediction layer" trains with them; here that is the mask decoder's hypernetwork MLPs.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import SamHQConfig, SamHQModel, SamModel

from .modeling_stable_sam import StableSamModel, is_plugin_parameter


METHODS = ("stable", "lora", "adapter", "decoder", "hq")

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


@dataclass
class TrainableModel:
    """A model prepared for one method: which parameters train, and how it computes masks."""

    method: str
    model: nn.Module
    encoder_trainable: bool

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().clone() for name, param in self.model.named_parameters() if param.requires_grad}

    def save_trainable(self, folder: str | Path) -> Path:
        """Writes the trainable weights only (safetensors): a checkpoint that stays small for any method."""
        path = Path(folder) / TRAINABLE_WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.trainable_state_dict().items()}, str(path))
        return path

    def load_trainable(self, folder: str | Path) -> None:
        path = Path(folder) / TRAINABLE_WEIGHTS_NAME
        state = load_file(str(path))
        expected = {name for name, param in self.model.named_parameters() if param.requires_grad}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{path} does not fit the `{self.method}` model: missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
        self.model.load_state_dict(state, strict=False)

    def image_features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image-encoder outputs that the mask decoder needs; without gradient unless the encoder trains."""
        with torch.set_grad_enabled(self.encoder_trainable and torch.is_grad_enabled()):
            outputs = self.model.vision_encoder(pixel_values)
        features = {"image_embeddings": outputs.last_hidden_state}
        if self.method == "hq":
            features["intermediate_embeddings"] = outputs.intermediate_embeddings
        return features

    def predict_masks(self, features: dict[str, torch.Tensor], prompts: dict[str, torch.Tensor]):
        """Low-resolution mask logits `(batch_size, point_batch_size, 256, 256)` and the model's outputs."""
        extra = {"hq_token_only": True} if self.method == "hq" else {}
        outputs = self.model(**features, **prompts, multimask_output=False, **extra)
        return outputs.pred_masks[:, :, 0], outputs


def _freeze_all_but(model: nn.Module, keep) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))


def build_trainable_model(
    method: str, base_model_name_or_path: str | Path, **from_pretrained_kwargs
) -> TrainableModel:
    """Loads the base SAM checkpoint for `method` and leaves exactly that method's parameters trainable."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    base = str(base_model_name_or_path)
    if method == "stable":
        model = StableSamModel.from_pretrained(base, **from_pretrained_kwargs)
        _freeze_all_but(model, is_plugin_parameter)
        return TrainableModel(method, model, encoder_trainable=False)
    if method == "hq":
        # HQ-SAM fuses ViT features of the encoder's own width
        config = SamHQConfig.from_pretrained(base)
        config.mask_decoder_config.vit_dim = config.vision_config.hidden_size
        model = SamHQModel.from_pretrained(base, config=config, **from_pretrained_kwargs)
        _freeze_all_but(model, lambda name: name.startswith(HQ_PARAMETER_PREFIXES))
        return TrainableModel(method, model, encoder_trainable=False)
    model = SamModel.from_pretrained(base, **from_pretrained_kwargs)
    if method == "decoder":
        _freeze_all_but(model, lambda name: name.startswith("mask_decoder."))
        return TrainableModel(method, model, encoder_trainable=False)
    if method == "adapter":
        add_parallel_adapters(model)
        _freeze_all_but(model, lambda name: ".adapter." in name or name.startswith(PREDICTION_HEAD_PREFIXES))
        return TrainableModel(method, model, encoder_trainable=True)
    from peft import LoraConfig, get_peft_model

    _freeze_all_but(model, lambda name: False)
    peft_model = get_peft_model(
        model, LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGET_MODULES)
    )
    for name, param in peft_model.named_parameters():
        if name.removeprefix("base_model.model.").startswith(PREDICTION_HEAD_PREFIXES):
            param.requires_grad_(True)
    return TrainableModel(method, peft_model, encoder_trainable=True)


__all__ = [
    "ADAPTER_BOTTLENECK",
    "LORA_RANK",
    "LORA_TARGET_MODULES",
    "METHODS",
    "ParallelAdapter",
    "TrainableModel",
    "add_parallel_adapters",
    "build_trainable_model",
]
