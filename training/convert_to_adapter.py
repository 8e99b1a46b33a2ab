"""Converts Stable-SAM weights into an adapter release: the plugin weights and a config naming the base SAM checkpoint.

    # a full StableSamModel checkpoint (save_pretrained(..., full_checkpoint=True))
    python training/convert_to_adapter.py --checkpoint outputs/stable_sam_full --output_dir outputs/stable_sam_adapter \
        --base_model_name_or_path facebook/sam-vit-base

    # a SAM checkpoint plus plugin weights from any training script (.safetensors, .pth, .bin; any key prefix)
    python training/convert_to_adapter.py --base_model_name_or_path facebook/sam-vit-base \
        --plugin_weights outputs/run/plugins.pth --output_dir outputs/stable_sam_adapter

The result loads with `StableSamModel.from_pretrained(output_dir)` and uploads with `examples/push_to_hub.py`.
"""

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from stable_sam_hf.convert import convert_to_adapter, read_evaluation_results


logger = logging.getLogger(__name__)


@dataclass
class ConvertArguments:
    """Options of `convert_to_adapter.py`."""

    output_dir: str = field(metadata={"help": "The adapter folder to write."})
    checkpoint: str | None = field(
        default=None, metadata={"help": "A full StableSamModel checkpoint (folder or Hub id) to convert."}
    )
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The SAM checkpoint (Hub id or folder) the plugins go onto; required with --plugin_weights."
        },
    )
    plugin_weights: str | None = field(
        default=None,
        metadata={"help": "Weights file or folder holding the plugin weights (.safetensors, .pth, .pt, .bin, .ckpt)."},
    )
    plugin_layer: int | None = field(
        default=None, metadata={"help": "Two-way layer of plugin keys that name none (e.g. 'dsp.proj.weight')."}
    )
    key_prefix: str | None = field(
        default=None,
        metadata={"help": "Read only keys starting with this (e.g. 'ema.') when a file has several copies."},
    )
    offset_range: float | None = field(
        default=None, metadata={"help": "DSP offset bound the plugins were trained with (default: the config's 2.0)."}
    )
    routing_token_index: int | None = field(
        default=None, metadata={"help": "Output token DRP routes from (default: the config's 0, the IoU token)."}
    )
    evaluation_results: str | None = field(
        default=None,
        metadata={"help": "JSON file with a list of {dataset, metric, value[, prompt]} rows for the model card."},
    )
    plugins_only: bool = field(
        default=False,
        metadata={
            "help": "Convert a --checkpoint whose SAM weights differ from its base (fine-tuned), keeping only its "
            "plugins; without it such a checkpoint is refused."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir (only the release files; nothing is deleted)."},
    )


def main(argv: list[str] | None = None) -> list[str]:
    (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {
        name: value
        for name, value in (("offset_range", args.offset_range), ("routing_token_index", args.routing_token_index))
        if value is not None
    }
    evaluation = read_evaluation_results(args.evaluation_results) if args.evaluation_results else None
    written = convert_to_adapter(
        args.output_dir,
        checkpoint=args.checkpoint,
        base_model_name_or_path=args.base_model_name_or_path,
        plugin_weights=args.plugin_weights,
        plugin_layer=args.plugin_layer,
        key_prefix=args.key_prefix,
        evaluation_results=evaluation,
        plugins_only=args.plugins_only,
        overwrite_output_dir=args.overwrite_output_dir,
        **settings,
    )
    logger.info(f"Wrote {args.output_dir}: {', '.join(written)}")
    return written


if __name__ == "__main__":
    main()
