import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import SamModel

from stable_sam_hf import StableSamImageProcessor
from stable_sam_hf.methods import pixel_statistics, segmentation_loss
from stable_sam_toy import synthetic, train_base
from stable_sam_toy.synthetic import (
    DOMAINS,
    SceneConfig,
    generate_scene,
    generate_scene_labels,
    generate_scenes,
    labels_to_masks,
    write_coco_scenes,
    write_scene_tree,
)


class TestSceneGenerator:
    def test_same_seed_and_index_give_the_same_scene(self):
        image_a, masks_a = generate_scene(7, size=64, seed=3)
        image_b, masks_b = generate_scene(7, size=64, seed=3)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(masks_a, masks_b)

    def test_scene_does_not_depend_on_how_many_are_generated(self):
        images, labels = generate_scenes(6, size=64, seed=3)
        tail_images, tail_labels = generate_scenes(3, size=64, seed=3, start=3)
        np.testing.assert_array_equal(images[3:], tail_images)
        np.testing.assert_array_equal(labels[3:], tail_labels)
        for index in (0, 4):
            image, masks = generate_scene(index, size=64, seed=3)
            np.testing.assert_array_equal(images[index], image)
            np.testing.assert_array_equal(labels_to_masks(labels[index]), masks)

    def test_seed_index_and_domain_change_the_scene(self):
        image, _ = generate_scene(0, size=64, seed=0)
        assert not np.array_equal(image, generate_scene(0, size=64, seed=1)[0])
        assert not np.array_equal(image, generate_scene(1, size=64, seed=0)[0])
        assert not np.array_equal(image, generate_scene(0, size=64, seed=0, domain="shifted")[0])

    @pytest.mark.parametrize("domain", DOMAINS)
    def test_masks_are_non_empty_disjoint_and_large_enough(self, domain):
        config = SceneConfig()
        for index in range(12):
            image, masks = generate_scene(index, size=96, domain=domain, seed=5)
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8
            assert masks.dtype == np.bool_ and masks.ndim == 3 and masks.shape[1:] == (96, 96)
            assert masks.shape[0] >= 1
            areas = masks.sum(axis=(1, 2))
            assert (areas >= config.min_visible_area * 96 * 96).all()
            # Visible parts never overlap: an occluded object loses the pixels of the objects on top of it
            assert masks.sum(axis=0).max() <= 1
            # Every object has a non-degenerate box
            assert (masks.any(axis=1).sum(axis=1) >= 2).all() and (masks.any(axis=2).sum(axis=1) >= 2).all()

    @pytest.mark.parametrize("name", sorted(synthetic._SHAPE_FUNCTIONS))
    def test_every_shape_is_wide_enough_for_the_low_res_mask(self, name):
        # A morphological opening (erode, then dilate, with a 3x3 cross) deletes every part narrower than 3 px; a
        # structure 4 px wide keeps nearly all of its pixels. Wires 2.6 px wide (the first toy world's) kept 69 %.
        x, y = synthetic._grid(128)
        for index in range(30):
            rng = np.random.default_rng(index)
            mask, _ = synthetic._SHAPE_FUNCTIONS[name](rng, x, y, 64.0, 64.0, rng.uniform(0.12, 0.24) * 128, 1.0)
            # Dilation is the complement's erosion, complemented
            opened = ~synthetic._erode(~synthetic._erode(mask))
            assert mask.sum() > 0
            assert (opened & mask).sum() / mask.sum() >= 0.9, f"{name} #{index} has sub-resolution parts"

    def test_scenes_have_touching_objects_and_uncovered_pixels(self):
        _, labels = generate_scenes(16, size=96, seed=0)
        touching = 0
        for label in labels:
            right = (label[:, 1:] != label[:, :-1]) & (label[:, 1:] > 0) & (label[:, :-1] > 0)
            down = (label[1:] != label[:-1]) & (label[1:] > 0) & (label[:-1] > 0)
            touching += int(right.any() or down.any())
        # Clutter: most scenes have two objects sharing a boundary, and every scene has background
        assert touching >= 8
        assert (labels == 0).reshape(16, -1).any(axis=1).all()

    def test_several_objects_per_scene_on_average(self):
        _, labels = generate_scenes(20, size=96, seed=0)
        counts = labels.reshape(20, -1).max(axis=1)
        assert counts.min() >= 1
        assert counts.mean() >= 3

    def test_shifted_domain_has_other_colours(self):
        train, _ = generate_scenes(16, size=64, seed=0, domain="train")
        shifted, _ = generate_scenes(16, size=64, seed=0, domain="shifted")
        # Train hues run from red to cyan, shifted hues from blue to pink: blue dominates red only in the shifted domain
        train_blue_minus_red = train[..., 2].astype(float).mean() - train[..., 0].astype(float).mean()
        shifted_blue_minus_red = shifted[..., 2].astype(float).mean() - shifted[..., 0].astype(float).mean()
        assert shifted_blue_minus_red > train_blue_minus_red + 30

    def test_config_controls_the_number_of_objects(self):
        config = SceneConfig(min_objects=1, max_objects=1, p_nest=0.0, p_on_top=0.0)
        for index in range(5):
            _, masks = generate_scene(index, size=64, config=config)
            assert masks.shape[0] == 1

    @pytest.mark.parametrize("domain", DOMAINS)
    def test_salient_scenes_label_one_large_central_object(self, domain):
        config = SceneConfig(salient_min_radius=0.2, salient_max_radius=0.3, min_radius=0.08, max_radius=0.16)
        assert config.salient and not SceneConfig().salient
        for index in range(10):
            _, labels = generate_scene_labels(index, size=64, domain=domain, seed=2, config=config)
            assert labels.max() == 1
            rows, cols = np.nonzero(labels)
            # Placed with its centre in the middle 30 % of each axis; clutter may hide parts of it
            assert 0.15 * 64 < rows.mean() < 0.85 * 64 and 0.15 * 64 < cols.mean() < 0.85 * 64

    def test_salient_scenes_paint_clutter_without_labelling_it(self):
        def background_spread(max_objects):
            config = SceneConfig(
                salient_min_radius=0.2, salient_max_radius=0.2, min_objects=max_objects, max_objects=max_objects
            )
            spreads = []
            for index in range(12):
                image, labels = generate_scene_labels(index, size=64, seed=4, config=config)
                assert labels.max() == 1
                spreads.append(image[labels == 0].astype(float).std(axis=0).mean())
            return np.mean(spreads)

        # Six more objects on the unlabelled part of the image widen its colours well beyond a bare background's
        assert background_spread(7) > background_spread(1) + 5

    def test_bad_salient_radii_raise(self):
        with pytest.raises(ValueError, match="salient_min_radius"):
            SceneConfig(salient_min_radius=0.2)
        with pytest.raises(ValueError, match="salient_min_radius"):
            SceneConfig(salient_min_radius=0.3, salient_max_radius=0.2)
        with pytest.raises(ValueError, match="salient_min_radius"):
            SceneConfig(salient_min_radius=0.2, salient_max_radius=0.6)

    def test_labels_to_masks(self):
        labels = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
        masks = labels_to_masks(labels)
        np.testing.assert_array_equal(masks, [[[0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0]]])
        with pytest.raises(ValueError, match="labels"):
            labels_to_masks(labels.astype(np.float32))

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"domain": "test"}, ValueError, "domain"),
            ({"size": 8}, ValueError, "size"),
            ({"size": 64.0}, TypeError, "size"),
            ({"seed": -1}, ValueError, "seed"),
            ({"config": {"min_objects": 2}}, TypeError, "config"),
        ],
    )
    def test_bad_arguments_raise(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            generate_scene(0, **kwargs)

    def test_bad_index_and_config_raise(self):
        with pytest.raises(ValueError, match="index"):
            generate_scene(-1)
        with pytest.raises(ValueError, match="min_objects"):
            SceneConfig(min_objects=0)
        with pytest.raises(ValueError, match="p_touch"):
            SceneConfig(p_touch=1.5)

    def test_config_from_command_line_strings(self):
        config = SceneConfig.from_strings(["p_similar_colour=0", "max_objects=5", " min_radius = 0.1"])
        assert config == SceneConfig(p_similar_colour=0.0, max_objects=5, min_radius=0.1)
        assert isinstance(config.max_objects, int)
        assert SceneConfig.from_strings([]) == SceneConfig()
        # The scenes follow the knobs: at most 5 objects
        assert max(int(generate_scene_labels(i, config=config)[1].max()) for i in range(6)) <= 5
        for bad, message in (
            (["colour=0"], "name=value"),
            (["p_touch"], "name=value"),
            (["p_touch=high"], "not a number"),
            (["max_objects=2.5"], "not a number"),
            (["p_touch=1.5"], "p_touch"),
        ):
            with pytest.raises(ValueError, match=message):
                SceneConfig.from_strings(bad)


class TestWriteSceneTree:
    def test_writes_decodable_pairs_matching_the_scenes(self, tmp_path):
        stems = write_scene_tree(tmp_path, 3, size=48, domain="shifted", seed=2, start=10)
        dataset = tmp_path / "Synthetic-shifted"
        images = sorted(p.stem for p in (dataset / "im").glob("*.jpg"))
        masks = sorted(p.stem for p in (dataset / "gt").glob("*.png"))
        assert images == masks == sorted(stems)
        expected = sum(int(generate_scene_labels(i, 48, "shifted", 2)[1].max()) for i in range(10, 13))
        assert len(stems) == expected
        for stem in stems:
            index, k = (int(part) for part in stem.replace("scene", "").split("_obj"))
            image, labels = generate_scene_labels(index, 48, "shifted", 2)
            with Image.open(dataset / "im" / f"{stem}.jpg") as picture:
                assert picture.mode == "RGB" and picture.size == (48, 48)
                decoded = np.asarray(picture)
            # JPEG is lossy but close at quality 95
            assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 6
            with Image.open(dataset / "gt" / f"{stem}.png") as picture:
                mask = np.asarray(picture)
            assert mask.shape == (48, 48)
            assert set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, labels == k)

    def test_one_folder_layout_and_bad_names(self, tmp_path):
        write_scene_tree(tmp_path, 1, size=32, dataset_name="toy", image_dir="all", mask_dir="all")
        files = list((tmp_path / "toy" / "all").iterdir())
        assert {p.suffix for p in files} == {".jpg", ".png"}
        with pytest.raises(ValueError, match="image_dir"):
            write_scene_tree(tmp_path, 1, image_dir="")
        with pytest.raises(ValueError, match="jpeg_quality"):
            write_scene_tree(tmp_path, 1, jpeg_quality=101)


# pycocotools' own use of numpy 2
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
class TestWriteCocoScenes:
    def test_every_object_is_an_annotation_that_pycocotools_reads_back(self, tmp_path):
        from pycocotools.coco import COCO

        path = write_coco_scenes(tmp_path, 3, size=48, seed=1, start=5)
        coco = COCO(str(path))
        assert sorted(coco.getImgIds()) == [6, 7, 8] and coco.getCatIds() == [1]
        ids = []
        for index in range(5, 8):
            image, labels = generate_scene_labels(index, 48, "train", 1)
            info = coco.loadImgs([index + 1])[0]
            with Image.open(tmp_path / "images" / info["file_name"]) as picture:
                assert picture.size == (48, 48) == (info["width"], info["height"])
                assert np.abs(np.asarray(picture).astype(int) - image.astype(int)).mean() < 6
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
            masks = labels_to_masks(labels)
            assert len(annotations) == len(masks) >= 1
            for annotation, mask in zip(annotations, masks):
                np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
                ys, xs = np.nonzero(mask)
                assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert annotation["area"] == mask.sum() and annotation["iscrowd"] == 0
                ids.append(annotation["id"])
        assert len(set(ids)) == len(ids) == len(coco.getAnnIds())

    def test_bad_arguments_raise(self, tmp_path):
        with pytest.raises(ValueError, match="`num_scenes` must be"):
            write_coco_scenes(tmp_path, 0)
        with pytest.raises(ValueError, match="jpeg_quality"):
            write_coco_scenes(tmp_path, 1, jpeg_quality=0)
        with pytest.raises(TypeError, match="`root` must be a str or Path"):
            write_coco_scenes(3, 1)


def _tiny_args(module, output_dir, **overrides):
    values = {
        "output_dir": str(output_dir),
        "image_size": 32,
        "num_train_scenes": 6,
        "num_eval_scenes": 2,
        "patch_size": 8,
        "vision_hidden_size": 32,
        "vision_num_layers": 1,
        "vision_num_heads": 2,
        "vision_mlp_dim": 64,
        "decoder_mlp_dim": 64,
        "max_train_steps": 2,
        "train_batch_size": 2,
        "prompts_per_image": 2,
        "warmup_steps": 1,
        "logging_steps": 1,
        "eval_steps": 0,
        "checkpointing_steps": 1,
        "checkpoints_total_limit": 5,
        "num_threads": 1,
    }
    values.update(overrides)
    return module.ToyBaseTrainingArguments(**values)


@pytest.fixture(scope="module")
def script():
    return train_base


@pytest.fixture(autouse=True)
def _restore_threads():
    # main() sets torch's thread count (one thread: multi-threaded CPU torch crawls on a busy machine)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class TestTrainToyBase:
    def test_fresh_model_has_unit_std_frozen_positional_embedding(self, script, tmp_path):
        model = script.build_toy_sam(_tiny_args(script, tmp_path))
        embedding = model.shared_image_embedding.positional_embedding
        assert 0.8 < embedding.std().item() < 1.2
        assert not embedding.requires_grad
        assert model.prompt_encoder.shared_embedding.positional_embedding is embedding
        assert model.config.mask_decoder_config.hidden_size == 256
        assert model.config.vision_config.output_channels == 256
        # transformers' default vision initializer_range (1e-10) would leave the encoder at zero
        assert model.vision_encoder.layers[0].attn.qkv.weight.std().item() > 1e-3

    def test_loss_is_small_for_a_perfect_prediction(self, script):
        masks = torch.zeros(2, 8, 8, dtype=torch.bool)
        masks[0, 2:5, 2:5] = True
        masks[1, 0, :] = True
        perfect = torch.where(masks, 20.0, -20.0)
        loss, iou = script.mask_and_iou_loss(perfect, torch.ones(2), masks, 1.0)
        torch.testing.assert_close(iou, torch.ones(2))
        assert (loss < 0.1).all()
        wrong, wrong_iou = script.mask_and_iou_loss(-perfect, torch.ones(2), masks, 1.0)
        assert (wrong_iou == 0).all() and (wrong > 2).all()

    def test_mask_loss_is_the_training_recipes_segmentation_loss(self, script):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(3, 16, 16, generator=generator)
        masks = torch.rand(3, 16, 16, generator=generator) > 0.5
        per_mask, _ = script.mask_and_iou_loss(logits, torch.zeros(3), masks, iou_loss_weight=0.0)
        one_by_one = torch.stack([segmentation_loss(logits[i : i + 1], masks[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(per_mask, one_by_one)
        torch.testing.assert_close(segmentation_loss(logits, masks, reduction="none"), one_by_one)
        torch.testing.assert_close(segmentation_loss(logits, masks), one_by_one.mean())
        with pytest.raises(ValueError, match="`reduction`"):
            segmentation_loss(logits, masks, reduction="sum")

    def test_pixel_values_are_the_image_processors(self, script):
        images, _ = generate_scenes(2, size=32, seed=1)
        processor = StableSamImageProcessor(
            size={"longest_edge": 32}, pad_size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3]
        )
        expected = processor(images=list(images), return_tensors="pt")["pixel_values"]
        mean, std = pixel_statistics(processor)
        torch.testing.assert_close((torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std, expected)
        default = StableSamImageProcessor(size={"longest_edge": 32}, pad_size={"height": 32, "width": 32})
        expected = default(images=list(images), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(script.to_pixel_values(images), expected)

    def test_two_steps_write_loadable_checkpoints(self, script, tmp_path):
        result = script.main(_tiny_args(script, tmp_path))
        assert result["global_step"] == 2
        assert np.isfinite(result["train_loss"])
        assert set(result["eval"]) == {"train", "shifted"}
        assert set(result["eval"]["train"]) == {"box", "noisy_box", "points_1", "points_3"}
        for path in (tmp_path / "checkpoint-2", tmp_path):
            model = SamModel.from_pretrained(path)
            embedding = model.shared_image_embedding.positional_embedding
            assert embedding.dtype == torch.float32
            assert 0.8 < embedding.std().item() < 1.2
            assert model.prompt_encoder.shared_embedding.positional_embedding is embedding
        # The final weights are stored as float16, the checkpoints as float32
        with safe_open(tmp_path / "model.safetensors", "pt") as weights:
            assert weights.get_tensor("mask_decoder.iou_token.weight").dtype == torch.float16
        with safe_open(tmp_path / "checkpoint-2" / "model.safetensors", "pt") as weights:
            assert weights.get_tensor("mask_decoder.iou_token.weight").dtype == torch.float32
        card = (tmp_path / "README.md").read_text()
        assert "not SAM" in card and "noisy_box" in card
        assert json.loads((tmp_path / "eval_results.json").read_text())["step"] == 2

    def test_resume_continues_exactly(self, script, tmp_path):
        straight = script.main(_tiny_args(script, tmp_path / "straight", max_train_steps=3, save_dtype="float32"))
        stopped = script.main(_tiny_args(script, tmp_path / "resumed", max_train_steps=3, stop_at_step=2))
        assert stopped["global_step"] == 2
        assert not (tmp_path / "resumed" / "model.safetensors").exists()
        resumed = script.main(
            _tiny_args(script, tmp_path / "resumed", max_train_steps=3, save_dtype="float32", resume=True)
        )
        assert resumed["global_step"] == straight["global_step"] == 3
        model_straight = SamModel.from_pretrained(tmp_path / "straight")
        model_resumed = SamModel.from_pretrained(tmp_path / "resumed")
        for (name, a), (_, b) in zip(model_straight.state_dict().items(), model_resumed.state_dict().items()):
            torch.testing.assert_close(a, b, msg=name)
        assert resumed["eval"] == straight["eval"]

    def test_instance_loss_is_zero_only_when_segments_have_their_own_directions(self, script):
        labels = torch.zeros(2, 32, 32, dtype=torch.long)
        labels[:, :16, :16] = 1
        labels[:, 16:, 16:] = 2
        labels[1, 16:, :3] = 3  # a thin strip: it covers 3/8 of the cells it touches, so it owns none
        # Each 8x8 cell's feature is its owning segment's one-hot direction (the strip's cells belong to the background)
        owners = torch.zeros(2, 4, 4, dtype=torch.long)
        owners[:, :2, :2] = 1
        owners[:, 2:, 2:] = 2
        perfect = torch.nn.functional.one_hot(owners, 4).permute(0, 3, 1, 2).float() * 5.0
        assert script.instance_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
        # One direction for everything: nothing to pull, every pair of segments fully aligned
        assert script.instance_loss(torch.ones(2, 3, 4, 4), labels).item() == pytest.approx(1.0, abs=1e-5)
        # Features that split one object in two are pulled towards its mean
        split = perfect.clone()
        split[:, :, 0, 0] = perfect[:, :, 3, 3]
        assert script.instance_loss(split, labels).item() > 0.05
        features = torch.randn(2, 8, 4, 4, requires_grad=True)
        script.instance_loss(features, labels).backward()
        assert features.grad.abs().sum() > 0

    def test_instance_loss_trains_a_head_and_resumes_only_with_it(self, script, tmp_path):
        result = script.main(_tiny_args(script, tmp_path / "a", instance_loss_weight=0.5, max_train_steps=3))
        state = torch.load(tmp_path / "a" / "checkpoint-3" / script.TRAINING_STATE_NAME, weights_only=True)
        losses = [entry["instance_loss"] for entry in state["history"] if "instance_loss" in entry]
        assert len(losses) == 3 and all(0 <= value <= 2 for value in losses)
        assert set(state["instance_head"]) == {"weight", "bias"}
        assert result["global_step"] == 3
        # The head is not part of the saved model
        model = SamModel.from_pretrained(tmp_path / "a")
        assert not any("instance" in name for name in model.state_dict())
        assert "instance loss (weight 0.5" in (tmp_path / "a" / "README.md").read_text()
        with pytest.raises(ValueError, match="instance_loss_weight"):
            script.main(_tiny_args(script, tmp_path / "a", max_train_steps=4, resume=True))

    def test_box_jitter_moves_boxes_by_at_most_its_cap_and_keeps_them_valid(self, script):
        boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 5.0, 5.0], [60.0, 60.0, 63.0, 63.0]]).repeat(100, 1)
        generator = torch.Generator().manual_seed(0)
        jittered = script.jitter_boxes(boxes, 0.1, 2.5, (64, 64), generator)
        assert not torch.equal(jittered, boxes)
        assert (jittered - boxes).abs().max() <= 2.5 + 1e-6
        assert (jittered[:, :2] <= jittered[:, 2:]).all()
        assert jittered.min() >= 0 and jittered.max() <= 64
        # The std scales with the side: the 40-px-wide box moves more along x than the 10-px-high one along y
        shift = (jittered - boxes)[0::3]
        assert shift[:, 0].std() > 2 * shift[:, 1].std()
        masks = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
        masks[..., 20:31, 10:51] = True
        exact = script.clean_prompt(masks, "box", 0, torch.Generator().manual_seed(0))["input_boxes"]
        assert torch.equal(exact[0, 0], torch.tensor([10.0, 20.0, 50.0, 30.0]))

    def test_init_model_starts_from_saved_weights(self, script, tmp_path):
        script.main(_tiny_args(script, tmp_path / "base", max_train_steps=1, save_dtype="float32"))
        # A zero learning rate keeps the starting weights, so the result is the saved model exactly
        script.main(
            _tiny_args(
                script, tmp_path / "next", init_model=str(tmp_path / "base"), learning_rate=0.0, save_dtype="float32"
            )
        )
        base = SamModel.from_pretrained(tmp_path / "base").state_dict()
        continued = SamModel.from_pretrained(tmp_path / "next").state_dict()
        for name, value in base.items():
            torch.testing.assert_close(continued[name], value, msg=name)
        assert "started from the weights of" in (tmp_path / "next" / "README.md").read_text()
        with pytest.raises(ValueError, match="init_model"):
            _tiny_args(script, tmp_path, init_model=str(tmp_path / "missing"))

    def test_bad_arguments_raise(self, script, tmp_path):
        with pytest.raises(ValueError, match="instance_loss_weight"):
            _tiny_args(script, tmp_path, instance_loss_weight=-1.0)
        with pytest.raises(ValueError, match="box_jitter"):
            _tiny_args(script, tmp_path, box_jitter=-0.1)
        with pytest.raises(ValueError, match="eval_seed"):
            _tiny_args(script, tmp_path, eval_seed=0)
        with pytest.raises(ValueError, match="patch_size"):
            _tiny_args(script, tmp_path, image_size=36)
        with pytest.raises(ValueError, match="eval_prompt_types"):
            _tiny_args(script, tmp_path, eval_prompt_types=["points_0"])
