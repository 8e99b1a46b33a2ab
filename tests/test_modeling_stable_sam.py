"""Tests for StableSamModel, in the shape of transformers' tests/models/sam/test_modeling_sam.py."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration, SamConfig, SamModel

from stable_sam_hf import StableSamConfig, StableSamModel
from stable_sam_hf.modeling_stable_sam import (
    StableSamDeformableSampling,
    StableSamTwoWayAttentionBlock,
    is_plugin_parameter,
)

from tiny import IMAGE_SIZE, perturb_plugins_, tiny_sam_config, tiny_sam_kwargs, tiny_stable_sam_config


class StableSamModelTester:
    def __init__(self, batch_size=2, point_batch_size=3, seed=0):
        self.batch_size = batch_size
        self.point_batch_size = point_batch_size
        self.seed = seed

    def get_config(self, **kwargs):
        return tiny_stable_sam_config(**kwargs)

    def prepare_inputs(self):
        generator = torch.Generator().manual_seed(self.seed)
        pixel_values = torch.randn(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        corners = torch.rand(self.batch_size, self.point_batch_size, 2, 2, generator=generator) * IMAGE_SIZE
        boxes = corners.sort(dim=2).values.reshape(self.batch_size, self.point_batch_size, 4)
        points = torch.rand(self.batch_size, self.point_batch_size, 3, 2, generator=generator) * IMAGE_SIZE
        labels = torch.randint(0, 2, (self.batch_size, self.point_batch_size, 3), generator=generator)
        mask_size = 4 * (IMAGE_SIZE // 8)
        masks = torch.randn(self.batch_size, 1, mask_size, mask_size, generator=generator) * 5
        return {"pixel_values": pixel_values, "boxes": boxes, "points": points, "labels": labels, "masks": masks}

    def sam_and_stable_sam(self, **config_kwargs):
        """A fresh StableSamModel and a SamModel holding exactly its SAM weights."""
        torch.manual_seed(self.seed)
        stable = StableSamModel(self.get_config(**config_kwargs)).eval()
        sam = SamModel(tiny_sam_config()).eval()
        result = sam.load_state_dict(stable.state_dict(), strict=False)
        assert result.missing_keys == []
        assert all(is_plugin_parameter(key) for key in result.unexpected_keys)
        return sam, stable


PROMPTS = {
    "boxes": lambda inputs: {"input_boxes": inputs["boxes"]},
    "points": lambda inputs: {"input_points": inputs["points"], "input_labels": inputs["labels"]},
    "points_and_boxes": lambda inputs: {
        "input_points": inputs["points"],
        "input_labels": inputs["labels"],
        "input_boxes": inputs["boxes"],
    },
    "boxes_and_mask": lambda inputs: {"input_boxes": inputs["boxes"], "input_masks": inputs["masks"]},
}


@pytest.fixture(scope="module")
def tester():
    return StableSamModelTester()


@pytest.fixture(scope="module")
def inputs(tester):
    return tester.prepare_inputs()


class TestStableSamConfig:
    def test_defaults_follow_spec(self):
        config = StableSamConfig()
        assert config.model_type == "stable_sam"
        assert config.plugin_layers == [1]
        assert config.offset_range == 2.0
        assert config.routing_hidden_size == 32
        assert config.routing_token_index == 0
        assert config.mask_decoder_config.hidden_size == 256

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"plugin_layers": [2]}, "plugin_layers"),
            ({"plugin_layers": [-1]}, "plugin_layers"),
            ({"plugin_layers": []}, "plugin_layers"),
            ({"plugin_layers": [1, 1]}, "plugin_layers"),
            ({"offset_range": 0.0}, "offset_range"),
            ({"offset_kernel_size": 4}, "offset_kernel_size"),
            ({"routing_hidden_size": 0}, "routing_hidden_size"),
            ({"routing_token_index": 5}, "routing_token_index"),
            ({"sampling": "attention"}, "sampling"),
        ],
    )
    def test_invalid_plugin_fields_name_the_field(self, kwargs, field):
        with pytest.raises(ValueError, match=f"`{field}`"):
            StableSamConfig(**kwargs)

    def test_plugin_layer_checked_against_decoder_depth(self):
        config = StableSamConfig(mask_decoder_config={"num_hidden_layers": 3}, plugin_layers=[2])
        assert config.plugin_layers == [2]

    def test_round_trip_and_from_sam_config(self, tmp_path):
        config = tiny_stable_sam_config(plugin_layers=[0, 1], offset_range=3.0)
        config.save_pretrained(tmp_path)
        loaded = AutoConfig.from_pretrained(tmp_path)
        assert isinstance(loaded, StableSamConfig)
        assert loaded.plugin_layers == [0, 1]
        assert loaded.offset_range == 3.0
        converted = StableSamConfig.from_sam_config(tiny_sam_config(), offset_range=1.5)
        assert converted.mask_decoder_config.hidden_size == 32
        assert converted.offset_range == 1.5
        with pytest.raises(TypeError, match="sam_config"):
            StableSamConfig.from_sam_config({"vision_config": {}})


class TestStableSamModel:
    def test_output_shapes(self, tester, inputs):
        model = StableSamModel(tester.get_config()).eval()
        with torch.no_grad():
            outputs = model(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"], output_sampling_offsets=True
            )
        batch, point_batch = tester.batch_size, tester.point_batch_size
        assert outputs.pred_masks.shape == (batch, point_batch, 3, 32, 32)
        assert outputs.iou_scores.shape == (batch, point_batch, 3)
        assert outputs.routing_weights.shape == (batch, point_batch, 2)
        torch.testing.assert_close(outputs.routing_weights.sum(-1), torch.ones(batch, point_batch))
        assert len(outputs.sampling_offsets) == 1
        assert outputs.sampling_offsets[0].shape == (batch, point_batch, 8, 8, 2)
        with torch.no_grad():
            single = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"], multimask_output=False)
        assert single.pred_masks.shape == (batch, point_batch, 1, 32, 32)
        assert single.sampling_offsets is None

    @pytest.mark.parametrize("prompt", sorted(PROMPTS))
    @pytest.mark.parametrize("multimask_output", [True, False])
    def test_fresh_model_equals_sam(self, tester, inputs, prompt, multimask_output):
        sam, stable = tester.sam_and_stable_sam()
        prompt_kwargs = PROMPTS[prompt](inputs)
        with torch.no_grad():
            expected = sam(pixel_values=inputs["pixel_values"], multimask_output=multimask_output, **prompt_kwargs)
            actual = stable(pixel_values=inputs["pixel_values"], multimask_output=multimask_output, **prompt_kwargs)
        assert expected.pred_masks.abs().mean() > 0.05  # outputs carry signal, so closeness means something
        torch.testing.assert_close(actual.pred_masks, expected.pred_masks, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(actual.iou_scores, expected.iou_scores, atol=1e-5, rtol=1e-5)

    def test_trained_plugins_change_outputs_and_alpha_zero_is_sam(self, tester, inputs):
        sam, stable = tester.sam_and_stable_sam()
        perturb_plugins_(stable)
        kwargs = {"pixel_values": inputs["pixel_values"], "input_boxes": inputs["boxes"]}
        with torch.no_grad():
            expected = sam(**kwargs)
            moved = stable(**kwargs, output_sampling_offsets=True)
            forced_zero = stable(**kwargs, routing_weight=0.0)
            forced_one = stable(**kwargs, routing_weight=1.0)
        assert (moved.pred_masks - expected.pred_masks).abs().max() > 1e-2
        assert moved.sampling_offsets[0].abs().max() > 0
        assert moved.sampling_offsets[0].abs().max() <= stable.config.offset_range
        torch.testing.assert_close(forced_zero.pred_masks, expected.pred_masks, atol=0, rtol=0)
        torch.testing.assert_close(forced_zero.routing_weights[..., 0], torch.zeros(2, 3))
        torch.testing.assert_close(forced_one.routing_weights[..., 1], torch.zeros(2, 3))
        assert (forced_one.pred_masks - moved.pred_masks).abs().max() > 1e-3

    def test_routing_weight_per_prompt(self, tester, inputs):
        _, stable = tester.sam_and_stable_sam()
        perturb_plugins_(stable)
        kwargs = {"pixel_values": inputs["pixel_values"], "input_boxes": inputs["boxes"]}
        per_prompt = torch.tensor([[0.0, 1.0, 0.5], [0.25, 0.0, 1.0]])
        with torch.no_grad():
            mixed = stable(**kwargs, routing_weight=per_prompt)
            zero = stable(**kwargs, routing_weight=0.0)
            one = stable(**kwargs, routing_weight=1.0)
        torch.testing.assert_close(mixed.routing_weights[..., 0], per_prompt)
        torch.testing.assert_close(mixed.pred_masks[0, 0], zero.pred_masks[0, 0])
        torch.testing.assert_close(mixed.pred_masks[0, 1], one.pred_masks[0, 1])
        torch.testing.assert_close(mixed.pred_masks[1, 2], one.pred_masks[1, 2])

    @pytest.mark.parametrize(
        ("routing_weight", "error"), [(1.5, ValueError), (-0.1, ValueError), ("0.5", TypeError), (True, TypeError)]
    )
    def test_bad_routing_weight(self, tester, inputs, routing_weight, error):
        model = StableSamModel(tester.get_config()).eval()
        with pytest.raises(error, match="routing_weight"):
            model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"], routing_weight=routing_weight)

    @pytest.mark.parametrize(
        ("prompt_kwargs", "argument"),
        [
            ({"input_points": torch.zeros(2, 3, 2)}, "input_points"),
            ({"input_points": torch.zeros(2, 1, 3, 3)}, "input_points"),
            ({"input_points": torch.zeros(2, 1, 3, 2), "input_labels": torch.ones(2, 1, 2)}, "input_labels"),
            ({"input_boxes": torch.zeros(2, 4)}, "input_boxes"),
            ({"input_boxes": torch.zeros(2, 1, 5)}, "input_boxes"),
            ({"input_boxes": torch.zeros(2, 1, 4), "input_masks": torch.zeros(2, 1, 16, 16)}, "input_masks"),
        ],
    )
    def test_bad_prompt_shapes_name_the_argument(self, tester, inputs, prompt_kwargs, argument):
        model = StableSamModel(tester.get_config()).eval()
        with pytest.raises(ValueError, match=f"`{argument}`"):
            model(pixel_values=inputs["pixel_values"], **prompt_kwargs)

    @pytest.mark.parametrize(
        "prompt_kwargs",
        [
            {"input_boxes": torch.zeros(2, 1, 4)},
            {"input_points": torch.zeros(2, 1, 1, 2), "input_labels": torch.ones(2, 1, 1, dtype=torch.long)},
            {"input_boxes": torch.zeros(1, 1, 4), "input_masks": torch.zeros(2, 1, 32, 32)},
        ],
    )
    def test_prompts_for_another_number_of_images_name_the_argument(self, tester, inputs, prompt_kwargs):
        # One image with prompts for two: SAM failed in torch.cat or a reshape
        model = StableSamModel(tester.get_config()).eval()
        name = "input_masks" if "input_masks" in prompt_kwargs else next(iter(prompt_kwargs))
        with pytest.raises(ValueError, match=f"`{name}` has prompts for 2 images but `pixel_values` holds 1"):
            model(pixel_values=inputs["pixel_values"][:1], **prompt_kwargs)

    @pytest.mark.parametrize("shape", [(3,), (1, 3), (2, 3, 1)])
    def test_routing_weight_of_the_wrong_shape_names_it(self, tester, inputs, shape):
        model = StableSamModel(tester.get_config()).eval()
        with pytest.raises(ValueError, match="`routing_weight` must be a scalar or of shape"):
            model(
                pixel_values=inputs["pixel_values"],
                input_boxes=inputs["boxes"][:, :2],
                routing_weight=torch.full(shape, 0.5),
            )

    def test_eager_and_sdpa_agree(self, tester, inputs):
        torch.manual_seed(0)
        eager = StableSamModel(tester.get_config()).eval()
        eager.set_attn_implementation("eager")
        sdpa = StableSamModel(tester.get_config()).eval()
        sdpa.set_attn_implementation("sdpa")
        perturb_plugins_(eager)
        sdpa.load_state_dict(eager.state_dict())
        assert eager.mask_decoder.config._attn_implementation == "eager"
        assert sdpa.mask_decoder.config._attn_implementation == "sdpa"
        kwargs = {"pixel_values": inputs["pixel_values"], "input_boxes": inputs["boxes"]}
        with torch.no_grad():
            torch.testing.assert_close(eager(**kwargs).pred_masks, sdpa(**kwargs).pred_masks, atol=1e-4, rtol=1e-4)

    def test_gradient_reaches_plugins_only(self, tester, inputs):
        model = StableSamModel(tester.get_config())
        perturb_plugins_(model)
        model.freeze_base_model()
        outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
        outputs.pred_masks.sigmoid().mean().backward()
        for name, param in model.named_parameters():
            if is_plugin_parameter(name):
                assert param.requires_grad, name
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            else:
                assert not param.requires_grad and param.grad is None, name

    def test_bf16_autocast_trains_fp32_plugins(self, tester, inputs):
        model = perturb_plugins_(StableSamModel(tester.get_config())).freeze_base_model()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
        outputs.pred_masks.float().sigmoid().mean().backward()
        for _, param in model.plugin_named_parameters():
            assert param.dtype == torch.float32 and param.grad is not None and param.grad.abs().sum() > 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            inference = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
        torch.testing.assert_close(inference.pred_masks, outputs.pred_masks.detach(), atol=0, rtol=0)

    def test_plugin_layers_ablation(self, tester, inputs):
        model = StableSamModel(tester.get_config(plugin_layers=[0, 1])).eval()
        layers = model.mask_decoder.transformer.layers
        assert all(isinstance(layer, StableSamTwoWayAttentionBlock) for layer in layers)
        assert layers[0].skip_first_layer_pe and not layers[1].skip_first_layer_pe
        perturb_plugins_(model)
        with torch.no_grad():
            outputs = model(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"], output_sampling_offsets=True
            )
        assert len(outputs.sampling_offsets) == 2
        assert outputs.routing_weights.shape == (2, 3, 2)

    @pytest.mark.parametrize("prompt", sorted(PROMPTS))
    def test_spatial_attention_ablation_starts_as_sam_and_moves_nothing(self, tester, inputs, prompt):
        sam, stable = tester.sam_and_stable_sam(sampling="spatial")
        prompt_kwargs = PROMPTS[prompt](inputs)
        with torch.no_grad():
            expected = sam(pixel_values=inputs["pixel_values"], **prompt_kwargs)
            fresh = stable(pixel_values=inputs["pixel_values"], **prompt_kwargs)
        torch.testing.assert_close(fresh.pred_masks, expected.pred_masks, atol=1e-5, rtol=1e-5)
        perturb_plugins_(stable)
        with torch.no_grad():
            trained = stable(pixel_values=inputs["pixel_values"], **prompt_kwargs)
            forced_zero = stable(pixel_values=inputs["pixel_values"], **prompt_kwargs, routing_weight=0.0)
        assert (trained.pred_masks - expected.pred_masks).abs().max() > 1e-2
        torch.testing.assert_close(forced_zero.pred_masks, expected.pred_masks, atol=0, rtol=0)
        with pytest.raises(ValueError, match="`output_sampling_offsets` needs deformable sampling"):
            stable(pixel_values=inputs["pixel_values"], **prompt_kwargs, output_sampling_offsets=True)

    def test_spatial_attention_weights_features_in_place(self):
        from stable_sam_hf.modeling_stable_sam import StableSamSpatialAttention

        torch.manual_seed(0)
        plugin = StableSamSpatialAttention(8, kernel_size=3)
        plugin.proj.reset_parameters()
        plugin.weight_proj.reset_parameters()
        features = torch.randn(2, 1, 4 * 5, 8)
        weighted, offsets = plugin(features, 4, 5)
        assert offsets is None
        torch.testing.assert_close(weighted, features)  # weight 2 * sigmoid(0) = 1 and the identity projection
        with torch.no_grad():
            plugin.weight_proj.bias.fill_(-1.0)
            plugin.weight_proj.weight.normal_()
        weighted, _ = plugin(features, 4, 5)
        ratio = weighted / features
        # One weight per pixel, in (0, 2), shared by every channel: features are scaled where they are, never moved
        torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio), atol=1e-4, rtol=1e-4)
        assert ((ratio > 0) & (ratio < 2)).all() and ratio.std() > 0.01

    def test_return_dict_false(self, tester, inputs):
        model = StableSamModel(tester.get_config()).eval()
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"], return_dict=False)
        assert isinstance(outputs, tuple)
        assert outputs[-1].shape == (2, 3, 2)


class TestParameterCount:
    # Vision sizes of facebook/sam-vit-{base,large,huge}; the decoder is 256 wide in all three
    VISION = {
        "vit-b": {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "global_attn_indexes": [2, 5, 8, 11],
        },
        "vit-l": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "global_attn_indexes": [5, 11, 17, 23],
        },
        "vit-h": {
            "hidden_size": 1280,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "global_attn_indexes": [7, 15, 23, 31],
        },
    }

    @pytest.mark.parametrize("size", sorted(VISION))
    def test_trainable_parameters_are_81828(self, size):
        with torch.device("meta"):
            model = StableSamModel(StableSamConfig(vision_config=self.VISION[size]))
        total = model.num_parameters()
        model.freeze_base_model()
        assert model.num_parameters(only_trainable=True) == 81_828
        assert sum(p.numel() for _, p in model.plugin_named_parameters()) == 81_828
        with torch.device("meta"):
            sam = SamModel(SamConfig(vision_config=self.VISION[size]))
        assert total - sam.num_parameters() == 81_828

    def test_spatial_attention_has_a_weight_head_where_dsp_has_offsets(self):
        with torch.device("meta"):
            model = StableSamModel(
                StableSamConfig(vision_config={"hidden_size": 64, "num_hidden_layers": 1}, sampling="spatial")
            )
        names = [name for name, _ in model.plugin_named_parameters()]
        assert any(name.endswith("dsp.weight_proj.weight") for name in names)
        assert not any("offset_proj" in name for name in names)
        # 81,828 less the 2-channel offset head (514), plus the 1-channel weight head (257)
        assert sum(p.numel() for _, p in model.plugin_named_parameters()) == 81_571

    def test_split_between_dsp_and_drp(self):
        with torch.device("meta"):
            model = StableSamModel(StableSamConfig(vision_config={"hidden_size": 64, "num_hidden_layers": 1}))
        dsp = sum(p.numel() for n, p in model.plugin_named_parameters() if ".dsp." in n)
        drp = sum(p.numel() for n, p in model.plugin_named_parameters() if ".drp." in n)
        assert (dsp, drp) == (73_474, 8_354)


class TestLoading:
    def test_from_sam_checkpoint_starts_fresh_plugins_without_a_missing_report(self, tmp_path, inputs):
        torch.manual_seed(0)
        sam = SamModel(tiny_sam_config()).eval()
        sam.save_pretrained(tmp_path / "sam")
        model, info = StableSamModel.from_pretrained(tmp_path / "sam", output_loading_info=True)
        assert info["unexpected_keys"] == set() or info["unexpected_keys"] == []
        assert info["mismatched_keys"] == set() or info["mismatched_keys"] == []
        # The 14 plugin tensors are new by design: no MISSING report (the load says so in one info line)
        assert len(model.plugin_state_dict()) == 14
        assert not info["missing_keys"]
        assert isinstance(model.config, StableSamConfig)
        with torch.no_grad():
            expected = sam(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
            actual = model.eval()(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
        torch.testing.assert_close(actual.pred_masks, expected.pred_masks, atol=1e-5, rtol=1e-5)

    def test_spatial_attention_from_sam_checkpoint_and_back(self, tmp_path, inputs):
        torch.manual_seed(0)
        SamModel(tiny_sam_config()).save_pretrained(tmp_path / "sam")
        model = StableSamModel.from_pretrained(tmp_path / "sam", sampling="spatial").eval()
        assert model.config.sampling == "spatial"
        perturb_plugins_(model)
        model.save_pretrained(tmp_path / "spatial")
        loaded = StableSamModel.from_pretrained(tmp_path / "spatial").eval()
        assert loaded.config.sampling == "spatial"
        with torch.no_grad():
            expected = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
            actual = loaded(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
        torch.testing.assert_close(actual.pred_masks, expected.pred_masks, atol=0, rtol=0)

    def test_auto_classes_return_stable_sam(self, tmp_path, tester, inputs):
        model = perturb_plugins_(StableSamModel(tester.get_config())).eval()
        model.save_pretrained(tmp_path)
        for auto_class in (AutoModel, AutoModelForMaskGeneration):
            loaded = auto_class.from_pretrained(tmp_path).eval()
            assert type(loaded) is StableSamModel
            with torch.no_grad():
                expected = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
                actual = loaded(pixel_values=inputs["pixel_values"], input_boxes=inputs["boxes"])
            torch.testing.assert_close(actual.pred_masks, expected.pred_masks)
            torch.testing.assert_close(actual.routing_weights, expected.routing_weights)


class TestTransformersConventions:
    def test_forward_kwargs_carry_transformers_kwargs_annotation(self):
        import inspect

        from transformers.processing_utils import Unpack
        from transformers.utils import TransformersKwargs

        sam_kwargs = inspect.signature(SamModel.forward).parameters["kwargs"].annotation
        kwargs = inspect.signature(StableSamModel.forward).parameters["kwargs"].annotation
        assert kwargs == sam_kwargs == Unpack[TransformersKwargs]

    def test_configuration_file_carries_a_dated_copyright_header(self):
        import inspect
        import re

        # transformers' test_can_init_all_missing_weights dates a model by this line and skips those before 2023
        source = open(inspect.getfile(StableSamConfig), encoding="utf-8").read()
        match = re.search(r"^# Copyright (\d{4})", source, re.MULTILINE | re.IGNORECASE)
        assert match is not None and int(match.group(1)) >= 2023
        assert source.startswith("# Copyright") and "Apache License, Version 2.0" in source.split('"""')[0]


def _wide_grid_pair():
    """A fresh Stable-SAM and the SamModel with its SAM weights, on a 16 x 16 image embedding (128 input, patch 8)."""
    kwargs = tiny_sam_kwargs()
    kwargs["vision_config"]["image_size"] = kwargs["prompt_encoder_config"]["image_size"] = 128
    torch.manual_seed(0)
    stable = StableSamModel(StableSamConfig(**kwargs)).eval()
    sam = SamModel(SamConfig(**kwargs)).eval()
    sam.load_state_dict(stable.state_dict(), strict=False)
    return sam, stable


class TestHalfPrecision:
    # bfloat16 keeps 8 significant bits, float16 11: IoU scores of order 1 agree to a few of their steps
    IOU_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    def test_fresh_model_equals_sam(self, dtype):
        sam, stable = _wide_grid_pair()
        generator = torch.Generator().manual_seed(0)
        embeddings = torch.randn(2, 32, 16, 16, generator=generator)
        corners = torch.rand(2, 5, 2, 2, generator=generator).sort(dim=2).values * 128
        inputs = {"image_embeddings": embeddings.to(dtype), "input_boxes": corners.reshape(2, 5, 4)}
        with torch.no_grad():
            expected = sam.to(dtype)(**inputs)
            actual = stable.to(dtype)(**inputs)
        assert not actual.pred_masks.isnan().any() and not actual.iou_scores.isnan().any()
        # Same masks: a sign differs only where SAM's own logit is within rounding of 0
        differs = (actual.pred_masks > 0) != (expected.pred_masks > 0)
        assert (expected.pred_masks[differs].float().abs() < 1e-3).all()
        tolerance = self.IOU_TOLERANCE[dtype]
        torch.testing.assert_close(actual.iou_scores, expected.iou_scores, atol=tolerance, rtol=0)

    def test_sampling_is_exact_in_half_precision(self):
        # Zero offsets sample every feature where it is: the result is the input up to float32 grid rounding
        plugin = StableSamDeformableSampling(8, kernel_size=3)
        plugin.proj.reset_parameters()
        plugin.offset_proj.reset_parameters()
        features = torch.randn(2, 1, 24 * 20, 8, generator=torch.Generator().manual_seed(0))
        for dtype in (torch.bfloat16, torch.float16):
            sampled, offsets = plugin.to(dtype)(features.to(dtype), 24, 20)
            assert sampled.dtype == dtype and offsets.dtype == dtype
            torch.testing.assert_close(sampled, features.to(dtype), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def trained_toy():
    """The shipped toy SAM with plugins trained briefly on cached embeddings of synthetic scenes, and held-out scenes."""
    from stable_sam_toy import headroom
    from stable_sam_toy.synthetic import generate_scenes
    from stable_sam_toy.worlds import TOY_BASE

    torch.manual_seed(0)
    model = headroom.load_trainable("stable", str(TOY_BASE))
    images, labels = generate_scenes(8, size=128, domain="train", seed=0)
    headroom.train_on_embeddings(
        model,
        headroom.encode_scenes(model, images),
        torch.from_numpy(labels),
        steps=10,
        prompt_types=("noisy_box", "points_1"),
        learning_rate=1e-2,
        images_per_step=4,
    )
    held_images, held_labels = generate_scenes(4, size=128, domain="train", seed=1)
    return model.eval(), headroom.pixel_values(held_images), torch.from_numpy(held_labels)


def test_trained_toy_model_bfloat16_miou_within_half_a_point_of_float32(trained_toy):
    from stable_sam_hf.metrics import mask_iou
    from stable_sam_toy import headroom

    model, pixels, labels = trained_toy
    scene, masks = headroom.all_objects(labels)
    prompts = headroom.prompt_inputs(masks[:, None], "noisy_box", torch.Generator().manual_seed(1))
    miou, alphas = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        half = copy.deepcopy(model).to(dtype)
        with torch.no_grad():
            embeddings = half.get_image_embeddings(pixels.to(dtype))
            outputs = half(image_embeddings=embeddings[scene], multimask_output=False, **prompts)
        logits = F.interpolate(outputs.pred_masks[:, 0].float(), size=masks.shape[-2:], mode="bilinear")[:, 0]
        miou[dtype] = 100 * mask_iou(logits > 0, masks).mean().item()
        alphas[dtype] = outputs.routing_weights[..., 0].float()
    # The plugins have moved: DRP routes the prompts differently and away from SAM's 0.5 start
    assert alphas[torch.float32].std() > 1e-3
    assert abs(miou[torch.bfloat16] - miou[torch.float32]) < 0.5, miou
