"""training/train.py end to end on a tiny SAM and a fixture HQSeg tree, through the streaming data path."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import SamModel

from stable_sam_hf import StableSamModel
from stable_sam_hf.methods import METHODS, TRAINABLE_WEIGHTS_NAME, build_segmenter, trainable_weights_name

from fixtures import make_hqseg_tree
from processes import run_distributed, run_process
from tiny import tiny_sam_config


ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
PREPARE = ROOT / "training" / "prepare_hqseg44k.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(root / "sam")
    make_hqseg_tree(root / "raw", n_per_dataset=6, size=(48, 64))
    result = run_process(
        [sys.executable, str(PREPARE), "--source", str(root / "raw"), "--output_dir", str(root / "data")], env=_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _train_args(workspace: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        str(workspace / "data"),
        "--base_model",
        str(workspace / "sam"),
        "--output_dir",
        str(output_dir),
        "--output_size",
        "64",
        "--total_batch_size",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        *extra,
    ]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    result = run_process([sys.executable, str(TRAIN), *args], env=_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_cpu_thread_advice_only_for_one_cpu_process_on_one_thread_with_cores_free():
    sys.path.insert(0, str(TRAIN.parent))
    import train  # noqa: E402

    advice = train.cpu_thread_advice("cpu", 1, 1, 2)
    assert "--num_cpu_threads_per_process 2" in advice
    assert train.cpu_thread_advice("cpu", 1, 2, 2) is None  # already on every core
    assert train.cpu_thread_advice("cpu", 2, 1, 2) is None  # one thread per process is what several processes want
    assert train.cpu_thread_advice("cpu", 1, 1, 1) is None  # nothing to gain
    assert train.cpu_thread_advice("cuda", 1, 1, 8) is None


def test_help_documents_every_option():
    result = run_process([sys.executable, str(TRAIN), "--help"], env=_env())
    assert result.returncode == 0
    sys.path.insert(0, str(TRAIN.parent))
    import train  # noqa: E402

    from stable_sam_hf.data import TrainStreamArguments

    for dataclass_type in (train.ModelArguments, train.RecipeArguments, TrainStreamArguments):
        for name, field in dataclass_type.__dataclass_fields__.items():
            assert f"--{name}" in result.stdout, name
            assert field.metadata.get("help"), f"{name} has no help text"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_its_own_parameters(workspace, tmp_path, method):
    _run(_train_args(workspace, tmp_path, "--method", method, "--max_train_steps", "2", "--checkpointing_steps", "0"))
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2
    assert len(summary["losses"]) == 2 and all(loss > 0 for loss in summary["losses"])

    trained = load_file(str(tmp_path / trainable_weights_name(method)))
    assert set(summary["files"]) >= {trainable_weights_name(method)}
    base = SamModel.from_pretrained(workspace / "sam").state_dict()
    moved = [name for name, tensor in trained.items() if name in base and not torch.equal(tensor, base[name])]
    new = [name for name in trained if name not in base]
    if method == "stable":
        assert all(".dsp." in name or ".drp." in name for name in trained)
        assert sum(t.numel() for t in trained.values()) == 3204  # the tiny decoder's plugins
        model = StableSamModel.from_pretrained(tmp_path)
        assert torch.equal(model.state_dict()[next(iter(trained))], next(iter(trained.values())))
    elif method == "decoder":
        assert all(name.startswith("mask_decoder.") for name in trained) and moved
    elif method == "stable_decoder":
        assert all(name.startswith("mask_decoder.") for name in trained) and moved
        assert sorted(new) == sorted(name for name in trained if ".dsp." in name or ".drp." in name)
        assert sum(trained[name].numel() for name in new) == 3204
        decoder = StableSamModel.from_pretrained(workspace / "sam").mask_decoder
        assert set(trained) == {f"mask_decoder.{name}" for name, _ in decoder.named_parameters()}
    elif method == "stable_spatial":
        spatial = StableSamModel.from_pretrained(workspace / "sam", sampling="spatial")
        assert set(trained) == {name for name, _ in spatial.plugin_named_parameters()}
        assert any(name.endswith("dsp.weight_proj.weight") for name in trained) and moved == []
        model = StableSamModel.from_pretrained(tmp_path)
        assert model.config.sampling == "spatial"
        assert torch.equal(model.state_dict()[next(iter(trained))], next(iter(trained.values())))
    elif method == "heads":
        assert all(name.startswith("mask_decoder.output_hypernetworks_mlps.") for name in trained)
        # Single-mask training: only the first mask token's head gets a gradient
        assert moved and all(name.startswith("mask_decoder.output_hypernetworks_mlps.0.") for name in moved)
    elif method == "lora":
        assert any("lora_A" in name for name in new) and any("output_hypernetworks_mlps" in name for name in trained)
        assert not any(name.startswith("base_model.model.vision_encoder") and "lora" not in name for name in trained)
        # A peft adapter folder: peft itself loads it on SAM, the mask heads as its modules_to_save
        model = PeftModel.from_pretrained(SamModel.from_pretrained(workspace / "sam"), tmp_path)
        heads = model.base_model.model.mask_decoder.output_hypernetworks_mlps
        assert isinstance(heads[0], ModulesToSaveWrapper)
        trained_head = trained["base_model.model.mask_decoder.output_hypernetworks_mlps.0.proj_in.weight"]
        assert torch.equal(heads[0].modules_to_save["default"].proj_in.weight, trained_head)
        assert not torch.equal(trained_head, base["mask_decoder.output_hypernetworks_mlps.0.proj_in.weight"])
    elif method == "adapter":
        assert any(".adapter." in name for name in new)
        assert all(".adapter." in name or "output_hypernetworks_mlps" in name for name in trained)
    else:
        assert all(name.startswith("mask_decoder.") for name in trained)
        assert any("hq_token" in name for name in new)


def test_projection_lr_scale_slows_only_the_dsp_projection(workspace, tmp_path):
    _run(
        _train_args(
            workspace,
            tmp_path,
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "0",
            "--projection_lr_scale",
            "1e-9",
        )
    )
    trained = load_file(str(tmp_path / TRAINABLE_WEIGHTS_NAME))
    fresh = StableSamModel.from_pretrained(workspace / "sam").state_dict()
    change = {name: (tensor - fresh[name]).abs().max().item() for name, tensor in trained.items()}
    projection = [name for name in change if ".dsp.proj." in name]
    assert projection and all(change[name] < 1e-7 for name in projection)
    assert max(change[name] for name in change if name not in projection) > 1e-4


def test_decoder_learning_rate_sets_only_sams_decoder_rate(workspace, tmp_path):
    extra = ["--method", "stable_decoder", "--max_train_steps", "2", "--checkpointing_steps", "0"]
    _run(_train_args(workspace, tmp_path, *extra, "--decoder_learning_rate", "1e-9"))
    trained = load_file(str(tmp_path / TRAINABLE_WEIGHTS_NAME))
    fresh = StableSamModel.from_pretrained(workspace / "sam").state_dict()
    change = {name: (tensor - fresh[name]).abs().max().item() for name, tensor in trained.items()}
    plugins = [name for name in change if ".dsp." in name or ".drp." in name]
    decoder = [name for name in change if name not in plugins]
    assert plugins and decoder and all(change[name] < 1e-7 for name in decoder)
    assert max(change[name] for name in plugins) > 1e-4


def test_decoder_learning_rate_must_be_positive():
    sys.path.insert(0, str(TRAIN.parent))
    import train  # noqa: E402

    with pytest.raises(ValueError, match="`decoder_learning_rate` must be > 0, got 0.0"):
        train.parse_args(["--dataset", "d", "--base_model", "m", "--output_dir", "o", "--decoder_learning_rate", "0"])


def test_ddp_timeout_must_be_positive():
    sys.path.insert(0, str(TRAIN.parent))
    import train  # noqa: E402

    with pytest.raises(ValueError, match="`ddp_timeout` must be a positive number of seconds, got 0"):
        train.parse_args(["--dataset", "d", "--base_model", "m", "--output_dir", "o", "--ddp_timeout", "0"])
    *_, args = train.parse_args(["--dataset", "d", "--base_model", "m", "--output_dir", "o", "--ddp_timeout", "90"])
    assert args.ddp_timeout == 90


def test_projection_lr_scale_must_be_positive(workspace, tmp_path):
    command = [sys.executable, str(TRAIN), *_train_args(workspace, tmp_path, "--projection_lr_scale", "0")]
    result = run_process(command, env=_env(), cwd=ROOT)
    assert result.returncode != 0 and "`projection_lr_scale` must be > 0" in result.stderr


def test_resume_after_kill_matches_uninterrupted_run(workspace, tmp_path):
    steps = ["--max_train_steps", "8", "--checkpointing_steps", "2", "--checkpoints_total_limit", "5"]
    _run(_train_args(workspace, tmp_path / "straight", *steps))

    # Kill a second run once its first checkpoint exists
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), *_train_args(workspace, interrupted, *steps)],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (interrupted / "checkpoint-2" / "training_state.json").exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no first checkpoint within 300 s"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (interrupted / "training_summary.json").exists(), "the run finished before it was killed"
    # What a save killed part-way left before checkpoints were renamed when complete, and an unfinished new-style one
    (interrupted / "checkpoint-100").mkdir()
    (interrupted / "checkpoint-100" / "optimizer.bin").write_bytes(b"")
    (interrupted / "checkpoint-8.incomplete").mkdir()

    result = _run(_train_args(workspace, interrupted, *steps, "--resume_from_checkpoint", "latest"))
    assert "Skipping the incomplete checkpoint" in result.stderr and "checkpoint-100" in result.stderr
    assert "checkpoint-8.incomplete: a checkpoint whose save did not finish" in result.stderr
    assert (interrupted / "checkpoint-8").is_dir() and not (interrupted / "checkpoint-8.incomplete").exists()
    straight = load_file(str(tmp_path / "straight" / TRAINABLE_WEIGHTS_NAME))
    resumed = load_file(str(interrupted / TRAINABLE_WEIGHTS_NAME))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-6, msg=name)
    initial = StableSamModel.from_pretrained(workspace / "sam").state_dict()
    assert any(not torch.equal(straight[name], initial[name]) for name in straight), "training changed nothing"
    straight_summary = json.loads((tmp_path / "straight" / "training_summary.json").read_text())
    # 32 samples go past one epoch of the fixture: every bad sample was skipped and counted, by reason
    for reason in ("unreadable_image", "size_mismatch", "empty_mask"):
        assert straight_summary["skipped"][reason] >= 1, reason
    # The resumed run's summary describes the whole run: every step's loss, every skipped sample
    resumed_summary = json.loads((interrupted / "training_summary.json").read_text())
    assert resumed_summary["steps"] == straight_summary["steps"] == 8
    assert resumed_summary["losses"] == pytest.approx(straight_summary["losses"], abs=1e-5)
    assert resumed_summary["skipped"] == straight_summary["skipped"]


def test_checkpoint_killed_while_written_is_never_resumed(tmp_path):
    sys.path.insert(0, str(TRAIN.parent))
    import train  # noqa: E402

    accelerator = Accelerator(cpu=True)
    real_save_state = accelerator.save_state

    def killed_save_state(output_dir):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # the process dies here

    accelerator.save_state = killed_save_state
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(accelerator, tmp_path, 4, limit=None)
    assert not (tmp_path / "checkpoint-4").exists()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train.find_checkpoint(tmp_path, "latest")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint of this script: it lacks"):
        train.find_checkpoint(tmp_path, str(tmp_path / "checkpoint-4.incomplete"))
    accelerator.save_state = real_save_state


def test_new_run_into_a_run_folder_must_resume_or_overwrite(workspace, tmp_path):
    _run(_train_args(workspace, tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "1"))
    (tmp_path / "notes.txt").write_text("the user's own file")
    before = sorted(path.name for path in tmp_path.iterdir())
    assert {"checkpoint-1", "checkpoint-2", "config.json", "trainable.safetensors"} <= set(before)

    args = _train_args(
        workspace, tmp_path, "--method", "heads", "--max_train_steps", "2", "--checkpointing_steps", "0"
    )
    refused = run_process([sys.executable, str(TRAIN), *args], env=_env(), cwd=ROOT)
    assert refused.returncode != 0
    assert "--resume_from_checkpoint latest" in refused.stderr and "--overwrite_output_dir" in refused.stderr
    assert "step 1:" not in refused.stderr  # stopped before training
    assert sorted(path.name for path in tmp_path.iterdir()) == before

    _run([*args, "--overwrite_output_dir"])
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["method"] == "heads" and len(summary["losses"]) == 2
    # The earlier run's checkpoints and the files its final save wrote are gone; the user's file is not
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "notes.txt",
        "trainable.safetensors",
        "training_summary.json",
    ]
    assert all(
        name.startswith("mask_decoder.output_hypernetworks_mlps.")
        for name in load_file(str(tmp_path / "trainable.safetensors"))
    )


def test_unwritable_output_dir_stops_before_the_first_step(workspace, tmp_path):
    (tmp_path / "a_file").write_text("")
    args = _train_args(workspace, tmp_path / "a_file" / "run", "--max_train_steps", "2", "--checkpointing_steps", "0")
    result = run_process([sys.executable, str(TRAIN), *args], env=_env(), cwd=ROOT)
    assert result.returncode != 0
    assert f"`output_dir` {tmp_path / 'a_file' / 'run'} is not a folder this run can write to" in result.stderr
    assert "step 1:" not in result.stderr


def test_lora_run_folder_loads_with_peft_and_reproduces_the_trained_model(workspace, tmp_path):
    segmenter = build_segmenter("lora", workspace / "sam")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stands for training: every trainable tensor moves
        for param in segmenter.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    assert isinstance(segmenter.sam.mask_decoder.output_hypernetworks_mlps[0], ModulesToSaveWrapper)
    segmenter.save_trainable(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in tmp_path.iterdir()}

    inputs = {
        "pixel_values": torch.randn(1, 3, 64, 64, generator=generator),
        "input_boxes": torch.tensor([[[4.0, 6.0, 40.0, 50.0]]]),
    }
    loaded = PeftModel.from_pretrained(SamModel.from_pretrained(workspace / "sam"), tmp_path).eval()
    segmenter.eval()
    with torch.no_grad():
        expected = segmenter.model(**inputs)
        actual = loaded(**inputs)
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks)
    torch.testing.assert_close(actual.iou_scores, expected.iou_scores)
    fresh = SamModel.from_pretrained(workspace / "sam").eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(**inputs).pred_masks, expected.pred_masks, atol=1e-3)


def test_two_processes_agree_with_one(workspace, tmp_path):
    # A collective that hangs fails the run within two minutes
    steps = ["--max_train_steps", "3", "--checkpointing_steps", "0", "--ddp_timeout", "120"]
    _run(_train_args(workspace, tmp_path / "one", *steps))
    # `accelerate launch --cpu --num_processes 2` starts one process (accelerate 1.15); this starts two on the CPU
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--main_process_ip", "127.0.0.1", "--main_process_port"]
    args = _train_args(workspace, tmp_path / "two", *steps, "--per_device_train_batch_size", "1")
    result = run_distributed(
        lambda port: [*launcher, str(port), str(TRAIN), *args], env={**_env(), "ACCELERATE_USE_CPU": "true"}, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 x 2 processes" in result.stderr, "training did not run in two processes"
    one = json.loads((tmp_path / "one" / "training_summary.json").read_text())["losses"]
    two = json.loads((tmp_path / "two" / "training_summary.json").read_text())["losses"]
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, abs=1e-4)


def test_output_dir_that_is_the_base_model_folder_is_refused(workspace, tmp_path):
    base = tmp_path / "sam"
    SamModel.from_pretrained(workspace / "sam").save_pretrained(base)
    before = {path.name: path.read_bytes() for path in base.iterdir()}
    args = _train_args(workspace, base, "--max_train_steps", "1", "--checkpointing_steps", "0")
    args[args.index("--base_model") + 1] = str(base)
    result = run_process([sys.executable, str(TRAIN), *args], env=_env(), cwd=ROOT)
    assert result.returncode != 0
    assert f"`--output_dir` {base} is the `--base_model` folder" in result.stderr
    assert {path.name: path.read_bytes() for path in base.iterdir()} == before


def test_user_files_the_final_save_writes_stop_the_run_before_training(workspace, tmp_path):
    (tmp_path / "config.json").write_text('{"the user\'s": "config"}')
    (tmp_path / "notes.txt").write_text("kept")
    args = _train_args(workspace, tmp_path, "--max_train_steps", "1", "--checkpointing_steps", "0")
    result = run_process([sys.executable, str(TRAIN), *args], env=_env(), cwd=ROOT)
    assert result.returncode != 0
    assert "holds ['config.json'], which the final save writes and no run of this script wrote" in result.stderr
    assert "step 1:" not in result.stderr
    assert (tmp_path / "config.json").read_text() == '{"the user\'s": "config"}'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "notes.txt"]


def test_save_final_never_replaces_a_file_no_run_wrote(workspace, tmp_path):
    sys.path.insert(0, str(TRAIN.parent))
    import train  # noqa: E402
    from accelerate import PartialState

    from stable_sam_hf.data import SkipCounter

    PartialState(cpu=True)  # save_final logs through accelerate
    segmenter = build_segmenter("heads", workspace / "sam")
    model_args = train.ModelArguments(base_model=str(workspace / "sam"), method="heads")
    # A file of the user's written while the run trained
    (tmp_path / TRAINABLE_WEIGHTS_NAME).write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match=TRAINABLE_WEIGHTS_NAME):
        train.save_final(segmenter, tmp_path, model_args, 1, SkipCounter(), [0.5])
    assert (tmp_path / TRAINABLE_WEIGHTS_NAME).read_bytes() == b"the user's"
    assert sorted(path.name for path in tmp_path.iterdir()) == [TRAINABLE_WEIGHTS_NAME]
    # The same name written by the run being resumed (listed in its summary) is replaced
    train.save_final(segmenter, tmp_path, model_args, 1, SkipCounter(), [0.5], own_files=[TRAINABLE_WEIGHTS_NAME])
    assert load_file(str(tmp_path / TRAINABLE_WEIGHTS_NAME))


def test_checkpoint_without_losses_resumes_with_a_partial_loss_history(workspace, tmp_path):
    # A checkpoint as the train.py before step losses were checkpointed wrote it: steps and skips only
    _run(_train_args(workspace, tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    state_file = tmp_path / "checkpoint-2" / "training_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({"completed_steps": state["completed_steps"], "skipped": state["skipped"]}))

    result = _run(
        _train_args(workspace, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2")
        + ["--resume_from_checkpoint", "latest"]
    )
    assert "records no step losses" in result.stderr and "Resumed from" in result.stderr
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["steps"] == 4 and len(summary["losses"]) == 2
    assert summary["losses_first_step"] == 3 and summary["losses_partial"] is True
    # The partial history carries into the next checkpoint, so a second resume keeps it
    state = json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text())
    assert state["losses_first_step"] == 3 and len(state["losses"]) == 2
