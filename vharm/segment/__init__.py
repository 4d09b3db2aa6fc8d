"""Automatic person masks: the shipped network (`model`), its temporal and edge filters (`filters`), and the
`Segmenter` that combines them (`segmenter`)."""

from vharm.segment.segmenter import Segmenter, SegmentState

__all__ = ["Segmenter", "SegmentState"]
