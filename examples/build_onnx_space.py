"""Assembles the browser demo as a static Hugging Face Space: the page, onnxruntime-web's build, an exported model and a
sample image, with the Space's README (its metadata).

    python -m stable_sam_hf.onnx export --model models/toy-sam-128 --output_dir onnx/toy
    (cd demo && npm ci && npm run build)
    python examples/build_onnx_space.py --onnx_dir onnx/toy --image scene.png --output_dir space/
    # then: huggingface-cli upload <user>/<space> space/ . --repo-type space
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path


DEMO = Path(__file__).resolve().parents[1] / "demo"
PAGE_FILES = ("index.html", "app.js", "style.css")
VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

SPACE_README = """---
title: {title}
emoji: ✂️
colorFrom: blue
colorTo: green
sdk: static
app_file: index.html
pinned: false
license: apache-2.0
tags:
  - stable-sam
  - segment-anything
  - onnx
---

# {title}

Stable-SAM (SAM with the deformable sampling and dynamic routing plugins) running in the browser with
onnxruntime-web: the image encoder computes the embedding in the page, and the mask decoder segments on every click
or box. Switch between Stable-SAM and SAM (alpha_1 = 0) on the same prompt.

- Model: `{model}` (base `{base_model}`), input {input_size} px, plugins {plugins}.
- Files: `model/` was written by `python -m stable_sam_hf.onnx export`; `vendor/` is onnxruntime-web {ort_version}.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx_dir", required=True, help="Output folder of `python -m stable_sam_hf.onnx export`.")
    parser.add_argument("--output_dir", required=True, help="The Space folder to write (must not exist, or be empty).")
    parser.add_argument("--image", default=None, help="Sample image the page opens with.")
    parser.add_argument("--title", default="Stable-SAM in the browser", help="The Space's title.")
    args = parser.parse_args()

    onnx_dir, output_dir = Path(args.onnx_dir), Path(args.output_dir)
    metadata_path = onnx_dir / "model.json"
    if not metadata_path.is_file():
        raise SystemExit(f"--onnx_dir {str(onnx_dir)!r} has no model.json: run `python -m stable_sam_hf.onnx export`.")
    metadata = json.loads(metadata_path.read_text())
    model_files = [name for name in metadata["files"].values() if name]
    missing = [name for name in model_files if not (onnx_dir / name).is_file()]
    if missing:
        raise SystemExit(f"--onnx_dir {str(onnx_dir)!r} lacks {missing} named by its model.json.")
    missing = [name for name in VENDOR_FILES if not (DEMO / "vendor" / name).is_file()]
    if missing:
        raise SystemExit(f"demo/vendor/ lacks {missing}: run `npm ci && npm run build` in demo/.")
    if args.image is not None and not Path(args.image).is_file():
        raise SystemExit(f"--image {args.image!r} is not a file.")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(f"--output_dir {str(output_dir)!r} exists and is not empty: choose a new folder.")

    # Written aside, then moved into place: an interrupted build leaves no half Space
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=f".{output_dir.name}.") as tmp:
        staging = Path(tmp) / "space"
        (staging / "model").mkdir(parents=True)
        (staging / "vendor").mkdir()
        for name in PAGE_FILES:
            shutil.copy2(DEMO / name, staging / name)
        for name in VENDOR_FILES:
            shutil.copy2(DEMO / "vendor" / name, staging / "vendor" / name)
        for name in model_files:
            shutil.copy2(onnx_dir / name, staging / "model" / name)
        if args.image is not None:
            sample = "sample" + Path(args.image).suffix.lower()
            shutil.copy2(args.image, staging / "model" / sample)
            metadata["sample_image"] = sample
        (staging / "model" / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")
        ort_version = json.loads((DEMO / "node_modules" / "onnxruntime-web" / "package.json").read_text())["version"]
        (staging / "README.md").write_text(
            SPACE_README.format(
                title=args.title,
                model=metadata["model"],
                base_model=metadata["base_model"],
                input_size=metadata["input_size"],
                plugins=json.dumps(metadata["plugins"]),
                ort_version=ort_version,
            )
        )
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    print(output_dir)


if __name__ == "__main__":
    main()
