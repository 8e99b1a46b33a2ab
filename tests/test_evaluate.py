"""training/evaluate_model.py end to end on a tiny SAM, a tiny Stable-SAM and fixture data (HQ validation subsets and
a COCO-format file), and the pieces of `stable_sam_hf.evaluation` it is built from."""

import csv
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from transformers import SamModel

from stable_sam_hf import StableSamModel, StableSamProcessor
from stable_sam_hf.evaluation import (
    SamPredictor,
    coco_detections,
    coco_mask_ap,
    coco_objects,
    coco_prompt_boxes,
    draw_prompts,
    load_model,
    parse_model_spec,
    score_object,
)
from stable_sam_hf.methods import build_segmenter
from stable_sam_hf.metrics import bootstrap_interval
from stable_sam_hf.prompts import EVALUATION_PROMPT_TYPES, box_iou, masks_to_boxes

from fixtures import load_prepare_script, make_hqseg_tree
from processes import run_distributed
from tiny import perturb_plugins_, tiny_sam_config, tiny_stable_sam_config


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
import evaluate_model  # noqa: E402


# pycocotools' own use of numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

PROMPT_TYPES = [str(prompt_type.value) for prompt_type in EVALUATION_PROMPT_TYPES]
VALIDATION_SUBSETS = ["DIS5K-VD", "COIFT", "HRSOD", "ThinObject5k-TE"]
SWEEP = ["0", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two shared cores: OpenMP threads fighting over them slow the tiny models down tenfold
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_coco_fixture(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Three images with 2-3 objects each (polygons and RLEs, two categories) and one crowd region."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id, (height, width, count) in enumerate([(40, 56, 2), (48, 48, 3), (36, 60, 3)], start=1):
        image = rng.integers(0, 50, size=(height, width, 3), dtype=np.uint8)
        for index in range(count):
            x0, y0 = 2 + index * (width // count), int(rng.integers(2, height // 3))
            x1, y1 = x0 + width // count - 4, int(rng.integers(2 * height // 3, height - 2))
            category = 1 + index % 2
            if index == 0:
                segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                mask = mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width)).max(axis=2) > 0
            else:
                ys, xs = np.mgrid[0:height, 0:width]
                cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
                mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            image[mask] = rng.integers(180, 256, size=3, dtype=np.uint8)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "iscrowd": 0,
                }
            )
        Image.fromarray(image).save(images_dir / f"{image_id:012d}.jpg", quality=95)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
    crowd = np.zeros((36, 60), dtype=np.uint8)
    crowd[30:35, 40:58] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 3,
            "category_id": 1,
            "segmentation": {"size": [36, 60], "counts": crowd_rle["counts"].decode("ascii")},
            "area": float(crowd.sum()),
            "bbox": [40.0, 30.0, 18.0, 5.0],
            "iscrowd": 1,
        }
    )
    categories = [{"id": 1, "name": "first"}, {"id": 2, "name": "second"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, images_dir


def _add_empty_validation_sample(raw: Path) -> None:
    image = np.full((48, 64, 3), 90, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    (raw / "DIS5K/DIS-VD/im/empty_000.jpg").write_bytes(buffer.getvalue())
    Image.fromarray(np.zeros((48, 64), dtype=np.uint8)).save(raw / "DIS5K/DIS-VD/gt/empty_000.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(root / "sam")
    stable = StableSamModel.from_pretrained(root / "sam", config=tiny_stable_sam_config())
    perturb_plugins_(stable, seed=1)
    stable.save_pretrained(root / "stable")
    make_hqseg_tree(root / "raw", n_per_dataset=3, size=(48, 64), bad_samples=False)
    _add_empty_validation_sample(root / "raw")
    prepare = load_prepare_script()
    prepare.prepare(prepare.PrepareArguments(output_dir=str(root / "data"), source=str(root / "raw")))
    make_coco_fixture(root / "coco")
    return root


def _argv(workspace: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--models",
        f"sam=sam:{workspace / 'sam'}",
        f"stable=stable:{workspace / 'stable'}",
        "--dataset",
        str(workspace / "data"),
        "--output_dir",
        str(output_dir),
        "--num_prompts",
        "3",
        "--routing_weight",
        *SWEEP,
        "--record_prompts",
        "--coco_annotations",
        str(workspace / "coco" / "instances.json"),
        "--coco_images",
        str(workspace / "coco" / "images"),
        *extra,
    ]


@pytest.fixture(scope="module")
def first_run(workspace):
    output_dir = workspace / "run1"
    evaluate_model.main(_argv(workspace, output_dir))
    return output_dir


def _csv_rows(output_dir: Path) -> list[dict[str, str]]:
    with (output_dir / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "per_object.rank0.jsonl").read_text().splitlines()]


def test_help_documents_every_option():
    parser = evaluate_model.HfArgumentParser(evaluate_model.EvaluationArguments)
    text = parser.format_help()
    for name, field in evaluate_model.EvaluationArguments.__dataclass_fields__.items():
        assert f"--{name}" in text, name
        assert field.metadata.get("help"), f"{name} has no help text"


def test_results_have_every_model_prompt_dataset_cell(first_run):
    rows = _csv_rows(first_run)
    main = {(r["model"], r["dataset"], r["prompt_type"]): r for r in rows if r["routing_weight"] == ""}
    for model in ("sam", "stable"):
        for dataset in [*VALIDATION_SUBSETS, "average"]:
            for prompt_type in PROMPT_TYPES:
                row = main[(model, dataset, prompt_type)]
                assert 0.0 <= float(row["mIoU"]) <= 100.0 and 0.0 <= float(row["mBIoU"]) <= 100.0
                assert (row["ST"] == "") == (prompt_type == "box"), (model, prompt_type)
                assert (row["alpha_1"] == "") == (model == "sam")
                # SAM's IoU head is an unbounded linear output: a random tiny model's estimate may lie below 0
                assert math.isfinite(float(row["pred_IoU"]))
                assert row["num_prompts"] == ("1" if prompt_type == "box" else "3") and row["seed"] == "0"
    # The empty ground truth was skipped and counted, not averaged
    assert main[("sam", "DIS5K-VD", "box")]["num_objects"] == "3"
    assert main[("sam", "DIS5K-VD", "box")]["num_skipped"] == "1"
    assert main[("sam", "COIFT", "box")]["num_skipped"] == "0"
    assert main[("stable", "average", "points_1")]["num_objects"] == "12"
    # The sweep is for Stable-SAM only, one row per forced alpha_1
    swept = {(r["model"], r["routing_weight"]) for r in rows if r["routing_weight"] != ""}
    assert swept == {("stable", "0.0"), ("stable", "1.0")}
    assert len(rows) == 2 * 5 * 6 + 2 * 5 * 6 + 2  # main cells, sweep cells, one COCO row per model


def test_forced_alpha_zero_is_sam_and_alpha_is_recorded(first_run):
    rows = _csv_rows(first_run)
    sam = {(r["dataset"], r["prompt_type"]): r for r in rows if r["model"] == "sam" and r["dataset"] != "COCO"}
    forced = {(r["dataset"], r["prompt_type"]): r for r in rows if r["routing_weight"] == "0.0"}
    assert sam.keys() == forced.keys()
    for cell, row in forced.items():
        assert row["mIoU"] == sam[cell]["mIoU"] and row["mBIoU"] == sam[cell]["mBIoU"], cell
        assert row["pred_IoU"] == sam[cell]["pred_IoU"], cell
        assert float(row["alpha_1"]) == 0.0
    predicted = [r for r in rows if r["model"] == "stable" and r["routing_weight"] == "" and r["dataset"] != "COCO"]
    alphas = [float(r["alpha_1"]) for r in predicted]
    assert all(0.0 < alpha < 1.0 for alpha in alphas)
    # The perturbed plugins change the masks
    assert any(r["mIoU"] != sam[(r["dataset"], r["prompt_type"])]["mIoU"] for r in predicted)


def test_intervals_and_differences_to_the_reference(first_run):
    rows = _csv_rows(first_run)
    main = {(r["model"], r["routing_weight"], r["dataset"], r["prompt_type"]): r for r in rows}
    records = [r for r in _records(first_run) if r["routing_weight"] is None and r["dataset"] != "COCO"]
    for (model, weight, dataset, prompt_type), row in main.items():
        low, miou, high = (float(row[c]) for c in ("mIoU_low", "mIoU", "mIoU_high"))
        assert low <= miou <= high, (model, dataset, prompt_type)
        if model == "sam":  # the reference has no difference to itself
            assert row["mIoU_diff"] == row["mIoU_diff_low"] == row["mIoU_diff_high"] == ""
            continue
        sam = main[("sam", "", dataset, prompt_type)]
        difference = float(row["mIoU_diff"])
        # Same objects on both sides: the paired difference is the difference of the mIoUs
        assert difference == pytest.approx(float(row["mIoU"]) - float(sam["mIoU"]), abs=1e-9)
        assert float(row["mIoU_diff_low"]) <= difference <= float(row["mIoU_diff_high"])
        if weight == "0.0":  # forced alpha_1 = 0 is SAM object by object: no spread at all
            assert float(row["mIoU_diff_low"]) == float(row["mIoU_diff_high"]) == 0.0
    # The interval comes from the per-object IoUs (one dataset, resampled with the same seed)
    cell = [r for r in records if (r["model"], r["dataset"], r["prompt_type"]) == ("stable", "COIFT", "points_1")]
    values = torch.tensor([float(np.nanmean(r["iou"])) for r in cell], dtype=torch.float64)
    low, high = (100 * v for v in bootstrap_interval(values))
    row = main[("stable", "", "COIFT", "points_1")]
    assert (float(row["mIoU_low"]), float(row["mIoU_high"])) == pytest.approx((low, high))


def test_every_model_sees_the_same_prompts(first_run):
    prompts = {}
    for record in _records(first_run):
        if record["dataset"] == "COCO":
            continue
        key = (record["routing_weight"], record["dataset"], record["id"], record["prompt_type"])
        prompts.setdefault(key, {})[record["model"]] = record["prompts"]
    shared = [models for (weight, *_), models in prompts.items() if weight is None]
    assert len(shared) == 12 * 6
    for models in shared:
        assert models["sam"] == models["stable"]
    for (weight, dataset, object_id, prompt_type), models in prompts.items():
        if weight is not None:
            assert models["stable"] == prompts[(None, dataset, object_id, prompt_type)]["stable"]
    # K different draws per random prompt type, one GT box
    some = prompts[(None, "COIFT", "coift_000", "points_3")]["sam"]["input_points"]
    assert len(some) == 3 and len({json.dumps(points) for points in some}) == 3
    assert len(prompts[(None, "COIFT", "coift_000", "box")]["sam"]["input_boxes"]) == 1


def test_plots_and_markdown(first_run):
    for name in ("miou_vs_points.png", "alpha1_vs_points.png", "miou_vs_routing_weight.png"):
        with Image.open(first_run / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
            image.load()
    table = (first_run / "results.md").read_text()
    assert "Prompt seed 0" in table and "`stable` = stable:" in table
    # main, (stable:) difference to sam, sweep, COCO rows
    assert table.count("| sam | ") == 6 + 1 and table.count("| stable | ") == 6 + 1 + 2 + 1
    assert "mIoU difference to `sam`" in table
    assert "mAP50" in table


def test_coco_rows(first_run):
    rows = [r for r in _csv_rows(first_run) if r["dataset"] == "COCO"]
    assert [r["model"] for r in rows] == ["sam", "stable"]
    for row in rows:
        assert 0.0 <= float(row["mAP"]) <= 100.0 and 0.0 <= float(row["mAP50"]) <= 100.0
        assert float(row["mAP50"]) >= float(row["mAP"])
        assert row["num_objects"] == "8"  # the crowd region is not prompted
    records = [r for r in _records(first_run) if r["dataset"] == "COCO"]
    boxes = {r["id"]: {} for r in records}
    for record in records:
        boxes[record["id"]][record["model"]] = record["prompts"]["input_boxes"]
    assert all(models["sam"] == models["stable"] for models in boxes.values())
    # The predicted IoU of a COCO cell is the mean score that ranked its detections
    for row in rows:
        scores = [r["detection"]["score"] for r in records if r["model"] == row["model"]]
        assert float(row["pred_IoU"]) == pytest.approx(100 * sum(scores) / len(scores))


def test_second_run_gives_identical_numbers(workspace, first_run):
    second = workspace / "run2"
    evaluate_model.main(_argv(workspace, second))
    assert _csv_rows(second) == _csv_rows(first_run)
    assert (second / "results.md").read_text() == (first_run / "results.md").read_text()


def test_interrupted_run_resumes_without_losing_results(workspace, first_run, tmp_path):
    # An interrupted run: a third of the records, and the last line cut off mid-write
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    lines = (first_run / "per_object.rank0.jsonl").read_text().splitlines(keepends=True)
    kept = len(lines) // 3
    (resumed / "per_object.rank0.jsonl").write_text("".join(lines[:kept]) + lines[kept][: len(lines[kept]) // 2])
    evaluate_model.main(_argv(workspace, resumed))
    assert _csv_rows(resumed) == _csv_rows(first_run)
    resumed_lines = (resumed / "per_object.rank0.jsonl").read_text().splitlines(keepends=True)
    assert resumed_lines[:kept] == lines[:kept]
    assert len(resumed_lines) == len(lines)
    # Nothing left to compute: a rerun appends nothing
    evaluate_model.main(_argv(workspace, resumed))
    assert len((resumed / "per_object.rank0.jsonl").read_text().splitlines()) == len(lines)
    assert _csv_rows(resumed) == _csv_rows(first_run)


@pytest.mark.slow
def test_two_processes_agree_with_one(workspace, tmp_path):
    def argv(output_dir: Path) -> list[str]:
        return [
            *("--models", f"sam=sam:{workspace / 'sam'}", "--dataset", str(workspace / "data")),
            *("--output_dir", str(output_dir), "--prompt_types", "box", "noisy_box", "points_1", "--num_prompts", "2"),
            *("--coco_annotations", str(workspace / "coco" / "instances.json")),
            *("--coco_images", str(workspace / "coco" / "images")),
        ]

    evaluate_model.main(argv(tmp_path / "one"))
    # torchrun starts the processes; accelerate runs them on the CPU with a gloo process group
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = [str(ROOT / "training" / "evaluate_model.py"), *argv(tmp_path / "two")]
    result = run_distributed(
        lambda port: [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            *script,
        ],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Each process evaluated its own share of the objects
    shares = [len((tmp_path / "two" / f"per_object.rank{rank}.jsonl").read_text().splitlines()) for rank in (0, 1)]
    assert all(share > 0 for share in shares)
    assert sum(shares) == len((tmp_path / "one" / "per_object.rank0.jsonl").read_text().splitlines())
    one, two = _csv_rows(tmp_path / "one"), _csv_rows(tmp_path / "two")
    # The IoU head's raw output varies in its last float digits with the thread count; the masks do not
    predicted = [float(row.pop("pred_IoU")) for row in two]
    assert predicted == pytest.approx([float(row.pop("pred_IoU")) for row in one], abs=1e-3)
    assert two == one


def test_missing_dataset_folder_is_a_clear_error(workspace, tmp_path):
    with pytest.raises(FileNotFoundError, match="`dataset`.*does not exist"):
        evaluate_model.main(
            [
                "--models",
                f"sam:{workspace / 'sam'}",
                "--dataset",
                str(tmp_path / "nowhere"),
                "--output_dir",
                str(tmp_path),
            ]
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="could not be read as a dataset"):
        evaluate_model.main(
            [
                "--models",
                f"sam:{workspace / 'sam'}",
                "--dataset",
                str(tmp_path / "empty"),
                "--output_dir",
                str(tmp_path),
            ]
        )


def test_bad_arguments_are_rejected(workspace, tmp_path):
    base = ["--models", f"sam:{workspace / 'sam'}", "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate_model.parse_args(base)
    with pytest.raises(ValueError, match="coarse_mask"):
        evaluate_model.parse_args([*base, "--dataset", "x", "--prompt_types", "coarse_mask"])
    with pytest.raises(ValueError, match="--noise_scale 0.2, or --protocol sweep"):
        evaluate_model.parse_args([*base, "--dataset", "x", "--prompt_types", "noisy_box@0.2"])
    with pytest.raises(ValueError, match="routing_weight"):
        evaluate_model.parse_args([*base, "--dataset", "x", "--routing_weight", "1.5"])
    with pytest.raises(ValueError, match="bootstrap_resamples"):
        evaluate_model.parse_args([*base, "--dataset", "x", "--bootstrap_resamples", "-1"])
    with pytest.raises(ValueError, match="reference_model"):
        evaluate_model.main([*base, "--dataset", str(workspace / "data"), "--reference_model", "stable"])
    with pytest.raises(ValueError, match="unique"):
        evaluate_model.main(
            ["--models", f"sam:{workspace / 'sam'}", f"sam:{workspace / 'sam'}", "--dataset", str(workspace / "data")]
            + ["--output_dir", str(tmp_path)]
        )


def test_model_specs(workspace, tmp_path):
    spec = parse_model_spec(f"base=sam:{workspace / 'sam'}")
    assert (spec.name, spec.method, spec.run_folder) == ("base", "sam", False)
    assert parse_model_spec(str(workspace / "stable")).method == "stable"  # from the checkpoint's model type
    # A SAM checkpoint is not an HQ-SAM one: refused naming its kind (SamHQModel would fail on its weights)
    with pytest.raises(ValueError, match="its kind is 'sam'"):
        parse_model_spec(f"hq:{workspace / 'sam'}")
    with pytest.raises(ValueError, match="needs a run folder"):
        parse_model_spec(f"lora:{workspace / 'sam'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_model_spec(f"sam:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="letters"):
        parse_model_spec(f"a b=sam:{workspace / 'sam'}")

    # A LoRA run folder as training/train.py writes it: its summary names the method and the base
    run = tmp_path / "lora_run"
    with warnings.catch_warnings():  # building it warns users of nothing (peft's deprecated-attribute read is muted)
        warnings.simplefilter("error", FutureWarning)
        segmenter = build_segmenter("lora", workspace / "sam")
    with torch.no_grad():
        for name, param in segmenter.model.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(0))
    segmenter.save_trainable(run)
    (run / "training_summary.json").write_text(json.dumps({"method": "lora", "base_model": str(workspace / "sam")}))
    spec = parse_model_spec(f"tuned={run}")
    assert (spec.method, spec.base_model, spec.run_folder) == ("lora", str(workspace / "sam"), True)
    assert parse_model_spec(str(run), base_model="elsewhere").base_model == "elsewhere"
    with pytest.raises(ValueError, match="trained as 'lora'"):
        parse_model_spec(f"adapter:{run}")
    model = load_model(spec)
    expected = dict(segmenter.sam.named_parameters())
    lora = [name for name, _ in model.named_parameters() if "lora_B" in name]
    assert lora and all(torch.equal(dict(model.named_parameters())[name], expected[name]) for name in lora)
    assert not any(param.requires_grad for param in model.parameters())


def test_predictor_matches_sam_processor(workspace):
    model = SamModel.from_pretrained(workspace / "sam").eval()
    predictor = SamPredictor(model, decoder_batch_size=2)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[3.0, 5.0, 40.0, 30.0], [10.0, 10.0, 60.0, 45.0], [0.0, 0.0, 69.0, 49.0]])
    prediction = predictor.predict(predictor.encode(image), {"input_boxes": boxes})

    processor = StableSamProcessor(image_processor=predictor.image_processor)
    inputs = processor(images=image.permute(1, 2, 0).numpy(), input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(), multimask_output=False
        )
    masks = predictor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][:, 0]
    assert prediction.masks.shape == (3, 50, 70)
    assert torch.equal(prediction.masks, masks)
    torch.testing.assert_close(prediction.iou_scores, outputs.iou_scores[0, :, 0])
    assert prediction.routing_weights is None
    with pytest.raises(ValueError, match="routing_weight"):
        predictor.predict(predictor.encode(image), {"input_boxes": boxes}, routing_weight=0.5)


def test_draw_prompts_are_seeded_per_object_and_draw():
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[5:20, 8:30] = True
    kwargs = {"seed": 3, "dataset": "COIFT", "object_id": "a"}
    five = draw_prompts(mask, "points_3", 5, **kwargs)
    assert five["input_points"].shape == (5, 3, 2) and five["input_labels"].eq(1).all()
    assert torch.equal(draw_prompts(mask, "points_3", 2, **kwargs)["input_points"], five["input_points"][:2])
    points = five["input_points"].long()
    assert mask[points[..., 1], points[..., 0]].all()
    other = draw_prompts(mask, "points_3", 5, **{**kwargs, "object_id": "b"})
    assert not torch.equal(other["input_points"], five["input_points"])
    noisy = draw_prompts(mask, "noisy_box", 4, **kwargs)["input_boxes"]
    assert noisy.shape == (4, 4) and (box_iou(noisy, masks_to_boxes(mask[None]).expand(4, 4)) >= 0.5).all()
    assert draw_prompts(mask, "box", 20, **kwargs)["input_boxes"].shape == (1, 4)
    with pytest.raises(ValueError, match="coarse_mask"):
        draw_prompts(mask, "coarse_mask", 2, **kwargs)


def test_score_object_rejects_mismatched_sizes():
    gt = torch.zeros(20, 30, dtype=torch.bool)
    gt[4:12, 5:20] = True
    scores = score_object(torch.stack([gt, ~gt]), gt)
    assert scores.iou == [1.0, 0.0] and scores.boundary_iou[0] == 1.0
    assert scores.stability == 0.0
    assert score_object(gt[None], gt).stability is None
    with pytest.raises(ValueError, match="ground truth's resolution"):
        score_object(torch.zeros(2, 20, 31, dtype=torch.bool), gt)
    with pytest.raises(ValueError, match="bool tensor"):
        score_object(torch.zeros(2, 20, 30), gt)


def test_coco_perfect_predictions_give_map_one(workspace):
    coco = COCO(str(workspace / "coco" / "instances.json"))
    image_ids = sorted(coco.getImgIds())
    perfect, shifted, count = [], [], 0
    for image_id in image_ids:
        objects, empty = coco_objects(coco, image_id)
        assert empty == 0
        count += len(objects)
        masks = torch.stack([obj.mask for obj in objects])
        perfect += coco_detections(objects, masks, torch.ones(len(objects)))
        # Masks moved by a third of their width: IoU well below 0.5 for most objects
        moved = torch.stack([obj.mask.roll(int(obj.mask.any(0).sum()) * 2 // 3, dims=1) for obj in objects])
        shifted += coco_detections(objects, moved, torch.ones(len(objects)))
    assert count == 8
    assert coco_mask_ap(coco, perfect, image_ids) == (1.0, 1.0)
    worse = coco_mask_ap(coco, shifted, image_ids)
    assert 0.0 <= worse[0] < 0.5 and worse[0] <= worse[1] < 1.0
    with pytest.raises(ValueError, match="one entry per object"):
        coco_detections(objects, masks[:1], torch.ones(1))


def test_coco_prompt_boxes_are_in_the_iou_band(workspace):
    coco = COCO(str(workspace / "coco" / "instances.json"))
    objects, _ = coco_objects(coco, 2)
    boxes, exact = coco_prompt_boxes(objects, seed=0)
    assert exact == 0 and boxes.shape == (3, 4)
    truth = torch.cat([masks_to_boxes(obj.mask[None]) for obj in objects])
    iou = box_iou(boxes, truth)
    assert ((iou >= 0.5) & (iou < 0.6)).all()
    assert torch.equal(coco_prompt_boxes(objects, seed=0)[0], boxes)
    assert not torch.equal(coco_prompt_boxes(objects, seed=1)[0], boxes)


def _quick_argv(model: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        *("--models", f"sam=sam:{model}", "--dataset", str(data), "--dataset_names", "COIFT"),
        *("--output_dir", str(output_dir), "--prompt_types", "box", "--bootstrap_resamples", "0", *extra),
    ]


def test_rerun_after_retraining_or_repreparing_does_not_reuse_old_records(workspace, tmp_path):
    import shutil

    model, data, output_dir = tmp_path / "model", tmp_path / "data", tmp_path / "eval"
    shutil.copytree(workspace / "sam", model)
    shutil.copytree(workspace / "data", data)
    first = evaluate_model.main(_quick_argv(model, data, output_dir))

    # The model retrained at the same path: a rerun into the same folder scores the new weights
    torch.manual_seed(7)
    SamModel(tiny_sam_config()).save_pretrained(model)
    retrained = evaluate_model.main(_quick_argv(model, data, output_dir))
    fresh = evaluate_model.main(_quick_argv(model, data, tmp_path / "fresh"))
    assert [r["mIoU"] for r in retrained] == [r["mIoU"] for r in fresh]
    assert [r["mIoU"] for r in retrained] != [r["mIoU"] for r in first]

    # The dataset re-prepared at the same path (other images and masks under the same ids)
    make_hqseg_tree(tmp_path / "raw", n_per_dataset=3, size=(48, 64), seed=5, bad_samples=False)
    prepare = load_prepare_script()
    shutil.rmtree(data)
    prepare.prepare(prepare.PrepareArguments(output_dir=str(data), source=str(tmp_path / "raw")))
    reprepared = evaluate_model.main(_quick_argv(model, data, output_dir))
    fresh = evaluate_model.main(_quick_argv(model, data, tmp_path / "fresh2"))
    assert [r["mIoU"] for r in reprepared] == [r["mIoU"] for r in fresh]
    assert [r["mIoU"] for r in reprepared] != [r["mIoU"] for r in retrained]


def test_listed_subset_without_rows_is_an_error(workspace, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    # What an interrupted `prepare --overwrite_output_dir` leaves: the card lists the subset, its shards are gone
    shutil.rmtree(data / "COIFT")
    with pytest.raises(ValueError, match="subset 'COIFT' has no rows"):
        evaluate_model.main(_quick_argv(workspace / "sam", data, tmp_path / "eval"))
    assert not (tmp_path / "eval" / "results.csv").exists()


def test_unknown_method_and_bad_numbers_are_named_before_loading(workspace, tmp_path):
    with pytest.raises(ValueError, match="unknown method.*'samm'.*supported kinds: sam, "):
        parse_model_spec(f"x=samm:{workspace / 'sam'}")
    base = ["--models", "sam=sam:nowhere/model", "--dataset", "x", "--output_dir", str(tmp_path)]
    for option, value in (("--noise_scale", "-0.1"), ("--noise_scale", "nan"), ("--dilation_ratio", "0")):
        with pytest.raises(ValueError, match=option[2:]):
            evaluate_model.main([*base, option, value])


def test_truncated_training_summary_names_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_summary.json").write_text('{"method": "lora", "base_mo')
    with pytest.raises(ValueError, match=r"run[/\\]training_summary.json is not valid JSON"):
        parse_model_spec(f"tuned={run}")


def test_rerun_after_the_coco_images_change_does_not_reuse_old_records(workspace, tmp_path):
    import shutil

    annotations, images = tmp_path / "coco" / "instances.json", tmp_path / "coco" / "images"
    shutil.copytree(workspace / "coco", tmp_path / "coco")

    def argv(output_dir: Path) -> list[str]:
        return [
            *("--models", f"sam=sam:{workspace / 'sam'}", "--output_dir", str(output_dir)),
            *("--coco_annotations", str(annotations), "--coco_images", str(images), "--bootstrap_resamples", "0"),
        ]

    first = evaluate_model.main(argv(tmp_path / "eval"))
    # Other images under the same file names, the annotation file untouched
    make_coco_fixture(tmp_path / "other", seed=3)
    for path in (tmp_path / "other" / "images").iterdir():
        shutil.copyfile(path, images / path.name)
    rerun = evaluate_model.main(argv(tmp_path / "eval"))
    fresh = evaluate_model.main(argv(tmp_path / "fresh"))
    assert [r["mIoU"] for r in rerun] == [r["mIoU"] for r in fresh]
    assert [r["mIoU"] for r in rerun] != [r["mIoU"] for r in first]


def test_interactive_alpha_1_is_stable_sams_mean_over_the_clicks(workspace):
    from types import SimpleNamespace

    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gt = torch.zeros(50, 70, dtype=torch.bool)
    gt[10:35, 15:50] = True
    args = SimpleNamespace(max_clicks=3)
    predictor = SamPredictor(StableSamModel.from_pretrained(workspace / "stable").eval(), decoder_batch_size=2)
    encoding = predictor.encode(image)
    record = evaluate_model.evaluate_interactive(
        predictor, encoding, SimpleNamespace(name="stable"), args, "key", "d", "0", gt, None
    )
    # The same clicks replayed: alpha_1 of each prediction
    clicks, logits, alphas = record["clicks"], None, []
    for count in range(1, len(clicks) + 1):
        points = torch.tensor([click[:2] for click in clicks[:count]], dtype=torch.float32)
        labels = torch.tensor([click[2] for click in clicks[:count]])
        _, logits, routing = predictor.predict_clicks(encoding, points, labels, logits)
        alphas.append(routing[0].item())
    assert 0 < record["alpha_1"] < 1
    assert record["alpha_1"] == pytest.approx(sum(alphas) / len(alphas))

    sam = SamPredictor(SamModel.from_pretrained(workspace / "sam").eval(), decoder_batch_size=2)
    sam_record = evaluate_model.evaluate_interactive(
        sam, sam.encode(image), SimpleNamespace(name="sam"), args, "key", "d", "0", gt, None
    )
    assert sam_record["alpha_1"] is None


def test_interactive_table_shows_alpha_1(workspace, tmp_path):
    argv = [
        *("--models", f"sam=sam:{workspace / 'sam'}", f"stable=stable:{workspace / 'stable'}"),
        *("--dataset", str(workspace / "data"), "--dataset_names", "COIFT", "--output_dir", str(tmp_path)),
        *("--protocol", "interactive", "--max_clicks", "2", "--bootstrap_resamples", "0"),
    ]
    rows = evaluate_model.main(argv)
    interactive = {r["model"]: r for r in rows if r["prompt_type"] == "interactive" and r["dataset"] == "average"}
    assert 0 < interactive["stable"]["alpha_1"] < 1 and interactive["sam"]["alpha_1"] is None
    lines = (tmp_path / "results.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model | NoC@85"))
    assert "| alpha_1 |" in header
    column = [cell.strip() for cell in header.split("|")].index("alpha_1")
    stable = next(line for line in lines[lines.index(header) :] if line.startswith("| stable |"))
    assert [cell.strip() for cell in stable.split("|")][column] == f"{interactive['stable']['alpha_1']:.3f}"
