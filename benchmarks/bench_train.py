"""Cost of one Stable-SAM training step against the frozen image encoder, and training memory against inference.

On the same batch (one prompt per object, the training mix of prompt types), for a tiny SAM and a ViT-B SAM at a
reduced input size:
- step time (encoder without gradient + decoder with plugins + loss + backward + Adam) / encoder forward time;
- peak memory of a training step / peak memory of inference on that batch (each measured in a fresh process);
- data loading (streamed parquet -> decode -> jitter -> occlusion -> prompts) / step time.

    python benchmarks/bench_train.py                   # tiny and ViT-B at 256x256, batch 4 (about 2 minutes)
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import SamConfig, SamModel


ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "tiny": {
        "vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
            "output_channels": 32,
            "window_size": 4,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "num_pos_feats": 16,
        },
        "prompt_encoder_config": {"hidden_size": 32, "image_size": 64, "patch_size": 8, "mask_input_channels": 8},
        "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    },
    # ViT-B encoder and SAM's 256-wide decoder at 256x256 input (16x16 image embedding)
    "vit-b@256": {
        "vision_config": {"image_size": 256, "global_attn_indexes": [2, 5, 8, 11]},
        "prompt_encoder_config": {"image_size": 256},
    },
}
PROMPT_TYPES = ["box", "noisy_box", "points_1", "points_3", "points_5", "points_10", "coarse_mask"]


def build(setting: str, workdir: Path):
    """A saved base SAM for `setting`, the Stable-SAM segmenter on it and a batch from the real data path."""
    from stable_sam_hf.data import SegmentationTrainStream
    from stable_sam_hf.methods import PromptCollator, build_segmenter
    from stable_sam_hf.testing_utils import make_hqseg_tree

    base = workdir / setting / "sam"
    if not base.exists():
        torch.manual_seed(0)
        SamModel(SamConfig(**SETTINGS[setting])).save_pretrained(base)
    segmenter = build_segmenter("stable", base)
    size = segmenter.sam.config.vision_config.image_size
    mask_size = 4 * segmenter.sam.config.prompt_encoder_config.image_embedding_size
    data = workdir / "data"
    if not data.exists():
        make_hqseg_tree(workdir / "raw", n_per_dataset=24, size=(480, 640), bad_samples=False)
        subprocess.run(
            [sys.executable, str(ROOT / "training" / "prepare_hqseg44k.py"), "--source", str(workdir / "raw")]
            + ["--output_dir", str(data), "--row_group_size", "8"],
            check=True,
            capture_output=True,
        )
    stream = SegmentationTrainStream(str(data), output_size=size, seed=0)
    collator = PromptCollator(PROMPT_TYPES, seed=0, noise_scale=0.4, mask_prompt_size=mask_size)
    return segmenter, stream, collator


def measure_times(setting: str, batch_size: int, iterations: int, workdir: Path) -> dict:
    from stable_sam_hf.methods import segmentation_loss

    segmenter, stream, collator = build(setting, workdir)
    optimizer = torch.optim.Adam([p for p in segmenter.parameters() if p.requires_grad], lr=1e-3)
    samples = iter(stream)
    load, encoder, step = [], [], []
    for _ in range(iterations + 1):
        start = time.perf_counter()
        batch = collator([next(samples) for _ in range(batch_size)])
        load.append(time.perf_counter() - start)
        with torch.no_grad():
            start = time.perf_counter()
            segmenter.image_features(batch["images"])
            encoder.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss = segmentation_loss(segmenter(batch["images"], batch), batch["masks"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step.append(time.perf_counter() - start)
    # The first iteration warms kernels and the stream up
    return {
        name: statistics.median(values[1:]) for name, values in (("load", load), ("encoder", encoder), ("step", step))
    }


def memory_child(setting: str, batch_size: int, mode: str, workdir: Path) -> None:
    from stable_sam_hf.methods import segmentation_loss

    segmenter, stream, collator = build(setting, workdir)
    samples = iter(stream)
    batch = collator([next(samples) for _ in range(batch_size)])
    optimizer = torch.optim.Adam([p for p in segmenter.parameters() if p.requires_grad], lr=1e-3)

    def run():
        if mode == "inference":
            with torch.no_grad():
                segmenter(batch["images"], batch)
        else:
            segmentation_loss(segmenter(batch["images"], batch), batch["masks"]).backward()
            optimizer.step()
            optimizer.zero_grad()

    run()  # allocator, kernels and optimizer state warm
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS counter to the current RSS
    before = _status_kb("VmRSS")
    run()
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") - before) / 1024, "resident_mb": before / 1024}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(setting: str, batch_size: int, mode: str, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--_memory_child", setting, str(batch_size), mode, str(workdir)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch_size", type=int, default=4, help="Objects per step (one prompt each).")
    parser.add_argument("--iterations", type=int, default=5, help="Timed steps per setting.")
    parser.add_argument("--_memory_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        setting, batch_size, mode, workdir = args._memory_child
        memory_child(setting, int(batch_size), mode, Path(workdir))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for setting in args.settings:
            times = measure_times(setting, args.batch_size, args.iterations, workdir)
            inference = measure_memory(setting, args.batch_size, "inference", workdir)
            training = measure_memory(setting, args.batch_size, "training", workdir)
            rows.append((setting, times, inference, training))
            print(setting, times, inference, training)
    print(
        "\n| setting | encoder forward | training step | step / encoder | peak memory train / inference (added MB) | data loading / step |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for setting, times, inference, training in rows:
        print(
            f"| {setting} | {times['encoder'] * 1e3:.0f} ms | {times['step'] * 1e3:.0f} ms | "
            f"{times['step'] / times['encoder']:.2f}x | "
            f"{(training['resident_mb'] + training['peak_mb']) / (inference['resident_mb'] + inference['peak_mb']):.3f}x "
            f"({training['peak_mb']:.0f} / {inference['peak_mb']:.0f}) | {times['load'] / times['step']:.1%} |"
        )


if __name__ == "__main__":
    main()
