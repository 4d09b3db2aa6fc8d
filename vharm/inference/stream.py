"""Streaming video through `Harmonizer.step`: a decoder thread, the network, an encoder thread (PyAV and x264
release the GIL), with bounded queues, so memory does not depend on the video's length. Automatic masks
(`vharm.segment`) are made in the decoder thread; `segment_video` streams them alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.io.files import check_output
from vharm.io.masks import AUTO, MASK_EPS, MaskSource
from vharm.io.threads import DONE, producer
from vharm.io.video import EncodeOptions, Frame, FrameSource, FrameWriter, StreamInfo
from vharm.segment import Segmenter


def default_threads(processes: int = 1) -> int:
    """Torch threads for each of `processes` processes that stream video on this machine: half the cores each
    process would get. The decoder and encoder threads need CPU too: with torch on every core the three stages
    fight (1080p on 2 cores, veryfast: 15 fps with 2 torch threads, 21 fps with 1)."""
    return max(1, (os.cpu_count() or 2) // (2 * processes))


@dataclass
class Timing:
    """Seconds spent per stage, summed over frames (decode and encode run in their own threads)."""

    decode: float = 0.0
    network: float = 0.0
    apply: float = 0.0
    encode: float = 0.0
    frames: int = 0
    wall: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.wall if self.wall else 0.0


def harmonize_video(harmonizer: Harmonizer, input, mask=None, output=None, *, no_mask: bool = False,
                    save_mask=None, overwrite: bool = False, start: int = 0, frames: int | None = None,
                    encode: EncodeOptions | None = None, progress: bool = False, skip_bad_frames: bool = False,
                    two_pass: bool = False, warn=None, on_frame=None) -> Timing:
    """Harmonizes INPUT (video file, frame dir or image) with MASK into OUTPUT (same forms), streaming.

    Args:
        harmonizer: the loaded model.
        input: composite video/frames/image.
        mask: mask video/frames/image (one image = static mask), a constant, or None: the frames' alpha, or D's
            map with `no_mask` (`vharm.io.masks.MaskSource`).
        output: output video/frames dir/image; refused if it exists and not `overwrite`.
        no_mask: the paper's mask-free mode, O = G(I, D(I)) (G's statistics from the core of D's map:
            `core_of_map`).
        save_mask: also write the mask actually used here.
        start, frames: process frames [start, start + frames) only.
        encode: x264 settings for video outputs.
        progress: show a progress bar (frames, fps, ETA).
        skip_bad_frames: replace a frame that fails to decode by the previous output (else: an error).
        two_pass: read the input twice: first G's estimate of every frame, then one transform per shot applied
            (`Harmonizer.plan_shots`); the EMA is not used. Automatic masks are made in both passes.
        warn, on_frame: see `run_stream`.

    Returns:
        Timing with the frame count, wall time and seconds per stage.
    """
    warn = warn or _stderr
    t_start = time.perf_counter()

    def items():  # (frame, mask) of the frames to process, from a fresh decode on each call
        source = FrameSource(Path(input), skip_bad_frames)
        masks = MaskSource(mask, source, no_mask=no_mask)
        return source, masks, itertools.islice(masks.attach(source), start, None if frames is None else start + frames)

    source, masks, frame_items = items()
    harmonizer = harmonizer.for_mask(masks.kind)
    if output is None:
        raise VharmError("no output given (-o OUTPUT)")
    inputs = (source.path, masks.path)
    mask_name = str(mask if masks.kind == "file" else input)
    total = source.count
    if total is not None:
        total = max(0, min(total - start, frames if frames is not None else total))
    transforms = None
    if two_pass:
        check_output(Path(output), overwrite, inputs)  # before a first pass that may take minutes
        transforms = harmonizer.plan_shots(_estimates(harmonizer, frame_items, total, progress, mask_name))
        source, _, frame_items = items()
    timing = run_stream(harmonizer, frame_items, source.info, output, inputs=inputs, save_mask=save_mask,
                        overwrite=overwrite, total=total, encode=encode, progress=progress, warn=warn,
                        mask_name=mask_name, on_frame=on_frame, transforms=transforms)
    timing.wall = time.perf_counter() - t_start
    if frames is None:
        warn_short(source, start + timing.frames, warn)
    return timing


def _estimates(harmonizer: Harmonizer, items, total, progress: bool, mask_name: str) -> list:
    """The first of two passes: `Harmonizer.estimate` of each (frame, mask), None for a frame that failed to
    decode."""
    out = []
    for frame, mask in tqdm(items, total=total, unit="frame", desc="pass 1/2", disable=not progress,
                            dynamic_ncols=True):
        if frame.rgb is None:
            out.append(None)
            continue
        check_mask_size(mask, frame, mask_name)
        out.append(harmonizer.estimate(frame.rgb, mask))
    return out


def segment_video(input, output, segmenter: Segmenter | None = None, *, overwrite: bool = False,
                  encode: EncodeOptions | None = None, progress: bool = False, skip_bad_frames: bool = False,
                  warn=None) -> Timing:
    """Writes the automatic person mask of INPUT (video file, frame dir or image) to OUTPUT (same forms), streaming:
    8-bit gray, 0 background, 255 person (`vharm.segment.Segmenter`; default: every stage on)."""
    warn = warn or _stderr
    source = FrameSource(Path(input), skip_bad_frames, precise=False)  # only segmented, never written
    masks = MaskSource(segmenter or AUTO, source)
    # convertScaleAbs: the same rounding as np.round(mask * 255) in one pass (0.4 ms against 1.6 ms at 1080p)
    items = ((Frame(cv2.convertScaleAbs(mask, alpha=255.0) if mask is not None else None, None, f.name, f.pts), None)
             for f, mask in masks.attach(source))
    timing = run_stream(None, items, dataclasses.replace(source.info, audio_from=None), output, inputs=(source.path,),
                        overwrite=overwrite, total=source.count, encode=encode, progress=progress, warn=warn)
    warn_short(source, timing.frames, warn)
    return timing


def warn_short(source: FrameSource, decoded: int, warn) -> None:
    """Warns when a whole video decoded to fewer frames, or a shorter time, than its container says."""
    if source.count and source.kind == "video" and decoded != source.count:
        warn(f"vharm: warning: {source.path}: the container claims {source.count} frames but {decoded} "
             "decoded; all decoded frames were processed")
    elif (source.count is None and source.duration and source.decoded_until is not None
          and source.decoded_until + 2 / float(source.fps) < source.duration):
        warn(f"vharm: warning: {source.path}: the container lasts {source.duration:.2f} s but decoding stopped at "
             f"{source.decoded_until:.2f} s (a truncated file?); all decoded frames were processed")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_stream(harmonizer: Harmonizer | None, items, info: StreamInfo, output, *, inputs=(), save_mask=None,
               overwrite=False, total=None, encode=None, progress=False, warn=_stderr, mask_name="mask",
               on_frame=None, transforms=None) -> Timing:
    """Decode -> harmonize -> encode over `items` = (Frame, mask (H, W) float32 or None: D's map) in three threads.

    With `harmonizer` None the composites are written as they are (`vharm composite` without --harmonize). The
    network uses the torch threads its process was given: whoever starts the process sets them
    (`default_threads`); the library never changes them. `warn` receives each warning line; `on_frame(n)`, if
    given, is called after each frame with the number harmonized so far (`vharm serve`'s progress bar), and an
    exception it raises stops the stream like any other: no output appears. `transforms`, if given, holds the
    transform of each item by index (`Harmonizer.plan_shots`), applied instead of G's.
    """
    check_output(Path(output), overwrite, inputs)
    if save_mask is not None:
        check_output(Path(save_mask), overwrite, (*inputs, Path(output)))
        if Path(save_mask).absolute() == Path(output).absolute():
            raise VharmError(f"{save_mask}: --save-mask and -o name the same file; choose another name")
    timing, t_start = Timing(), time.perf_counter()
    errors: list = []  # the first exception of any thread, raised in this one
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=4)
    q_out: queue.Queue = queue.Queue(maxsize=4)
    reader = threading.Thread(target=producer, args=(_timed(items, timing), q_in, errors, stop), daemon=True)
    name = inputs[0] if inputs else output
    bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True)
    mask_out = FrameWriter(Path(save_mask), info, overwrite, encode, copy_audio=False, warn=warn) \
        if save_mask is not None else _Null()
    try:
        with FrameWriter(Path(output), info, overwrite, encode, warn=warn) as writer, mask_out as mask_writer:
            writer_thread = threading.Thread(target=_write_all, args=(q_out, writer, mask_writer, timing, errors, stop),
                                             daemon=True)
            reader.start()
            writer_thread.start()
            try:
                for out in _harmonized(harmonizer, _received(q_in, errors), timing, warn, name, mask_name,
                                       mask_writer is not None, transforms):
                    q_out.put(out)
                    timing.frames += 1
                    bar.update(1)
                    if on_frame is not None:
                        on_frame(timing.frames)
            finally:
                stop.set()
                q_out.put(DONE)
                writer_thread.join()
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    try:
                        q_in.get(timeout=0.1)
                    except queue.Empty:
                        pass
            if errors:
                raise errors[0]
            if timing.frames == 0:
                raise VharmError(f"{name}: no frames to process (check --start/--frames)")
    finally:
        bar.close()
    timing.wall = time.perf_counter() - t_start
    return timing


def _timed(items, timing: Timing):
    """`items`, with the seconds spent producing them (decoding) added to `timing.decode`."""
    it = iter(items)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        timing.decode += time.perf_counter() - t
        yield item


def _received(q: queue.Queue, errors: list):
    """The items a producer thread puts on `q`, until it is done or any thread has failed."""
    while (item := q.get()) is not DONE and not errors:
        yield item


def _harmonized(harmonizer: Harmonizer | None, items, timing: Timing, warn, name, mask_name: str, with_mask: bool,
                transforms=None):
    """Yields (pred uint8, mask used as uint8 gray (H, W) or None, frame) per (frame, mask), the state carried in order
    (or each frame's planned transform, `transforms[index]`).

    A frame that failed to decode (`rgb` None, --skip-bad-frames) repeats the previous output."""
    state = previous = None
    warned_empty = False
    for index, (frame, mask) in enumerate(items):
        if frame.rgb is None:
            if previous is None:
                raise VharmError(f"{name}: the first frame failed to decode; nothing to repeat")
            warn(f"vharm: warning: {frame.source or name}: frame {index} failed to decode; repeating the previous "
                 "output")
            yield previous[0], previous[1], Frame(previous[0], None, frame.name, frame.pts)
            continue
        check_mask_size(mask, frame, mask_name)
        if harmonizer is None:
            pred, used = frame.rgb, mask
        else:
            if mask is not None and mask.max() <= MASK_EPS and not warned_empty:
                warn(f"vharm: warning: {mask_name}: mask is empty at frame {index}: nothing to harmonize there, the "
                     "frame is copied")
                warned_empty = True
            transform = None
            if transforms is not None:
                if index >= len(transforms) or transforms[index] is None:
                    raise VharmError(f"{name}: frame {index} did not decode as in the first pass; the input "
                                     "changed between the two passes")
                transform = transforms[index]
            pred, used, state = harmonizer.step(frame.rgb, mask, state, timing, transform)
        mask_u8 = np.round(np.clip(used, 0, 1) * 255).astype(np.uint8) if with_mask else None
        previous = (pred, mask_u8)
        yield pred, mask_u8, frame


def check_mask_size(mask: np.ndarray | None, frame: Frame, mask_name: str) -> None:
    """A mask that is not the size of its frame (e.g. a video whose size changes midway) is an error."""
    if mask is not None and mask.shape != frame.rgb.shape[:2]:
        raise VharmError(f"{mask_name}: mask size {mask.shape[1]}x{mask.shape[0]} differs from frame "
                         f"{frame.name}'s {frame.rgb.shape[1]}x{frame.rgb.shape[0]}")


def _write_all(q: queue.Queue, writer: FrameWriter, mask_writer: FrameWriter | None, timing: Timing, errors: list,
               stop: threading.Event) -> None:
    """The encoder thread: writes what `q` holds until DONE; on an error, records it and drains `q`."""
    try:
        while (item := q.get()) is not DONE:
            rgb, mask_u8, frame = item
            t = time.perf_counter()
            writer.write(rgb, frame)
            if mask_writer is not None:
                mask_writer.write(mask_u8, frame)
            timing.encode += time.perf_counter() - t
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        errors.append(e)
        stop.set()
        while q.get() is not DONE:  # drain so the main thread never blocks
            pass


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
