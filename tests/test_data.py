import io
import logging
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import get_dataset_config_names, load_dataset
from PIL import Image
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

from stable_sam_hf.data import (
    HQSEG44K_SUBSETS,
    SKIP_REASONS,
    BadSampleError,
    SegmentationTrainStream,
    SkipCounter,
    TrainStreamArguments,
    build_train_dataset,
    decode_sample,
    hqseg_subsets,
    large_scale_jitter,
    load_segmentation_stream,
    load_segmentation_subsets,
    paste_occluder,
)
from stable_sam_hf.prompts import masks_to_boxes

from fixtures import (
    FIXTURE_BAD_SAMPLES,
    FIXTURE_TRAIN_FOLDERS,
    FIXTURE_VALIDATION_FOLDERS,
    load_prepare_script,
    make_hqseg_dataset,
    make_hqseg_tree,
)


prepare_hqseg44k = load_prepare_script()


@pytest.fixture(scope="module")
def hqseg(tmp_path_factory):
    """The fixture tree and the dataset prepared from it (row groups of 2 samples: 2 shards per subset)."""
    return make_hqseg_dataset(tmp_path_factory.mktemp("hqseg"), row_group_size=2)


def encode(array: np.ndarray, format: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=format)
    return buffer.getvalue()


def train_stream(path: str, **kwargs) -> SegmentationTrainStream:
    kwargs = {"seed": 0, "output_size": 64, **kwargs}
    return SegmentationTrainStream(path, **kwargs)


def take(iterable, count: int) -> list:
    iterator = iter(iterable)
    return [next(iterator) for _ in range(count)]


# Subset table


def test_subset_table_matches_hq_sam_layout():
    fixture_folders = {name: (image_dir, mask_dir) for name, image_dir, mask_dir in FIXTURE_TRAIN_FOLDERS}
    fixture_folders.update({name: (image_dir, mask_dir) for name, image_dir, mask_dir in FIXTURE_VALIDATION_FOLDERS})
    table = {subset.name: subset for subset in HQSEG44K_SUBSETS}
    for name, (image_dir, mask_dir) in fixture_folders.items():
        assert (str(table[name].image_dir), str(table[name].mask_dir)) == (image_dir, mask_dir)
    assert [subset.name for subset in hqseg_subsets("train")] == [
        "DIS5K-TR",
        "ThinObject5k-TR",
        "FSS",
        "DUTS-TR",
        "DUTS-TE",
        "ECSSD",
        "MSRA10K",
    ]
    assert {subset.name for subset in hqseg_subsets("validation")} == {name for name, *_ in FIXTURE_VALIDATION_FOLDERS}
    assert {subset.archive for subset in HQSEG44K_SUBSETS} == {"DIS5K", "cascade_psp", "thin_object_detection"}
    assert all((subset.image_ext, subset.mask_ext) == (".jpg", ".png") for subset in HQSEG44K_SUBSETS)
    with pytest.raises(ValueError, match="split"):
        hqseg_subsets("test")


# Prepare script


def test_prepare_writes_one_config_per_subset(hqseg):
    tree, path = hqseg
    names = [name for name, *_ in FIXTURE_TRAIN_FOLDERS + FIXTURE_VALIDATION_FOLDERS]
    assert sorted(get_dataset_config_names(path)) == sorted(names)
    for name in names:
        split = tree.splits[name]
        assert list((Path(path) / name).glob(f"{split}-*-of-*.parquet"))

    for split in ("train", "validation"):
        rows = list(load_segmentation_stream(path, split))
        assert len(rows) == len(tree.ids(split))
        assert {row["id"] for row in rows} == tree.ids(split)
        for row in rows:
            assert row["id"] in tree.good[row["dataset"]] or row["id"] in tree.bad[row["dataset"]]
            assert isinstance(row["image"]["bytes"], bytes) and isinstance(row["mask"]["bytes"], bytes)

    # Plain `datasets` reads the same configs, with decoded images
    first = next(iter(load_dataset(path, "DIS5K-VD", split="validation", streaming=True)))
    assert isinstance(first["image"], Image.Image) and first["image"].size == (64, 48)
    not_streamed = load_segmentation_stream(path, "validation", ["COIFT", "HRSOD"], streaming=False)
    assert len(not_streamed) == 6 and set(not_streamed["dataset"]) == {"COIFT", "HRSOD"}


def test_prepare_files_are_copied_unchanged(hqseg):
    tree, path = hqseg
    subset = next(subset for subset in HQSEG44K_SUBSETS if subset.name == "DUTS-TR")
    row = next(row for row in load_segmentation_stream(path, "train", ["DUTS-TR"]) if row["id"] == "duts-tr_001")
    assert row["image"]["bytes"] == (tree.root / subset.image_dir / "duts-tr_001.jpg").read_bytes()
    assert row["mask"]["bytes"] == (tree.root / subset.mask_dir / "duts-tr_001.png").read_bytes()


def test_prepare_reports_missing_masks_and_missing_subsets(tmp_path, caplog):
    tree = make_hqseg_tree(tmp_path / "raw", n_per_dataset=2, bad_samples=False)
    (tree.root / "DIS5K/DIS-TR/gt" / f"{tree.good['DIS5K-TR'][0]}.png").unlink()
    arguments = prepare_hqseg44k.PrepareArguments(
        output_dir=str(tmp_path / "out"), source=str(tree.root), splits=["train"]
    )
    with caplog.at_level(logging.WARNING):
        prepare_hqseg44k.prepare(arguments)
    assert "has no .png mask" in caplog.text and tree.good["DIS5K-TR"][0] in caplog.text
    assert "Subset FSS is not in" in caplog.text
    assert [row["id"] for row in load_segmentation_stream(str(tmp_path / "out"), "train", ["DIS5K-TR"])] == [
        tree.good["DIS5K-TR"][1]
    ]
    assert "validation" not in str(sorted((tmp_path / "out").rglob("*.parquet")))

    with pytest.raises(ValueError, match="overwrite_output_dir"):
        prepare_hqseg44k.prepare(arguments)
    arguments.overwrite_output_dir = True
    prepare_hqseg44k.prepare(arguments)
    arguments.dataset_names = ["FSS"]
    with pytest.raises(ValueError, match="FSS"):
        prepare_hqseg44k.prepare(arguments)
    with pytest.raises(ValueError, match="dataset_names"):
        prepare_hqseg44k.select_subsets(["validation"], ["DIS5K-TR"])
    with pytest.raises(ValueError, match="splits"):
        prepare_hqseg44k.PrepareArguments(output_dir="x", splits=["test"])


def _dis5k_rows(path) -> list[str]:
    return sorted(row["id"] for row in load_segmentation_stream(str(path), "train", ["DIS5K-TR"]))


def test_prepare_overwrite_failing_part_way_keeps_the_previous_dataset(tmp_path, monkeypatch):
    tree = make_hqseg_tree(tmp_path / "raw", n_per_dataset=2, bad_samples=False)
    out = tmp_path / "out"
    arguments = prepare_hqseg44k.PrepareArguments(output_dir=str(out), source=str(tree.root), splits=["train"])
    prepare_hqseg44k.prepare(arguments)
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    (out / "DUTS-TR" / "notes.txt").write_text("the user's own file")
    (tree.root / "DIS5K/DIS-TR/im" / f"{tree.good['DIS5K-TR'][0]}.jpg").unlink()  # the new dataset differs
    real_write_subset = prepare_hqseg44k.write_subset

    def write_subset_failing_on_duts(pairs, subset, *args):
        if subset.name == "DUTS-TR":
            raise OSError("disk full")
        return real_write_subset(pairs, subset, *args)

    monkeypatch.setattr(prepare_hqseg44k, "write_subset", write_subset_failing_on_duts)
    arguments.overwrite_output_dir = True
    with pytest.raises(OSError, match="disk full"):
        prepare_hqseg44k.prepare(arguments)
    after = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == {**before, Path("DUTS-TR/notes.txt"): b"the user's own file"}  # nothing replaced, nothing left
    assert _dis5k_rows(out) == sorted(tree.good["DIS5K-TR"])

    # Completed, the new subsets replace the old shards and the user's file stays
    monkeypatch.setattr(prepare_hqseg44k, "write_subset", real_write_subset)
    prepare_hqseg44k.prepare(arguments)
    assert _dis5k_rows(out) == [tree.good["DIS5K-TR"][1]]
    assert (out / "DUTS-TR" / "notes.txt").read_text() == "the user's own file"
    assert sorted(path.name for path in out.iterdir()) == ["DIS5K-TR", "DUTS-TR", "README.md", "ThinObject5k-TR"]


def test_prepare_skips_counts_and_names_bad_symlinks(tmp_path, caplog):
    tree = make_hqseg_tree(tmp_path / "raw", n_per_dataset=2, bad_samples=False)
    images, masks = tree.root / "DIS5K/DIS-TR/im", tree.root / "DIS5K/DIS-TR/gt"
    good_image, good_mask = images / f"{tree.good['DIS5K-TR'][0]}.jpg", masks / f"{tree.good['DIS5K-TR'][0]}.png"
    secret = tmp_path / "private" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(good_image.read_bytes())
    (images / "dangling.jpg").symlink_to(images / "gone.jpg")
    (masks / "dangling.png").symlink_to(good_mask)
    (images / "folder.jpg").symlink_to(images.parent, target_is_directory=True)
    (masks / "folder.png").symlink_to(good_mask)
    (images / "outside.jpg").symlink_to(secret)
    (masks / "outside.png").symlink_to(good_mask)
    (images / "outside_mask.jpg").symlink_to(good_image)  # a link inside the tree is followed...
    (masks / "outside_mask.png").symlink_to(secret)  # ...but not its mask's link out of it
    (images / "inside.jpg").symlink_to(good_image)
    (masks / "inside.png").symlink_to(good_mask)
    out = tmp_path / "out"
    arguments = prepare_hqseg44k.PrepareArguments(
        output_dir=str(out), source=str(tree.root), splits=["train"], dataset_names=["DIS5K-TR"]
    )
    with caplog.at_level(logging.INFO):
        prepare_hqseg44k.prepare(arguments)
    assert _dis5k_rows(out) == sorted([*tree.good["DIS5K-TR"], "inside"])
    assert "1 images skipped (dangling_symlink" in caplog.text
    assert "1 images skipped (not_a_file" in caplog.text
    assert f"2 images skipped (symlink_outside_source, image or mask): {images / 'outside.jpg'}, " in caplog.text
    assert str(images / "outside_mask.jpg") in caplog.text
    assert "dangling_symlink=1, not_a_file=1, symlink_outside_source=2" in caplog.text
    written = b"".join(path.read_bytes() for path in out.rglob("*.parquet"))
    assert len(written) > 0 and b"outside" not in written


def test_prepare_downloads_and_unpacks_the_hub_archives(hqseg, tmp_path, monkeypatch):
    tree, local_path = hqseg
    archives = {}
    for top in ("DIS5K", "cascade_psp", "thin_object_detection"):
        archive = tmp_path / f"{top}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for file in sorted((tree.root / top).rglob("*")):
                if file.is_file():
                    # One archive without its top-level folder: both layouts must unpack to the same tree
                    name = file.relative_to(tree.root / top) if top == "cascade_psp" else file.relative_to(tree.root)
                    zipped.write(file, str(name))
        archives[f"data/{top}.zip"] = str(archive)
    calls = []

    def fake_hf_hub_download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type))
        return archives[filename]

    class FakeApi:
        def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, repo_type))

        def upload_folder(self, repo_id, folder_path, repo_type=None, allow_patterns=None):
            uploaded = sorted(
                str(file.relative_to(folder_path))
                for file in Path(folder_path).rglob("*")
                if file.is_file() and any(file.relative_to(folder_path).match(pattern) for pattern in allow_patterns)
            )
            calls.append(("upload_folder", repo_id, repo_type, uploaded))

    monkeypatch.setattr(prepare_hqseg44k, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(prepare_hqseg44k, "HfApi", FakeApi)
    output = prepare_hqseg44k.prepare(
        prepare_hqseg44k.PrepareArguments(output_dir=str(tmp_path / "out"), push_to_hub="user/hqseg")
    )
    pushes = [call for call in calls if call[0] in ("create_repo", "upload_folder")]
    calls = [call for call in calls if call not in pushes]
    assert pushes[0] == ("create_repo", "user/hqseg", "dataset")
    uploaded = pushes[1][3]
    assert pushes[1][:3] == ("upload_folder", "user/hqseg", "dataset") and "README.md" in uploaded
    shards = [name for name in uploaded if name != "README.md"]
    assert len(shards) == len(tree.splits) and all(name.endswith(".parquet") for name in shards)
    assert sorted(calls) == sorted(("sam-hq-team/sam-hq-training", filename, "model") for filename in archives)
    assert (tmp_path / "out-unpacked" / "cascade_psp" / "DUTS-TR").is_dir()
    for split in ("train", "validation"):
        assert {row["id"] for row in load_segmentation_stream(str(output), split)} == tree.ids(split)


@pytest.mark.parametrize("arguments_class", [prepare_hqseg44k.PrepareArguments, TrainStreamArguments])
def test_help_documents_every_option(arguments_class):
    help_text = HfArgumentParser(arguments_class).format_help()
    for option in fields(arguments_class):
        assert f"--{option.name}" in help_text
        assert option.metadata.get("help"), f"{option.name} has no help"


# Decoding


def test_decode_sample_converts_image_modes():
    gray = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    mask = encode(np.where(gray > 100, 255, 0).astype(np.uint8))
    image, decoded_mask = decode_sample({"image": {"bytes": encode(gray), "path": None}, "mask": mask})
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    assert torch.equal(image[0], torch.from_numpy(gray)) and torch.equal(image[0], image[2])
    assert decoded_mask.dtype == torch.bool and torch.equal(decoded_mask, torch.from_numpy(gray > 100))

    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    image, _ = decode_sample({"image": encode(rgba), "mask": mask})
    assert image.shape == (3, 48, 64) and image[0].eq(200).all() and image[1:].eq(0).all()

    deep = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    image, _ = decode_sample({"image": Image.fromarray(deep), "mask": mask})
    expected = np.clip(np.rint(deep / 257.0), 0, 255).astype(np.uint8)
    assert torch.equal(image[1], torch.from_numpy(expected))

    # Palette and CMYK images decode to their colours, not to indices or ink channels
    colours = np.zeros((48, 64, 3), dtype=np.uint8)
    colours[:, :32] = (200, 30, 90)
    colours[:, 32:] = (10, 220, 40)
    for converted in (Image.fromarray(colours).convert("P"), Image.fromarray(colours).convert("CMYK")):
        image, _ = decode_sample({"image": converted, "mask": mask})
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(converted.convert("RGB"))))


def test_decode_sample_binarises_masks():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    values = np.zeros((8, 8), dtype=np.uint8)
    values[0, :4], values[1, :4] = 100, 200
    _, mask = decode_sample({"image": image, "mask": values})
    assert mask.sum() == 4 and mask[1, :4].all()

    ones = (values > 0).astype(np.uint8)
    _, mask = decode_sample({"image": image, "mask": encode(ones)})
    assert mask.sum() == 8

    # A palette mask keeps its indices
    palette = Image.fromarray(ones, mode="L").convert("P")
    _, mask = decode_sample({"image": image, "mask": palette})
    assert mask.sum() == 8

    # Three channels: only the first counts
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[2, :, 0] = 255
    rgb[5, :, 1:] = 255
    _, mask = decode_sample({"image": image, "mask": encode(rgb)})
    assert mask[2].all() and mask.sum() == 8


@pytest.mark.parametrize(
    "image, mask, reason",
    [
        (b"\xff\xd8 truncated", np.full((8, 8), 255, np.uint8), "unreadable_image"),
        (np.zeros((8, 8, 3), np.uint8), b"not a png", "unreadable_mask"),
        (np.zeros((8, 8, 3), np.uint8), np.full((9, 8), 255, np.uint8), "size_mismatch"),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 90, np.uint8), "empty_mask"),
    ],
)
def test_decode_sample_reports_bad_samples(image, mask, reason):
    with pytest.raises(BadSampleError) as error:
        decode_sample({"image": image, "mask": mask})
    assert error.value.reason == reason


def test_stream_skips_and_counts_bad_samples(hqseg, caplog):
    tree, path = hqseg
    stream = train_stream(path, num_epochs=1, occlusion_prob=0.0)
    with caplog.at_level(logging.WARNING, logger="stable_sam_hf.data"):
        samples = list(stream)
    good = {sample_id for name in tree.good for sample_id in tree.good[name] if tree.splits[name] == "train"}
    assert sorted(sample["id"] for sample in samples) == sorted(good)
    expected = dict.fromkeys(SKIP_REASONS, 0)
    for _, sample_id, reason in FIXTURE_BAD_SAMPLES:
        expected[reason] += 1
        assert sample_id in caplog.text and reason in caplog.text
    assert stream.skip_counter.as_dict() == expected
    # The per-sample vectors carry the same counts out of DataLoader workers
    assert torch.stack([sample["skipped"] for sample in samples]).sum(0).tolist() == [
        expected[r] for r in SKIP_REASONS
    ]
    for sample in samples:
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
        assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.bool and sample["mask"].any()


def test_skip_counter_merges_and_reports():
    counter = SkipCounter({"empty_mask": 2})
    counter.add("unreadable_image")
    counter.update(SkipCounter({"empty_mask": 1}))
    batch = torch.zeros(4, len(SKIP_REASONS), dtype=torch.int64)
    batch[1, SKIP_REASONS.index("size_mismatch")] = 3
    counter.update(batch)
    assert counter.as_dict() == {
        **dict.fromkeys(SKIP_REASONS, 0),
        "empty_mask": 3,
        "unreadable_image": 1,
        "size_mismatch": 3,
    }
    assert counter.total() == 7
    assert counter.report() == "Skipped 7: unreadable_image=1, size_mismatch=3, empty_mask=3."
    assert SkipCounter().report() == "Skipped nothing."
    restored = SkipCounter()
    restored.load_state_dict(counter.state_dict())
    assert torch.equal(restored.to_tensor(), counter.to_tensor())
    with pytest.raises(ValueError, match="reason"):
        counter.add("cosmic_ray")
    with pytest.raises(ValueError, match="last dimension"):
        counter.update(torch.zeros(2, 3))


# Large-scale jitter


def object_image(height: int = 48, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[10:30, 5:25] = True
    mask[30:40, 5:10] = True
    return (mask.to(torch.uint8) * 255).expand(3, -1, -1).contiguous(), mask


def test_large_scale_jitter_shapes_scale_and_padding():
    image, mask = object_image()
    image = torch.where(mask, image, torch.full_like(image, 10))
    out_image, out_mask = large_scale_jitter(
        image, mask, torch.Generator().manual_seed(0), output_size=64, scale_range=(0.25, 0.25), flip_prob=0.0
    )
    assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.uint8
    assert out_mask.shape == (64, 64) and out_mask.dtype == torch.bool
    # Longest side resized to 0.25 x 64 = 16, aspect kept (48 x 64 -> 12 x 16), padded bottom and right
    content = out_image[0] != 128
    assert content[:12, :16].all() and not content[12:].any() and not content[:, 16:].any()
    assert not out_mask[12:].any() and not out_mask[:, 16:].any()
    assert out_image[:, 12:].eq(128).all()

    # Scale 2: longest side 128, cropped to 64 x 64, no padding left
    out_image, out_mask = large_scale_jitter(
        image, mask, torch.Generator().manual_seed(0), output_size=64, scale_range=(2.0, 2.0)
    )
    assert out_image.shape == (3, 64, 64) and not out_image.eq(128).any()


def test_large_scale_jitter_flips_image_and_mask_together():
    image, mask = object_image()
    flipped_any = False
    for seed in range(6):
        kept = large_scale_jitter(
            image, mask, torch.Generator().manual_seed(seed), output_size=64, scale_range=(0.5, 1.0), flip_prob=0.0
        )
        flipped = large_scale_jitter(
            image, mask, torch.Generator().manual_seed(seed), output_size=64, scale_range=(0.5, 1.0), flip_prob=1.0
        )
        for out_image, out_mask in (kept, flipped):
            # The image is 255 on the object: it must agree with the mask away from the blurred edges
            sure = (out_image[0] < 100) | (out_image[0] > 155)
            assert torch.equal((out_image[0] > 127)[sure], out_mask[sure])
        # Same scale drawn: the flipped content is the mirror of the kept one (up to float rounding)
        width = int((kept[0][0] != 128).any(0).sum())
        difference = flipped[0][:, :, :width].int() - kept[0][:, :, :width].flip(-1).int()
        assert difference.abs().max() <= 1
        assert torch.equal(flipped[1][:, :width], kept[1][:, :width].flip(-1))
        flipped_any |= not torch.equal(flipped[1], kept[1])
    assert flipped_any


def test_large_scale_jitter_is_seeded():
    image, mask = object_image()
    first = large_scale_jitter(image, mask, torch.Generator().manual_seed(3), output_size=64)
    again = large_scale_jitter(image, mask, torch.Generator().manual_seed(3), output_size=64)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    others = [
        large_scale_jitter(image, mask, torch.Generator().manual_seed(s), output_size=64)[0] for s in range(4, 8)
    ]
    assert any(not torch.equal(first[0], other) for other in others)
    with pytest.raises(ValueError, match="mask"):
        large_scale_jitter(image, mask[:-1], torch.Generator(), output_size=64)


# Occlusion


def occlusion_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10:41, 10:51] = True
    image = torch.full((3, 64, 64), 50, dtype=torch.uint8)
    occluder_mask = torch.zeros(64, 64, dtype=torch.bool)
    occluder_mask[50:58, 2:10] = True
    occluder_image = torch.full((3, 64, 64), 7, dtype=torch.uint8)
    occluder_image[:, occluder_mask] = 200
    return image, mask, occluder_image, occluder_mask


def test_paste_occluder_centre_in_target_box_and_mask_updated():
    image, mask, occluder_image, occluder_mask = occlusion_inputs()
    x0, y0, x1, y1 = masks_to_boxes(mask[None])[0].int().tolist()
    assert (y0, x0, y1, x1) == (10, 10, 40, 50)
    ox0, oy0, ox1, oy1 = masks_to_boxes(occluder_mask[None])[0].int().tolist()
    centre = ((oy0 + oy1) // 2, (ox0 + ox1) // 2)
    shifts = set()
    for seed in range(20):
        new_image, new_mask, shift = paste_occluder(
            image, mask, occluder_image, occluder_mask, torch.Generator().manual_seed(seed)
        )
        assert shift is not None
        dy, dx = shift
        shifts.add(shift)
        assert y0 <= centre[0] + dy <= y1 and x0 <= centre[1] + dx <= x1
        pasted = torch.zeros_like(mask)
        pasted[oy0 + dy : oy1 + dy + 1, ox0 + dx : ox1 + dx + 1] = True
        assert torch.equal(new_mask, mask & ~pasted)
        assert new_image[:, pasted].eq(200).all() and new_image[:, ~pasted].eq(50).all()
    assert len(shifts) > 1


def test_paste_occluder_drops_an_occluder_that_hides_the_target():
    image, mask, occluder_image, _ = occlusion_inputs()
    covering = torch.ones(64, 64, dtype=torch.bool)
    covering[0, 0] = False
    new_image, new_mask, shift = paste_occluder(
        image, mask, occluder_image, covering, torch.Generator().manual_seed(0)
    )
    assert shift is None and new_image is image and new_mask is mask
    # 41 x 31 target, 40 x 31 occluder: under 5 % of the target stays visible whatever the shift
    nearly = torch.zeros(64, 64, dtype=torch.bool)
    nearly[0:64, 0:63] = True
    assert paste_occluder(image, mask, occluder_image, nearly, torch.Generator().manual_seed(0))[2] is None
    assert paste_occluder(image, mask, occluder_image, nearly, torch.Generator(), min_visible_fraction=0.0)[2] is None


def test_stream_occludes_with_previous_samples(hqseg):
    _, path = hqseg
    samples = list(train_stream(path, num_epochs=2, occlusion_prob=1.0, min_visible_fraction=0.0))
    assert not samples[0]["occluded"]
    assert sum(sample["occluded"] for sample in samples) >= len(samples) // 2
    assert all(sample["mask"].any() for sample in samples)


# Streams: determinism, sharding, resuming


def assert_same_samples(first: list[dict], second: list[dict]) -> None:
    assert [sample["id"] for sample in first] == [sample["id"] for sample in second]
    for a, b in zip(first, second):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["occluded"] == b["occluded"] and torch.equal(a["skipped"], b["skipped"])


def test_stream_is_deterministic_given_the_seed(hqseg):
    _, path = hqseg
    first = list(train_stream(path, num_epochs=2, seed=5))
    assert_same_samples(first, list(train_stream(path, num_epochs=2, seed=5)))
    other = list(train_stream(path, num_epochs=2, seed=6))
    assert [s["id"] for s in first] != [s["id"] for s in other] or any(
        not torch.equal(a["image"], b["image"]) for a, b in zip(first, other)
    )
    # Epochs are reshuffled
    assert [s["id"] for s in first[:9]] != [s["id"] for s in first[9:]]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_samples(hqseg, world_size):
    # 2 row groups per subset: split by row group for 2 ranks, by example for 3
    tree, path = hqseg
    per_rank = [
        [sample["id"] for sample in train_stream(path, num_epochs=1, rank=rank, world_size=world_size)]
        for rank in range(world_size)
    ]
    all_ids = [sample_id for ids in per_rank for sample_id in ids]
    assert len(all_ids) == len(set(all_ids))
    assert set(all_ids) == tree.ids("train", with_bad=False)


def test_dataloader_workers_share_the_stream(hqseg):
    tree, path = hqseg
    loader = DataLoader(train_stream(path, num_epochs=1), batch_size=2, num_workers=2)
    batches = list(loader)
    ids = [sample_id for batch in batches for sample_id in batch["id"]]
    assert len(ids) == len(set(ids)) and set(ids) == tree.ids("train", with_bad=False)
    assert batches[0]["image"].shape == (2, 3, 64, 64) and batches[0]["mask"].dtype == torch.bool
    counter = SkipCounter()
    for batch in batches:
        counter.update(batch["skipped"])
    assert {reason: counter.as_dict()[reason] for _, _, reason in FIXTURE_BAD_SAMPLES} == dict.fromkeys(
        [reason for _, _, reason in FIXTURE_BAD_SAMPLES], 1
    )


def unbatch(batches: list[dict]) -> list[dict]:
    return [
        {key: batch[key][index] for key in ("id", "image", "mask", "occluded", "skipped")}
        for batch in batches
        for index in range(len(batch["id"]))
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_the_uninterrupted_stream(hqseg, num_workers):
    _, path = hqseg
    # 9 usable samples an epoch: 12 batches of 2 cross two epoch boundaries
    full = unbatch(take(DataLoader(train_stream(path, seed=1), batch_size=2, num_workers=num_workers), 12))
    for consumed_batches in (3, 7):
        stream = train_stream(path, seed=1)
        stream.resume_from(consumed_batches * 2, batch_size=2)
        loader = DataLoader(stream, batch_size=2, num_workers=num_workers)
        resumed = unbatch(take(loader, 12 - consumed_batches))
        assert_same_samples(resumed, full[consumed_batches * 2 :])


# Arguments


def test_build_train_dataset_from_parsed_arguments(hqseg):
    _, path = hqseg
    (arguments,) = HfArgumentParser(TrainStreamArguments).parse_args_into_dataclasses(
        ["--dataset", path, "--output_size", "32", "--dataset_names", "DUTS-TR", "--occlusion_prob", "0"]
    )
    samples = list(build_train_dataset(arguments, seed=0, num_epochs=1))
    assert {sample["id"] for sample in samples} == {"duts-tr_000", "duts-tr_001", "duts-tr_002"}
    assert samples[0]["image"].shape == (3, 32, 32)


def test_bad_arguments_raise_clear_errors(hqseg):
    _, path = hqseg
    with pytest.raises(ValueError, match="output_size"):
        TrainStreamArguments(dataset=path, output_size=0)
    with pytest.raises(ValueError, match="jitter_scale_min"):
        TrainStreamArguments(dataset=path, jitter_scale_min=2.0, jitter_scale_max=1.0)
    with pytest.raises(ValueError, match="occlusion_prob"):
        TrainStreamArguments(dataset=path, occlusion_prob=1.5)
    with pytest.raises(ValueError, match="rank"):
        train_stream(path, rank=2, world_size=2)
    with pytest.raises(ValueError, match="dataset_names"):
        load_segmentation_subsets(path, "train", ["DIS5K-VD"])
    with pytest.raises(ValueError, match="split"):
        load_segmentation_subsets(path, "test")
    with pytest.raises(ValueError, match="num_samples"):
        train_stream(path).resume_from(-1)
    with pytest.raises(ValueError, match="multiple of `batch_size`"):
        train_stream(path).resume_from(5, batch_size=2)


def test_masks_thinner_than_two_pixels_are_not_promptable():
    from stable_sam_hf.data import spans_two_pixels

    mask = torch.zeros(16, 16, dtype=torch.bool)
    assert not spans_two_pixels(mask)
    mask[3:10, 5] = True  # one column wide: its box would have x1 == x0
    assert not spans_two_pixels(mask)
    mask[3:10, 6] = True
    assert spans_two_pixels(mask)


def test_occluder_leaving_a_one_pixel_sliver_is_dropped():
    from stable_sam_hf.data import spans_two_pixels

    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 4:8] = True
    occluder = torch.zeros(16, 16, dtype=torch.bool)
    occluder[:, 4:7] = True  # full height, 3 columns: shifted by dx it hides target columns 4+dx..6+dx
    occluder_image = torch.full((3, 16, 16), 255, dtype=torch.uint8)
    outcomes = set()
    for seed in range(40):
        _, result_mask, shift = paste_occluder(
            image, mask, occluder_image, occluder, torch.Generator().manual_seed(seed), min_visible_fraction=0.0
        )
        outcomes.add(shift is None)
        if shift is not None:
            # dx = 0 or 1 would leave a single visible column
            assert shift[1] in (-1, 2) and spans_two_pixels(result_mask)
    assert outcomes == {True, False}


def test_prepare_never_reads_through_a_linked_folder_leading_out_of_the_source(tmp_path):
    tree = make_hqseg_tree(tmp_path / "raw", n_per_dataset=2, bad_samples=False)
    images = tree.root / "DIS5K/DIS-TR/im"
    private = tmp_path / "private"
    images.rename(private)
    (private / "secret.jpg").write_bytes(b"outside bytes")
    images.symlink_to(private, target_is_directory=True)
    out = tmp_path / "out"
    arguments = prepare_hqseg44k.PrepareArguments(
        output_dir=str(out), source=str(tree.root), splits=["train"], dataset_names=["DIS5K-TR"]
    )
    with pytest.raises(ValueError, match=f"Subset DIS5K-TR: {images} resolves to {private}, outside the source"):
        prepare_hqseg44k.prepare(arguments)
    assert not any(out.rglob("*.parquet"))


def test_skip_reason_judges_the_whole_path_not_its_last_component(tmp_path):
    source = tmp_path / "source"
    (source / "inside").mkdir(parents=True)
    (source / "inside" / "a.jpg").write_bytes(b"inside")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "a.jpg").write_bytes(b"outside")
    (source / "linked").symlink_to(tmp_path / "private", target_is_directory=True)
    root = source.resolve()
    assert prepare_hqseg44k.skip_reason(source / "inside" / "a.jpg", root) is None
    assert prepare_hqseg44k.skip_reason(source / "linked" / "a.jpg", root) == prepare_hqseg44k.SKIP_OUTSIDE
