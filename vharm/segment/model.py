"""The shipped person-segmentation network: MediaPipe's selfie segmentation (`vharm/assets/selfie_segmentation.tflite`,
Apache-2.0, from the `mediapipe==0.10.21` wheel), run with LiteRT (`ai-edge-litert`).

Why this model and runtime: it is the only permissive person segmenter small enough to ship in the package
(250 KB) and fast enough for 1080p video on two cores (about 3 ms per 256x256 inference on one thread); the
better matting models measured for issue 18 are GPL or AGPL. LiteRT is Google's maintained TFLite runtime, works
with numpy 2 and, through its XNNPACK delegate, runs the model's MediaPipe custom op (Convolution2DTransposeBias)
that a plain TFLite op resolver refuses.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np

from vharm.errors import VharmError

MODEL = Path(__file__).parents[1] / "assets" / "selfie_segmentation.tflite"
POSE_MODEL = Path(__file__).parents[1] / "assets" / "pose_landmark_full.tflite"


@contextlib.contextmanager
def _quiet_stderr():
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" from C++ on every load, and no environment
    variable silences it: the C-level stderr is pointed at /dev/null while the interpreter is built."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load(path: Path, threads: int):
    """A LiteRT interpreter for `path`, tensors allocated; VharmError when the runtime or a usable file is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise VharmError("automatic masks need the LiteRT runtime: pip install ai-edge-litert") from None
    if not path.is_file():
        raise VharmError(f"{path}: no such model file")
    try:
        with _quiet_stderr():
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise VharmError(f"{path}: not a usable TFLite model ({str(e).splitlines()[0]})") from None
    return interpreter


class PersonModel:
    """The network alone: an RGB image (or a crop of it) in, the probability of "person" at the model's resolution out.

    Args:
        path: a .tflite model with one float32 (1, h, w, 3) input in [0, 1] and one (1, h, w, 1) probability output
            (MediaPipe's selfie segmentation; default: the shipped file).
        threads: LiteRT's CPU threads (1: the segmenter runs in a video's decoder thread, beside the network).

    Example:
        >>> m = PersonModel()
        >>> p = m(np.zeros((90, 160, 3), np.uint8))
        >>> p.shape, p.dtype.name, m.size
        ((256, 256), 'float32', (256, 256))
    """

    def __init__(self, path: str | Path | None = None, threads: int = 1):
        self.path = Path(path) if path is not None else MODEL
        self._interpreter = _load(self.path, threads)
        inp, out = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1 or list(inp[0]["shape"][[0, 3]]) != [1, 3]:
            raise VharmError(f"{self.path}: expected one (1, h, w, 3) input and one output, got "
                             f"{[list(d['shape']) for d in inp]} -> {[list(d['shape']) for d in out]}")
        self._input, self._output = inp[0]["index"], out[0]["index"]
        self.size = (int(inp[0]["shape"][2]), int(inp[0]["shape"][1]))  # (width, height)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> float32 (h, w) person probability, the image stretched to the model's input (as
        MediaPipe does: no letterbox)."""
        interp = cv2.INTER_AREA if rgb.shape[1] >= self.size[0] else cv2.INTER_LINEAR
        x = cv2.resize(rgb, self.size, interpolation=interp).astype(np.float32) * np.float32(1 / 255)
        self._interpreter.set_tensor(self._input, x[None])
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)[0, :, :, 0].copy()


class PoseModel:
    """MediaPipe's full pose-landmark network (`vharm/assets/pose_landmark_full.tflite`, Apache-2.0, the same
    wheel): a 256x256 crop of one person, roughly centred and upright, in; that person's segmentation out, with
    how sure it is that a person is there and the two keypoints MediaPipe aligns its crops with (the hips' centre
    and a point above the head), from which the next frame's crop is turned upright (`Segmenter(model="pose")`).

    It segments one person, whole (legs, light clothes), where the selfie model loses full bodies in wide shots;
    it needs a crop around that person (given by the selfie model and the followed subject).

    Args:
        path: the .tflite file (default: the shipped one); threads: LiteRT's CPU threads.
        mirror: also run the network on the crop mirrored left to right and keep, per pixel, the larger of the two
            masks (the presence and keypoints stay the unmirrored crop's): a person either view finds is kept, at
            twice the network's time. `Segmenter(model="pose")` turns it on (docs/segment.md: IoU 0.835 -> 0.840 on
            the 8 DAVIS person clips, 0.613 -> 0.679 on schoolgirls).

    Example:
        >>> m = PoseModel()
        >>> p = m(np.zeros((256, 256, 3), np.uint8))
        >>> p.shape, p.dtype.name, m.size, m.keypoints.shape, 0 <= m.presence <= 1
        ((256, 256), 'float32', (256, 256), (2, 2), True)
    """

    size = (256, 256)

    def __init__(self, path: str | Path | None = None, threads: int = 1, mirror: bool = False):
        self.path = Path(path) if path is not None else POSE_MODEL
        self.mirror = mirror
        self._interpreter = _load(self.path, threads)
        inp = self._interpreter.get_input_details()
        out = {tuple(d["shape"][1:]): d["index"] for d in self._interpreter.get_output_details()}
        need = [(195,), (1,), (256, 256, 1)]  # 39 landmarks x (x, y, z, visibility, presence); presence; mask logits
        if len(inp) != 1 or list(inp[0]["shape"]) != [1, 256, 256, 3] or any(k not in out for k in need):
            raise VharmError(f"{self.path}: not MediaPipe's pose-landmark model (a (1, 256, 256, 3) input and "
                             f"landmark, presence and (1, 256, 256, 1) mask outputs)")
        self._input = inp[0]["index"]
        self._landmarks, self._presence, self._mask = (out[k] for k in need)
        self.presence = 0.0  # of the last call: the network's probability that a person is in the crop
        self.keypoints = np.zeros((2, 2), np.float32)  # of the last call: hips' centre, above the head (input px)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB (a crop around one person; stretched to 256x256 when another size) -> float32 (256,
        256) probability that a pixel is that person."""
        if rgb.shape[:2] != (256, 256):
            interp = cv2.INTER_AREA if rgb.shape[1] >= 256 else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, self.size, interpolation=interp)
        x = rgb.astype(np.float32) * np.float32(1 / 255)
        logits = self._run(x)
        self.presence = float(np.clip(self._interpreter.get_tensor(self._presence).ravel()[0], 0, 1))
        self.keypoints = self._interpreter.get_tensor(self._landmarks)[0].reshape(39, 5)[33:35, :2].copy()
        if self.mirror:
            logits = np.maximum(logits, self._run(np.ascontiguousarray(x[:, ::-1]))[:, ::-1])
        return (1 / (1 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The network on float32 (256, 256, 3) in [0, 1]: its (256, 256) mask logits (a copy)."""
        self._interpreter.set_tensor(self._input, x[None])
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._mask)[0, :, :, 0].copy()
