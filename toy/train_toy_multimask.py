"""Trains the toy base's three multimask outputs, leaving its single-mask output as it is
(`stable_sam_toy.train_multimask`).

    python toy/train_toy_multimask.py --base_model models/toy-sam-128 --output_dir outputs/toy_multimask
"""

import logging

from transformers import HfArgumentParser

from stable_sam_toy.train_multimask import MultimaskTrainingArguments, main


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (parsed,) = HfArgumentParser(MultimaskTrainingArguments).parse_args_into_dataclasses()
    main(parsed)
