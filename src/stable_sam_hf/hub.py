"""Stable-SAM on the Hugging Face Hub: the public names of the adapter format, the adapter mixin and the uploader.

The work is split by job: `file_resolution` (where a checkpoint's files are), `adapter` (the mixin that saves and loads
adapter releases; shipped as remote code), `model_card` (the release's `README.md`) and `upload` (the Hub upload).
"""

from .adapter import StableSamAdapterMixin
from .file_resolution import ADAPTER_WEIGHTS_NAME
from .upload import upload_release_folder


__all__ = ["ADAPTER_WEIGHTS_NAME", "StableSamAdapterMixin", "upload_release_folder"]
