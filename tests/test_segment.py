"""Automatic masks: the shipped network, the stabiliser and the guided filter, `vharm segment`, `--mask auto` and
`vharm composite` without `--fg-mask`. Tiny generated frames; the network is replaced by a colour detector where
a test needs to know what the mask should be."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import VIDEO_FRAMES, VIDEO_H, VIDEO_W, blob_mask, imwrite, read_frames_dir, read_video, scene

from vharm.inference.composite import ASSETS
from vharm.inference.harmonizer import Harmonizer
from vharm.inference.stream import segment_video
from vharm.io.images import read_image
from vharm.io.masks import MaskSource, read_mask
from vharm.io.video import Frame, FrameSource
from vharm.segment import Segmenter, SegmentState
from vharm.segment.filters import FlowStabiliser, guided_filter, guided_upsample
from vharm.segment.model import MODEL, POSE_MODEL, PersonModel, PoseModel
from vharm.segment.subject import keep_subject, select_subject


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a >= 0.5) & (b >= 0.5)).sum() / max(((a >= 0.5) | (b >= 0.5)).sum(), 1))


def fg_of_scene(rgb: np.ndarray) -> np.ndarray:
    """The foreground of conftest's `scene`: warm (red high, blue low) pixels."""
    return ((rgb[..., 0].astype(int) > 170) & (rgb[..., 2] < 100)).astype(np.float32)


@pytest.fixture
def colour_model(monkeypatch):
    """The network replaced by `fg_of_scene` at its input size, so that the right mask is known."""
    import cv2

    def call(self, rgb):
        return cv2.resize(fg_of_scene(rgb), self.size, interpolation=cv2.INTER_AREA)

    monkeypatch.setattr(PersonModel, "__call__", call)


# --------------------------------------------------------------------------------------------- the network


def test_shipped_model_gives_a_probability_map():
    model = PersonModel()
    p = model(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    assert model.path == MODEL and p.shape == (256, 256) and p.dtype == np.float32
    assert 0 <= p.min() <= p.max() <= 1


def test_shipped_model_finds_the_astronaut():
    rgb, alpha = read_image(ASSETS / "astronaut.png")  # a real portrait that ships in the package, with a GrabCut alpha
    mask = Segmenter()(rgb)
    assert mask.shape == alpha.shape and iou(mask, alpha) > 0.7


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (480, 1100), (900, 30)])
@pytest.mark.parametrize("stages", [{}, {"crop": False, "stabilise": False, "refine": False}])
def test_segmenter_mask_shape_dtype_range(size, stages):
    seg, state = Segmenter(**stages), None
    rng = np.random.default_rng(1)
    for _ in range(2):
        frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        mask, state = seg.step(frame, state)
        assert mask.shape == size and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1


def test_bad_frames_and_model_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        Segmenter()(np.zeros((8, 8), np.uint8))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    from vharm.errors import VharmError

    with pytest.raises(VharmError, match="bad.tflite: not a usable TFLite model"):
        PersonModel(bad)
    with pytest.raises(VharmError, match="no such model file"):
        PersonModel(tmp_path / "missing.tflite")


def test_segmenter_follows_the_scene_through_every_stage(colour_model):
    seg, state = Segmenter(), None
    for t in range(VIDEO_FRAMES):
        rgb, truth = scene(96, 128, t)
        mask, state = seg.step(rgb, state)
        assert iou(mask, truth / 255) > 0.85, t


def test_crop_pass_sharpens_a_small_person(monkeypatch):
    """A network that sees 16x16 cells: on the whole frame an 80 px person is a blur; on the crop around it (120 px),
    the same network draws it sharply."""
    import cv2

    def call(self, rgb):
        coarse = cv2.resize(fg_of_scene(rgb), (16, 16), interpolation=cv2.INTER_AREA)
        return cv2.resize(coarse, self.size, interpolation=cv2.INTER_LINEAR)

    monkeypatch.setattr(PersonModel, "__call__", call)
    frame = np.full((480, 640, 3), 90, np.uint8)
    truth = blob_mask(480, 640, 300, 200, 30, 40).astype(np.float32) / 255
    frame[truth > 0] = (230, 120, 40)
    whole = iou(Segmenter(crop=False, refine=False)(frame), truth)
    cropped = iou(Segmenter(refine=False)(frame), truth)
    assert cropped > 0.85 and cropped > whole + 0.1, (whole, cropped)


# --------------------------------------------------------------------------------------------- the pose model


def test_shipped_pose_model_gives_a_probability_map_and_keypoints():
    model = PoseModel()
    p = model(np.random.default_rng(2).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    assert model.path == POSE_MODEL and p.shape == (256, 256) and p.dtype == np.float32
    assert 0 <= p.min() <= p.max() <= 1 and 0 <= model.presence <= 1 and model.keypoints.shape == (2, 2)
    from vharm.errors import VharmError

    with pytest.raises(VharmError, match="not MediaPipe's pose-landmark model"):
        PoseModel(MODEL)  # the selfie model has one output
    with pytest.raises(ValueError, match="model must be one of"):
        Segmenter(model="posture")


def test_mirrored_pose_model_keeps_what_either_view_finds():
    """`mirror=True`: the mask is the larger of the crop's and its mirror's, so it is the same for a crop and its
    mirror image (mirrored), at least the unmirrored mask everywhere, and the presence stays the plain call's."""
    crop = np.random.default_rng(4).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    crop[40:220, 100:150] = (200, 150, 120)  # something person-coloured off the centre line
    plain, both = PoseModel(), PoseModel(mirror=True)
    p, q = plain(crop), both(crop)
    assert both.presence == plain.presence
    assert (q >= p - 1e-6).all() and (q > p + 1e-3).any()
    np.testing.assert_allclose(both(np.ascontiguousarray(crop[:, ::-1])), q[:, ::-1], atol=1e-6)
    assert Segmenter(model="pose").pose.mirror and not Segmenter(model="pose+selfie").pose.mirror


def test_pose_file_replaces_the_shipped_pose_network(tmp_path):
    """Another pose-landmark file (here a copy of the shipped one: the same masks) is the one loaded; it is refused
    without a pose model, and a file that is not a pose-landmark model is refused by name."""
    import shutil

    from vharm.errors import VharmError

    other = tmp_path / "pose_landmark_heavy.tflite"
    shutil.copy(POSE_MODEL, other)
    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    seg = Segmenter(model="pose", pose_file=other)
    assert seg.pose.path == other
    np.testing.assert_array_equal(seg(frame), Segmenter(model="pose")(frame))
    with pytest.raises(ValueError, match="pose_file is for model='pose'"):
        Segmenter(pose_file=other)
    with pytest.raises(VharmError, match="not MediaPipe's pose-landmark model"):
        Segmenter(model="pose+selfie", pose_file=MODEL)


@pytest.mark.parametrize("model", ["pose", "pose+selfie"])
@pytest.mark.parametrize("size", [(1, 1), (37, 53), (480, 1100)])
def test_pose_segmenter_mask_shape_dtype_range(model, size):
    seg, state = Segmenter(model=model), None
    rng = np.random.default_rng(3)
    for _ in range(2):
        frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        mask, state = seg.step(frame, state)
        assert mask.shape == size and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
        assert isinstance(state.up, list)


@pytest.fixture
def fake_pose(monkeypatch, colour_model):
    """The pose network replaced: it records its crops, finds the scene's colour in them, and reports a person whose
    head points to the crop's right (keypoints: hips at the centre, head 100 px to the right)."""
    import cv2

    crops = []

    def call(self, rgb):
        crops.append(rgb.copy())
        self.presence, self.keypoints = 1.0, np.array([[128, 128], [228, 128]], np.float32)
        return cv2.resize(fg_of_scene(rgb), self.size, interpolation=cv2.INTER_AREA)

    monkeypatch.setattr(PoseModel, "__call__", call)
    return crops


def test_pose_crop_is_turned_upright_by_the_previous_keypoints(fake_pose):
    rgb, truth = scene(96, 128, 0)
    seg = Segmenter(model="pose", stabilise=False)
    mask, state = seg.step(rgb, None)
    assert len(fake_pose) == 1 and iou(mask, truth / 255) > 0.8
    assert len(state.up) == 1 and np.allclose(state.up[0][1], [1, 0], atol=1e-6)  # head to the right in the frame
    mask, state = seg.step(rgb, state)
    # the second crop is the first turned a quarter counter-clockwise, so that the "head" points up
    assert len(fake_pose) == 2 and iou(mask, truth / 255) > 0.8
    turned = np.rot90(fake_pose[0], 1).astype(int)
    assert np.abs(fake_pose[1].astype(int) - turned).mean() < 6
    assert np.allclose(state.up[0][1], [0, 1], atol=1e-6)  # the fake head is now at the crop's right: down


def test_pose_gives_each_person_a_crop_and_peels_the_rest(fake_pose, monkeypatch):
    """Two people apart: a crop each. Two people touching (one region): the fake pose network sees only what lies
    left of the crop's centre, and the person it leaves out gets a crop of its own (model="pose", not
    "pose+selfie")."""
    import cv2

    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[60:200, 40:90] = frame[60:200, 220:270] = (230, 120, 40)
    Segmenter(model="pose", stabilise=False)(frame)
    assert len(fake_pose) == 2
    fake_pose.clear()

    def left_half(self, rgb):
        fake_pose.append(rgb)
        self.presence, self.keypoints = 1.0, np.array([[128, 128], [128, 28]], np.float32)
        found = cv2.resize(fg_of_scene(rgb), self.size, interpolation=cv2.INTER_AREA)
        found[:, 140:] = 0
        return found

    monkeypatch.setattr(PoseModel, "__call__", left_half)
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[60:200, 100:220] = (230, 120, 40)  # two people side by side, one region
    truth = np.zeros((240, 320), np.float32)
    truth[60:200, 100:220] = 1
    assert iou(Segmenter(model="pose", stabilise=False, refine=False)(frame), truth) > 0.8
    assert len(fake_pose) >= 2
    fake_pose.clear()
    Segmenter(model="pose+selfie", stabilise=False, refine=False)(frame)
    assert len(fake_pose) == 1


def test_pose_peels_a_leftover_once(fake_pose, monkeypatch):
    """What the selfie pass found and the pose network never covers (a poster, a statue) gets one crop of its own,
    not a crop again and again until `POSE_MAX_PEOPLE` crops are spent on it."""
    import cv2

    def nobody(self, rgb):
        fake_pose.append(rgb)
        self.presence, self.keypoints = 0.01, np.array([[128, 128], [128, 28]], np.float32)
        return np.zeros(self.size[::-1], np.float32)

    monkeypatch.setattr(PoseModel, "__call__", nobody)
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[60:200, 120:180] = (230, 120, 40)
    state = Segmenter(model="pose", stabilise=False, refine=False).locate(frame, SegmentState(
        cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), np.zeros((240, 320), np.float32), up=[]))  # not a first frame
    assert len(fake_pose) == 2 and state.prob.max() < 0.5


# --------------------------------------------------------------------------------------------- the subject


def people(h: int, w: int, *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """A float32 probability map with 1 inside each (x, y, width, height) box."""
    prob = np.zeros((h, w), np.float32)
    for x, y, bw, bh in boxes:
        prob[y:y + bh, x:x + bw] = 1
    return prob


def test_subject_is_the_largest_person_and_those_about_as_tall():
    prob = people(100, 200, (20, 20, 20, 60), (70, 25, 15, 50), (150, 70, 5, 12))  # two near, one far behind
    keep = select_subject(prob)
    assert keep[50, 30] and keep[50, 75] and not keep[75, 152]
    prob = people(100, 200, (20, 20, 20, 60), (20, 83, 20, 10))  # a foot cut off 3 px below the leg: it joins
    assert select_subject(prob)[88, 30]
    prob += people(100, 200, (150, 70, 5, 12)) + 0.3 * people(100, 200, (150, 10, 40, 5))
    out = keep_subject(prob, select_subject(prob))
    assert out[75, 152] == 0 and out[12, 160] == 0 and out[50, 30] == 1  # beyond the subject all goes, soft too
    # Nobody dropped: the person's soft edge stays, a faint mark far from anyone goes; no subject: nothing stays.
    alone = people(100, 200, (20, 20, 20, 60)) + 0.3 * people(100, 200, (40, 20, 4, 60), (150, 10, 40, 5))
    out = keep_subject(alone, select_subject(alone))
    assert out[50, 30] == 1 and out[50, 42] == np.float32(0.3) and out[12, 160] == 0
    faint = 0.3 * people(100, 200, (150, 10, 40, 5))
    assert not keep_subject(faint, select_subject(faint)).any()


def test_subject_is_followed_from_frame_to_frame():
    """The previous frame's subject stays the subject when a larger person comes in, as long as it overlaps."""
    small = people(100, 200, (20, 40, 10, 30))
    prob = people(100, 200, (24, 40, 10, 30), (120, 5, 40, 90))  # it moved 4 px; a big person far away came in
    keep = select_subject(prob, previous=small > 0.5)
    assert keep[50, 28]
    assert select_subject(prob)[50, 140] and not select_subject(prob)[50, 28]  # afresh: the big one
    # the tracked subject keeps out a far smaller newcomer
    prob = people(100, 200, (24, 10, 20, 80), (150, 80, 4, 8))
    assert not select_subject(prob, previous=people(100, 200, (20, 10, 20, 80)) > 0.5)[84, 151]


def test_segmenter_keeps_the_main_subject_unless_all_people(colour_model):
    rgb, truth = scene(96, 128, 0)
    far = blob_mask(96, 128, 115, 85, 3, 5) > 0  # someone small in a corner
    rgb[far] = (230, 120, 40)
    main = Segmenter()(rgb)
    assert iou(main, truth / 255) > 0.85 and main[far].max() < 0.5
    assert Segmenter(subject=False)(rgb)[far].mean() > 0.5


# --------------------------------------------------------------------------------------------- the filters


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8 gray) that optical flow can follow."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (h // 4, w // 4)).astype(np.float32)
    return np.clip(cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def test_stabiliser_reduces_flicker_on_a_jittering_mask():
    """A still frame whose per-frame mask jitters at the boundary: the stabilised mask changes less from frame to
    frame, and stays on the truth."""
    import cv2

    h, w = 96, 128
    gray = textured(h, w)
    truth = blob_mask(h, w, 64, 48, 30, 22).astype(np.float32) / 255
    rng = np.random.default_rng(0)
    stab = FlowStabiliser()
    raw_prev = out_prev = None
    raw_change, out_change = [], []
    out = None
    for _ in range(12):
        dx, dy = rng.uniform(-2, 2, 2)  # px of boundary jitter
        raw = cv2.warpAffine(truth, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h))
        raw = np.clip(raw + rng.normal(0, 0.05, raw.shape).astype(np.float32), 0, 1)
        out = raw if out is None else stab(raw, gray, out, gray)
        if raw_prev is not None:
            raw_change.append(np.abs(raw - raw_prev).mean())
            out_change.append(np.abs(out - out_prev).mean())
        raw_prev, out_prev = raw, out
    assert np.mean(out_change) < 0.6 * np.mean(raw_change)
    assert iou(out, truth) > 0.95


def test_stabiliser_follows_motion_and_forgets_after_a_cut():
    """The previous mask is carried along with the frame's content (no lag), and ignored after a scene cut."""
    h, w = 96, 128
    big = textured(h, w + 40)
    stab = FlowStabiliser()
    prev_gray, gray = big[:, 20:20 + w], big[:, 16:16 + w]  # the camera pans: content moves 4 px right
    truth = blob_mask(h, w, 60, 48, 20, 20).astype(np.float32) / 255
    prev_mask = blob_mask(h, w, 56, 48, 20, 20).astype(np.float32) / 255  # where it was
    moved = stab(truth, gray, prev_mask, prev_gray)
    assert iou(moved, truth) > 0.9
    cut = stab(truth, 255 - textured(h, w, seed=5), prev_mask, prev_gray)
    assert np.abs(cut - truth).max() < 0.05


def test_guided_filter_puts_the_edge_where_the_frames_is():
    """A coarse mask (blurred, 2 px off) of a sharp-edged square: after the filter its 0.5 level lies on the frame's
    edge, at the same size and when upsampled 4x."""
    import cv2

    n = 64
    frame = np.full((n, n), 40, np.uint8)
    frame[16:48, 16:48] = 200
    truth = (frame > 100).astype(np.float32)
    coarse = cv2.GaussianBlur(np.roll(truth, 2, axis=1), (0, 0), 3)
    assert iou(coarse, truth) < 0.9
    assert iou(guided_filter(frame.astype(np.float32) / 255, coarse, 4, 1e-3), truth) > 0.97
    big = cv2.resize(frame, (4 * n, 4 * n), interpolation=cv2.INTER_NEAREST)
    up = guided_upsample(big, frame, coarse, 4, 1e-3)
    assert up.shape == (4 * n, 4 * n) and up.dtype == np.float32 and 0 <= up.min() <= up.max() <= 1
    assert iou(up, (big > 100).astype(np.float32)) > 0.97


@pytest.mark.parametrize("size, small", [((1080, 1920), (270, 480)), ((720, 1280), (240, 427)), ((61, 97), (61, 97))])
def test_guided_upsample_computes_only_where_the_mask_reaches_half_a_level(size, small):
    """Computing the box around the mask only (a warp of its coefficients) gives what the whole frame would
    (a resize of them), within float error inside and below half an 8-bit level outside; an empty mask gives 0."""
    import cv2

    from vharm.segment.filters import guided_coefficients

    rng = np.random.default_rng(0)
    guide = cv2.GaussianBlur(rng.integers(0, 256, size, dtype=np.uint8), (0, 0), 2)
    guide_small = cv2.resize(guide, small[::-1], interpolation=cv2.INTER_AREA)
    src = np.zeros(small, np.float32)
    src[small[0] // 3:small[0] // 2, small[1] // 4:small[1] // 3] = 1
    src = cv2.GaussianBlur(src, (0, 0), 2)
    a, b = guided_coefficients(guide_small.astype(np.float32) / 255, src, 2, 1e-2)
    whole = np.clip(cv2.resize(a / 255, size[::-1]) * guide.astype(np.float32) + cv2.resize(b, size[::-1]), 0, 1)
    out = guided_upsample(guide, guide_small, src, 2, 1e-2)
    assert out.shape == size and out.dtype == np.float32
    computed = out > 0
    assert 0.005 < computed.mean() < 0.5  # a box, not the frame
    assert np.abs(out - whole)[computed].max() < 1e-5
    assert whole[~computed].max() < 1 / 512
    assert not guided_upsample(guide, guide_small, np.zeros(small, np.float32), 2, 1e-2).any()


# --------------------------------------------------------------------------------------------- masks and streams


def test_mask_source_auto_segments_each_frame_in_the_pass(media, colour_model):
    source = FrameSource(media["frames"])
    pairs = list(MaskSource("auto", source).attach(source))
    assert len(pairs) == VIDEO_FRAMES
    truth = [read_mask(p) for p in sorted(media["mask_frames"].iterdir())]
    assert all(m.dtype == np.float32 and iou(m, t) > 0.85 for (_, m), t in zip(pairs, truth))
    broken = [Frame(None, None, "00000.png", None)]
    assert list(MaskSource("auto", None).attach(broken)) == [(broken[0], None)]


def test_pipelined_masks_are_the_steps_frame_for_frame(media, colour_model):
    """`MaskSource` runs `Segmenter.locate` and `upsample` in two threads: its masks are `step`'s, in order, with
    the state carried from frame to frame."""
    seg = Segmenter()
    got = [m for _, m in MaskSource(seg, FrameSource(media["video"])).attach(FrameSource(media["video"]))]
    state, expected = None, []
    for f in FrameSource(media["video"]):
        mask, state = seg.step(f.rgb, state)
        expected.append(mask)
    assert len(got) == len(expected) == VIDEO_FRAMES and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert all(0.05 < float(m.mean()) < 0.95 for m in got)  # a foreground found in every frame, not a blank mask


def test_segment_video_image_and_frames(media, tmp_path, colour_model):
    out = tmp_path / "mask.png"
    timing = segment_video(media["image"], out)
    mask = read_image(out)[0]
    assert timing.frames == 1 and mask.shape == (VIDEO_H, VIDEO_W, 3)
    assert iou(read_mask(out), read_mask(media["image_mask"])) > 0.85
    import cv2

    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).ndim == 2  # 8-bit gray
    segment_video(media["frames"], tmp_path / "masks")
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == sorted(
        p.stem + ".png" for p in media["frames"].iterdir())


def test_cli_segment_video_overwrite_and_errors(run_cli, media, tmp_path, colour_model):
    out = tmp_path / "mask.mp4"
    code, stdout, err = run_cli("segment", media["video"], "-o", out, "--quiet")
    assert code == 0, err
    frames, fps = read_video(out)
    assert len(frames) == VIDEO_FRAMES and frames[0].shape == (VIDEO_H, VIDEO_W, 3)
    code, _, err = run_cli("segment", media["video"], "-o", out, "--quiet")
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("segment", media["video"], "-o", out, "--overwrite", "--no-refine", "--no-crop",
                           "--no-stabilise", "--all-people", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("segment", tmp_path / "missing.mp4", "-o", tmp_path / "m.mp4")
    assert code == 2 and "missing.mp4: no such file" in err
    code, _, err = run_cli("segment", media["video"], "-o", tmp_path / "m.xyz")
    assert code == 2 and "unknown output extension" in err


def test_cli_segment_with_the_pose_model(run_cli, media, tmp_path, fake_pose):
    out = tmp_path / "masks"
    code, _, err = run_cli("segment", media["frames"], "-o", out, "--seg-model", "pose", "--quiet")
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == VIDEO_FRAMES and len(fake_pose) >= VIDEO_FRAMES
    code, _, err = run_cli("segment", media["frames"], "-o", tmp_path / "m2", "--seg-model", "posture")
    assert code == 2 and "posture" in err
    code, _, err = run_cli("segment", media["frames"], "-o", tmp_path / "m3", "--pose-model", POSE_MODEL)
    assert code == 2 and "--pose-model needs --seg-model pose" in err and "Traceback" not in err
    missing = tmp_path / "heavy.tflite"
    code, _, err = run_cli("segment", media["frames"], "-o", tmp_path / "m4", "--seg-model", "pose", "--pose-model",
                           missing)
    assert code == 2 and f"{missing}: no such model file" in err and not (tmp_path / "m4").exists()


def test_segment_output_is_atomic(media, tmp_path, monkeypatch):
    """A failure in frame 3 leaves no output and no temporary file."""
    calls, original = [], Segmenter.locate

    def failing(self, rgb, state=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return original(self, rgb, state)

    monkeypatch.setattr(Segmenter, "locate", failing)
    for out in (tmp_path / "m.mp4", tmp_path / "masks"):
        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            segment_video(media["video"], out)
        assert list(tmp_path.iterdir()) == []


def test_harmonize_mask_auto_uses_the_segmenters_mask(run_cli, weights_dir, media, tmp_path, colour_model):
    saved, out = tmp_path / "used", tmp_path / "out"
    code, _, err = run_cli("harmonize", media["frames"], "--mask", "auto", "-o", out, "--save-mask", saved,
                           "--weights", weights_dir, "--quiet")
    assert code == 0, err
    seg, state, expected = Segmenter(), None, []
    for p in sorted(media["frames"].iterdir()):
        mask, state = seg.step(read_image(p)[0], state)
        expected.append(np.round(mask * 255))
    used = [v[..., 0] for v in read_frames_dir(saved).values()]
    assert len(used) == VIDEO_FRAMES and all(np.array_equal(u, e) for u, e in zip(used, expected))
    # The Python API, on a video: one decode, the same step.
    timing = Harmonizer.from_pretrained(weights_dir).harmonize_video(media["video"], mask="auto",
                                                                     output=tmp_path / "api.mp4")
    assert timing.frames == VIDEO_FRAMES and len(read_video(tmp_path / "api.mp4")[0]) == VIDEO_FRAMES


def test_automatic_masks_harmonize_without_the_brightening_gain(weights_dir, media, tmp_path, monkeypatch):
    """`--mask auto` (and `vharm evaluate`'s `:automask`) run with `brighten` 1 (`Harmonizer.for_mask`): the gain
    was chosen with masks of the pasted region, and multiplies the harm of a mask that marks the wrong one; a mask
    file keeps it."""
    from vharm.eval.methods import parse_method
    from vharm.inference.harmonizer import Harmonizer

    h = Harmonizer.from_pretrained(weights_dir).with_options(brighten=4.0)
    assert h.for_mask("auto").brighten == 1 and h.for_mask("file") is h and h.for_mask("none") is h
    seen = []
    original = Harmonizer.step

    def spy(self, *args, **kwargs):
        seen.append(self.brighten)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Harmonizer, "step", spy)
    h.harmonize_video(media["video"], mask="auto", output=tmp_path / "auto.mp4")
    assert seen and set(seen) == {1.0}
    seen.clear()
    h.harmonize_video(media["video"], mask=media["mask_video"], output=tmp_path / "file.mp4")
    assert seen and set(seen) == {4.0}
    auto, true = (parse_method(f"{weights_dir}:{m}brighten=4") for m in ("automask:", ""))
    assert "brighten" not in auto.fingerprint() and true.fingerprint()["brighten"] == 4.0


def test_composite_without_fg_mask_segments_the_foreground(run_cli, media, tmp_path, colour_model):
    bg = imwrite(tmp_path / "bg.png", np.full((80, 96, 3), (30, 90, 160), np.uint8))
    out, saved = tmp_path / "comp", tmp_path / "mask"
    code, _, err = run_cli("composite", "--fg", media["video"], "--bg", bg, "--position", "10,20", "-o", out,
                           "--save-mask", saved, "--quiet")
    assert code == 0, err
    assert "no --fg-mask" in err and "segmenting" in err
    masks = read_frames_dir(saved)
    assert len(masks) == VIDEO_FRAMES
    truth = np.zeros((80, 96), np.float32)
    truth[20:20 + VIDEO_H, 10:10 + VIDEO_W] = scene(VIDEO_H, VIDEO_W, 0)[1] / 255
    assert iou(masks["00000.png"][..., 0] / 255, truth) > 0.8
    # An RGBA foreground keeps its own alpha: nothing is segmented.
    code, _, err = run_cli("composite", "--fg", media["rgba_frames"], "--bg", bg, "-o", tmp_path / "c2", "--quiet")
    assert code == 0 and "segmenting" not in err, err
