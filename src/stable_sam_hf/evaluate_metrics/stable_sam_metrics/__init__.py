"""Folder of the `stable_sam_metrics` evaluate module (a package only so that it ships in the wheel)."""
