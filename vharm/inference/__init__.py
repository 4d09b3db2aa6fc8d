"""Inference: the `Harmonizer` and its one per-frame step, the streaming video path, compositing and batch runs."""
