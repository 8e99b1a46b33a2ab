"""pytest plugin that runs transformers' own SAM test suite on `StableSamModel` instead of `SamModel`.

Nothing of transformers' tests is copied into this repository: point pytest at a checkout of transformers (the tag of
the installed version) and load this plugin; see docs/saving-and-loading.md.

    PYTHONPATH=tests python -m pytest -p transformers_suite_plugin <transformers>/tests/models/sam/test_modeling_sam.py

The swap happens after collection, in the test module's globals: `SamModel` and `SamConfig` become `StableSamModel`
and `StableSamConfig` (the testers build their configs and models through these names), and `SamModelTest`'s model
classes and pipeline mapping name `StableSamModel`. `STABLE_SAM_SWAP=0` runs the same suite on `SamModel`, the
baseline to compare with.
"""

import os

from stable_sam_hf import StableSamConfig, StableSamModel


SWAPPED_MODULE = "test_modeling_sam"


def pytest_report_header(config):
    target = "StableSamModel" if os.environ.get("STABLE_SAM_SWAP", "1") != "0" else "SamModel (baseline)"
    return f"transformers' SAM tests run on {target}"


def pytest_collection_modifyitems(session, config, items):
    if os.environ.get("STABLE_SAM_SWAP", "1") == "0":
        return
    modules = {item.module for item in items if item.module.__name__.rsplit(".", 1)[-1] == SWAPPED_MODULE}
    if not modules:
        raise RuntimeError(f"transformers_suite_plugin: no collected module named {SWAPPED_MODULE}.py to swap.")
    for module in modules:
        module.SamModel, module.SamConfig = StableSamModel, StableSamConfig
        test_class = getattr(module, "SamModelTest", None)
        if test_class is None:
            raise RuntimeError(f"transformers_suite_plugin: {module.__name__} has no SamModelTest.")
        test_class.all_model_classes = (StableSamModel,)
        test_class.pipeline_model_mapping = {
            task: StableSamModel for task in getattr(test_class, "pipeline_model_mapping", {}) or {}
        }
