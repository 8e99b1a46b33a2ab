"""The prompt-robustness benchmark: the click simulator on hand-made masks, and training/evaluate_model.py's protocols
(prompts, interactive, sweep) on tiny random models of every kind and on the toy model."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Sam2Model, Sam3TrackerModel, SamHQModel, SamModel

from stable_sam_hf import StableSamModel
from stable_sam_hf.clicks import Click, distance_to_boundary, next_click, number_of_clicks, simulate_clicks
from stable_sam_hf.evaluation import MODEL_KINDS, parse_model_spec

from fixtures import load_prepare_script, make_hqseg_tree
from tiny import (
    perturb_plugins_,
    tiny_sam2_config,
    tiny_sam3_tracker_config,
    tiny_sam_config,
    tiny_sam_hq_config,
    tiny_stable_sam_config,
)


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
import evaluate_model  # noqa: E402


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The click simulator


def _rectangle(height, width, top, left, bottom, right) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : bottom + 1, left : right + 1] = True
    return mask


def test_first_click_is_the_object_centre():
    # Rows 2-8, columns 3-13: the centre row 5 is 4 pixels from the outside rows 1 and 9; columns 6-10 are at least
    # 4 from the outside columns 2 and 14, so the first (row-major) of the tie is (x=6, y=5)
    gt = _rectangle(12, 20, 2, 3, 8, 13)
    assert distance_to_boundary(gt).max() == 4
    assert next_click(np.zeros_like(gt), gt) == Click(x=6, y=5, label=1)
    # The image border is a boundary: in a 3-column strip along the top-left edges, row 0 and column 0 are 1 from it,
    # and (x=1, y=1) is the first pixel 2 from every side
    edge = _rectangle(9, 9, 0, 0, 8, 2)
    assert distance_to_boundary(edge)[0, 1] == 1 and distance_to_boundary(edge)[1, 1] == 2
    assert next_click(np.zeros_like(edge), edge) == Click(x=1, y=1, label=1)


def test_corrective_clicks_go_into_the_larger_error_region():
    gt = _rectangle(20, 30, 2, 2, 12, 12)
    # Predicted: the object but its 3 right-most columns (a missed strip, 1.x deep) and a false 7 x 7 block far away
    prediction = _rectangle(20, 30, 2, 2, 12, 9) | _rectangle(20, 30, 5, 20, 11, 26)
    # The false block's centre (x=23, y=8) is 4 from its boundary, deeper than the missed strip: negative click there
    assert next_click(prediction, gt) == Click(x=23, y=8, label=0)
    # Without the false block the missed strip (rows 2-12, columns 10-12) gets a positive click in its middle column,
    # on its first row 2 from the strip's boundary
    assert next_click(_rectangle(20, 30, 2, 2, 12, 9), gt) == Click(x=11, y=3, label=1)
    assert next_click(gt, gt) is None


def test_a_model_returning_the_ground_truth_reaches_noc_one():
    gt = torch.from_numpy(_rectangle(16, 16, 3, 4, 10, 12))
    seen = []

    def oracle(points, labels, logits):
        seen.append((points.clone(), labels.clone(), logits))
        return gt.clone(), torch.zeros(4, 4)

    result = simulate_clicks(oracle, gt, max_clicks=20)
    assert result.ious == [1.0] * 20 and len(result.clicks) == 1
    assert number_of_clicks(result.ious, 0.85) == 1 and number_of_clicks(result.ious, 0.90) == 1
    assert seen[0][2] is None  # no mask prompt before the first prediction


def test_clicks_accumulate_and_logits_are_fed_back():
    gt = torch.from_numpy(_rectangle(16, 16, 2, 2, 13, 13))
    calls = []

    def halves(points, labels, logits):
        # The first prediction covers the top half only; after the second click, the whole object
        calls.append((len(points), logits))
        mask = gt.clone()
        if len(points) == 1:
            mask[8:] = False
        return mask, torch.full((4, 4), float(len(points)))

    result = simulate_clicks(halves, gt, max_clicks=5)
    assert [count for count, _ in calls] == [1, 2]
    assert calls[0][1] is None and torch.equal(calls[1][1], torch.full((4, 4), 1.0))
    assert result.clicks[1].label == 1 and result.clicks[1].y >= 8  # the second click lands in the missed half
    assert result.ious[0] == pytest.approx(72 / 144) and result.ious[1:] == [1.0] * 4
    assert number_of_clicks(result.ious, 0.85) == 2
    assert number_of_clicks([0.5] * 20, 0.85) == 20


def test_simulator_rejects_bad_input():
    with pytest.raises(ValueError, match="`gt` is empty"):
        simulate_clicks(lambda *a: None, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="`max_clicks`"):
        simulate_clicks(lambda *a: None, torch.ones(4, 4, dtype=torch.bool), max_clicks=0)
    with pytest.raises(ValueError, match="`prediction` is"):
        next_click(np.zeros((3, 3), dtype=bool), np.ones((4, 4), dtype=bool))


# The protocols on every model kind


@pytest.fixture(scope="module")
def kinds_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(root / "sam")
    stable = StableSamModel.from_pretrained(root / "sam", config=tiny_stable_sam_config())
    perturb_plugins_(stable, seed=1)
    stable.save_pretrained(root / "stable")
    SamHQModel(tiny_sam_hq_config()).save_pretrained(root / "hq")
    Sam2Model(tiny_sam2_config()).save_pretrained(root / "sam2")
    Sam3TrackerModel(tiny_sam3_tracker_config()).save_pretrained(root / "sam3_tracker")
    make_hqseg_tree(root / "raw", n_per_dataset=2, size=(48, 64), bad_samples=False)
    # An unreadable object: the skip is counted, as for the prompts protocol
    coift = root / "raw/thin_object_detection/COIFT"
    (coift / "images/broken_000.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((48, 64), dtype=np.uint8)).save(coift / "masks/broken_000.png")
    prepare = load_prepare_script()
    prepare.prepare(prepare.PrepareArguments(output_dir=str(root / "data"), source=str(root / "raw")))
    return root


def _kind_models(root: Path) -> list[str]:
    models = [
        f"sam=sam:{root / 'sam'}",
        f"hq=hq:{root / 'hq'}",
        f"hq_token=hq_token_only:{root / 'hq'}",
        f"stable=stable:{root / 'stable'}",
        f"sam2=sam2:{root / 'sam2'}",
        f"sam3_tracker=sam3_tracker:{root / 'sam3_tracker'}",
    ]
    return models


def _benchmark_argv(root: Path, output_dir: Path, models: list[str]) -> list[str]:
    return [
        *("--models", *models, "--dataset", str(root / "data"), "--dataset_names", "COIFT", "HRSOD"),
        *("--output_dir", str(output_dir), "--protocol", "prompts", "interactive", "sweep"),
        *("--prompt_types", "box", "noisy_box", "--num_prompts", "2", "--max_clicks", "3"),
        *("--bootstrap_resamples", "20", "--record_prompts"),
    ]


@pytest.fixture(scope="module")
def kinds_run(kinds_workspace):
    output_dir = kinds_workspace / "run"
    evaluate_model.main(_benchmark_argv(kinds_workspace, output_dir, _kind_models(kinds_workspace)))
    return output_dir


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "per_object.rank0.jsonl").read_text().splitlines()]


def test_every_kind_runs_every_protocol(kinds_workspace, kinds_run):
    results = json.loads((kinds_run / "results.json").read_text())
    names = [spec.split("=")[0] for spec in _kind_models(kinds_workspace)]
    assert list(results["models"]) == names
    average = {(r["model"], r["prompt_type"]): r for r in results["rows"] if r["dataset"] == "average"}
    sweep_types = [f"noisy_box@{s:g}" for s in evaluate_model.SWEEP_NOISE_SCALES]
    sweep_types += [f"points_{k}" for k in evaluate_model.SWEEP_POINTS]
    for name in names:
        for prompt_type in ["box", "noisy_box", *sweep_types, "interactive"]:
            row = average[(name, prompt_type)]
            assert row["num_objects"] == 4 and row["num_skipped"] == 1, (name, prompt_type)
            assert 0 <= row["mIoU"] <= 100
        interactive = average[(name, "interactive")]
        assert 1 <= interactive["NoC85"] <= 3 and 1 <= interactive["NoC90"] <= 3
        assert interactive["NoC85_low"] <= interactive["NoC85"] <= interactive["NoC85_high"]
        assert len(interactive["mIoU_curve"]) == 3 and 0 <= interactive["failed_85"] <= 4
        assert interactive["mIoU"] == pytest.approx(interactive["mIoU_curve"][0])
    # The fused HQ output differs from the HQ token's alone on the same prompts
    hq = {(r["id"], r["prompt_type"]): r["iou"] for r in _records(kinds_run) if r["model"] == "hq"}
    token = {(r["id"], r["prompt_type"]): r["iou"] for r in _records(kinds_run) if r["model"] == "hq_token"}
    assert hq.keys() == token.keys() and hq != token
    markdown = (kinds_run / "results.md").read_text()
    assert "NoC@85" in markdown and all(f"| {name} |" in markdown for name in names)
    # mIoU after 1 click and after the last (--max_clicks 3)
    assert "| mIoU@1 | mIoU@3 | alpha_1 |" in markdown
    for plot in ("miou_vs_clicks.png", "miou_vs_noise_scale.png", "miou_vs_points.png"):
        assert (kinds_run / plot).stat().st_size > 1000
    # The model card writer takes results.json's per-model results as they are
    from stable_sam_hf.model_card import check_evaluation_results

    card = check_evaluation_results(results["model_card"]["stable"])
    noc = [r for r in card if r["metric"] == "NoC@85" and r["dataset"].startswith("average")]
    assert [r["value"] for r in noc] == [average[("stable", "interactive")]["NoC85"]]
    assert {r["prompt"] for r in card} >= {"box", "noisy_box@0.6", "points_5", "interactive"}
    csv_header = (kinds_run / "results.csv").read_text().splitlines()[0]
    assert "NoC85" in csv_header and "failed_85" in csv_header


def test_every_kind_gets_the_same_prompts(kinds_run):
    records = _records(kinds_run)
    by_object = {}
    for record in records:
        key = (record["dataset"], record["id"], record["prompt_type"])
        if record["prompt_type"] == "interactive":
            # The first click depends on the object only; the later ones on each model's errors
            by_object.setdefault(key, set()).add(tuple(record["clicks"][0]))
        else:
            by_object.setdefault(key, set()).add(json.dumps(record["prompts"], sort_keys=True))
    models = {record["model"] for record in records}
    assert len(models) >= 4
    assert all(len(values) == 1 for values in by_object.values())
    # Noise scales draw different boxes
    boxes = {k[2]: v for k, v in by_object.items() if k[2].startswith("noisy_box@") and k[1] == records[0]["id"]}
    assert len({next(iter(v)) for v in boxes.values()}) == len(boxes) == 6


def test_interrupted_benchmark_resumes(kinds_workspace, kinds_run, tmp_path):
    lines = (kinds_run / "per_object.rank0.jsonl").read_text().splitlines(keepends=True)
    models = _kind_models(kinds_workspace)[:2]
    names = {spec.split("=")[0] for spec in models}
    mine = [line for line in lines if json.loads(line)["model"] in names]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "per_object.rank0.jsonl").write_text("".join(mine[: len(mine) // 2]) + mine[len(mine) // 2][:30])
    evaluate_model.main(_benchmark_argv(kinds_workspace, resumed, models))
    again = _records(resumed)
    assert len(again) == len(mine)
    full = json.loads((kinds_run / "results.json").read_text())["rows"]
    part = json.loads((resumed / "results.json").read_text())["rows"]
    expected = [r for r in full if r["model"] in names]
    key = lambda r: (r["model"], r["dataset"], r["prompt_type"], r["routing_weight"])  # noqa: E731
    assert sorted(((key(r), r["mIoU"], r.get("NoC85")) for r in part), key=str) == sorted(
        ((key(r), r["mIoU"], r.get("NoC85")) for r in expected), key=str
    )


def test_square_input_kinds_are_known_by_their_config(tmp_path):
    for model_type, model in (
        ("sam2", Sam2Model(tiny_sam2_config())),
        ("sam3_tracker", Sam3TrackerModel(tiny_sam3_tracker_config())),
    ):
        model.save_pretrained(tmp_path / model_type)
        assert parse_model_spec(str(tmp_path / model_type)).method == model_type


# SAM 2's image processing without torchvision


def _sam2_preprocessor_config(folder: Path, **overrides) -> Path:
    """A preprocessor_config.json as released SAM 2.1 checkpoints ship it (keys and values of the Hub's files)."""
    config = {
        "crop_size": None,
        "data_format": "channels_first",
        "default_to_square": True,
        "device": None,
        "do_center_crop": None,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "Sam2ImageProcessorFast",
        "image_std": [0.229, 0.224, 0.225],
        "input_data_format": None,
        "mask_size": {"height": 256, "width": 256},
        "processor_class": "Sam2VideoProcessor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "return_tensors": None,
        "size": {"height": 32, "width": 40},
        **overrides,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def test_sam2_torch_image_processor_reads_released_configs(tmp_path):
    from stable_sam_hf.contenders import Sam2TorchImageProcessor

    processor = Sam2TorchImageProcessor.from_pretrained(_sam2_preprocessor_config(tmp_path / "ok"))
    assert processor.size == {"height": 32, "width": 40}
    # A constant image stays constant; each channel is normalised by the config's statistics
    image = np.full((50, 70, 3), (10, 128, 250), dtype=np.uint8)
    out = processor(images=image, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 32, 40) and out["original_sizes"].tolist() == [[50, 70]]
    expected = (torch.tensor([10, 128, 250]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(out["pixel_values"][0].mean((1, 2)), expected, atol=1e-5)
    assert torch.allclose(out["pixel_values"][0].std((1, 2)), torch.zeros(3), atol=1e-6)
    # Channels-first tensors and PIL images give the same pixels as channels-last arrays
    gradient = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a = processor(images=gradient, return_tensors="pt")["pixel_values"]
    b = processor(images=torch.from_numpy(gradient).permute(2, 0, 1), return_tensors="pt")["pixel_values"]
    c = processor(images=Image.fromarray(gradient), return_tensors="pt")["pixel_values"]
    assert torch.equal(a, b) and torch.equal(a, c)
    # PIL transparency is composited onto white, as transformers' image processors do
    rgba = np.concatenate([gradient, np.zeros((50, 70, 1), dtype=np.uint8)], axis=-1)
    white = processor(images=np.full((50, 70, 3), 255, dtype=np.uint8), return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(images=Image.fromarray(rgba, "RGBA"), return_tensors="pt")["pixel_values"], white)
    # Antialiased bilinear: stripes 2 columns wide, halved, give 1/4 and 3/4 grey (weights 1/8, 3/8, 3/8, 1/8 over 4
    # columns), where plain bilinear would keep black and white
    stripes = np.broadcast_to((np.arange(80) // 2 % 2 * 255).astype(np.uint8)[None, :, None], (64, 80, 3))
    halved = processor(images=np.ascontiguousarray(stripes), return_tensors="pt")["pixel_values"][0, 0]
    values = (halved * 0.229 + 0.485) * 255
    assert torch.allclose(values[:, 2:-1:2], torch.full_like(values[:, 2:-1:2], 255 / 4), atol=1)
    assert torch.allclose(values[:, 1:-1:2], torch.full_like(values[:, 1:-1:2], 255 * 3 / 4), atol=1)
    # Post-processing: the logits at the original size, thresholded at 0
    logits = torch.randn(2, 1, 8, 10)
    (masks,) = processor.post_process_masks([logits], [(50, 70)])
    assert masks.shape == (2, 1, 50, 70) and masks.dtype == torch.bool
    upsampled = torch.nn.functional.interpolate(logits, (50, 70), mode="bilinear", align_corners=False)
    assert torch.equal(masks, upsampled > 0)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"resample": 3}, "resample"),
        ({"do_pad": True}, "do_pad"),
        ({"do_normalize": False}, "do_normalize"),
        ({"do_convert_rgb": False}, "do_convert_rgb"),
        ({"size": 1024}, "size"),
        ({"image_mean": 0.5}, "image_mean"),
    ],
)
def test_sam2_torch_image_processor_refuses_what_it_does_not_implement(tmp_path, overrides, named):
    from stable_sam_hf.contenders import Sam2TorchImageProcessor

    with pytest.raises(ValueError, match=named):
        Sam2TorchImageProcessor.from_pretrained(_sam2_preprocessor_config(tmp_path, **overrides))


def test_sam2_torch_image_processor_refuses_bad_calls():
    from stable_sam_hf.contenders import Sam2TorchImageProcessor

    processor = Sam2TorchImageProcessor(size={"height": 16, "width": 16})
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="do_normalize"):
        processor(images=image, do_normalize=False)
    with pytest.raises(ValueError, match="size"):
        processor(images=image, size={"height": 32, "width": 32})
    for bad in (np.zeros((20, 30), dtype=np.uint8), np.zeros((20, 30, 3), dtype=np.float32), "photo.jpg"):
        with pytest.raises(ValueError, match="images"):
            processor(images=bad)
    with pytest.raises(ValueError, match="images"):
        processor(images=[])
    # An array whose first and last axes both have 3 entries is read channels first, as transformers reads it
    assert processor(images=np.zeros((3, 40, 3), dtype=np.uint8))["original_sizes"] == [[40, 3]]


REFERENCE = Path(__file__).parent / "data" / "sam2_image_processor_reference.npz"


@pytest.mark.parametrize(("branch", "capability"), [("native", "AVX2"), ("native", "AVX512"), ("float", "DEFAULT")])
def test_sam2_torch_image_processor_matches_transformers_reference(monkeypatch, branch, capability):
    """Against pixel values of transformers 5.25's `Sam2ImageProcessor(size={"height": 16, "width": 24})`, computed
    with torchvision 0.28.0 on an x86 CPU: resized by torch's native uint8 kernel (the CPU reporting AVX2) and by the
    float path torchvision takes elsewhere (reporting DEFAULT); the two differ, so each branch is checked."""
    import platform

    from stable_sam_hf.contenders import Sam2TorchImageProcessor

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    rng = np.random.default_rng(2026)
    images = {
        "down": rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
        "up": rng.integers(0, 256, (13, 17, 3), dtype=np.uint8),
        "rgba": Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA"),
    }
    reference = np.load(REFERENCE)
    processor = Sam2TorchImageProcessor(size={"height": 16, "width": 24})
    for name, image in images.items():
        pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(pixels, torch.from_numpy(reference[f"{branch}_{name}"])), name


def test_square_input_processor_fills_the_kinds_defaults(tmp_path):
    from stable_sam_hf.contenders import square_input_processor

    folder = tmp_path / "sam3"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Sam3ImageProcessor"}))
    processor = square_input_processor("sam3_tracker", str(folder), model=None)
    image_processor = processor.image_processor
    assert image_processor.size == {"height": 1008, "width": 1008} and processor.target_size == 1008
    assert list(image_processor.image_mean) == list(image_processor.image_std) == [0.5, 0.5, 0.5]
    # Sam2Processor scales prompts by one target size for both axes: a non-square input is refused
    with pytest.raises(ValueError, match="square"):
        square_input_processor("sam2", str(_sam2_preprocessor_config(tmp_path / "sam2")), model=None)


@pytest.mark.skipif(
    not _has_torchvision(),
    reason="compares with transformers' torchvision-based Sam2ImageProcessor; torchvision's wheels need CUDA torch",
)
def test_sam2_torch_image_processor_equals_transformers(tmp_path):
    from transformers import Sam2ImageProcessor

    from stable_sam_hf.contenders import Sam2TorchImageProcessor

    folder = _sam2_preprocessor_config(tmp_path)
    ours, theirs = Sam2TorchImageProcessor.from_pretrained(folder), Sam2ImageProcessor.from_pretrained(folder)
    for shape in [(50, 70, 3), (20, 16, 3), (32, 40, 3)]:
        image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
        a, b = ours(images=image, return_tensors="pt"), theirs(images=image, return_tensors="pt")
        assert torch.equal(a["pixel_values"], b["pixel_values"]), shape
    logits = [torch.randn(3, 1, 8, 10)]
    assert torch.equal(
        ours.post_process_masks(logits, [(50, 70)])[0], theirs.post_process_masks(logits, [(50, 70)])[0]
    )


def test_plots_of_an_earlier_run_are_kept_and_named(tmp_path, caplog):
    from stable_sam_hf.evaluation_report import write_plots

    (tmp_path / "miou_vs_noise_scale.png").write_bytes(b"an earlier run's plot")
    with caplog.at_level("WARNING", logger="stable_sam_hf.evaluation_report"):
        assert write_plots([], [], tmp_path) == []
    assert "miou_vs_noise_scale.png" in caplog.text and "earlier run" in caplog.text
    assert (tmp_path / "miou_vs_noise_scale.png").read_bytes() == b"an earlier run's plot"


def test_unknown_kind_names_the_supported_kinds(kinds_workspace):
    with pytest.raises(ValueError, match="supported kinds: " + ", ".join(MODEL_KINDS)):
        parse_model_spec(f"x=edgetam:{kinds_workspace / 'sam'}")


@pytest.mark.parametrize(
    ("kind", "folder", "hint"),
    [("sam2", "sam", "'sam'"), ("sam", "sam2", "'sam2'"), ("hq", "sam", "'sam'"), ("sam3_tracker", "sam2", "'sam2'")],
)
def test_a_checkpoint_of_another_kind_is_refused_naming_its_kind(kinds_workspace, kind, folder, hint):
    with pytest.raises(ValueError, match=f"its kind is {hint}"):
        parse_model_spec(f"x={kind}:{kinds_workspace / folder}")


def test_stable_on_a_sam_checkpoint_warns_that_the_plugins_are_untrained(kinds_workspace, caplog):
    from stable_sam_hf.evaluation import load_model

    with caplog.at_level("WARNING", logger="stable_sam_hf.evaluation"):
        load_model(parse_model_spec(f"x=stable:{kinds_workspace / 'sam'}"))
    assert "plugins are untrained" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stable_sam_hf.evaluation"):
        load_model(parse_model_spec(f"x=stable:{kinds_workspace / 'stable'}"))
    assert "untrained" not in caplog.text


def test_a_mistyped_folder_fails_before_anything_runs_when_offline(kinds_workspace, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not in the Hub cache"):
        parse_model_spec("x=sam:runs/stabel")  # shaped like a Hub id, neither local nor cached


def test_toy_model_runs_every_protocol(kinds_workspace, tmp_path):
    toy = ROOT / "models" / "toy-sam-128"
    output_dir = tmp_path / "toy"
    evaluate_model.main(_benchmark_argv(kinds_workspace, output_dir, [f"toy=sam:{toy}"]))
    rows = json.loads((output_dir / "results.json").read_text())["rows"]
    interactive = next(r for r in rows if r["prompt_type"] == "interactive" and r["dataset"] == "average")
    assert interactive["num_objects"] == 4 and len(interactive["mIoU_curve"]) == 3
    assert {r["prompt_type"] for r in rows} >= {"box", "noisy_box@0.6", "points_5", "interactive"}
    shutil.rmtree(output_dir)


def _write_coco_set(root: Path) -> tuple[Path, Path]:
    """One 40 x 56 image with two rectangles (one annotated by polygon, one by RLE) and an empty annotation."""
    from pycocotools import mask as mask_utils

    images = root / "images"
    images.mkdir(parents=True)
    pixels = np.full((40, 56, 3), 30, dtype=np.uint8)
    pixels[5:20, 4:24] = 200
    pixels[22:36, 30:50] = 120
    Image.fromarray(pixels).save(images / "scene.png")
    second = np.asfortranarray(_rectangle(40, 56, 22, 30, 35, 49).astype(np.uint8))
    rle = mask_utils.encode(second)
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 300.0,
            "bbox": [4, 5, 20, 15],
            "segmentation": [[4, 5, 23, 5, 23, 19, 4, 19]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 280.0,
            "bbox": [30, 22, 20, 14],
            "segmentation": rle,
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 0.0,
            "bbox": [0, 0, 0, 0],
            "segmentation": [[0, 0, 0, 0, 0, 0]],
        },
    ]
    path = root / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "scene.png", "height": 40, "width": 56}],
                "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    return path, images


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_coco_format_objects_run_the_per_object_protocols(kinds_workspace, tmp_path):
    annotations, images = _write_coco_set(tmp_path / "coco")
    output_dir = tmp_path / "out"
    evaluate_model.main(
        [
            *("--models", f"sam=sam:{kinds_workspace / 'sam'}", f"stable=stable:{kinds_workspace / 'stable'}"),
            *("--coco_annotations", str(annotations), "--coco_images", str(images), "--coco_per_object"),
            *("--output_dir", str(output_dir), "--protocol", "prompts", "interactive", "--prompt_types", "box"),
            *("--max_clicks", "2", "--bootstrap_resamples", "0"),
        ]
    )
    rows = json.loads((output_dir / "results.json").read_text())["rows"]
    cells = {(r["model"], r["dataset"], r["prompt_type"]): r for r in rows}
    for model in ("sam", "stable"):
        for prompt_type in ("box", "interactive"):
            row = cells[(model, "COCO-objects", prompt_type)]
            assert row["num_objects"] == 2 and row["num_skipped"] == 1
        assert cells[(model, "COCO", "coco_noisy_box")]["mAP"] is not None
    first_clicks = {
        (r["id"], tuple(r["clicks"][0]))
        for r in _records(output_dir)
        if r["dataset"] == "COCO-objects" and r["prompt_type"] == "interactive"
    }
    # The rectangles' centres, one per object, the same for both models: object 2 (rows 22-35, columns 30-49) is 7
    # pixels deep first at row 28, column 36; object 1's polygon rasterises to rows 5-18, columns 4-23
    assert first_clicks == {("1", (10, 11, 1)), ("2", (36, 28, 1))}
    with pytest.raises(ValueError, match="coco_per_object"):
        evaluate_model.parse_args(["--models", "x", "--output_dir", "o", "--dataset", "d", "--coco_per_object"])
