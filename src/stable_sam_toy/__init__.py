"""The toy world of stable-sam-hf: synthetic scenes, the toy base's trainers and the toy studies.

It imports the product package (`stable_sam_hf`) and is never imported by it; the scripts in `toy/` are thin command
lines over its modules. See docs/repository-layout.md.
"""
