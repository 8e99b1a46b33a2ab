"""Imports run one way: scripts import packages (never each other, never tests/), the toy world imports the product,
the product imports neither."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SCRIPT_FOLDERS = ("training", "examples", "benchmarks", "toy")
SCRIPTS = sorted(path for folder in SCRIPT_FOLDERS for path in (ROOT / folder).glob("*.py"))
SCRIPT_NAMES = {path.stem for path in SCRIPTS}
TEST_NAMES = {path.stem for path in (ROOT / "tests").glob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports of a Python file, wherever they are (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scripts_are_found():
    assert {"train", "quickstart", "segment", "toy_headroom", "bench_train"} <= SCRIPT_NAMES


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_scripts_import_packages_only(script):
    imported = imported_modules(script)
    assert not imported & SCRIPT_NAMES, f"{script.name} imports the scripts {sorted(imported & SCRIPT_NAMES)}"
    assert not imported & TEST_NAMES, f"{script.name} imports tests/ {sorted(imported & TEST_NAMES)}"
    assert "sys.path" not in script.read_text(), f"{script.name} changes sys.path"


@pytest.mark.parametrize(
    "package, forbidden",
    [("stable_sam_hf", {"stable_sam_toy"}), ("stable_sam_toy", set())],
)
def test_packages_import_no_script_and_the_product_no_toy(package, forbidden):
    for module in sorted((ROOT / "src" / package).rglob("*.py")):
        imported = imported_modules(module)
        assert not imported & (SCRIPT_NAMES | TEST_NAMES | forbidden), f"{module.relative_to(ROOT)} imports {imported}"
        assert "sys.path" not in module.read_text(), f"{module.relative_to(ROOT)} changes sys.path"


def test_the_model_and_processor_load_without_the_training_recipe():
    # `import stable_sam_hf` (what remote code and inference need) pulls in none of the training library (transformers itself loads accelerate when it is installed)
    code = (
        "import sys, stable_sam_hf; "
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in {'datasets', 'peft'} "
        "or name in {'stable_sam_hf.prompts', 'stable_sam_hf.data', 'stable_sam_hf.methods', 'stable_sam_hf.evaluation'}); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"`import stable_sam_hf` loads {result.stdout.strip()}{result.stderr[-2000:]}"
