"""Contenders of the benchmark: a predictor for each model kind of `evaluation.MODEL_KINDS`, each through its own
processor's pre- and post-processing.

SAM, HQ-SAM, Stable-SAM and the train.py baselines share `evaluation.SamPredictor` (SAM's image processor, with the
checkpoint's own pixel statistics when it ships a `preprocessor_config.json`); SAM 2 goes through `Sam2Processor`
(its own resize, statistics and `post_process_masks`).
"""

from pathlib import Path

import torch
from torch import nn

from .evaluation import ImageEncoding, ModelSpec, Prediction, SamPredictor, _describe
from .image_processing_stable_sam import StableSamImageProcessor


PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


def _processor_folder(spec: ModelSpec) -> str | None:
    """Where the spec's preprocessor_config.json would be: the checkpoint, or a run folder's base model."""
    for path in (spec.path, spec.base_model):
        if path is None:
            continue
        if not Path(path).exists() or (Path(path) / PREPROCESSOR_CONFIG_NAME).is_file():
            return path
    return None


class Sam2Predictor:
    """
    `SamPredictor`'s interface for a `Sam2Model`: `Sam2Processor` resizes and normalises the image and scales the
    prompts; its `post_process_masks` brings the low-resolution logits back to the original size.

    Args:
        model (`Sam2Model`): the model, frozen.
        processor (`Sam2Processor`): its processor.
        decoder_batch_size (`int`, *optional*, defaults to 20): prompts per decoder call.
    """

    is_stable = False
    is_hq = False

    def __init__(self, model: nn.Module, processor, *, decoder_batch_size: int = 20):
        if decoder_batch_size < 1:
            raise ValueError(f"`decoder_batch_size` must be a positive int, got {decoder_batch_size}.")
        self.model = model
        self.processor = processor
        self.decoder_batch_size = decoder_batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> ImageEncoding:
        """Runs the image encoder on `image` (`torch.Tensor` of shape `(3, height, width)`, uint8)."""
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"`image` must be a uint8 tensor of shape (3, height, width), got {_describe(image)}.")
        inputs = self.processor(images=image.permute(1, 2, 0).numpy(), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        features = {"image_embeddings": self.model.get_image_embeddings(pixel_values)}
        original = tuple(int(v) for v in inputs["original_sizes"][0])
        return ImageEncoding(features, original, original)

    def _prompt_inputs(self, prompts: dict[str, torch.Tensor], encoding: ImageEncoding) -> dict[str, torch.Tensor]:
        # The processor scales original-frame prompts to the model's input, as for its own users
        kwargs = {key: [value.tolist()] for key, value in prompts.items()}  # 1 image x K prompts x ...
        inputs = self.processor(original_sizes=[list(encoding.original_size)], **kwargs, return_tensors="pt")
        return {key: inputs[key].to(self.device) for key in prompts}

    def _postprocess(self, low_res: torch.Tensor, encoding: ImageEncoding) -> torch.Tensor:
        # K x H x W logits -> K x height x width bool
        (masks,) = self.processor.post_process_masks([low_res[:, None].float().cpu()], [encoding.original_size])
        return masks[:, 0].bool()

    @torch.no_grad()
    def predict(
        self, encoding: ImageEncoding, prompts: dict[str, torch.Tensor], routing_weight: float | None = None
    ) -> Prediction:
        """Masks for `num_prompts` prompts of one kind (see `SamPredictor.predict`)."""
        if routing_weight is not None:
            raise ValueError("`routing_weight` can only be forced on a Stable-SAM model.")
        num_prompts = next(iter(prompts.values())).shape[0]
        masks, scores = [], []
        for start in range(0, num_prompts, self.decoder_batch_size):
            chunk = {key: value[start : start + self.decoder_batch_size] for key, value in prompts.items()}
            outputs = self.model(**encoding.features, **self._prompt_inputs(chunk, encoding), multimask_output=False)
            masks.append(self._postprocess(outputs.pred_masks[0, :, 0], encoding))
            scores.append(outputs.iou_scores[0, :, 0].float().cpu())
        return Prediction(torch.cat(masks), torch.cat(scores), None)

    @torch.no_grad()
    def predict_clicks(
        self, encoding: ImageEncoding, points: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """One mask for a set of clicks and the previous low-res logits (see `SamPredictor.predict_clicks`); SAM 2 has
        no routing weights."""
        inputs = self._prompt_inputs({"input_points": points[None], "input_labels": labels[None]}, encoding)
        if mask_logits is not None:
            inputs["input_masks"] = mask_logits[None, None].to(self.device, self.model.dtype)  # 1 x 1 x H x W
        outputs = self.model(**encoding.features, **inputs, multimask_output=False)
        low_res = outputs.pred_masks[0, 0, 0]
        return self._postprocess(low_res[None], encoding)[0], low_res, None


def make_predictor(model: nn.Module, spec: ModelSpec, *, decoder_batch_size: int = 20):
    """The predictor of `spec`'s kind for `model` (from `evaluation.load_model`), with the checkpoint's processor."""
    folder = _processor_folder(spec)
    if spec.method == "sam2":
        from transformers import Sam2ImageProcessor, Sam2Processor

        if folder is not None:
            processor = Sam2Processor.from_pretrained(folder)
        else:
            size = model.config.vision_config.backbone_config.image_size
            size = size if isinstance(size, int) else size[0]
            processor = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size}))
        return Sam2Predictor(model, processor, decoder_batch_size=decoder_batch_size)
    image_processor = StableSamImageProcessor.from_pretrained(folder) if folder is not None else None
    # A released HQ-SAM answers with its default (fused) output; a train.py hq run with the HQ token it trained
    hq_token_only = spec.method == "hq_token_only" or (spec.method == "hq" and spec.run_folder)
    return SamPredictor(
        model, decoder_batch_size=decoder_batch_size, image_processor=image_processor, hq_token_only=hq_token_only
    )


__all__ = ["Sam2Predictor", "make_predictor"]
