"""The toy base's multimask outputs: their training script, and the mask-generation pipeline on the shipped toy."""

import json
from pathlib import Path

import pytest
import torch
from transformers import SamModel

from stable_sam_hf.prompts import masks_to_boxes, sample_points
from stable_sam_toy import automatic_masks, train_multimask
from stable_sam_toy.synthetic import generate_scenes
from stable_sam_toy.train_base import to_pixel_values


ROOT = Path(__file__).resolve().parents[1]
TOY_BASE = ROOT / "models" / "toy-sam-128"


@pytest.fixture(scope="module")
def script():
    return train_multimask


def _prompts(num_scenes: int = 4, seed: int = 5) -> tuple[torch.Tensor, dict]:
    """Pixel values of a few held-out scenes and, per prompt kind, one prompt for each scene's first object."""
    images, labels = generate_scenes(num_scenes, size=128, seed=seed)
    masks = torch.from_numpy(labels) == 1
    pixel_values = to_pixel_values(images)
    generator = torch.Generator().manual_seed(0)
    prompts = {"box": {"input_boxes": masks_to_boxes(masks)[:, None]}}
    for count in (1, 3):
        points, point_labels = sample_points(masks, count, generator=generator)
        prompts[f"points_{count}"] = {"input_points": points[:, None], "input_labels": point_labels[:, None]}
    return pixel_values, prompts


class TestMultimaskTraining:
    def test_only_the_multimask_heads_and_iou_rows_get_a_gradient(self, script):
        model = SamModel.from_pretrained(TOY_BASE)
        parameters = script.multimask_parameters(model)
        trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        heads = tuple(f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3))
        iou_rows = {
            "mask_decoder.iou_prediction_head.proj_out.weight",
            "mask_decoder.iou_prediction_head.proj_out.bias",
        }
        assert trainable == {name for name, _ in model.named_parameters() if name.startswith(heads)} | iou_rows
        assert len(trainable) == 3 * 6 + 2
        assert len(parameters) == len(trainable)

        pixel_values, prompts = _prompts(2)
        with torch.no_grad():
            embeddings = model.get_image_embeddings(pixel_values)
        outputs = model(image_embeddings=embeddings, multimask_output=True, **prompts["points_1"])
        (outputs.pred_masks.mean() + outputs.iou_scores.sum()).backward()
        proj_out = model.mask_decoder.iou_prediction_head.proj_out
        for grad in (proj_out.weight.grad, proj_out.bias.grad):
            assert torch.count_nonzero(grad[0]) == 0  # the single-mask output's IoU prediction
            assert torch.count_nonzero(grad[1:]) > 0
        assert all(
            torch.count_nonzero(p.grad) > 0 for p in model.mask_decoder.output_hypernetworks_mlps[1].parameters()
        )

    def test_loss_is_the_best_masks_plus_every_iou_error(self, script):
        truth = torch.zeros(1, 8, 8, dtype=torch.bool)
        truth[0, 2:6, 2:6] = True
        perfect = torch.where(truth, 20.0, -20.0)
        logits = torch.stack([-perfect, torch.full_like(perfect, -20.0), perfect], dim=1)  # N x 3 x H x W
        exact = torch.tensor([[0.0, 0.0, 1.0]])
        loss, iou = script.multimask_loss(logits, exact, truth, iou_loss_weight=1.0)
        assert torch.allclose(iou, torch.tensor([[0.0, 0.0, 1.0]]))
        assert loss.item() < 1e-6
        wrong = torch.tensor([[0.5, 0.5, 0.5]])
        loss, _ = script.multimask_loss(logits, wrong, truth, iou_loss_weight=2.0)
        assert loss.item() == pytest.approx(2.0 * (0.25 + 0.25 + 0.25) / 3, abs=1e-5)

    def test_training_learns_three_masks_and_leaves_the_single_mask_output(self, script, tmp_path):
        # The toy base as train_toy_base.py leaves it: the multimask heads and their IoU rows at random weights
        untrained = SamModel.from_pretrained(TOY_BASE)
        torch.manual_seed(0)
        with torch.no_grad():
            for head in untrained.mask_decoder.output_hypernetworks_mlps[1:]:
                for layer in (head.proj_in, *head.layers, head.proj_out):
                    layer.reset_parameters()
            proj_out = untrained.mask_decoder.iou_prediction_head.proj_out
            fresh = torch.nn.Linear(proj_out.in_features, proj_out.out_features)
            proj_out.weight[1:], proj_out.bias[1:] = fresh.weight[1:], fresh.bias[1:]
        untrained.save_pretrained(tmp_path / "untrained")
        (tmp_path / "untrained" / "README.md").write_text((TOY_BASE / "README.md").read_text())
        args = script.MultimaskTrainingArguments(
            base_model=str(tmp_path / "untrained"),
            output_dir=str(tmp_path / "toy"),
            num_train_scenes=40,
            num_eval_scenes=8,
            max_train_steps=40,
            batch_size=32,
            logging_steps=20,
        )
        results = script.main(args)
        for domain in ("train", "shifted"):
            before, after = results["before"][domain], results["after"][domain]
            assert before["single"] == after["single"]
            assert after["best_scored"] > before["best_scored"] + 10, (before, after)
            assert after["oracle"] >= after["best_scored"]

        base = SamModel.from_pretrained(tmp_path / "untrained").eval()
        trained = SamModel.from_pretrained(tmp_path / "toy").eval()
        pixel_values, prompts = _prompts()
        with torch.no_grad():
            embeddings = base.get_image_embeddings(pixel_values)
            for prompt in prompts.values():
                expected = base(image_embeddings=embeddings, multimask_output=False, **prompt)
                actual = trained(image_embeddings=embeddings, multimask_output=False, **prompt)
                assert torch.equal(expected.pred_masks, actual.pred_masks)
                assert torch.equal(expected.iou_scores, actual.iou_scores)
            changed = trained(image_embeddings=embeddings, multimask_output=True, **prompts["points_1"])
            assert not torch.allclose(
                changed.pred_masks,
                base(image_embeddings=embeddings, multimask_output=True, **prompts["points_1"]).pred_masks,
            )
        card = (tmp_path / "toy" / "README.md").read_text()
        assert card.count(script.MULTIMASK_CARD_HEADING) == 1 and "not SAM" in card
        saved = json.loads((tmp_path / "toy" / "multimask_results.json").read_text())
        assert saved["after"] == results["after"]

    def test_bad_arguments_raise(self, script, tmp_path):
        with pytest.raises(ValueError, match="eval_seed"):
            script.MultimaskTrainingArguments(base_model=str(TOY_BASE), data_seed=1, eval_seed=1)
        with pytest.raises(ValueError, match="max_train_steps"):
            script.MultimaskTrainingArguments(base_model=str(TOY_BASE), max_train_steps=0)
        with pytest.raises(ValueError, match="base_model"):
            script.MultimaskTrainingArguments(base_model=str(tmp_path))


def test_mask_generation_pipeline_finds_objects_with_the_shipped_toy(capsys):
    argv = ["--models", f"toy=sam:{TOY_BASE}", "--num_scenes", "3", "--pred_iou_thresh", "0.5"]
    results = automatic_masks.main([*argv, "--stability_score_thresh", "0.8"])["toy"]
    # Before its multimask outputs were trained, the toy's three masks per point were noise scored about 0.01: the
    # pipeline kept none
    assert results["masks_per_image"] >= 1
    assert results["precision"] >= 50 and results["recall"] >= 10, results
    assert 0.5 <= results["predicted_iou"] / 100 <= 1
    assert "| toy |" in capsys.readouterr().out
