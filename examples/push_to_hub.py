"""Publishes a Stable-SAM model on the Hugging Face Hub: by default the adapter release (plugin weights only).

    python examples/push_to_hub.py --model outputs/stable_sam_adapter --repo_id <user>/stable-sam-vit-base [--private]
    python examples/push_to_hub.py --model outputs/stable_sam_adapter --local_dir release  # write, upload nothing

`--model` is an adapter folder or a full checkpoint; it is loaded with `StableSamModel.from_pretrained` and saved
again, so exactly the release files are uploaded (plugin weights, config naming the base SAM checkpoint, remote-code
modules, processor files, model card), whatever else the folder holds. The adapter of a full checkpoint whose SAM
weights differ from its base's (a fine-tuned decoder) is refused, naming them: publish it with `--full_checkpoint`, or
pass `--plugins_only` to keep only its plugins. A non-empty `--local_dir` needs
`--overwrite_local_dir` (nothing in it is deleted), and a model whose plugins were never trained needs
`--allow_untrained_plugins`. The token comes from `HF_TOKEN` or `hf auth login`; it is never printed.
"""

import json
import logging
import os
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from stable_sam_hf import StableSamModel
from stable_sam_hf.upload import check_plugins_trained


logger = logging.getLogger(__name__)


@dataclass
class PushArguments:
    """Options of `push_to_hub.py`."""

    model: str = field(metadata={"help": "Adapter folder or full checkpoint (folder or Hub id) to publish."})
    repo_id: str | None = field(
        default=None, metadata={"help": "Hub repo to upload to, e.g. 'user/stable-sam-vit-base'."}
    )
    local_dir: str | None = field(
        default=None, metadata={"help": "Write the release to this folder instead of uploading it."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base SAM checkpoint to record (and load an adapter onto) instead of the config's."},
    )
    full_checkpoint: bool = field(default=False, metadata={"help": "Publish every weight, not the plugins only."})
    plugins_only: bool = field(
        default=False,
        metadata={
            "help": "Publish the adapter of a full checkpoint whose SAM weights differ from the base's (a fine-tuned "
            "decoder), keeping only its plugins."
        },
    )
    overwrite_local_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --local_dir (only the release files; nothing is deleted)."},
    )
    allow_untrained_plugins: bool = field(
        default=False,
        metadata={"help": "Publish a model whose plugins were never trained (it computes SAM's masks)."},
    )
    evaluation_results: str | None = field(
        default=None,
        metadata={"help": "JSON file with a list of {dataset, metric, value[, prompt]} rows for the model card."},
    )
    commit_message: str | None = field(default=None, metadata={"help": "Commit message of the upload."})
    revision: str | None = field(default=None, metadata={"help": "Branch to upload to (created when missing)."})


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.repo_id is None) == (args.local_dir is None):
        raise ValueError("Pass exactly one of --repo_id (upload) and --local_dir (write the release locally).")
    evaluation = None
    if args.evaluation_results is not None:
        with open(args.evaluation_results, encoding="utf-8") as file:
            evaluation = json.load(file)

    if args.local_dir is not None and os.path.isdir(args.local_dir) and os.listdir(args.local_dir):
        if not args.overwrite_local_dir:
            raise ValueError(
                f"--local_dir {args.local_dir!r} is not empty. Choose an empty or new folder, or pass "
                "--overwrite_local_dir to write the release files into it (nothing else in it is deleted)."
            )

    model = StableSamModel.from_pretrained(args.model, base_model_name_or_path=args.base_model_name_or_path)
    check_plugins_trained(model, args.allow_untrained_plugins, escape="--allow_untrained_plugins")
    release = {
        "full_checkpoint": args.full_checkpoint,
        "plugins_only": args.plugins_only,
        "base_model_name_or_path": args.base_model_name_or_path,
        "evaluation_results": evaluation,
    }
    if args.local_dir is not None:
        written = model.save_pretrained(args.local_dir, **release)
        logger.info(f"Wrote {args.local_dir}: {', '.join(written)}")
        return written
    commit = model.push_to_hub(
        args.repo_id,
        private=args.private,
        allow_untrained_plugins=args.allow_untrained_plugins,
        commit_message=args.commit_message,
        revision=args.revision,
        **release,
    )
    logger.info(f"Uploaded to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")
    return commit


if __name__ == "__main__":
    main()
