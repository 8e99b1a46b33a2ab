"""Automatic-mask ("mask-generation" pipeline) throughput: StableSamModel against SamModel with the same weights.

    python benchmarks/bench_pipeline.py --setting tiny    # testing_utils' tiny SAM, 16 x 16 grid (under a minute)
    python benchmarks/bench_pipeline.py --setting vit_b   # real ViT-B encoder, 8 x 8 grid, 2 iterations (~4 min)
    python benchmarks/bench_pipeline.py                   # both

Both models share every SAM weight; the Stable-SAM plugins keep their SAM-equivalent initialisation, so both
pipelines keep the same masks and their pre- and post-processing does the same work, while the DSP and DRP still run
on every grid prompt. Both use `StableSamImageProcessor` (its NMS is pure torch; SAM's needs torchvision). The two
pipelines are timed in one run, interleaved (the order alternates each iteration) after one warm-up call each, on the
same synthetic image. Besides the whole call, the script times the image encoder (`get_image_embeddings`, the same
for both) and the model forwards on the prompts (prompt encoder + mask decoder, where the plugins sit); the rest is
pre- and post-processing (mask upscaling, filtering, RLE, NMS).
"""

import argparse
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from transformers import SamConfig, SamModel, pipeline

from stable_sam_hf import StableSamConfig, StableSamImageProcessor, StableSamModel, is_plugin_parameter
from stable_sam_hf.testing_utils import tiny_sam_kwargs


@dataclass
class Setting:
    name: str
    description: str
    config_kwargs: dict
    image_size: int
    points_per_side: int
    points_per_batch: int
    iterations: int
    image_shape: tuple[int, int] = (480, 640)


SETTINGS = {
    "tiny": Setting(
        name="tiny",
        description="stable_sam_hf.testing_utils (ViT 32 wide, 2 layers, 64 px input, decoder 32 wide)",
        config_kwargs=tiny_sam_kwargs(),
        image_size=64,
        points_per_side=16,
        points_per_batch=64,
        iterations=10,
    ),
    "vit_b": Setting(
        name="vit_b",
        description="ViT-B (SamConfig defaults: encoder 768 wide, 12 layers, 1024 px input, decoder 256 wide)",
        config_kwargs={},
        image_size=1024,
        points_per_side=8,
        points_per_batch=64,
        iterations=2,
    ),
}
METHODS = ("SAM", "Stable-SAM")


@dataclass
class Timings:
    """Seconds per pipeline call, split into image encoder, model forwards on prompts and the rest."""

    total: list[float] = field(default_factory=list)
    encoder: list[float] = field(default_factory=list)
    decoder: list[float] = field(default_factory=list)
    masks: list[int] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))

    def rest(self) -> float:
        return statistics.median(t - e - d for t, e, d in zip(self.total, self.encoder, self.decoder))


class PartTimer:
    """Adds up the time spent in a model's image encoder and in its forwards, per pipeline call."""

    def __init__(self, model):
        self.encoder = self.decoder = 0.0
        self._get_image_embeddings = model.get_image_embeddings
        model.get_image_embeddings = self._timed_encoder
        model.register_forward_pre_hook(self._start)
        model.register_forward_hook(self._stop)
        self._started = 0.0

    def reset(self):
        self.encoder = self.decoder = 0.0

    def _timed_encoder(self, *args, **kwargs):
        start = time.perf_counter()
        embeddings = self._get_image_embeddings(*args, **kwargs)
        self.encoder += time.perf_counter() - start
        return embeddings

    def _start(self, module, args):
        self._started = time.perf_counter()

    def _stop(self, module, args, output):
        self.decoder += time.perf_counter() - self._started


def build_models(setting: Setting) -> dict:
    """SamModel and StableSamModel with the same SAM weights (plugins at their SAM-equivalent initialisation)."""
    torch.manual_seed(0)
    stable_sam = StableSamModel(StableSamConfig(**setting.config_kwargs)).eval()
    sam = SamModel(SamConfig(**setting.config_kwargs)).eval()
    sam.load_state_dict({k: v for k, v in stable_sam.state_dict().items() if not is_plugin_parameter(k)})
    return {"SAM": sam, "Stable-SAM": stable_sam}


def scene(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    """A synthetic RGB photo stand-in: a few flat ellipses and rectangles on a smooth noisy background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    pixels = np.stack([rows / height * 120 + 40, cols / width * 120 + 40, np.full_like(rows, 90.0)], axis=-1)
    for _ in range(6):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.05, 0.2) * height, rng.uniform(0.05, 0.2) * width
        color = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            pixels[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1] = color
        else:
            pixels[(abs(rows - cy) < ry) & (abs(cols - cx) < rx)] = color
    pixels += rng.normal(0, 8, pixels.shape)
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def run_setting(setting: Setting, iterations: int | None) -> dict[str, Timings]:
    iterations = iterations or setting.iterations
    image_processor = StableSamImageProcessor(
        size={"longest_edge": setting.image_size},
        pad_size={"height": setting.image_size, "width": setting.image_size},
        mask_size={"longest_edge": setting.image_size // 4},
        mask_pad_size={"height": setting.image_size // 4, "width": setting.image_size // 4},
    )
    models = build_models(setting)
    timers = {name: PartTimer(model) for name, model in models.items()}
    generators = {
        name: pipeline("mask-generation", model=model, image_processor=image_processor)
        for name, model in models.items()
    }
    image = scene(*setting.image_shape)
    call_kwargs = {
        "points_per_crop": setting.points_per_side,
        "points_per_batch": setting.points_per_batch,
        "crops_n_layers": 0,
    }
    for generator in generators.values():  # warm-up
        generator(image, **call_kwargs)

    timings = {name: Timings() for name in METHODS}
    for iteration in range(iterations):
        order = METHODS if iteration % 2 == 0 else METHODS[::-1]
        for name in order:
            timers[name].reset()
            start = time.perf_counter()
            outputs = generators[name](image, **call_kwargs)
            timings[name].total.append(time.perf_counter() - start)
            timings[name].encoder.append(timers[name].encoder)
            timings[name].decoder.append(timers[name].decoder)
            timings[name].masks.append(len(outputs["masks"]))
        print(
            f"  {setting.name} iteration {iteration + 1}/{iterations}: "
            + ", ".join(f"{name} {timings[name].total[-1]:.2f} s" for name in METHODS),
            flush=True,
        )
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--setting", choices=[*SETTINGS, "all"], default="all", help="Model size to measure (default: all)."
    )
    parser.add_argument("--iterations", type=int, default=None, help="Timed calls per model (default: by setting).")
    args = parser.parse_args()
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}.")
    names = list(SETTINGS) if args.setting == "all" else [args.setting]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    results = {}
    for name in names:
        setting = SETTINGS[name]
        print(
            f"{name}: {setting.description}; image {setting.image_shape[1]}x{setting.image_shape[0]}, "
            f"{setting.points_per_side}x{setting.points_per_side} grid = {setting.points_per_side**2} prompts, "
            f"{setting.points_per_batch} prompts per batch",
            flush=True,
        )
        results[name] = run_setting(setting, args.iterations)

    print(
        "\n| setting | prompts | SAM s/image | Stable-SAM s/image | ratio | ratio, best calls | image encoder "
        "| prompt forwards SAM / Stable-SAM | ratio | rest SAM / Stable-SAM | masks kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, timings in results.items():
        sam, stable = timings["SAM"], timings["Stable-SAM"]
        cells = [
            name,
            f"{SETTINGS[name].points_per_side ** 2}",
            f"{sam.median('total'):.3f}",
            f"{stable.median('total'):.3f}",
            f"**{stable.median('total') / sam.median('total'):.3f}x**",
            f"{min(stable.total) / min(sam.total):.3f}x",
            f"{sam.median('encoder'):.3f}",
            f"{sam.median('decoder'):.3f} / {stable.median('decoder'):.3f}",
            f"{stable.median('decoder') / sam.median('decoder'):.3f}x",
            f"{sam.rest():.3f} / {stable.rest():.3f}",
            f"{sam.masks[-1]} / {stable.masks[-1]}",
        ]
        print("| " + " | ".join(cells) + " |")
    print(
        "\nSeconds per image, medians over the timed calls ('best calls': fastest call of each). 'prompt forwards': "
        "the model forwards on the grid prompts (prompt encoder + mask decoder, where the plugins run); 'rest': pre- "
        "and post-processing. With random weights few masks pass SAM's default thresholds; a trained model keeps "
        "more, which adds the same post-processing time to both."
    )


if __name__ == "__main__":
    main()
