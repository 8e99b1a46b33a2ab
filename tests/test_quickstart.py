"""The offline demo on a reduced budget, on the toy SAM shipped in models/toy-sam-128."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SamModel

from fixtures import FIXTURE_VALIDATION_FOLDERS, load_prepare_script, make_hqseg_tree
from tiny import tiny_sam_config


ROOT = Path(__file__).resolve().parents[1]
TOY_BASE = ROOT / "models" / "toy-sam-128"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "examples"))
    import quickstart

    output_dir = tmp_path_factory.mktemp("quickstart")
    # The default methods: Stable-SAM only, compared with the frozen base
    quickstart.main(
        [
            "--output_dir",
            str(output_dir),
            "--num_train_scenes",
            "80",
            "--num_eval_scenes",
            "20",
            "--num_coco_like_scenes",
            "4",
            "--max_train_steps",
            "40",
            "--num_prompts",
            "3",
            "--max_objects_per_dataset",
            "20",
        ]
    )
    return output_dir


def test_toy_base_is_shipped_with_its_card():
    assert (TOY_BASE / "config.json").is_file() and (TOY_BASE / "model.safetensors").is_file()
    assert (TOY_BASE / "model.safetensors").stat().st_size < 10 * 2**20
    assert "not SAM" in (TOY_BASE / "README.md").read_text()


def test_quickstart_trains_stable_sam_only_by_default(quickstart_run):
    assert sorted(path.name for path in (quickstart_run / "runs").iterdir()) == ["stable"]
    with (quickstart_run / "eval" / "results.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert {row["model"] for row in rows} == {"base", "stable"}
    # The forced-alpha_1 sweep (Table 8) only with --routing_sweep
    assert all(row["routing_weight"] in ("", "None") for row in rows)


def test_quickstart_reports_every_cell(quickstart_run):
    with (quickstart_run / "eval" / "results.csv").open() as stream:
        rows = [row for row in csv.DictReader(stream) if row["routing_weight"] in ("", "None")]
    cells = {(row["model"], row["dataset"], row["prompt_type"]) for row in rows}
    for model in ("base", "stable"):
        for dataset in ("DIS5K-VD", "COIFT", "HRSOD"):
            for prompt_type in ("box", "noisy_box", "points_1", "points_3"):
                assert (model, dataset, prompt_type) in cells
    summary = (quickstart_run / "summary.md").read_text()
    assert "held-out scenes" in summary and "mIoU difference to the frozen base" in summary
    for row in rows:  # every trained model has its paired difference to the base, with an interval around it
        if row["model"] != "base":
            assert float(row["mIoU_diff_low"]) <= float(row["mIoU_diff"]) <= float(row["mIoU_diff_high"])
    # The demo's default world is HQSeg-like: one labelled object per held-out scene
    masks = sorted((quickstart_run / "scenes" / "DIS5K" / "DIS-VD" / "gt").glob("*.png"))
    assert len(masks) == 20 and all(path.stem.endswith("_obj1") for path in masks)
    # The COCO-like scenes are the base's own world, whatever --scene_config says: several labelled objects each
    coco_like = sorted((quickstart_run / "scenes" / "thin_object_detection" / "HRSOD" / "masks_max255").glob("*.png"))
    scenes = {path.stem.split("_obj")[0] for path in coco_like}
    assert len(scenes) == 4 and len(coco_like) >= 2 * len(scenes)
    assert "COCO-like scenes" in summary
    # ... and the same scenes as a COCO instance set, scored by the COCO protocol (mask mAP under noisy boxes)
    coco = {row["model"]: row for row in rows if row["dataset"] == "COCO"}
    assert set(coco) == {"base", "stable"}
    for row in coco.values():
        assert row["prompt_type"] == "coco_noisy_box" and 0 <= float(row["mAP"]) <= float(row["mAP50"]) <= 100
        assert int(row["num_objects"]) >= 2 * len(scenes)
    assert "COCO protocol" in summary
    with Image.open(quickstart_run / "compare_with_sam.png") as figure:
        assert figure.width > 200 and figure.height > 200


def test_quickstart_runs_the_real_recipe_path_on_a_given_sam_and_dataset(tmp_path):
    # `--base_model facebook/sam-vit-base --dataset <HQSeg-44K>` on a tiny SAM folder and a fixture tree in HQSeg-44K's
    # layout prepared by prepare_hqseg44k.py. No --output_size: it comes from the base's config (train.py stops on any
    # other size than the model's, so the toy's 128 would fail here)
    sys.path.insert(0, str(ROOT / "examples"))
    import quickstart

    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(tmp_path / "sam")
    tree = make_hqseg_tree(tmp_path / "raw", n_per_dataset=4, size=(48, 64))
    # An unreadable image sorted first in the first validation subset: the figure skips it with a warning
    (tree.root / "DIS5K/DIS-VD/im/aaa_truncated.jpg").write_bytes(b"\xff\xd8\xff")
    (tree.root / "DIS5K/DIS-VD/gt/aaa_truncated.png").write_bytes(
        (tree.root / "DIS5K/DIS-VD/gt/dis5k-vd_000.png").read_bytes()
    )
    prepare = load_prepare_script()
    dataset = prepare.prepare(prepare.PrepareArguments(output_dir=str(tmp_path / "hqseg"), source=str(tree.root)))
    output_dir = tmp_path / "run"
    quickstart.main(
        ["--output_dir", str(output_dir), "--base_model", str(tmp_path / "sam"), "--dataset", str(dataset)]
        + ["--methods", "stable", "--max_train_steps", "2", "--total_batch_size", "4", "--per_device_train_batch_size"]
        + ["2", "--num_prompts", "1", "--prompt_types", "box", "noisy_box", "--max_objects_per_dataset", "0"]
    )
    assert not (output_dir / "scenes").exists() and not (output_dir / "data").exists()  # nothing synthetic made
    with (output_dir / "eval" / "results.csv").open() as stream:
        rows = [row for row in csv.DictReader(stream) if row["routing_weight"] in ("", "None")]
    validation = {name for name, _, _ in FIXTURE_VALIDATION_FOLDERS}
    assert {row["dataset"] for row in rows} == validation | {"average"}
    assert {row["model"] for row in rows} == {"base", "stable"}
    # --max_objects_per_dataset 0: every object of every subset, the unreadable one counted, not lost
    for row in rows:
        if row["dataset"] in validation:
            assert int(row["num_objects"]) == 4
            assert int(row["num_skipped"]) == (row["dataset"] == "DIS5K-VD")
    # The real subsets keep their names: the toy's labels would call COIFT a shifted domain and HRSOD COCO-like
    summary = (output_dir / "summary.md").read_text()
    for name in [*validation, "average over the validation subsets"]:
        assert f"\n{name} (mIoU %" in summary
    assert not any(label in summary for label in quickstart.DATASET_LABELS.values())
    # The side-by-side figure is drawn on the first readable object of DIS5K-VD, the truncated image skipped
    with Image.open(output_dir / "held_out_example.png") as example:
        drawn = np.array(example.convert("RGB"))
    with Image.open(tree.root / "DIS5K/DIS-VD/im/dis5k-vd_000.jpg") as first:
        assert np.array_equal(drawn, np.array(first.convert("RGB")))
    with Image.open(output_dir / "compare_with_sam.png") as figure:
        assert figure.width > 200 and figure.height > 200


def test_steps_run_offline_only_on_local_models_and_data(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "examples"))
    import quickstart

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "data").mkdir()
    offline = quickstart.QuickstartArguments(output_dir=str(tmp_path / "run"))  # the toy base, synthetic scenes
    assert quickstart.child_env(offline)["HF_HUB_OFFLINE"] == "1"
    local = quickstart.QuickstartArguments(output_dir=str(tmp_path / "run"), dataset=str(tmp_path / "data"))
    assert quickstart.child_env(local)["HF_HUB_OFFLINE"] == "1"
    # The real recipe downloads SAM and HQSeg-44K: forcing the steps offline would stop it at its first download
    for hub in ({"base_model": "facebook/sam-vit-base"}, {"dataset": "user/hqseg44k"}):
        real = quickstart.QuickstartArguments(output_dir=str(tmp_path / "run"), **hub)
        assert "HF_HUB_OFFLINE" not in quickstart.child_env(real)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a user who sets it keeps it
    assert quickstart.child_env(real)["HF_HUB_OFFLINE"] == "1"


def test_quickstart_rejects_a_bad_scene_knob_before_any_work(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    import quickstart

    with pytest.raises(ValueError, match="`scene_config` entries must be `name=value`"):
        quickstart.main(["--output_dir", str(tmp_path / "run"), "--scene_config", "clutter=3"])
    with pytest.raises(ValueError, match="salient_min_radius"):
        quickstart.main(["--output_dir", str(tmp_path / "run"), "--scene_config", "salient_min_radius=0.2"])
    with pytest.raises(ValueError, match="`max_objects_per_dataset` must be an integer >= 0, got -1"):
        quickstart.main(["--output_dir", str(tmp_path / "run"), "--max_objects_per_dataset", "-1"])
    with pytest.raises(ValueError, match="`num_coco_like_scenes` must be an integer >= 0, got -1"):
        quickstart.main(["--output_dir", str(tmp_path / "run"), "--num_coco_like_scenes", "-1"])
    with pytest.raises(ValueError, match="`num_coco_like_scenes` adds synthetic scenes"):
        quickstart.main(["--output_dir", str(tmp_path / "run"), "--dataset", "data", "--num_coco_like_scenes", "2"])
    for methods in (["stable", "finetune"], ["stable", "stable"]):
        with pytest.raises(ValueError, match="`methods` must name distinct methods among"):
            quickstart.main(["--output_dir", str(tmp_path / "run"), "--methods", *methods])
    assert not (tmp_path / "run").exists()


def test_quickstart_never_replaces_a_folder_it_did_not_write(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    import quickstart

    # A user's folder that happens to hold a `runs/stable` and `scenes/`: a rerun would delete them
    user_dir = tmp_path / "mine"
    (user_dir / "runs" / "stable").mkdir(parents=True)
    (user_dir / "runs" / "stable" / "model.safetensors").write_bytes(b"weights")
    (user_dir / "scenes").mkdir()
    with pytest.raises(ValueError, match="holds files the quickstart did not write"):
        quickstart.main(["--output_dir", str(user_dir)])
    assert (user_dir / "runs" / "stable" / "model.safetensors").read_bytes() == b"weights"
    assert (user_dir / "scenes").is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        quickstart.claim_output_dir(a_file)
    # A new folder becomes the quickstart's, and stays claimable after a run has written into it
    ours = tmp_path / "ours"
    quickstart.claim_output_dir(ours)
    (ours / "runs" / "stable").mkdir(parents=True)
    quickstart.claim_output_dir(ours)
