"""The clips of a `vharm make-testset` test set in memory: frames, masks, exact flows, and the flows the
temporal metrics use (docs/metrics.md; the layout on disk is docs/testset.md's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vharm.data.flow import estimate_flow
from vharm.errors import VharmError
from vharm.eval.testset import load_manifest
from vharm.io.images import list_frames, read_image
from vharm.io.masks import read_mask


@dataclass
class Clip:
    """One test clip in memory: uint8 frames, float32 masks, and the exact flows of a synthetic pair."""

    id: str
    kind: str
    family: str
    info: dict
    comp: list[np.ndarray]
    mask: list[np.ndarray]
    target: list[np.ndarray] | None
    exact_flow: list[np.ndarray] | None

    @property
    def reference(self) -> list[np.ndarray]:
        """What the metrics compare with: the ground truth, or the composite where there is none."""
        return self.target if self.target is not None else self.comp


def _read_frames(folder: Path) -> list[np.ndarray]:
    if not folder.is_dir():
        raise VharmError(f"{folder}: frame folder missing")
    frames = [read_image(p)[0] for p in list_frames(folder)]
    if not frames:
        raise VharmError(f"{folder}: no frames")
    return frames


def load_clip(testset: Path, entry: dict) -> Clip:
    """Reads a clip listed in a test set's manifest; frames, masks and flows must agree in count and size."""
    folder = Path(testset) / entry["clip"]
    info_path = folder / "clip.json"
    try:
        info = json.loads(info_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VharmError(f"{info_path}: missing or not valid JSON ({e.__class__.__name__})") from None
    comp = _read_frames(folder / "comp")
    mask = [read_mask(p) for p in list_frames(folder / "mask")] if (folder / "mask").is_dir() else []
    target = _read_frames(folder / "target") if entry["kind"] != "composites" else None
    size = comp[0].shape[:2]
    for name, frames in (("mask", mask), ("target", target)):
        if frames is None:
            continue
        if len(frames) != len(comp):
            raise VharmError(f"{folder / name}: {len(frames)} frames for {len(comp)} composite frames")
        if any(f.shape[:2] != size for f in frames) or any(c.shape[:2] != size for c in comp):
            raise VharmError(f"{folder / name}: frame sizes differ from {folder / 'comp'}'s {size[1]}x{size[0]}")
    exact = None
    if (folder / "flow.npy").is_file():
        flow = np.load(folder / "flow.npy").astype(np.float32)
        flow = flow[None] if flow.ndim == 3 else flow
        if flow.shape != (len(comp) - 1, 2, *size):
            raise VharmError(f"{folder / 'flow.npy'}: shape {flow.shape}, expected ({len(comp) - 1}, 2, {size[0]}, "
                             f"{size[1]}) or (2, {size[0]}, {size[1]}) for a pair")
        exact = list(flow)
    return Clip(entry["clip"], entry["kind"], str(entry.get("family", info.get("family", ""))), info, comp, mask,
                target, exact)


def load_real_clips(testset: Path) -> list[Clip]:
    """The clips of a test set's `real` set, in memory (the real-video validation of `vharm train`)."""
    clips = [load_clip(Path(testset), e) for e in load_manifest(testset)["clips"] if e["kind"] == "real"]
    if not clips:
        raise VharmError(f"{Path(testset) / 'manifest.json'}: no real clips (build it with `vharm make-testset "
                         "--sequences ...`)")
    return clips


def reference_flows(clip: Clip) -> list[np.ndarray]:
    """DIS flow of each reference frame back to the one before (shared by every method of the clip)."""
    ref = clip.reference
    return [estimate_flow(ref[t], ref[t - 1]) for t in range(1, len(ref))]
