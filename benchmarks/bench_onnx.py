"""Cost of the exported decoder: Stable-SAM against SAM in onnxruntime on CPU, and onnxruntime against torch.

A ViT-B-sized Stable-SAM (decoder width 256, 64 x 64 embeddings, random weights, plugins moved off their SAM-equivalent
start) is exported twice: `decoder.onnx` (DRP predicts alpha_1) and `decoder_sam.onnx` (alpha_1 = 0, SAM's decoder).
One box prompt, as an annotation tool sends per drag. The three are timed interleaved in one run so that drift of
the machine hits them alike; each repeat reports its ratios of medians, and the spread over repeats is printed.

    python benchmarks/bench_onnx.py   # 3 repeats of 50 calls each; 12 minutes on a 2-core machine under load 13
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import SamConfig

from stable_sam_hf import StableSamConfig, StableSamModel
from stable_sam_hf.onnx import StableSamOnnxDecoder, export_decoder
from stable_sam_hf.testing_utils import perturb_plugins_


def build_model() -> StableSamModel:
    vision = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "global_attn_indexes": [0]}
    torch.manual_seed(0)
    model = StableSamModel(StableSamConfig.from_sam_config(SamConfig(vision_config=vision))).eval()
    return perturb_plugins_(model, seed=0, std=0.1)


def box_inputs() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    return {
        "image_embeddings": generator.standard_normal((1, 256, 64, 64), dtype=np.float32),
        "point_coords": np.array([[[200.0, 300.0], [700.0, 800.0]]], np.float32),
        "point_labels": np.array([[2.0, 3.0]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([1024.0, 1024.0], np.float32),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Independent repeats (each gives its ratios).")
    parser.add_argument("--iterations", type=int, default=50, help="Timed calls per decoder and repeat.")
    parser.add_argument("--threads", type=int, default=2, help="Threads for onnxruntime and torch alike.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = build_model()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "stable": export_decoder(model, Path(tmp) / "decoder.onnx"),
            "sam": export_decoder(model, Path(tmp) / "decoder_sam.onnx", routing_weight=0.0),
        }
        sessions = {
            name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in paths.items()
        }
    inputs = box_inputs()
    torch_inputs = [torch.from_numpy(value) for value in inputs.values()]
    wrapper = StableSamOnnxDecoder(model).eval()
    calls = {
        "ort_stable": lambda: sessions["stable"].run(None, inputs),
        "ort_sam": lambda: sessions["sam"].run(None, inputs),
        "torch_stable": lambda: wrapper(*torch_inputs),
    }
    with torch.no_grad():
        for call in calls.values():  # warm-up
            for _ in range(5):
                call()
        ratios = {"stable / sam (onnxruntime)": [], "torch / onnxruntime (Stable-SAM)": []}
        for repeat in range(args.repeats):
            times = {name: [] for name in calls}
            for _ in range(args.iterations):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
            ratios["stable / sam (onnxruntime)"].append(median["ort_stable"] / median["ort_sam"])
            ratios["torch / onnxruntime (Stable-SAM)"].append(median["torch_stable"] / median["ort_stable"])
            print(
                f"repeat {repeat + 1}: onnxruntime Stable-SAM {median['ort_stable']:.1f} ms, SAM "
                f"{median['ort_sam']:.1f} ms, torch Stable-SAM {median['torch_stable']:.1f} ms"
            )
    for name, values in ratios.items():
        print(f"{name}: {', '.join(f'{v:.3f}' for v in values)} (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
