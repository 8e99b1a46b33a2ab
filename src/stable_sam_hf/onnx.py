"""ONNX export of Stable-SAM (or SAM): the image encoder, and the prompt encoder + mask decoder with the plugins behind
segment-anything's ONNX decoder interface, so that tools written for SAM's exported decoder take it unchanged.

The decoder's inputs and outputs follow segment-anything's `SamOnnxModel` (`scripts/export_onnx_model.py`), plus the
DRP weights as a fourth output:

>>> from stable_sam_hf.onnx import export_onnx
>>> export_onnx("models/toy-sam-128", "onnx/toy")  # doctest: +SKIP
['onnx/toy/encoder.onnx', 'onnx/toy/decoder.onnx', 'onnx/toy/decoder_sam.onnx', 'onnx/toy/model.json']

Command line: `python -m stable_sam_hf.onnx export --model <folder or Hub id> --output_dir <dir>`, and
`python -m stable_sam_hf.onnx embed --model <...> --image <file> --output <file.npy>` for the embedding file that
the browser demo loads when the encoder is too large to run in the page.
"""

import argparse
import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock

from .inference import default_image_processor, load_image, load_model_and_processor
from .modeling_stable_sam import (
    StableSamDeformableSampling,
    StableSamModel,
    StableSamSpatialAttention,
    StableSamTwoWayAttentionBlock,
)


# Sampling plugins the exporter knows, with the smallest ONNX opset that has their operators (GridSample: 16)
EXPORTABLE_SAMPLING = {"deformable": (StableSamDeformableSampling, 16), "spatial": (StableSamSpatialAttention, 14)}
DEFAULT_OPSET = 17
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks", "routing_weights")
FORMAT_VERSION = 1


def check_exportable(model: StableSamModel, opset: int = DEFAULT_OPSET):
    """Refuses, naming the setting, a model whose plugin layers or dtype the exporter does not support.

    Raises:
        `ValueError` naming `sampling`, the unsupported layer, the dtype or the opset.
    """
    if not isinstance(model, StableSamModel):
        raise TypeError(f"`model` must be a StableSamModel, got {type(model).__name__}.")
    sampling = model.config.sampling
    if sampling not in EXPORTABLE_SAMPLING:
        raise ValueError(
            f"Cannot export `sampling={sampling!r}`: the ONNX exporter supports sampling in "
            f"{sorted(EXPORTABLE_SAMPLING)}."
        )
    sampling_class, min_opset = EXPORTABLE_SAMPLING[sampling]
    if opset < min_opset:
        raise ValueError(
            f"Cannot export `sampling={sampling!r}` at opset {opset}: its operators need `opset` >= {min_opset}."
        )
    for index, layer in enumerate(model.mask_decoder.transformer.layers):
        if isinstance(layer, StableSamTwoWayAttentionBlock):
            if type(layer.dsp) is not sampling_class:
                raise ValueError(
                    f"Cannot export two-way layer {index}: its sampling plugin is {type(layer.dsp).__name__}, but "
                    f"`sampling={sampling!r}` is exported as {sampling_class.__name__}."
                )
        elif type(layer) is not SamTwoWayAttentionBlock:
            raise ValueError(
                f"Cannot export two-way layer {index} ({type(layer).__name__}): the exporter knows SAM's block and "
                f"Stable-SAM's plugin block only (`plugin_layers={model.config.plugin_layers}`)."
            )
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"Cannot export a model in {dtype}: load it in float32 (`dtype=torch.float32`).")


class StableSamOnnxEncoder(nn.Module):
    """The image encoder: `pixel_values` (normalised and padded, as the image processor makes them) to embeddings."""

    def __init__(self, model: StableSamModel):
        super().__init__()
        self.vision_encoder = model.vision_encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` of shape `(1, 3, image_size, image_size)` -> `(1, hidden_size, embed_size, embed_size)`."""
        return self.vision_encoder(pixel_values).last_hidden_state


@contextlib.contextmanager
def _all_mask_heads(decoder):
    """Records what the decoder's heads compute for all its mask tokens (its forward returns one or the others)."""
    recorded = {"hyper_in": []}
    hooks = [
        mlp.register_forward_hook(lambda m, i, out: recorded["hyper_in"].append(out))
        for mlp in decoder.output_hypernetworks_mlps
    ]
    hooks.append(decoder.upscale_conv2.register_forward_hook(lambda m, i, out: recorded.update(upscaled=out)))
    hooks.append(decoder.iou_prediction_head.register_forward_hook(lambda m, i, out: recorded.update(iou=out)))
    try:
        yield recorded
    finally:
        for hook in hooks:
            hook.remove()


class StableSamOnnxDecoder(nn.Module):
    """
    Prompt encoder + mask decoder (with the plugins) + mask post-processing, with segment-anything's ONNX interface.

    `routing_weight` fixes `alpha_1` (`0.0` is SAM's decoder exactly); `None` lets DRP predict it.
    `return_single_mask` picks one mask as segment-anything's export does: the single-mask token for more than two
    points (padding included), else the multimask output with the highest predicted IoU.
    """

    def __init__(self, model: StableSamModel, *, routing_weight: float | None = None, return_single_mask: bool = True):
        super().__init__()
        self.model = model
        self.image_size = model.config.prompt_encoder_config.image_size
        self.routing_weight = None if routing_weight is None else torch.tensor(float(routing_weight))
        self.return_single_mask = return_single_mask

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        prompt_encoder = self.model.prompt_encoder
        # Pixel centres, normalised to [0, 1] in the resized input frame
        coords = (point_coords + 0.5) / self.image_size
        embedding = prompt_encoder.shared_embedding(coords.unsqueeze(1)).squeeze(1)  # 1 x N x C
        labels = point_labels.unsqueeze(-1)  # 1 x N x 1
        embedding = torch.where(labels == -1, prompt_encoder.not_a_point_embed.weight, embedding)
        for index, point_embed in enumerate(prompt_encoder.point_embed):
            embedding = embedding + point_embed.weight * (labels == index).to(embedding.dtype)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        prompt_encoder = self.model.prompt_encoder
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # 1 x C x 1 x 1
        return has_mask_input * prompt_encoder.mask_embed(mask_input) + (1 - has_mask_input) * no_mask

    def _postprocess(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        # Pad frame, crop to the resized image, then the original size (as the image processor's post-processing)
        masks = F.interpolate(masks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        orig_im_size = orig_im_size.to(torch.float32)
        # As preprocess_shape: rounded half up, neither side below one pixel
        resized = torch.floor(orig_im_size * (self.image_size / orig_im_size.max()) + 0.5).clamp(min=1).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        """
        Args:
            image_embeddings (`torch.Tensor` of shape `(1, hidden_size, embed_size, embed_size)`)
            point_coords (`torch.Tensor` of shape `(1, num_points, 2)`): `(x, y)` in the resized input frame.
            point_labels (`torch.Tensor` of shape `(1, num_points)`): 1 / 0 points, 2 / 3 box corners, -1 padding.
            mask_input (`torch.Tensor` of shape `(1, 1, 4 * embed_size, 4 * embed_size)`): mask logits.
            has_mask_input (`torch.Tensor` of shape `(1,)`): 1 to use `mask_input`, 0 to ignore it.
            orig_im_size (`torch.Tensor` of shape `(2,)`): `(height, width)` of the original image.
        Returns:
            `masks` (`(1, num_masks, height, width)` logits), `iou_predictions` (`(1, num_masks)`), `low_res_masks`
            (`(1, num_masks, 4 * embed_size, 4 * embed_size)`) and `routing_weights` (`(1, 2)`, alpha_1 and alpha_2);
            `num_masks` is 1 with `return_single_mask`, else all the decoder's mask tokens.
        """
        decoder = self.model.mask_decoder
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        with decoder.plugin_call(self.routing_weight) as call, _all_mask_heads(decoder) as heads:
            decoder(
                image_embeddings=image_embeddings,
                image_positional_embeddings=self.model.get_image_wide_positional_embeddings(),
                sparse_prompt_embeddings=sparse.unsqueeze(1),  # 1 x 1 x N x C
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )

        # Masks of every mask token from the hypernetwork outputs and the upscaled embedding
        hyper_in = torch.stack(heads["hyper_in"], dim=2).squeeze(1)  # 1 x num_tokens x C'
        upscaled = decoder.activation(heads["upscaled"])  # 1 x C' x 4H x 4W
        _, channels, height, width = upscaled.shape
        low_res_masks = (hyper_in @ upscaled.reshape(1, channels, height * width)).reshape(1, -1, height, width)
        iou_predictions = heads["iou"].squeeze(1)  # 1 x num_tokens
        routing_weights = call.routing_weights[-1].squeeze(1)  # 1 x 2

        if self.return_single_mask:
            # More than two points (padding included) pick the single-mask token, as segment-anything's export
            reweight = torch.zeros_like(iou_predictions)
            reweight[:, 0] = 1000.0
            score = iou_predictions + (point_coords.shape[1] - 2.5) * reweight
            best = torch.argmax(score, dim=1)
            low_res_masks = low_res_masks[torch.arange(1), best].unsqueeze(1)
            iou_predictions = iou_predictions[torch.arange(1), best].unsqueeze(1)
        masks = self._postprocess(low_res_masks, orig_im_size)
        return masks, iou_predictions, low_res_masks, routing_weights


def decoder_example_inputs(model: StableSamModel, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Inputs of the decoder's interface for `model`, with random embeddings (for tracing and benchmarks)."""
    hidden_size = model.config.prompt_encoder_config.hidden_size
    embed_size = model.config.prompt_encoder_config.image_embedding_size
    image_size = model.config.prompt_encoder_config.image_size
    generator = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, hidden_size, embed_size, embed_size, generator=generator),
        "point_coords": torch.rand(1, num_points, 2, generator=generator) * image_size,
        "point_labels": torch.tensor([[1.0, 0.0, -1.0, 2.0, 3.0][i % 5] for i in range(num_points)])[None],
        "mask_input": torch.zeros(1, 1, 4 * embed_size, 4 * embed_size),
        "has_mask_input": torch.zeros(1),
        "orig_im_size": torch.tensor([float(image_size), float(image_size)]),
    }


@contextlib.contextmanager
def _one_pass_plugins(model: StableSamModel):
    """
    Makes the plugin blocks take their training path (one DSP call, `lerp` out of place) while tracing: their
    inference path writes prompt chunks into a preallocated tensor in place, which the tracer does not record.
    """
    plugin_parameters = [param for _, param in model.plugin_named_parameters()]
    requires_grad = [param.requires_grad for param in plugin_parameters]
    try:
        for param in plugin_parameters:
            param.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for param, flag in zip(plugin_parameters, requires_grad):
            param.requires_grad_(flag)


def _export_atomic(module: nn.Module, args: tuple, path: Path, **export_kwargs):
    """`torch.onnx.export` to a temporary sibling, renamed over `path` when complete."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            # The tracer's notes on Python values (the shape-derived point count) are expected
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # TorchScript export on purpose: torch.export cannot trace an output size read from `orig_im_size`
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed", module="torch.onnx")
            # The only advanced index is the argmax of the mask choice, never negative
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
            torch.onnx.export(module, args, str(temporary), dynamo=False, export_params=True, **export_kwargs)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def export_decoder(
    model: StableSamModel,
    path: str | os.PathLike,
    *,
    routing_weight: float | None = None,
    return_single_mask: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Exports the prompt encoder + mask decoder of `model` to `path` (see `StableSamOnnxDecoder`)."""
    check_exportable(model, opset)
    if routing_weight is not None and not 0.0 <= float(routing_weight) <= 1.0:
        raise ValueError(f"`routing_weight` (alpha_1) must lie in [0, 1] or be None, got {routing_weight}.")
    path = Path(path)
    wrapper = StableSamOnnxDecoder(model, routing_weight=routing_weight, return_single_mask=return_single_mask)
    inputs = decoder_example_inputs(model)
    with _one_pass_plugins(model):
        _export_atomic(
            wrapper.eval(),
            tuple(inputs.values()),
            path,
            input_names=list(DECODER_INPUTS),
            output_names=list(DECODER_OUTPUTS),
            dynamic_axes={
                "point_coords": {1: "num_points"},
                "point_labels": {1: "num_points"},
                "masks": {2: "height", 3: "width"},
            },
            opset_version=opset,
            do_constant_folding=True,
        )
    return path


def export_encoder(model: StableSamModel, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """Exports the image encoder of `model` to `path`: `pixel_values` -> `image_embeddings`."""
    check_exportable(model, opset)
    path = Path(path)
    image_size = model.config.vision_config.image_size
    pixel_values = torch.randn(1, model.config.vision_config.num_channels, image_size, image_size)
    _export_atomic(
        StableSamOnnxEncoder(model).eval(),
        (pixel_values,),
        path,
        input_names=["pixel_values"],
        output_names=["image_embeddings"],
        opset_version=opset,
        do_constant_folding=True,
    )
    return path


def client_metadata(model: StableSamModel, image_processor, files: dict, *, routing_weight, opset) -> dict:
    """What a client needs beside the ONNX files: input size, pixel statistics, embedding size, plugin settings."""
    config = model.config
    embed_size = config.prompt_encoder_config.image_embedding_size
    return {
        "format": "stable-sam-onnx",
        "format_version": FORMAT_VERSION,
        "files": files,
        "input_size": config.vision_config.image_size,
        "rescale_factor": float(image_processor.rescale_factor),
        "pixel_mean": [float(value) for value in image_processor.image_mean],
        "pixel_std": [float(value) for value in image_processor.image_std],
        "image_embedding_shape": [1, config.prompt_encoder_config.hidden_size, embed_size, embed_size],
        "mask_input_size": 4 * embed_size,
        "decoder_inputs": list(DECODER_INPUTS),
        "decoder_outputs": list(DECODER_OUTPUTS),
        "routing_weight": routing_weight,
        "opset": opset,
        "model": model.name_or_path or None,
        "base_model": config.base_model_name_or_path,
        "plugins": {
            "plugin_layers": list(config.plugin_layers),
            "sampling": config.sampling,
            "offset_range": float(config.offset_range),
            "offset_kernel_size": config.offset_kernel_size,
            "routing_hidden_size": config.routing_hidden_size,
            "routing_token_index": config.routing_token_index,
        },
    }


def export_onnx(
    model: StableSamModel | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    image_processor=None,
    routing_weight: float | None = None,
    encoder: bool = True,
    sam_decoder: bool = True,
    return_single_mask: bool = True,
    opset: int = DEFAULT_OPSET,
) -> list[str]:
    """
    Exports a Stable-SAM (or SAM) checkpoint for ONNX runtimes: `encoder.onnx`, `decoder.onnx` (DRP predicts alpha_1,
    unless `routing_weight` fixes it), `decoder_sam.onnx` (alpha_1 = 0: SAM's decoder, for comparison) and
    `model.json` (what a client needs).

    Args:
        model (`StableSamModel`, `str` or `os.PathLike`): the model, or a folder or Hub id to load it from.
        output_dir (`str` or `os.PathLike`): where to write; created if needed.
        image_processor (*optional*): whose pixel statistics go into `model.json`; the checkpoint's by default.
        routing_weight (`float`, *optional*): fixes alpha_1 in `decoder.onnx`; `0.0` exports SAM's decoder.
        encoder, sam_decoder (`bool`, *optional*, default `True`): whether to write `encoder.onnx` / `decoder_sam.onnx`.
        return_single_mask (`bool`, *optional*, defaults to `True`): one mask per prompt, as segment-anything's export.
        opset (`int`, *optional*, defaults to 17): the ONNX opset.

    Returns:
        `list[str]`: the paths written.
    """
    if isinstance(model, (str, os.PathLike)):
        model, processor = load_model_and_processor(os.fspath(model))
        image_processor = image_processor if image_processor is not None else processor.image_processor
    check_exportable(model, opset)
    if image_processor is None:
        image_processor = default_image_processor(model)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    written, files = [], {"encoder": None, "decoder": "decoder.onnx", "sam_decoder": None}
    try:
        if encoder:
            written.append(export_encoder(model, output_dir / "encoder.onnx", opset=opset))
            files["encoder"] = "encoder.onnx"
        kwargs = {"return_single_mask": return_single_mask, "opset": opset}
        written.append(export_decoder(model, output_dir / "decoder.onnx", routing_weight=routing_weight, **kwargs))
        if sam_decoder:
            written.append(export_decoder(model, output_dir / "decoder_sam.onnx", routing_weight=0.0, **kwargs))
            files["sam_decoder"] = "decoder_sam.onnx"
    finally:
        model.train(was_training)
    metadata = client_metadata(model, image_processor, files, routing_weight=routing_weight, opset=opset)
    metadata_path = output_dir / "model.json"
    temporary = metadata_path.with_name(metadata_path.name + ".tmp")
    temporary.write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(temporary, metadata_path)
    written.append(metadata_path)
    return [str(path) for path in written]


def write_image_embedding(model: StableSamModel, processor, image, path: str | os.PathLike) -> Path:
    """Writes the image embedding of `image` (`(1, hidden_size, embed_size, embed_size)`, float32 `.npy`)."""
    path = Path(path)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    embedding = model.get_image_embeddings(pixel_values.to(next(model.parameters()).dtype)).float().numpy()
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, embedding.astype(np.float32))
    os.replace(temporary, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stable_sam_hf.onnx", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="Export the encoder and decoders to ONNX, with model.json.")
    export.add_argument("--model", required=True, help="Stable-SAM or SAM checkpoint: folder or Hub id.")
    export.add_argument("--output_dir", required=True, help="Folder to write the ONNX files and model.json into.")
    export.add_argument("--routing_weight", type=float, default=None, help="Fix alpha_1 in decoder.onnx (0 = SAM).")
    export.add_argument("--no_encoder", action="store_true", help="Skip encoder.onnx (write embeddings instead).")
    export.add_argument("--multimask", action="store_true", help="Return every mask token, not the best one.")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16 for deformable).")
    embed = commands.add_parser("embed", help="Write an image's embedding as .npy, for the browser demo.")
    embed.add_argument("--model", required=True, help="The checkpoint that was exported.")
    embed.add_argument("--image", required=True, help="Image file.")
    embed.add_argument("--output", required=True, help="The .npy file to write.")
    args = parser.parse_args(argv)

    if args.command == "export":
        written = export_onnx(
            args.model,
            args.output_dir,
            routing_weight=args.routing_weight,
            encoder=not args.no_encoder,
            return_single_mask=not args.multimask,
            opset=args.opset,
        )
        print("\n".join(written))
    else:
        model, processor = load_model_and_processor(args.model)
        print(write_image_embedding(model, processor, load_image(args.image), args.output))


if __name__ == "__main__":
    main()


__all__ = [
    "StableSamOnnxDecoder",
    "StableSamOnnxEncoder",
    "check_exportable",
    "export_decoder",
    "export_encoder",
    "export_onnx",
    "write_image_embedding",
]
