"""Automatic person masks: the shipped network (`model`), its temporal and edge filters (`filters`), the choice of
the main subject (`subject`), and the `Segmenter` that combines them (`segmenter`)."""

from vharm.segment.segmenter import VERSION, Segmenter, SegmentState

__all__ = ["VERSION", "Segmenter", "SegmentState"]
