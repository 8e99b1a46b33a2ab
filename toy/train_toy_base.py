"""Trains the toy SAM shipped in models/toy-sam-128 from scratch on synthetic scenes (`stable_sam_toy.train_base`).

python toy/train_toy_base.py --output_dir outputs/toy_base --max_train_steps 8000 [--resume]
"""

import logging

from transformers import HfArgumentParser

from stable_sam_toy.train_base import ToyBaseTrainingArguments, main


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (parsed,) = HfArgumentParser(ToyBaseTrainingArguments).parse_args_into_dataclasses()
    main(parsed)
