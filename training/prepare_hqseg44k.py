"""Turns HQ-SAM's HQSeg-44K archives (or their unpacked tree) into a streamable `datasets` dataset.

Source: the Hub *model* repository `sam-hq-team/sam-hq-training` holds `data/DIS5K.zip`, `data/cascade_psp.zip` and
`data/thin_object_detection.zip`; they are downloaded with `huggingface_hub.hf_hub_download` and unpacked. A local
folder holding the unpacked `DIS5K/`, `cascade_psp/` and `thin_object_detection/` folders works as well. Which
folders make up each subset is `stable_sam_hf.data.HQSEG44K_SUBSETS`, transcribed from HQ-SAM's `train/train.py`:
images `<stem>.jpg`, masks `<stem>.png`; an image without its mask is reported and left out. An image or mask that
is a dangling symlink, not a file (e.g. a symlink to a folder) or resolves outside the source tree (a link, or a
linked folder on its path) is not read: the pair is skipped, counted by reason and, for paths leaving the tree, named
(their bytes would otherwise go into the dataset and, with `--push_to_hub`, to the Hub). A subset's image or mask
folder that resolves outside the source tree is not listed: the run stops with an error naming it.

The dataset is written into a hidden temporary folder inside `--output_dir` and each subset folder and README.md are
swapped in only when everything is written: a failure part-way leaves the previous dataset as it was. Files of a
replaced subset folder that this script did not write (anything but its `<split>-*.parquet` shards) are kept.

Output format, chosen so that a local folder and a Hub dataset repository are read by the same
`datasets.load_dataset(<folder or repo id>, <subset>, split=..., streaming=True)` call:

    <output_dir>/README.md                                  dataset card; its YAML lists one config per subset
    <output_dir>/<subset>/<split>-00000-of-00008.parquet    e.g. DIS5K-TR/train-..., DIS5K-VD/validation-...

Parquet shards written by `datasets` (`Dataset.to_parquet`), columns `image` and `mask` (`datasets.Image`, the
original file bytes, not re-encoded), `dataset` (subset name) and `id` (file stem). Parquet rather than webdataset
or imagefolder: columnar, typed by the `datasets` features stored in the file, read in row groups while streaming,
and the layout `push_to_hub` itself uses. Files are not decoded here: a bad image or mask is copied as is and is
skipped and counted by the training stream (`stable_sam_hf.data`), so it is reported where it would matter.
Parquet row groups hold `--row_group_size` samples: the training stream shuffles and splits across processes and
DataLoader workers by row group (`IterableDataset.reshard`), and a streamed read fetches one row group at a time.

    python training/prepare_hqseg44k.py --output_dir data/hqseg44k
    python training/prepare_hqseg44k.py --source path/to/unpacked --output_dir data/hqseg44k --push_to_hub user/hqseg44k
"""

import logging
import math
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import yaml
from datasets import Dataset
from huggingface_hub import HfApi, hf_hub_download
from transformers import HfArgumentParser

from stable_sam_hf.data import HQSEG_FEATURES, HQSEG_SPLITS, HQSegSubset, hqseg_subsets


logger = logging.getLogger(__name__)

HQSEG44K_REPO_ID = "sam-hq-team/sam-hq-training"
# Why a listed image is not read; see `list_pairs`
SKIP_DANGLING, SKIP_NOT_A_FILE, SKIP_OUTSIDE = "dangling_symlink", "not_a_file", "symlink_outside_source"
SHARD_PATTERN = re.compile(r"(train|validation)-\d{5}-of-\d{5}\.parquet")


@dataclass
class PrepareArguments:
    """Options of `prepare_hqseg44k.py`."""

    output_dir: str = field(metadata={"help": "Folder the parquet dataset (README.md + <subset>/*.parquet) goes to."})
    source: str = field(
        default=HQSEG44K_REPO_ID,
        metadata={
            "help": "Hub model repository holding data/DIS5K.zip, data/cascade_psp.zip and "
            "data/thin_object_detection.zip, or a local folder of the unpacked tree (DIS5K/, cascade_psp/, "
            "thin_object_detection/)."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Revision of the Hub repository to download."})
    unpack_dir: str | None = field(
        default=None,
        metadata={"help": "Where downloaded archives are unpacked; defaults to '<output_dir>-unpacked'."},
    )
    splits: list[str] = field(
        default_factory=lambda: list(HQSEG_SPLITS), metadata={"help": "Splits to write: train and/or validation."}
    )
    dataset_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Subsets to write (e.g. DIS5K-TR COIFT); all subsets of the chosen splits when unset, in which "
            "case subsets missing from a local tree are reported and left out."
        },
    )
    max_shard_size_mb: int = field(default=256, metadata={"help": "Largest size of one parquet shard, in MB."})
    row_group_size: int = field(
        default=100, metadata={"help": "Samples per parquet row group, the unit of streaming shuffles and splits."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the README.md and parquet shards of an existing output folder (written aside first and "
            "swapped in when complete; other files are kept)."
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repository id to upload the written dataset to."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub dataset repository as private."})

    def __post_init__(self):
        unknown = [split for split in self.splits if split not in HQSEG_SPLITS]
        if not self.splits or unknown:
            raise ValueError(f"`splits` must be a non-empty subset of {HQSEG_SPLITS}, got {self.splits}.")
        if self.max_shard_size_mb < 1 or self.row_group_size < 1:
            raise ValueError(
                "`max_shard_size_mb` and `row_group_size` must be positive integers, got "
                f"{self.max_shard_size_mb} and {self.row_group_size}."
            )


def select_subsets(splits: list[str], dataset_names: list[str] | None) -> list[HQSegSubset]:
    """The subsets of `splits`, restricted to `dataset_names` when given (in the table's order)."""
    subsets = [subset for split in splits for subset in hqseg_subsets(split)]
    if dataset_names is None:
        return subsets
    known = {subset.name for subset in subsets}
    unknown = [name for name in dataset_names if name not in known]
    if unknown:
        raise ValueError(f"`dataset_names` {unknown} are not subsets of the splits {splits}; known: {sorted(known)}.")
    return [subset for subset in subsets if subset.name in dataset_names]


def _extract(archive: Path, unpack_dir: Path, top: str) -> None:
    with zipfile.ZipFile(archive) as zipped:
        names = [name for name in zipped.namelist() if not name.startswith("__MACOSX/")]
        # Archives either hold the `<top>/` folder itself or its content
        target = unpack_dir if all(name.startswith(f"{top}/") for name in names) else unpack_dir / top
        logger.info("Unpacking %s into %s", archive, target)
        zipped.extractall(target, members=names)


def fetch_tree(source: str, archives: list[str], unpack_dir: Path, revision: str | None = None) -> Path:
    """Root of the unpacked tree: `source` itself if it is a folder, else the Hub archives unpacked in `unpack_dir`."""
    if Path(source).is_dir():
        return Path(source)
    unpack_dir.mkdir(parents=True, exist_ok=True)
    for top in archives:
        done = unpack_dir / f".{top}.unpacked"
        if done.exists():
            logger.info("%s already unpacked in %s", top, unpack_dir)
            continue
        archive = hf_hub_download(source, f"data/{top}.zip", repo_type="model", revision=revision)
        _extract(Path(archive), unpack_dir, top)
        done.touch()
    return unpack_dir


def skip_reason(path: Path, root: Path) -> str | None:
    """Why `path` (an image or mask listed under the resolved source `root`) must not be read, or `None`."""
    if path.is_symlink() and not path.exists():
        return SKIP_DANGLING
    # The whole path, not only its last component: a linked folder on the way may lead out of the tree
    if not path.resolve().is_relative_to(root):
        return SKIP_OUTSIDE
    return None if path.is_file() else SKIP_NOT_A_FILE


def list_pairs(root: Path, subset: HQSegSubset) -> tuple[list[tuple[Path, Path]], list[Path], dict[str, list[Path]]]:
    """`(image, mask)` paths of a subset, sorted by stem; the images that have no mask; and the images whose pair is
    not read, by reason (`skip_reason` of the image or its mask), e.g. `{"dangling_symlink": [path, ...]}`."""
    image_dir, mask_dir = root / subset.image_dir, root / subset.mask_dir
    source = root.resolve()
    # A linked folder leading out of the tree is not listed at all
    for folder in (image_dir, mask_dir):
        if not folder.resolve().is_relative_to(source):
            raise ValueError(
                f"Subset {subset.name}: {folder} resolves to {folder.resolve()}, outside the source {source}; its "
                "files are not read. Copy them into the source tree, or leave the subset out with --dataset_names."
            )
    pairs, missing, skipped = [], [], {}
    for image in sorted(image_dir.glob(f"*{subset.image_ext}")):
        mask = mask_dir / f"{image.stem}{subset.mask_ext}"
        if not mask.is_symlink() and not mask.exists():
            missing.append(image)
            continue
        reason = skip_reason(image, source) or skip_reason(mask, source)
        if reason is None:
            pairs.append((image, mask))
        else:
            skipped.setdefault(reason, []).append(image)
    return pairs, missing, skipped


def num_shards_for(pairs: list[tuple[Path, Path]], max_shard_size_mb: int) -> int:
    """Enough shards to stay under `max_shard_size_mb` (at most one a sample)."""
    size = sum(image.stat().st_size + mask.stat().st_size for image, mask in pairs)
    return max(1, min(len(pairs), math.ceil(size / (max_shard_size_mb * 2**20))))


def write_subset(
    pairs: list[tuple[Path, Path]], subset: HQSegSubset, output_dir: Path, num_shards: int, row_group_size: int
) -> int:
    """Writes `<output_dir>/<subset>/<split>-XXXXX-of-YYYYY.parquet`; returns the number of bytes of the files."""
    folder = output_dir / subset.name
    folder.mkdir(parents=True)
    num_bytes = 0
    for shard in range(num_shards):
        # Contiguous shards of nearly equal length, as `Dataset.shard(contiguous=True)` cuts them
        start, stop = len(pairs) * shard // num_shards, len(pairs) * (shard + 1) // num_shards
        rows = {"image": [], "mask": [], "dataset": [], "id": []}
        for image, mask in pairs[start:stop]:
            image_bytes, mask_bytes = image.read_bytes(), mask.read_bytes()
            num_bytes += len(image_bytes) + len(mask_bytes)
            rows["image"].append({"bytes": image_bytes, "path": image.name})
            rows["mask"].append({"bytes": mask_bytes, "path": mask.name})
            rows["dataset"].append(subset.name)
            rows["id"].append(image.stem)
        path = folder / f"{subset.split}-{shard:05d}-of-{num_shards:05d}.parquet"
        Dataset.from_dict(rows, features=HQSEG_FEATURES).to_parquet(str(path), batch_size=row_group_size)
    return num_bytes


def dataset_card(written: list[tuple[HQSegSubset, int, int]]) -> str:
    """README.md with one config per subset; `written` holds `(subset, num_examples, num_bytes)`."""
    features = [
        {"name": "image", "dtype": "image"},
        {"name": "mask", "dtype": "image"},
        {"name": "dataset", "dtype": "string"},
        {"name": "id", "dtype": "string"},
    ]
    metadata = {
        "configs": [
            {
                "config_name": subset.name,
                "data_files": [{"split": subset.split, "path": f"{subset.name}/{subset.split}-*.parquet"}],
            }
            for subset, _, _ in written
        ],
        "dataset_info": [
            {
                "config_name": subset.name,
                "features": features,
                "splits": [{"name": subset.split, "num_bytes": num_bytes, "num_examples": num_examples}],
            }
            for subset, num_examples, num_bytes in written
        ],
    }
    rows = "\n".join(f"| {subset.name} | {subset.split} | {num_examples} |" for subset, num_examples, _ in written)
    return (
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n# HQSeg-44K\n\n"
        "HQ-SAM's training data (DIS5K, ThinObject-5K, FSS-1000, DUTS, ECSSD, MSRA-10K) and validation sets "
        "(DIS5K-VD, COIFT, HRSOD, ThinObject-5K test), one config per subset, images and 0/255 masks as in "
        f"`{HQSEG44K_REPO_ID}`. Each subset keeps the license of its original dataset.\n\n"
        f"| subset | split | samples |\n|---|---|---|\n{rows}\n"
    )


def write_dataset(
    args: PrepareArguments, subsets: list[HQSegSubset], root: Path, output_dir: Path
) -> tuple[list[tuple[HQSegSubset, int, int]], list[str], Counter]:
    """Writes the subsets found in `root` and README.md into `output_dir`; returns the written `(subset,
    num_examples, num_bytes)`, the names of the subsets not found and the count of images not read, by reason."""
    written, missing_subsets, skipped_total = [], [], Counter()
    for subset in subsets:
        if not (root / subset.image_dir).is_dir() or not (root / subset.mask_dir).is_dir():
            if args.dataset_names is not None:
                raise ValueError(
                    f"Subset {subset.name}: {root / subset.image_dir} or {root / subset.mask_dir} is missing."
                )
            missing_subsets.append(subset.name)
            logger.warning("Subset %s is not in %s (no %s): left out.", subset.name, root, subset.image_dir)
            continue
        pairs, missing, skipped = list_pairs(root, subset)
        for image in missing:
            logger.warning("Subset %s: %s has no %s mask: left out.", subset.name, image, subset.mask_ext)
        for reason, images in sorted(skipped.items()):
            skipped_total[reason] += len(images)
            # Links leaving the source tree are named: their targets are files the user did not mean to publish
            named = f": {', '.join(map(str, images))}" if reason == SKIP_OUTSIDE else ""
            logger.warning(
                "Subset %s: %d images skipped (%s, image or mask)%s", subset.name, len(images), reason, named
            )
        if not pairs:
            raise ValueError(
                f"Subset {subset.name}: no {subset.image_ext} image with a mask in {root / subset.image_dir}."
            )
        num_shards = num_shards_for(pairs, args.max_shard_size_mb)
        num_bytes = write_subset(pairs, subset, output_dir, num_shards, args.row_group_size)
        written.append((subset, len(pairs), num_bytes))
        logger.info(
            "Subset %s (%s): %d samples in %d shards, %d images without mask left out, %d skipped.",
            subset.name,
            subset.split,
            len(pairs),
            num_shards,
            len(missing),
            sum(len(images) for images in skipped.values()),
        )
    if not written:
        raise ValueError(f"No HQSeg-44K subset found in {root}; expected folders such as {subsets[0].image_dir}.")
    (output_dir / "README.md").write_text(dataset_card(written))
    return written, missing_subsets, skipped_total


def swap_in(staging: Path, output_dir: Path, subset_names: list[str]) -> None:
    """Moves the subset folders and README.md written in `staging` into `output_dir`. A subset folder they replace
    is moved into `staging` (deleted with it) after its files other than parquet shards of this script are moved
    into the new folder."""
    blocked = [str(output_dir / name) for name in subset_names if (output_dir / name).is_file()]
    if blocked:
        raise NotADirectoryError(
            f"Files are in the way of subset folders: {blocked}; the new dataset is in {staging}."
        )
    for name in subset_names:
        new, old = staging / name, output_dir / name
        if not old.exists():
            new.rename(old)
            continue
        replaced = staging / f"{name}.replaced"
        old.rename(replaced)
        new.rename(old)
        for path in replaced.iterdir():
            if not SHARD_PATTERN.fullmatch(path.name):
                path.rename(old / path.name)
    os.replace(staging / "README.md", output_dir / "README.md")


def prepare(args: PrepareArguments) -> Path:
    """Writes the dataset described by `args` and returns its folder."""
    output_dir = Path(args.output_dir)
    subsets = select_subsets(args.splits, args.dataset_names)
    existing = (output_dir / "README.md").exists() or any(
        any((output_dir / subset.name).glob("*.parquet")) for subset in subsets
    )
    if existing and not args.overwrite_output_dir:
        raise ValueError(
            f"`output_dir` {output_dir} already holds a dataset; pass --overwrite_output_dir to replace it."
        )
    unpack_dir = (
        Path(args.unpack_dir)
        if args.unpack_dir
        else output_dir.resolve().with_name(f"{output_dir.resolve().name}-unpacked")
    )
    archives = list(dict.fromkeys(subset.archive for subset in subsets))
    root = fetch_tree(args.source, archives, unpack_dir, revision=args.revision)

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".prepare-"))
    try:
        written, missing_subsets, skipped = write_dataset(args, subsets, root, staging)
    except BaseException:
        # Holds only what this call wrote; the previous dataset is untouched
        shutil.rmtree(staging)
        raise
    # A failure while swapping leaves `staging` (and any subset folder it replaced) in place
    swap_in(staging, output_dir, [subset.name for subset, _, _ in written])
    # Now holds only the replaced parquet shards
    shutil.rmtree(staging)
    logger.info(
        "Wrote %d subsets, %d samples to %s%s%s",
        len(written),
        sum(count for _, count, _ in written),
        output_dir,
        f" (not found: {', '.join(missing_subsets)})" if missing_subsets else "",
        f"; images not read: {', '.join(f'{reason}={count}' for reason, count in sorted(skipped.items()))}"
        if skipped
        else "",
    )

    if args.push_to_hub:
        api = HfApi()
        api.create_repo(args.push_to_hub, repo_type="dataset", private=args.private, exist_ok=True)
        api.upload_folder(
            repo_id=args.push_to_hub,
            folder_path=output_dir,
            repo_type="dataset",
            allow_patterns=["README.md", *(f"{subset.name}/*.parquet" for subset, _, _ in written)],
        )
        logger.info("Pushed %s to the Hub dataset %s", output_dir, args.push_to_hub)
    return output_dir


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.disable_progress_bars()
    return prepare(args)


if __name__ == "__main__":
    main(sys.argv[1:])
