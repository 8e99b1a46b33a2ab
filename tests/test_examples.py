"""The inference examples run on a tiny saved Stable-SAM and write PNGs a viewer can open."""

import inspect
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from stable_sam_hf import StableSamImageProcessor, StableSamModel, StableSamProcessor
from stable_sam_hf.prompts import box_iou

from tiny import IMAGE_SIZE, perturb_plugins_, tiny_stable_sam_config


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import automatic_masks  # noqa: E402
import compare_with_sam  # noqa: E402
import segment  # noqa: E402


HEIGHT, WIDTH = 48, 80
BOX = [5.0, 8.0, 40.0, 40.0]


def save_full(model: StableSamModel, folder) -> None:
    # A self-contained folder (weights of SAM and plugins) once save_pretrained can also write adapters only
    if "full_checkpoint" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(folder, full_checkpoint=True)
    else:
        model.save_pretrained(folder)


def scene(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """An RGB uint8 scene: an orange ellipse and a green rectangle on a dark noisy background."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:height, :width]
    pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    pixels[((cols - width / 4) / (width / 6)) ** 2 + ((rows - height / 2) / (height / 4)) ** 2 < 1] = (220, 120, 40)
    pixels[height // 5 : 4 * height // 5, 3 * width // 5 : 9 * width // 10] = (60, 180, 90)
    return pixels


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_stable_sam")
    torch.manual_seed(0)
    save_full(perturb_plugins_(StableSamModel(tiny_stable_sam_config()).eval()), folder)
    image_processor = StableSamImageProcessor(
        size={"longest_edge": IMAGE_SIZE},
        pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        mask_size={"longest_edge": 32},
        mask_pad_size={"height": 32, "width": 32},
    )
    StableSamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "scene.png"
    PIL.Image.fromarray(scene()).save(path)
    return path


def read_png(path: Path) -> PIL.Image.Image:
    assert path.is_file(), path
    with PIL.Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image


def run_and_fail(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as error:
        main([str(arg) for arg in argv])
    assert error.value.code == 2
    return capsys.readouterr().err


class TestSegment:
    def test_writes_the_models_mask_and_an_overlay(self, model_folder, image_path, tmp_path, capsys):
        out = tmp_path / "out" / "mask.png"
        argv = [image_path, "--box", *BOX, "--point", 22, 24, 1, "--model", model_folder, "--out", out]
        result = segment.main([str(arg) for arg in argv])

        mask_image = read_png(out)
        assert mask_image.mode == "L" and mask_image.size == (WIDTH, HEIGHT)
        mask = np.asarray(mask_image)
        assert set(np.unique(mask)) <= {0, 255}
        overlay = read_png(tmp_path / "out" / "mask_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == (WIDTH, HEIGHT)
        assert 0.0 < result["alpha_1"] < 1.0
        assert f"alpha_1 = {result['alpha_1']:.3f}" in capsys.readouterr().out

        # The written mask is what the model predicts for these prompts
        model = StableSamModel.from_pretrained(model_folder).eval()
        processor = StableSamProcessor.from_pretrained(model_folder)
        inputs = processor(
            PIL.Image.open(image_path),
            input_boxes=[[BOX]],
            input_points=[[[[22, 24]]]],
            input_labels=[[[1]]],
            return_tensors="pt",
        )
        with torch.no_grad():
            outputs = model(**inputs, multimask_output=False)
        expected = processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0, 0]
        assert np.array_equal(mask > 127, expected.numpy())
        assert result["alpha_1"] == pytest.approx(outputs.routing_weights[0, 0, 0].item(), abs=1e-6)

    def test_single_point_uses_the_best_of_three_masks(self, model_folder, image_path, tmp_path):
        out = tmp_path / "point.png"
        result = segment.main(
            [str(image_path), "--point", "60", "20", "1", "--model", str(model_folder), "--out", str(out)]
        )
        model = StableSamModel.from_pretrained(model_folder).eval()
        processor = StableSamProcessor.from_pretrained(model_folder)
        inputs = processor(PIL.Image.open(image_path), input_points=[[[[60, 20]]]], return_tensors="pt")
        with torch.no_grad():
            scores = model(**inputs, multimask_output=True).iou_scores[0, 0]
        assert result["score"] == pytest.approx(scores.max().item(), abs=1e-6)
        assert read_png(out).size == (WIDTH, HEIGHT)

    @pytest.mark.parametrize("kind", ["RGBA", "L", "I;16", "exif_rotated"])
    def test_images_users_have(self, kind, model_folder, tmp_path):
        pixels = scene()
        if kind == "RGBA":
            image = PIL.Image.fromarray(pixels).convert("RGBA")
        elif kind == "L":
            image = PIL.Image.fromarray(pixels).convert("L")
        elif kind == "I;16":
            image = PIL.Image.fromarray(pixels[..., 0].astype(np.uint16) * 200)
            assert image.mode == "I;16"
        else:
            image = PIL.Image.fromarray(pixels)
        path = tmp_path / ("image.jpg" if kind == "exif_rotated" else "image.png")
        if kind == "exif_rotated":
            # Orientation 6: a viewer turns the stored 80 x 48 image 90 degrees clockwise, showing 48 x 80
            exif = PIL.Image.Exif()
            exif[0x0112] = 6
            image.save(path, exif=exif)
        else:
            image.save(path)
        out = tmp_path / "mask.png"
        segment.main([str(path), "--box", "5", "5", "30", "30", "--model", str(model_folder), "--out", str(out)])
        expected_size = (HEIGHT, WIDTH) if kind == "exif_rotated" else (WIDTH, HEIGHT)
        assert read_png(out).size == expected_size
        assert read_png(tmp_path / "mask_overlay.png").size == expected_size

    def test_box_partly_outside_is_clipped_with_a_warning(self, model_folder, image_path, tmp_path):
        argv = [image_path, "--box", -10, 5, 30, 60, "--model", model_folder, "--out", tmp_path / "m.png"]
        with pytest.warns(UserWarning, match="partly outside"):
            segment.main([str(arg) for arg in argv])
        assert read_png(tmp_path / "m.png").size == (WIDTH, HEIGHT)

    @pytest.mark.parametrize(
        ("prompt", "message"),
        [
            (["--box", 30, 5, 10, 40], "--box"),
            (["--box", 5, 5, "nan", 40], "--box"),
            (["--box", 100, 60, 120, 70], "outside"),
            (["--point", 10, 10, 2], "--point"),
            (["--point", 200, 10, 1], "outside"),
            ([], "give a prompt"),
        ],
    )
    def test_bad_prompts_are_rejected(self, prompt, message, model_folder, image_path, tmp_path, capsys):
        argv = [image_path, *prompt, "--model", model_folder, "--out", tmp_path / "m.png"]
        assert message in run_and_fail(segment.main, argv, capsys)
        assert not (tmp_path / "m.png").exists()

    def test_bad_files_are_rejected(self, model_folder, image_path, tmp_path, capsys):
        box = ["--box", *BOX]
        missing = run_and_fail(
            segment.main, [tmp_path / "no.png", *box, "--model", model_folder, "--out", "m.png"], capsys
        )
        assert "IMAGE" in missing and "does not exist" in missing
        not_image = tmp_path / "notes.png"
        not_image.write_text("not an image")
        assert "not an image" in run_and_fail(
            segment.main, [not_image, *box, "--model", model_folder, "--out", "m.png"], capsys
        )
        assert "--model" in run_and_fail(
            segment.main, [image_path, *box, "--model", tmp_path / "nothing", "--out", "m.png"], capsys
        )
        assert "--out" in run_and_fail(
            segment.main, [image_path, *box, "--model", model_folder, "--out", tmp_path / "m.jpg"], capsys
        )

    def test_box_given_twice_is_an_error(self, model_folder, image_path, tmp_path, capsys):
        argv = [image_path, "--box", *BOX, "--box", 1, 2, 3, 4, "--model", model_folder, "--out", tmp_path / "m.png"]
        assert "--box was given 2 times" in run_and_fail(segment.main, argv, capsys)
        assert not (tmp_path / "m.png").exists()

    def test_unwritable_out_is_an_early_error(self, model_folder, image_path, tmp_path, capsys):
        not_a_folder = tmp_path / "notes.txt"
        not_a_folder.write_text("a file where the output folder would go")
        folder = tmp_path / "folder.png"
        folder.mkdir()
        for out in (not_a_folder / "m.png", folder):
            message = run_and_fail(
                segment.main, [image_path, "--box", *BOX, "--model", model_folder, "--out", out], capsys
            )
            assert "--out" in message and ("not a writable folder" in message or "is a folder" in message)
        assert not_a_folder.read_text() == "a file where the output folder would go"


class TestAutomaticMasks:
    def test_draws_the_pipelines_masks(self, model_folder, image_path, tmp_path, capsys):
        out = tmp_path / "masks.png"
        argv = [image_path, "--model", model_folder, "--out", out, "--points_per_side", 3, "--points_per_batch", 4]
        argv += ["--pred_iou_thresh", 0, "--stability_score_thresh", 0]
        result = automatic_masks.main([str(arg) for arg in argv])

        picture = read_png(out)
        assert picture.mode == "RGB" and picture.size == (WIDTH, HEIGHT)
        assert len(result["masks"]) >= 1 and len(result["scores"]) == len(result["masks"])
        # The plugins routed all 9 grid prompts
        assert result["alpha_1"].shape == (9,)
        assert ((result["alpha_1"] > 0) & (result["alpha_1"] < 1)).all()
        # Pixels under a mask are tinted, the others keep the image's colours (label corner aside)
        pixels = np.asarray(picture).astype(int)
        covered = np.any(result["masks"], axis=0)
        covered[: HEIGHT // 3, :] = False
        assert np.abs(pixels - scene())[covered].mean() > 10
        output = capsys.readouterr().out
        assert f"{len(result['masks'])} masks from 9 grid prompts" in output

    def test_bad_arguments_are_rejected(self, model_folder, image_path, tmp_path, capsys):
        base = [image_path, "--model", model_folder, "--out", tmp_path / "masks.png"]
        assert "--points_per_side" in run_and_fail(automatic_masks.main, [*base, "--points_per_side", 0], capsys)
        assert "--pred_iou_thresh" in run_and_fail(automatic_masks.main, [*base, "--pred_iou_thresh", 2], capsys)
        # Past these the pipeline divided by zero (8 crop layers) or ran without bound (a million prompts)
        assert "--crops_n_layers must lie in [0, 3]" in run_and_fail(
            automatic_masks.main, [*base, "--crops_n_layers", 8], capsys
        )
        assert "--points_per_side must lie in [1, 128]" in run_and_fail(
            automatic_masks.main, [*base, "--points_per_side", 1000], capsys
        )
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        assert "not a writable folder" in run_and_fail(
            automatic_masks.main, [*base[:-1], tmp_path / "notes.txt" / "masks.png"], capsys
        )


class TestCompareWithSam:
    def test_figure_and_prompts(self, model_folder, image_path, tmp_path, capsys):
        out = tmp_path / "compare.png"
        argv = [image_path, "--box", *BOX, "--model", model_folder, "--out", out, "--num_prompts", 3, "--seed", 1]
        argv += ["--panel_size", 96]
        result = compare_with_sam.main([str(arg) for arg in argv])

        figure = read_png(out)
        assert figure.mode == "RGB"
        # Two columns of panels 96 x 58 (the 80 x 48 image scaled to 96 on its longest side), four rows
        assert figure.width >= 2 * 96 and figure.height >= 4 * round(HEIGHT * 96 / WIDTH)

        boxes = result["boxes"]
        assert boxes.shape == (4, 4)
        assert torch.equal(boxes[0], torch.tensor(BOX, dtype=boxes.dtype))
        assert (box_iou(boxes[1:], boxes[:1].expand(3, 4)) >= 0.5).all()
        sam, stable = result["predictions"]["SAM"], result["predictions"]["Stable-SAM"]
        assert torch.equal(sam.alpha_1, torch.zeros(4))
        assert result["alpha_1"].shape == (4,) and result["alpha_1"].std() > 0
        assert not torch.equal(sam.masks, stable.masks)
        output = capsys.readouterr().out
        for alpha in result["alpha_1"].tolist():
            assert f"{alpha:.3f}" in output
        assert "stability" in output

    def test_same_seed_same_prompts(self, model_folder, image_path, tmp_path):
        runs = []
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            argv = [image_path, "--box", *BOX, "--model", model_folder, "--out", tmp_path / f"{name}.png"]
            runs.append(compare_with_sam.main([str(arg) for arg in [*argv, "--num_prompts", 2, "--seed", seed]]))
        assert torch.equal(runs[0]["boxes"], runs[1]["boxes"])
        assert torch.equal(runs[0]["alpha_1"], runs[1]["alpha_1"])
        assert not torch.equal(runs[0]["boxes"], runs[2]["boxes"])
        assert read_png(tmp_path / "a.png").tobytes() == read_png(tmp_path / "b.png").tobytes()

    def test_bad_arguments_are_rejected(self, model_folder, image_path, tmp_path, capsys):
        base = [image_path, "--model", model_folder, "--out", tmp_path / "c.png"]
        assert "--box" in run_and_fail(compare_with_sam.main, base, capsys)
        assert "--num_prompts" in run_and_fail(
            compare_with_sam.main, [*base, "--box", *BOX, "--num_prompts", 0], capsys
        )
        assert "--box" in run_and_fail(compare_with_sam.main, [*base, "--box", 30, 5, 10, 40], capsys)


def test_load_image_scales_16_bit_by_range(tmp_path):
    values = np.linspace(1000, 3000, 48 * 80).reshape(48, 80).astype(np.uint16)
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(values).save(path)
    image = segment.load_image(path)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.min() == 0 and pixels.max() == 255
