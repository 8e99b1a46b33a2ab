"""Adapter releases: save / load round trips, the saved files, fit checks, remote code, upload and conversion."""

import copy
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor, ViTConfig

from stable_sam_hf import StableSamModel, is_plugin_parameter
from stable_sam_hf import upload as upload_module
from stable_sam_hf.convert import convert_to_adapter, extract_plugin_state_dict, load_state_dict_file
from stable_sam_hf.hub import ADAPTER_WEIGHTS_NAME, StableSamAdapterMixin

from tiny import IMAGE_SIZE, perturb_plugins_, tiny_sam_kwargs, tiny_stable_sam_config


REPO_ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE_FILES = {"configuration_stable_sam.py", "modeling_stable_sam.py", "adapter.py", "file_resolution.py"}
ADAPTER_FILES = {ADAPTER_WEIGHTS_NAME, "config.json", "README.md", *REMOTE_CODE_FILES}
# Top-level modules the remote-code files may import: the four libraries a transformers user has, and the stdlib
REMOTE_CODE_LIBRARIES = {"torch", "transformers", "huggingface_hub", "safetensors"}


def _save_sam(folder: Path, decoder_hidden_size: int = 32, seed: int = 0) -> str:
    torch.manual_seed(seed)
    SamModel(SamConfig(**tiny_sam_kwargs(decoder_hidden_size=decoder_hidden_size))).save_pretrained(folder)
    return os.fspath(folder)


def _inputs():
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 50.0], [20.0, 4.0, 60.0, 30.0]]])
    return {"pixel_values": pixel_values, "input_boxes": boxes}


def _outputs(model):
    model.eval()
    with torch.no_grad():
        out = model(**_inputs())
    return out.pred_masks, out.iou_scores, out.routing_weights


def _assert_same_outputs(model, reference):
    for produced, expected in zip(_outputs(model), _outputs(reference)):
        torch.testing.assert_close(produced, expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def sam_base(workdir):
    return _save_sam(workdir / "sam-tiny")


@pytest.fixture(scope="module")
def wide_base(workdir):
    """A tiny SAM with SAM's real mask decoder width, 256."""
    return _save_sam(workdir / "sam-tiny-256", decoder_hidden_size=256)


@pytest.fixture(scope="module")
def trained(sam_base):
    """A Stable-SAM on the tiny SAM whose plugins have moved away from their SAM-equivalent start."""
    return perturb_plugins_(StableSamModel.from_pretrained(sam_base), seed=3).eval()


@pytest.fixture(scope="module")
def adapter_dir(trained, workdir):
    folder = workdir / "adapter"
    copy.deepcopy(trained).save_pretrained(folder)
    return os.fspath(folder)


def test_stable_sam_model_has_the_adapter_mixin_first():
    assert issubclass(StableSamModel, StableSamAdapterMixin)
    mro = StableSamModel.__mro__
    assert mro.index(StableSamAdapterMixin) < mro.index(SamModel)


def test_loading_a_sam_checkpoint_records_it_as_base(trained, sam_base):
    assert trained.config.base_model_name_or_path == sam_base


def test_adapter_round_trip_gives_identical_outputs(trained, adapter_dir, sam_base):
    loaded = StableSamModel.from_pretrained(adapter_dir)
    _assert_same_outputs(loaded, trained)
    assert loaded.config.base_model_name_or_path == sam_base
    assert loaded.name_or_path == adapter_dir
    loaded_state = loaded.state_dict()
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(loaded_state[name], tensor, rtol=0, atol=0, msg=name)
    # The plugins matter: SAM with fresh plugins computes something else
    fresh = StableSamModel.from_pretrained(sam_base)
    assert not torch.allclose(_outputs(fresh)[0], _outputs(loaded)[0])


def test_saved_folder_holds_exactly_the_release_files(trained, tmp_path):
    written = copy.deepcopy(trained).save_pretrained(tmp_path / "release")
    assert set(os.listdir(tmp_path / "release")) == ADAPTER_FILES
    assert written == sorted(ADAPTER_FILES)

    with safe_open(tmp_path / "release" / ADAPTER_WEIGHTS_NAME, "pt") as file:
        keys = set(file.keys())
        assert file.metadata() == {"format": "pt"}
    assert keys == set(trained.plugin_state_dict())
    assert all(is_plugin_parameter(key) for key in keys)

    config = json.loads((tmp_path / "release" / "config.json").read_text())
    assert config["model_type"] == "stable_sam"
    assert config["base_model_name_or_path"] == trained.config.base_model_name_or_path
    assert config["auto_map"] == {
        "AutoConfig": "configuration_stable_sam.StableSamConfig",
        "AutoModel": "modeling_stable_sam.StableSamModel",
        "AutoModelForMaskGeneration": "modeling_stable_sam.StableSamModel",
    }


def test_full_size_decoder_adapter_holds_the_81828_plugin_parameters(wide_base, tmp_path):
    model = StableSamModel.from_pretrained(wide_base)
    model.save_pretrained(tmp_path / "release")
    tensors = load_file(tmp_path / "release" / ADAPTER_WEIGHTS_NAME)
    assert sum(tensor.numel() for tensor in tensors.values()) == 81_828
    assert all(tensor.dtype == torch.float32 for tensor in tensors.values())
    assert (tmp_path / "release" / ADAPTER_WEIGHTS_NAME).stat().st_size < 340_000
    assert sum(param.numel() for param in model.parameters()) > 81_828 * 10


def test_remote_code_files_import_only_the_four_libraries_and_the_stdlib(adapter_dir):
    import ast

    for name in REMOTE_CODE_FILES:
        tree = ast.parse((Path(adapter_dir) / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.ImportFrom):
                assert (Path(adapter_dir) / f"{node.module}.py").is_file(), f"{name} imports .{node.module}"
                continue
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in REMOTE_CODE_LIBRARIES or top in sys.stdlib_module_names, f"{name} imports {module}"


def test_full_checkpoint_round_trip_and_switching_layouts_is_refused(trained, tmp_path):
    model = copy.deepcopy(trained)
    folder = tmp_path / "full"
    written = model.save_pretrained(folder, full_checkpoint=True)
    assert set(os.listdir(folder)) == (ADAPTER_FILES - {ADAPTER_WEIGHTS_NAME}) | {"model.safetensors"}
    assert written == sorted(os.listdir(folder))
    assert len(load_file(folder / "model.safetensors")) > len(trained.plugin_state_dict())
    _assert_same_outputs(StableSamModel.from_pretrained(folder), trained)

    # Each layout into a folder holding the other: refused, nothing deleted
    with pytest.raises(ValueError, match="holds a full checkpoint") as error:
        model.save_pretrained(folder, full_checkpoint=False)
    assert "model.safetensors" in str(error.value)
    assert "model.safetensors" in os.listdir(folder) and ADAPTER_WEIGHTS_NAME not in os.listdir(folder)
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="holds an adapter"):
        model.save_pretrained(tmp_path / "adapter", full_checkpoint=True)
    assert set(os.listdir(tmp_path / "adapter")) == ADAPTER_FILES
    _assert_same_outputs(StableSamModel.from_pretrained(tmp_path / "adapter"), trained)


def test_processor_files_are_saved_when_given_or_available(trained, sam_base, tmp_path):
    processor = SamProcessor(image_processor=SamImageProcessorPil())
    model = copy.deepcopy(trained)
    written = model.save_pretrained(tmp_path / "given", processor=processor)
    assert "processor_config.json" in written
    assert set(os.listdir(tmp_path / "given")) == ADAPTER_FILES | {"processor_config.json"}
    assert isinstance(SamProcessor.from_pretrained(tmp_path / "given").image_processor, SamImageProcessorPil)

    # A base that ships processor files: they are copied, unless processor=False
    base_with_processor = tmp_path / "sam-with-processor"
    shutil.copytree(sam_base, base_with_processor)
    processor.save_pretrained(base_with_processor)
    model = StableSamModel.from_pretrained(base_with_processor)
    model.save_pretrained(tmp_path / "available")
    assert "processor_config.json" in os.listdir(tmp_path / "available")
    model.save_pretrained(tmp_path / "none", processor=False)
    assert set(os.listdir(tmp_path / "none")) == ADAPTER_FILES
    # Re-saving an adapter folder keeps its processor files
    StableSamModel.from_pretrained(tmp_path / "available").save_pretrained(tmp_path / "again")
    assert "processor_config.json" in os.listdir(tmp_path / "again")


def test_model_card_metadata_and_evaluation_table(trained, tmp_path):
    model = copy.deepcopy(trained)
    results = [
        {"dataset": "DIS5K-VD", "metric": "mIoU", "value": 71.5, "prompt": "noisy box"},
        {"dataset": "DIS5K-VD", "metric": "mBIoU", "value": 60.25, "prompt": "1 point", "split": "validation"},
    ]
    model.save_pretrained(
        tmp_path / "release", base_model_name_or_path="facebook/sam-vit-base", evaluation_results=results
    )
    card = ModelCard.load(tmp_path / "release" / "README.md")
    assert card.data.base_model == "facebook/sam-vit-base"
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "transformers"
    assert [(r.dataset_name, r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        ("DIS5K-VD", "mIoU (noisy box)", 71.5),
        ("DIS5K-VD", "mBIoU (1 point)", 60.25),
    ]
    plugin_count = sum(tensor.numel() for tensor in model.plugin_state_dict().values())
    assert f"{plugin_count:,}" in card.text
    assert "| DIS5K-VD | 1 point | mBIoU | 60.25 |" in card.text
    assert f'StableSamModel.from_pretrained("{tmp_path / "release"}")' in card.text
    assert "trust_remote_code=True" in card.text
    assert json.loads((tmp_path / "release" / "config.json").read_text())["base_model_name_or_path"] == (
        "facebook/sam-vit-base"
    )


def test_model_card_has_no_base_model_metadata_for_a_local_base(adapter_dir, sam_base):
    card = ModelCard.load(Path(adapter_dir) / "README.md")
    assert card.data.base_model is None
    assert f"`{sam_base}`" in card.text


@pytest.mark.parametrize(
    "results, error",
    [
        ({"dataset": "x", "metric": "mIoU", "value": 1.0}, TypeError),
        ([{"dataset": "x", "metric": "mIoU"}], ValueError),
        ([{"dataset": "x", "metric": "mIoU", "value": 1.0, "score": 2}], ValueError),
        ([{"dataset": "x", "metric": "mIoU", "value": "high"}], TypeError),
        ([{"dataset": "x", "metric": "mIoU", "value": float("nan")}], TypeError),
    ],
)
def test_bad_evaluation_results_are_rejected(trained, tmp_path, results, error):
    with pytest.raises(error, match="evaluation_results"):
        copy.deepcopy(trained).save_pretrained(tmp_path, evaluation_results=results)


def test_model_without_a_base_saves_a_full_checkpoint_unless_an_adapter_is_asked_for(tmp_path):
    model = perturb_plugins_(StableSamModel(tiny_stable_sam_config())).eval()
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        model.save_pretrained(tmp_path / "adapter", full_checkpoint=False)
    assert not (tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME).exists()

    written = model.save_pretrained(tmp_path / "default")
    assert "model.safetensors" in written and ADAPTER_WEIGHTS_NAME not in written
    _assert_same_outputs(StableSamModel.from_pretrained(tmp_path / "default"), model)


def test_base_model_argument_overrides_the_configs_base(trained, adapter_dir, workdir):
    other_base = _save_sam(workdir / "sam-tiny-other", seed=7)
    loaded = StableSamModel.from_pretrained(adapter_dir, base_model_name_or_path=other_base)
    other = SamModel.from_pretrained(other_base)
    loaded_state = loaded.state_dict()
    name = "mask_decoder.iou_token.weight"
    torch.testing.assert_close(loaded_state[name], other.state_dict()[name], rtol=0, atol=0)
    for key, tensor in trained.plugin_state_dict().items():
        torch.testing.assert_close(loaded_state[key], tensor, rtol=0, atol=0)
    assert loaded.config.base_model_name_or_path == other_base


def test_adapter_for_another_decoder_width_is_rejected(wide_base, sam_base, tmp_path):
    StableSamModel.from_pretrained(wide_base).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="width 256") as error:
        StableSamModel.from_pretrained(tmp_path / "wide", base_model_name_or_path=sam_base)
    assert os.fspath(tmp_path / "wide") in str(error.value) and sam_base in str(error.value)
    assert "width 32" in str(error.value)

    narrow = StableSamModel.from_pretrained(sam_base)
    with pytest.raises(ValueError, match="width 256") as error:
        narrow.load_adapter(tmp_path / "wide")
    assert sam_base in str(error.value) and "width 32" in str(error.value)


def test_base_that_is_not_a_sam_checkpoint_is_rejected(adapter_dir, tmp_path):
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "vit"
    )
    with pytest.raises(ValueError, match="'vit'") as error:
        StableSamModel.from_pretrained(adapter_dir, base_model_name_or_path=tmp_path / "vit")
    assert adapter_dir in str(error.value) and os.fspath(tmp_path / "vit") in str(error.value)


def test_missing_base_is_reported_with_the_adapter(adapter_dir, tmp_path):
    with pytest.raises(OSError, match="adapter"):
        StableSamModel.from_pretrained(adapter_dir, base_model_name_or_path=tmp_path / "nowhere")


def test_missing_plugin_weights_are_rejected(adapter_dir, sam_base, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(adapter_dir, folder)
    tensors = load_file(folder / ADAPTER_WEIGHTS_NAME)
    save_file({key: value for key, value in tensors.items() if ".drp." not in key}, folder / ADAPTER_WEIGHTS_NAME)
    with pytest.raises(ValueError, match="lack") as error:
        StableSamModel.from_pretrained(folder)
    assert os.fspath(folder) in str(error.value) and sam_base in str(error.value)
    assert "drp" in str(error.value)


def test_plugin_weights_for_other_layers_are_rejected(adapter_dir, sam_base, tmp_path):
    folder = tmp_path / "two-layers"
    shutil.copytree(adapter_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["plugin_layers"] = [0, 1]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lack") as error:
        StableSamModel.from_pretrained(folder)
    assert "layers.0." in str(error.value) and sam_base in str(error.value)


def test_adapter_without_base_in_config_needs_the_argument(adapter_dir, sam_base, trained, tmp_path):
    folder = tmp_path / "no-base"
    shutil.copytree(adapter_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["base_model_name_or_path"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        StableSamModel.from_pretrained(folder)
    _assert_same_outputs(StableSamModel.from_pretrained(folder, base_model_name_or_path=sam_base), trained)


def test_load_adapter_onto_a_loaded_model(trained, adapter_dir, sam_base):
    model = StableSamModel.from_pretrained(sam_base)
    assert model.load_adapter(adapter_dir) is None
    _assert_same_outputs(model, trained)


def test_load_adapter_rejects_other_plugin_settings_and_non_adapters(adapter_dir, sam_base, tmp_path):
    model = StableSamModel.from_pretrained(sam_base, offset_range=4.0)
    with pytest.raises(ValueError, match="offset_range") as error:
        model.load_adapter(adapter_dir)
    assert adapter_dir in str(error.value) and sam_base in str(error.value)

    with pytest.raises(ValueError, match=ADAPTER_WEIGHTS_NAME) as error:
        StableSamModel.from_pretrained(sam_base).load_adapter(sam_base)
    assert sam_base in str(error.value)


def test_load_plugin_state_dict_checks_shapes(trained):
    model = copy.deepcopy(trained)
    state_dict = {
        key: torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:]) for key, tensor in model.plugin_state_dict().items()
    }
    with pytest.raises(ValueError, match="other plugin sizes"):
        model.load_plugin_state_dict(state_dict, source="plugins.pth")
    with pytest.raises(TypeError, match="state_dict"):
        model.load_plugin_state_dict([1, 2])


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def load_logs():
    """Records of the package's and transformers' loggers (transformers' do not reach the root logger)."""
    handler = _Records()
    loggers = [logging.getLogger("transformers"), logging.getLogger("stable_sam_hf")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler.records
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_adapter_load_reports_nothing_and_a_sam_load_says_the_plugins_start_fresh(adapter_dir, sam_base, load_logs):
    _, info = StableSamModel.from_pretrained(adapter_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not [record for record in load_logs if record.levelno >= logging.WARNING]
    assert not [record for record in load_logs if "start fresh" in record.getMessage()]

    _, info = StableSamModel.from_pretrained(sam_base, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # One short info line instead of transformers' MISSING table
    fresh = [record for record in load_logs if "start fresh" in record.getMessage()]
    assert len(fresh) == 1 and fresh[0].levelno == logging.INFO and sam_base in fresh[0].getMessage()
    assert not [record for record in load_logs if "MISSING" in record.getMessage()]


def test_remote_code_loads_in_a_fresh_process_without_the_package(trained, adapter_dir, tmp_path):
    reference = dict(zip(("pred_masks", "iou_scores", "routing_weights"), _outputs(trained)))
    torch.save({"inputs": _inputs(), "outputs": reference}, tmp_path / "io.pt")
    full_dir = os.fspath(tmp_path / "full")
    copy.deepcopy(trained).save_pretrained(full_dir, full_checkpoint=True)
    child = textwrap.dedent(
        f"""
        import importlib.abc, importlib.util, sys

        class HidePackage(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "stable_sam_hf":
                    raise ModuleNotFoundError(f"No module named {{name!r}}")

        sys.meta_path.insert(0, HidePackage())
        try:
            importlib.util.find_spec("stable_sam_hf")
            raise SystemExit("stable_sam_hf is importable")
        except ModuleNotFoundError:
            pass

        import torch
        from transformers import AutoModel, AutoModelForMaskGeneration

        saved = torch.load({os.fspath(tmp_path / "io.pt")!r})
        for folder, auto_class in (({adapter_dir!r}, AutoModel), ({full_dir!r}, AutoModelForMaskGeneration)):
            model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            with torch.no_grad():
                out = model(**saved["inputs"])
            for name, expected in saved["outputs"].items():
                torch.testing.assert_close(getattr(out, name), expected, rtol=0, atol=0)
        assert not any(name.startswith("stable_sam_hf") for name in sys.modules)
        print("remote code ok")
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": os.fspath(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": os.fspath(tmp_path / "modules"),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls and copies uploads into a local folder per repo."""

    calls: list = []
    remote_root: Path | None = None

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, delete_patterns=None, **kwargs):
        names = sorted(allow_patterns) if allow_patterns is not None else sorted(os.listdir(folder_path))
        self.calls.append(("upload_folder", {"repo_id": repo_id, "files": names, "delete": delete_patterns, **kwargs}))
        target = self.remote_root / repo_id
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(Path(folder_path) / name, target / name)
        return f"https://huggingface.co/{repo_id}/commit/0"


@pytest.fixture
def recording_api(monkeypatch, tmp_path):
    RecordingHfApi.calls = []
    RecordingHfApi.remote_root = tmp_path / "remote"
    monkeypatch.setattr(upload_module, "HfApi", RecordingHfApi)
    return RecordingHfApi


def _call(api, name):
    return [kwargs for call, kwargs in api.calls if call == name]


def test_push_to_hub_uploads_exactly_the_release(trained, recording_api, caplog):
    token = "hf_" + "x" * 30
    with caplog.at_level(logging.DEBUG):
        commit = copy.deepcopy(trained).push_to_hub("user/stable-sam-tiny", private=True, token=token, tags=["toy"])
    assert commit.endswith("/commit/0")
    assert _call(recording_api, "init") == [{"token": token}]
    assert _call(recording_api, "create_repo")[0]["private"] is True
    (upload,) = _call(recording_api, "upload_folder")
    assert set(upload["files"]) == ADAPTER_FILES
    assert "model.safetensors" in upload["delete"]
    assert token not in caplog.text

    remote = recording_api.remote_root / "user/stable-sam-tiny"
    assert 'from_pretrained("user/stable-sam-tiny")' in (remote / "README.md").read_text()
    assert ModelCard.load(remote / "README.md").data.tags == ["stable-sam", "segment-anything", "sam", "toy"]
    _assert_same_outputs(StableSamModel.from_pretrained(remote), trained)


def test_save_pretrained_push_uploads_only_the_written_files(trained, recording_api, tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "training_args.json").write_text("{}")
    copy.deepcopy(trained).save_pretrained(folder, push_to_hub=True, repo_id="user/tiny", commit_message="v1")
    (upload,) = _call(recording_api, "upload_folder")
    assert set(upload["files"]) == ADAPTER_FILES
    assert upload["commit_message"] == "v1"


def _load_example(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_to_hub_example_script(trained, adapter_dir, recording_api, tmp_path):
    script = _load_example("push_to_hub_example", REPO_ROOT / "examples" / "push_to_hub.py")
    # The training output folder may hold more than the release
    model_dir = tmp_path / "run"
    shutil.copytree(adapter_dir, model_dir)
    (model_dir / "optimizer.pt").write_bytes(b"0")
    script.main(["--model", os.fspath(model_dir), "--repo_id", "user/stable-sam-tiny", "--private"])
    assert _call(recording_api, "create_repo")[0]["private"] is True
    (upload,) = _call(recording_api, "upload_folder")
    assert set(upload["files"]) == ADAPTER_FILES
    _assert_same_outputs(StableSamModel.from_pretrained(recording_api.remote_root / "user/stable-sam-tiny"), trained)

    written = script.main(["--model", os.fspath(model_dir), "--local_dir", os.fspath(tmp_path / "local")])
    assert set(written) == ADAPTER_FILES == set(os.listdir(tmp_path / "local"))
    with pytest.raises(ValueError, match="--repo_id"):
        script.main(["--model", os.fspath(model_dir)])


# Conversion


def _plugin_layouts(trained):
    """Plugin weights the way various training scripts write them: (file name, object to save, extra arguments)."""
    plugins = trained.plugin_state_dict()
    full = trained.state_dict()
    conv_style = {
        key.removeprefix("mask_decoder."): (
            tensor[..., None, None] if key.endswith(("dsp.proj.weight", "dsp.offset_proj.weight")) else tensor
        )
        for key, tensor in plugins.items()
    }
    bare = {key.split(".", 4)[-1]: tensor for key, tensor in plugins.items()}
    return {
        "safetensors_plain": ("plugins.safetensors", plugins, {}),
        "pth_ddp_whole_model": ("model.pth", {f"module.{key}": tensor for key, tensor in full.items()}, {}),
        "bin_nested_with_optimizer": (
            "checkpoint.bin",
            {
                "model": {f"model.{key}": t for key, t in plugins.items()},
                "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}},
                "epoch": 1,
            },
            {},
        ),
        "pt_conv_kernels_no_decoder_prefix": ("plugins.pt", conv_style, {}),
        "pt_bare_names": ("bare.pt", bare, {"plugin_layer": 1}),
    }


@pytest.mark.parametrize(
    "layout",
    [
        "safetensors_plain",
        "pth_ddp_whole_model",
        "bin_nested_with_optimizer",
        "pt_conv_kernels_no_decoder_prefix",
        "pt_bare_names",
    ],
)
def test_convert_plugin_weights_in_any_layout(trained, sam_base, tmp_path, layout):
    filename, obj, extra = _plugin_layouts(trained)[layout]
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file({key: value.contiguous() for key, value in obj.items()}, path)
    else:
        torch.save(obj, path)
    written = convert_to_adapter(tmp_path / "adapter", base_model_name_or_path=sam_base, plugin_weights=path, **extra)
    assert set(written) == ADAPTER_FILES
    loaded = StableSamModel.from_pretrained(tmp_path / "adapter")
    _assert_same_outputs(loaded, trained)


def test_convert_full_checkpoint_folder(trained, sam_base, tmp_path):
    copy.deepcopy(trained).save_pretrained(tmp_path / "full", full_checkpoint=True)
    written = convert_to_adapter(tmp_path / "adapter", checkpoint=tmp_path / "full")
    assert set(written) == ADAPTER_FILES
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["base_model_name_or_path"] == sam_base
    _assert_same_outputs(StableSamModel.from_pretrained(tmp_path / "adapter"), trained)


def test_convert_script_and_infers_plugin_settings(sam_base, tmp_path):
    config = tiny_stable_sam_config(routing_hidden_size=8, offset_kernel_size=3, plugin_layers=[0, 1])
    model = perturb_plugins_(StableSamModel(config), seed=5)
    torch.save({f"module.{key}": value for key, value in model.plugin_state_dict().items()}, tmp_path / "p.pth")
    script = _load_example("convert_to_adapter_script", REPO_ROOT / "training" / "convert_to_adapter.py")
    script.main(
        [
            "--base_model_name_or_path",
            sam_base,
            "--plugin_weights",
            os.fspath(tmp_path / "p.pth"),
            "--output_dir",
            os.fspath(tmp_path / "adapter"),
            "--offset_range",
            "3.0",
        ]
    )
    saved = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert (saved["routing_hidden_size"], saved["offset_kernel_size"], saved["plugin_layers"]) == (8, 3, [0, 1])
    assert saved["offset_range"] == 3.0
    loaded_state = StableSamModel.from_pretrained(tmp_path / "adapter").state_dict()
    for key, value in model.plugin_state_dict().items():
        torch.testing.assert_close(loaded_state[key], value, rtol=0, atol=0)


def test_convert_infers_the_spatial_attention_ablation(sam_base, tmp_path):
    model = perturb_plugins_(StableSamModel(tiny_stable_sam_config(sampling="spatial")), seed=6)
    torch.save(model.plugin_state_dict(), tmp_path / "spatial.pth")
    convert_to_adapter(tmp_path / "adapter", base_model_name_or_path=sam_base, plugin_weights=tmp_path / "spatial.pth")
    loaded = StableSamModel.from_pretrained(tmp_path / "adapter")
    assert loaded.config.sampling == "spatial"
    loaded_state = loaded.state_dict()
    for key, value in model.plugin_state_dict().items():
        torch.testing.assert_close(loaded_state[key], value, rtol=0, atol=0)


def test_convert_rejects_ambiguous_and_unreadable_files(trained, sam_base, tmp_path):
    plugins = trained.plugin_state_dict()
    two_copies = {**{f"model.{k}": v for k, v in plugins.items()}, **{f"ema.{k}": v * 2 for k, v in plugins.items()}}
    with pytest.raises(ValueError, match="key_prefix"):
        extract_plugin_state_dict(two_copies)
    picked = extract_plugin_state_dict(two_copies, key_prefix="ema.")
    torch.testing.assert_close(picked[next(iter(plugins))], 2 * next(iter(plugins.values())))

    with pytest.raises(ValueError, match="plugin_layer"):
        extract_plugin_state_dict({"dsp.proj.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="No plugin weights"):
        extract_plugin_state_dict({"vision_encoder.neck.conv1.weight": torch.zeros(1)})

    torch.save({"model": plugins, "args": ValueError("not a tensor")}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="either"):
        convert_to_adapter(tmp_path / "out")
    with pytest.raises(ValueError, match="model_type"):
        convert_to_adapter(tmp_path / "out", checkpoint=sam_base)


def test_convert_rejects_plugins_for_another_decoder_width(wide_base, sam_base, tmp_path):
    wide = StableSamModel.from_pretrained(wide_base)
    torch.save(wide.plugin_state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="width 256") as error:
        convert_to_adapter(tmp_path / "out", base_model_name_or_path=sam_base, plugin_weights=tmp_path / "wide.pth")
    assert sam_base in str(error.value) and "wide.pth" in str(error.value)


# Data safety: saving never deletes what it did not write, loading refuses broken weights


def test_saving_into_the_sam_folder_it_was_loaded_from_keeps_the_sam_weights(sam_base, tmp_path):
    folder = tmp_path / "my_sam"
    shutil.copytree(sam_base, folder)
    (folder / "README.md").write_text("# My SAM\n")
    model = perturb_plugins_(StableSamModel.from_pretrained(folder), seed=4).eval()
    with pytest.raises(ValueError, match="base SAM checkpoint"):
        model.save_pretrained(folder, full_checkpoint=False)
    assert ADAPTER_WEIGHTS_NAME not in os.listdir(folder)

    written = model.save_pretrained(folder)
    assert "model.safetensors" in written and ADAPTER_WEIGHTS_NAME not in os.listdir(folder)
    # The folder is not recorded as its own base, and the user's README is kept
    assert json.loads((folder / "config.json").read_text())["base_model_name_or_path"] is None
    assert (folder / "README.md").read_text() == "# My SAM\n"
    SamModel.from_pretrained(folder)
    _assert_same_outputs(StableSamModel.from_pretrained(folder), model)


def test_save_load_save_into_one_folder(tmp_path):
    model = perturb_plugins_(StableSamModel(tiny_stable_sam_config())).eval()
    model.save_pretrained(tmp_path)
    loaded = StableSamModel.from_pretrained(tmp_path)
    loaded.save_pretrained(tmp_path)
    assert "model.safetensors" in os.listdir(tmp_path) and ADAPTER_WEIGHTS_NAME not in os.listdir(tmp_path)
    _assert_same_outputs(StableSamModel.from_pretrained(tmp_path), model)


def _full_checkpoint_with(trained, folder: Path, change) -> str:
    copy.deepcopy(trained).save_pretrained(folder, full_checkpoint=True)
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return os.fspath(folder)


@pytest.mark.parametrize(
    "key",
    ["mask_decoder.iou_token.weight", "mask_decoder.transformer.layers.1.dsp.offset_proj.weight"],
)
def test_non_finite_or_integer_weights_are_refused(trained, adapter_dir, tmp_path, key):
    def with_nan(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")

    def as_integers(tensors):
        tensors[key] = tensors[key].to(torch.int32)

    for change, message in ((with_nan, "NaN or inf"), (as_integers, "not floating point")):
        folder = _full_checkpoint_with(trained, tmp_path / change.__name__, change)
        with pytest.raises(ValueError, match=message) as error:
            StableSamModel.from_pretrained(folder)
        assert key in str(error.value) and folder in str(error.value)

    if ".dsp." in key:
        for change, message in ((with_nan, "NaN or inf"), (as_integers, "not floating point")):
            folder = tmp_path / f"adapter_{change.__name__}"
            shutil.copytree(adapter_dir, folder)
            tensors = load_file(folder / ADAPTER_WEIGHTS_NAME)
            change(tensors)
            save_file(tensors, folder / ADAPTER_WEIGHTS_NAME)
            with pytest.raises(ValueError, match=message) as error:
                StableSamModel.from_pretrained(folder)
            assert key in str(error.value)


def test_full_stable_sam_checkpoint_missing_plugin_weights_is_refused(trained, tmp_path):
    def drop_routing(tensors):
        for name in [name for name in tensors if ".drp." in name]:
            del tensors[name]

    folder = _full_checkpoint_with(trained, tmp_path / "full", drop_routing)
    with pytest.raises(ValueError, match="lacks 6 of its plugin weights") as error:
        StableSamModel.from_pretrained(folder)
    assert "mask_decoder.transformer.layers.1.drp.dense1.weight" in str(error.value)


def test_mask_generation_pipeline_without_torchvision_on_a_sam_saved_with_sam_processor(tmp_path):
    from PIL import Image
    from transformers import pipeline

    from stable_sam_hf import StableSamImageProcessor, StableSamProcessor

    assert importlib.util.find_spec("torchvision") is None, "torchvision is installed: this test needs it absent"
    base = _save_sam(tmp_path / "sam")
    # As the Hub's SAM repos have it: a SamProcessor whose image processor is named SamImageProcessor
    image_processor = SamImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = SamProcessor(image_processor=image_processor)
    processor.save_pretrained(base)
    assert (
        json.loads((Path(base) / "processor_config.json").read_text())["image_processor"]["image_processor_type"]
        == "SamImageProcessor"
    )
    assert isinstance(StableSamProcessor.from_pretrained(base).image_processor, StableSamImageProcessor)

    StableSamModel.from_pretrained(base).save_pretrained(tmp_path / "adapter")
    generator = pipeline("mask-generation", model=os.fspath(tmp_path / "adapter"), points_per_batch=16)
    assert isinstance(generator.image_processor, StableSamImageProcessor)
    image = Image.fromarray(torch.randint(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8).numpy())
    outputs = generator(image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert len(outputs["masks"]) > 0 and outputs["masks"][0].shape == (IMAGE_SIZE, IMAGE_SIZE)


def test_push_to_hub_script_keeps_user_files_and_refuses_untrained_plugins(
    trained, adapter_dir, sam_base, recording_api, tmp_path
):
    script = _load_example("push_to_hub_example_safety", REPO_ROOT / "examples" / "push_to_hub.py")
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / "model.safetensors").write_bytes(b"user weights")
    (user_dir / "README.md").write_text("mine\n")
    with pytest.raises(ValueError, match="--overwrite_local_dir"):
        script.main(["--model", adapter_dir, "--local_dir", os.fspath(user_dir)])
    # Even when told to write there, an adapter does not replace the folder's full checkpoint
    with pytest.raises(ValueError, match="holds a full checkpoint"):
        script.main(["--model", adapter_dir, "--local_dir", os.fspath(user_dir), "--overwrite_local_dir"])
    assert sorted(os.listdir(user_dir)) == ["README.md", "model.safetensors"]
    assert (user_dir / "model.safetensors").read_bytes() == b"user weights"

    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    (notes_dir / "notes.txt").write_text("keep\n")
    script.main(["--model", adapter_dir, "--local_dir", os.fspath(notes_dir), "--overwrite_local_dir"])
    assert set(os.listdir(notes_dir)) == ADAPTER_FILES | {"notes.txt"}

    # A plain SAM: fresh plugins, not a release, unless asked for
    with pytest.raises(ValueError, match="--allow_untrained_plugins"):
        script.main(["--model", sam_base, "--repo_id", "user/fresh"])
    with pytest.raises(ValueError, match="allow_untrained_plugins"):
        StableSamModel.from_pretrained(sam_base).push_to_hub("user/fresh")
    assert not _call(recording_api, "upload_folder")
    script.main(["--model", sam_base, "--repo_id", "user/fresh", "--allow_untrained_plugins"])
    assert len(_call(recording_api, "upload_folder")) == 1


def test_convert_never_writes_into_the_checkpoint_or_a_non_empty_folder(trained, tmp_path):
    full = tmp_path / "full"
    copy.deepcopy(trained).save_pretrained(full, full_checkpoint=True)
    script = _load_example("convert_to_adapter_safety", REPO_ROOT / "training" / "convert_to_adapter.py")
    for extra in ([], ["--overwrite_output_dir"]):
        with pytest.raises(ValueError, match="is the checkpoint"):
            script.main(["--checkpoint", os.fspath(full), "--output_dir", os.fspath(full), *extra])
    assert "model.safetensors" in os.listdir(full) and ADAPTER_WEIGHTS_NAME not in os.listdir(full)

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        script.main(["--checkpoint", os.fspath(full), "--output_dir", os.fspath(out)])
    script.main(["--checkpoint", os.fspath(full), "--output_dir", os.fspath(out), "--overwrite_output_dir"])
    assert set(os.listdir(out)) == ADAPTER_FILES | {"notes.txt"}
    _assert_same_outputs(StableSamModel.from_pretrained(out), trained)


def test_convert_refuses_a_checkpoint_whose_sam_weights_were_fine_tuned(trained, tmp_path):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(0.5)
    model.save_pretrained(tmp_path / "full", full_checkpoint=True)
    with pytest.raises(ValueError, match="plugins_only") as error:
        convert_to_adapter(tmp_path / "adapter", checkpoint=tmp_path / "full")
    assert "mask_decoder.iou_token.weight" in str(error.value) and "1 SAM weights" in str(error.value)
    assert not (tmp_path / "adapter").exists()

    convert_to_adapter(tmp_path / "adapter", checkpoint=tmp_path / "full", plugins_only=True)
    loaded_state = StableSamModel.from_pretrained(tmp_path / "adapter").state_dict()
    for key, value in trained.plugin_state_dict().items():
        torch.testing.assert_close(loaded_state[key], value, rtol=0, atol=0)


# Saves are atomic per file, refusals change nothing, publishing checks what it publishes


def _write_part_then_fail(tensors, filename, metadata=None):
    """Stands in for safetensors' `save_file`: the process dies after writing part of the file."""
    with open(filename, "wb") as file:
        file.write(b"\x00" * 64)
    raise RuntimeError("killed while writing the weights")


def test_a_kill_while_saving_into_the_sam_folder_keeps_its_weights(sam_base, tmp_path, monkeypatch):
    import transformers.modeling_utils

    folder = tmp_path / "my_sam"
    shutil.copytree(sam_base, folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    model = perturb_plugins_(StableSamModel.from_pretrained(folder), seed=4).eval()
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _write_part_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        model.save_pretrained(folder)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    SamModel.from_pretrained(folder)


def test_a_kill_while_saving_an_adapter_keeps_the_earlier_adapter_whole(trained, adapter_dir, tmp_path, monkeypatch):
    import stable_sam_hf.adapter

    folder = tmp_path / "adapter"
    shutil.copytree(adapter_dir, folder)
    config_before = (folder / "config.json").read_bytes()
    model = perturb_plugins_(copy.deepcopy(trained), seed=7)
    model.config.offset_range = trained.config.offset_range * 2
    monkeypatch.setattr(stable_sam_hf.adapter, "safe_save_file", _write_part_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        model.save_pretrained(folder)
    assert (folder / "config.json").read_bytes() == config_before
    assert not [name for name in os.listdir(folder) if name.startswith(".")]
    _assert_same_outputs(StableSamModel.from_pretrained(folder), trained)


def test_a_full_checkpoint_is_not_saved_over_shards_it_would_not_replace(tmp_path):
    folder = tmp_path / "sharded_sam"
    torch.manual_seed(0)
    SamModel(SamConfig(**tiny_sam_kwargs())).save_pretrained(folder, max_shard_size="100KB")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    assert "model.safetensors.index.json" in before
    model = StableSamModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="would not replace") as error:
        model.save_pretrained(folder)
    assert "model-00001-of-" in str(error.value)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    SamModel.from_pretrained(folder)


def test_a_refused_save_leaves_the_config_unchanged(trained, tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"user weights")
    model = copy.deepcopy(trained)
    base = model.config.base_model_name_or_path
    with pytest.raises(ValueError, match="holds a full checkpoint"):
        model.save_pretrained(folder, base_model_name_or_path="user/other-sam")
    assert model.config.base_model_name_or_path == base


def test_save_pretrained_push_to_hub_refuses_untrained_plugins(sam_base, recording_api, tmp_path):
    model = StableSamModel.from_pretrained(sam_base)
    with pytest.raises(ValueError, match="allow_untrained_plugins"):
        model.save_pretrained(tmp_path / "fresh", push_to_hub=True, repo_id="user/fresh")
    assert not _call(recording_api, "upload_folder") and not (tmp_path / "fresh").exists()
    model.save_pretrained(tmp_path / "fresh", push_to_hub=True, repo_id="user/fresh", allow_untrained_plugins=True)
    assert len(_call(recording_api, "upload_folder")) == 1


def test_an_adapter_of_a_fine_tuned_full_checkpoint_is_refused_unless_plugins_only(
    trained, sam_base, recording_api, tmp_path
):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(0.5)
    full = tmp_path / "full"
    model.save_pretrained(full, full_checkpoint=True, base_model_name_or_path=sam_base)
    script = _load_example("push_to_hub_example_fine_tuned", REPO_ROOT / "examples" / "push_to_hub.py")
    for target in (["--local_dir", os.fspath(tmp_path / "local")], ["--repo_id", "user/fine-tuned"]):
        with pytest.raises(ValueError, match="plugins_only") as error:
            script.main(["--model", os.fspath(full), "--base_model_name_or_path", sam_base, *target])
        assert "mask_decoder.iou_token.weight" in str(error.value) and "1 SAM weights" in str(error.value)
    assert not (tmp_path / "local").exists() and not _call(recording_api, "upload_folder")
    with pytest.raises(ValueError, match="plugins_only"):
        StableSamModel.from_pretrained(full).save_pretrained(tmp_path / "direct")

    written = script.main(
        ["--model", os.fspath(full), "--local_dir", os.fspath(tmp_path / "plugins"), "--plugins_only"]
    )
    assert set(written) == ADAPTER_FILES
    script.main(["--model", os.fspath(full), "--local_dir", os.fspath(tmp_path / "whole"), "--full_checkpoint"])
    _assert_same_outputs(StableSamModel.from_pretrained(tmp_path / "whole"), model)


def test_convert_refuses_a_base_whose_weight_names_do_not_match(trained, sam_base, tmp_path):
    copy.deepcopy(trained).save_pretrained(tmp_path / "full", full_checkpoint=True)
    renamed = tmp_path / "renamed_sam"
    renamed.mkdir()
    shutil.copyfile(Path(sam_base) / "config.json", renamed / "config.json")
    tensors = load_file(Path(sam_base) / "model.safetensors")
    save_file({f"sam.{key}": tensor for key, tensor in tensors.items()}, renamed / "model.safetensors")
    with pytest.raises(ValueError, match="lacks") as error:
        convert_to_adapter(
            tmp_path / "adapter", checkpoint=tmp_path / "full", base_model_name_or_path=os.fspath(renamed)
        )
    assert os.fspath(renamed) in str(error.value)
    assert not (tmp_path / "adapter").exists()
