"""How good the automatic masks are: IoU against ground-truth masks and boundary flicker, per stage of `Segmenter`.

    python experiments/segment_eval.py --data ../shared/data -o docs/segment.md
    python experiments/segment_eval.py --data ../shared/data -o docs/segment.md --compare selfie,pose,pose+selfie

For each group of clips (DAVIS person sequences; those whose mask also covers a bike, horse, board or sail; the
E2FGVI and Omnimatte clips) and the person photos, and for each stage switched on in turn (the bare network on
the whole frame, + the crop pass, + flow stabilisation, + guided-filter edges = `Segmenter()`): the mean IoU of
the mask thresholded at 0.5, and the flicker: the mean absolute change of the soft mask (0-1) from one frame to
the next inside a band of `BAND` x the long side around the true boundary (of either frame), as a ratio to the
ground truth's own change there (1.0: as steady as the true masks, which move with the person). Means are over
clips (IoU: over frames within a clip). The tables go between markers into the output file.

`--model` picks `Segmenter(model=...)` for the stage tables and the sheet (`pose:FILE`, `pose+selfie:FILE`: with
another pose-landmark file, `Segmenter(pose_file=FILE)`); `--compare A,B,...` instead writes one table of the models
with every stage on (IoU and flicker per clip set, and ms per frame at 1080p, the models taking
turns frame by frame in the same run so that a loaded machine slows them alike).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np
from tables import replace_block

from vharm.io.images import list_frames, read_image
from vharm.io.masks import read_mask
from vharm.segment import Segmenter

BAND = 0.02  # the flicker band's half-width, as a fraction of the frame's long side (17 px at 854x480)
# The clips, by group; the sequences used to choose the Segmenter's constants are marked in the table.
GROUPS = {
    "DAVIS-2016 person, test split": ["davis2016/breakdance", "davis2016/kite-surf", "davis2016/paragliding-launch"],
    "DAVIS-2016 person, more": [f"davis2016-more/{s}" for s in ("breakdance-flare", "dance-jump", "hike", "hockey",
                                                                 "lucia", "rollerblade", "swing", "tennis")],
    "DAVIS-2016 person + bike, horse, board, sail or stroller": [
        "davis2016/bmx-trees", "davis2016/horsejump-high", "davis2016/motocross-jump",
        *(f"davis2016-more/{s}" for s in ("bmx-bumps", "horsejump-low", "kite-walk", "motocross-bumps", "motorbike",
                                           "scooter-gray", "stroller", "surf"))],
    "other clips": ["more/e2fgvi-schoolgirls/schoolgirls", "more/omnimatte-tennis/tennis"],
}
TUNING = {"davis2016-more/dance-jump", "davis2016-more/hike", "davis2016-more/lucia"}
STAGES = {
    "network, whole frame": {"crop": False, "stabilise": False, "refine": False, "subject": False},
    "+ crop pass": {"crop": True, "stabilise": False, "refine": False, "subject": False},
    "+ flow stabilisation": {"crop": True, "stabilise": True, "refine": False, "subject": False},
    "+ guided-filter edges (--all-people)": {"crop": True, "stabilise": True, "refine": True, "subject": False},
    "+ main subject (default)": {},
}
SHEET_CLIPS = ["davis2016/breakdance", "davis2016-more/dance-jump", "davis2016-more/hockey",
               "more/e2fgvi-schoolgirls/schoolgirls", "davis2016-more/rollerblade"]


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    a, b = mask >= 0.5, truth >= 0.5
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def band(truth: np.ndarray) -> np.ndarray:
    r = max(1, round(BAND * max(truth.shape)))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    t = (truth >= 0.5).astype(np.uint8)
    return cv2.dilate(t, k) > cv2.erode(t, k)


MODEL = "selfie"  # the model of the stage tables and the sheet (--model); "pose:FILE": another pose-landmark file
SPEED_CLIP, SPEED_FRAMES = "davis2016-more/rollerblade", 18  # upscaled to 1920x1080 for the speed column


def segmenter(model: str | None = None, **stages) -> Segmenter:
    kind, _, pose_file = (model or MODEL).partition(":")
    return Segmenter(model=kind, pose_file=pose_file or None, **stages)


def label(model: str) -> str:
    """A table's name for a model: "pose:/x/pose_landmark_heavy.tflite" -> "pose (pose_landmark_heavy)"."""
    kind, _, pose_file = model.partition(":")
    return f"{kind} ({Path(pose_file).stem})" if pose_file else kind


def score_clip(seg: Segmenter, frames: list[Path], masks: list[Path]) -> dict:
    """Mean IoU, the flicker of the masks and of the truth in the band, and the seconds per frame."""
    state = prev = prev_truth = None
    ious, change, truth_change, seconds = [], [], [], 0.0
    for f, m in zip(frames, masks):
        rgb, truth = read_image(f)[0], read_mask(m)
        t = time.perf_counter()
        mask, state = seg.step(rgb, state)
        seconds += time.perf_counter() - t
        ious.append(iou(mask, truth))
        zone = band(truth) | band(prev_truth) if prev is not None else None
        if zone is not None and zone.any():  # frames where neither mask has a boundary (nobody there) are skipped
            change.append(np.abs(mask - prev)[zone].mean())
            truth_change.append(np.abs(truth - prev_truth)[zone].mean())
        prev, prev_truth = mask, truth
    return {"iou": float(np.mean(ious)), "flicker": float(np.mean(change)), "truth": float(np.mean(truth_change)),
            "ms": 1000 * seconds / len(frames)}


def clip_files(root: Path, clip: str) -> tuple[list[Path], list[Path]]:
    frames = list_frames(root / clip / "frames")
    return frames, [root / clip / "masks" / (f.stem + ".png") for f in frames]


def clip_tables(root: Path) -> list[str]:
    lines = []
    for group, clips in GROUPS.items():
        header = "| clip | frames | " + " | ".join(f"IoU {s} | flicker" for s in STAGES) + " |"
        lines += [f"**{group}** (IoU; flicker as a ratio to the ground truth's)", "", header,
                  "|---" * (2 + 2 * len(STAGES)) + "|"]
        results = {}
        for clip in clips:
            frames, masks = clip_files(root, clip)
            results[clip] = [score_clip(segmenter(**kw), frames, masks) for kw in STAGES.values()]
            cells = [f"{r['iou']:.3f} | {r['flicker'] / r['truth']:.2f}" for r in results[clip]]
            name = clip.split("/")[-1] + (" (tuning)" if clip in TUNING else "")
            lines.append(f"| {name} | {len(frames)} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        means = [f"**{np.mean([results[c][i]['iou'] for c in clips]):.3f}** | "
                 f"**{np.mean([results[c][i]['flicker'] / results[c][i]['truth'] for c in clips]):.2f}**"
                 for i in range(len(STAGES))]
        lines += [f"| mean of {len(clips)} | {sum(len(clip_files(root, c)[0]) for c in clips)} | "
                  + " | ".join(means) + " |", ""]
    return lines


def photo_table(root: Path, every: int) -> list[str]:
    """IoU on every `every`-th person photo (stills: no stabilisation)."""
    photos = list_frames(root / "person-photos" / "images")[::every]
    stages = {k: v for k, v in STAGES.items() if not v.get("stabilise", True)}
    stages |= {"+ guided-filter edges (--all-people)": {"subject": False}, "+ main subject (default)": {}}
    lines = [f"**person photos** ({len(photos)} of {len(list_frames(root / 'person-photos' / 'images'))}, every "
             f"{every}th by name; mean IoU)", "", "| " + " | ".join(stages) + " |", "|---" * len(stages) + "|"]
    truths = [read_mask(root / "person-photos" / "masks" / (p.stem + ".png")) for p in photos]
    cells = []
    for kw in stages.values():
        seg = segmenter(**kw)
        cells.append(np.mean([iou(seg(read_image(p)[0]), t) for p, t in zip(photos, truths)]))
    return lines + ["| " + " | ".join(f"{c:.3f}" for c in cells) + " |", ""]


def contact_sheet(root: Path, path: Path, clips: list[str] = SHEET_CLIPS, per_clip: int = 4) -> None:
    """A PNG to look at: `per_clip` frames of each clip, darkened, with the automatic mask (`Segmenter()`) in red,
    the true mask in green (both: yellow) and what `--all-people` adds in blue."""
    rows = []
    for clip in clips:
        frames, masks = clip_files(root, clip)
        shown = set(np.linspace(0, len(frames) - 1, per_clip).round().astype(int).tolist())
        seg, every, state, state_all, tiles = segmenter(), segmenter(subject=False), None, None, []
        for i, (f, m) in enumerate(zip(frames, masks)):
            rgb = read_image(f)[0]
            mask, state = seg.step(rgb, state)
            everyone, state_all = every.step(rgb, state_all)
            if i in shown:
                over = rgb.astype(np.float32) * 0.45
                over[..., 0] += 140 * (mask >= 0.5)
                over[..., 1] += 140 * (read_mask(m) >= 0.5)
                over[..., 2] += 140 * ((everyone >= 0.5) & (mask < 0.5))
                small = cv2.resize(np.clip(over, 0, 255).astype(np.uint8), (320, 180), interpolation=cv2.INTER_AREA)
                tiles.append(small)
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def speed_1080p(root: Path, models: list[str]) -> dict[str, float]:
    """ms per `Segmenter.step` at 1920x1080 (a person clip upscaled), the models taking turns frame by frame."""
    frames = clip_files(root, SPEED_CLIP)[0][:SPEED_FRAMES]
    segs, states, seconds = {m: segmenter(m) for m in models}, dict.fromkeys(models), dict.fromkeys(models, 0.0)
    for f in frames:
        rgb = cv2.resize(read_image(f)[0], (1920, 1080), interpolation=cv2.INTER_CUBIC)
        for m, seg in segs.items():
            t = time.perf_counter()
            states[m] = seg.step(rgb, states[m])[1]
            seconds[m] += time.perf_counter() - t
    return {m: 1000 * seconds[m] / len(frames) for m in models}


def compare_table(root: Path, models: list[str], every: int) -> list[str]:
    """One row per model, every stage on: mean IoU and flicker per clip set, photos' IoU, ms per frame at 1080p."""
    global MODEL
    sets = {"DAVIS person, 8 outside the test split": GROUPS["DAVIS-2016 person, more"],
            "DAVIS person, test split (3)": GROUPS["DAVIS-2016 person, test split"],
            "schoolgirls": ["more/e2fgvi-schoolgirls/schoolgirls"],
            "Omnimatte tennis": ["more/omnimatte-tennis/tennis"],
            "person + bike, horse, ... (11)": GROUPS["DAVIS-2016 person + bike, horse, board, sail or stroller"]}
    photos = list_frames(root / "person-photos" / "images")[::every]
    truths = [read_mask(root / "person-photos" / "masks" / (p.stem + ".png")) for p in photos]
    speed = speed_1080p(root, models)
    lines = ["| model | " + " | ".join(f"{k}: IoU | flicker" for k in sets) + " | photos IoU | ms/frame 1080p |",
             "|---" * (3 + 2 * len(sets)) + "|"]
    for model in models:
        MODEL, cells = model, []
        for clips in sets.values():
            res = [score_clip(segmenter(), *clip_files(root, c)) for c in clips]
            flicker = np.mean([r["flicker"] / r["truth"] for r in res])
            cells.append(f"{np.mean([r['iou'] for r in res]):.3f} | {flicker:.2f}")
        seg = segmenter()
        cells.append(f"{np.mean([iou(seg(read_image(p)[0]), t) for p, t in zip(photos, truths)]):.3f}")
        cells.append(f"{speed[model]:.0f}")
        lines.append(f"| {label(model)} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data", help="the shared data folder (see its SOURCES.md)")
    p.add_argument("--photos-every", type=int, default=5, help="score every N-th person photo")
    p.add_argument("-o", "--output", default="docs/segment.md", help="the doc whose section is (re)written")
    p.add_argument("--sheet", metavar="PNG", help="only write a contact sheet of masks on a few person clips")
    p.add_argument("--model", default="selfie", help="Segmenter(model=...) of the stage tables and the sheet")
    p.add_argument("--compare", metavar="A,B", help="only write the table comparing these models (every stage on)")
    args = p.parse_args()
    global MODEL
    MODEL = args.model
    root = Path(args.data)
    cv2.setNumThreads(1)  # as in a video's decoder thread
    note = (f"Generated {date.today().isoformat()} by `python {shlex.join(sys.argv)}` (one core for OpenCV and the "
            f"network).")
    if args.compare:
        lines = [note + f" Every stage on; photos: every {args.photos_every}th; 1080p: {SPEED_FRAMES} frames of "
                 f"{SPEED_CLIP.split('/')[-1]} upscaled to 1920x1080.", "",
                 *compare_table(root, args.compare.split(","), args.photos_every)]
        replace_block(Path(args.output), "segment_models", "Models compared", lines)
        return
    if args.sheet:
        contact_sheet(root, Path(args.sheet))
        return
    note += f" Model: {MODEL}. Flicker band: {BAND:g} x the long side around the true boundary."
    lines = [note, "", *photo_table(root, args.photos_every), *clip_tables(root)]
    replace_block(Path(args.output), "segment_eval", "Measured", lines)


if __name__ == "__main__":
    main()
