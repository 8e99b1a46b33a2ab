"""Mask-decoder latency, FLOPs and peak memory: StableSamModel against SamModel and SamHQModel.

All three decode the same ViT-B-sized image embeddings (256 x 64 x 64, decoder width 256) with 1, 8 and 64 box
prompts; the models share SAM's weights, so only the decoder differs. Ratios are measured in one run, with the
models interleaved so that drift of the machine hits all of them alike.

    python benchmarks/bench_decoder.py                 # decoder table (about 3 minutes on 2 cores)
    python benchmarks/bench_decoder.py --full_forward  # plus one ViT-B full forward each (about 2 more minutes)
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel

from stable_sam_hf import StableSamConfig, StableSamModel


EMBEDDING_SIZE = 64
VIT_B_DIM = 768
METHODS = ("sam", "stable_sam", "sam_hq")


def build_model(method: str, full_encoder: bool = False):
    """A model whose decoder has ViT-B sizes; the encoder is ViT-B only when `full_encoder` (else one tiny layer)."""
    vision = {} if full_encoder else {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1}
    vision["global_attn_indexes"] = [2, 5, 8, 11] if full_encoder else [0]
    torch.manual_seed(0)
    if method == "sam":
        return SamModel(SamConfig(vision_config=vision)).eval()
    if method == "stable_sam":
        return StableSamModel(StableSamConfig(vision_config=vision)).eval()
    return SamHQModel(SamHQConfig(vision_config=vision, mask_decoder_config={"vit_dim": VIT_B_DIM})).eval()


def decoder_inputs(method: str, num_prompts: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(1, 256, EMBEDDING_SIZE, EMBEDDING_SIZE, generator=generator)
    corners = torch.rand(1, num_prompts, 2, 2, generator=generator).sort(dim=2).values * 1024
    inputs = {"image_embeddings": embeddings, "input_boxes": corners.reshape(1, num_prompts, 4)}
    if method == "sam_hq":
        inputs["intermediate_embeddings"] = [
            torch.randn(1, EMBEDDING_SIZE, EMBEDDING_SIZE, VIT_B_DIM, generator=generator)
        ]
    return inputs


def time_call(fn, iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def count_flops(model, inputs) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs, multimask_output=True)
    return counter.get_total_flops()


def peak_memory_child(method: str, num_prompts: int) -> None:
    """Run in a fresh process: prints the peak resident memory added by one decoder forward, in MB."""
    model = build_model(method)
    inputs = decoder_inputs(method, num_prompts)
    with torch.inference_mode():
        model(**inputs, multimask_output=True)  # allocator and kernels warm
    # Linux: writing 5 to clear_refs resets the peak-RSS counter (VmHWM) to the current RSS
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_kb("VmRSS")
    with torch.inference_mode():
        model(**inputs, multimask_output=True)
    print(json.dumps({"peak_mb": (_proc_status_kb("VmHWM") - before) / 1024}))


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory(method: str, num_prompts: int) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--_memory_child", method, str(num_prompts)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8, 64], help="Prompt counts to measure.")
    parser.add_argument("--iterations", type=int, default=0, help="Timed iterations (0: by prompt count).")
    parser.add_argument("--full_forward", action="store_true", help="Also time one ViT-B full forward per model.")
    parser.add_argument("--_memory_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        peak_memory_child(args._memory_child[0], int(args._memory_child[1]))
        return

    models = {method: build_model(method) for method in METHODS}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for num_prompts in args.prompts:
        iterations = args.iterations or {1: 30, 8: 10}.get(num_prompts, 4)
        inputs = {method: decoder_inputs(method, num_prompts) for method in METHODS}
        times = {method: [] for method in METHODS}
        with torch.inference_mode():
            for method in METHODS:  # warm-up
                models[method](**inputs[method])
            for _ in range(iterations):
                for method in METHODS:
                    times[method] += time_call(lambda m=models[method], x=inputs[method]: m(**x), 1)
        flops = {method: count_flops(models[method], inputs[method]) for method in METHODS}
        memory = {method: peak_memory(method, num_prompts) for method in METHODS}
        median = {method: statistics.median(times[method]) for method in METHODS}
        rows.append((num_prompts, median, flops, memory))
        print(
            f"{num_prompts:>3} prompts: "
            + ", ".join(
                f"{m} {median[m] * 1e3:.1f} ms / {flops[m] / 1e9:.2f} GFLOP / {memory[m]:.0f} MB" for m in METHODS
            )
        )

    print(
        "\n| prompts | SAM decoder | Stable-SAM / SAM time | FLOPs | peak memory | SAM-HQ / SAM time | FLOPs | peak memory |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for num_prompts, median, flops, memory in rows:
        cells = [f"{num_prompts}", f"{median['sam'] * 1e3:.0f} ms"]
        for method in ("stable_sam", "sam_hq"):
            cells += [
                f"{median[method] / median['sam']:.3f}x",
                f"{flops[method] / flops['sam']:.3f}x",
                f"{memory[method] / memory['sam']:.2f}x",
            ]
        print("| " + " | ".join(cells) + " |")

    if args.full_forward:
        del models
        full = {method: build_model(method, full_encoder=True) for method in ("sam", "stable_sam")}
        full["stable_sam"].load_state_dict(full["sam"].state_dict(), strict=False)
        pixel_values = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
        boxes = torch.tensor([[[100.0, 120.0, 600.0, 700.0]]])
        full_times = {method: [] for method in full}
        with torch.inference_mode():
            for _ in range(2):
                for method, model in full.items():
                    full_times[method] += time_call(lambda m=model: m(pixel_values=pixel_values, input_boxes=boxes), 1)
        best = {method: min(t) for method, t in full_times.items()}
        print(
            f"\nViT-B full forward, 1 image 1024x1024, 1 box: SAM {best['sam']:.2f} s, Stable-SAM "
            f"{best['stable_sam']:.2f} s, ratio {best['stable_sam'] / best['sam']:.3f}x"
        )


if __name__ == "__main__":
    main()
