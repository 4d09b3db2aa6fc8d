"""Issue 7, reliability: hostile inputs get one clear line and exit status 2, and nothing is ever lost.

Every refusal below asserts: exit status 2, exactly one line on stderr ("vharm: error: ...") that names the file
(or option) and the problem, no traceback, and that the output directory holds nothing new (no output, no
`.name.*` temporary file). Inputs that vharm accepts (odd sizes, palette/CMYK/16-bit images, one-frame or
variable-frame-rate video, empty or full masks, containers that claim more frames than they hold) assert exit 0,
the warning vharm prints, and the pixels. The `nothing lost` part interrupts real processes: Ctrl-C during
`harmonize`, SIGTERM and SIGKILL during `train`, then `--resume`.

Inputs already covered elsewhere (test_cli.py, test_inference.py, test_train.py, test_evaluate.py) are not repeated.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import (
    VIDEO_FRAMES,
    VIDEO_H,
    VIDEO_W,
    imread,
    imwrite,
    make_source_dir,
    read_frames_dir,
    read_video,
    tiny_train_config,
    write_vfr_video,
    write_video,
)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from vharm.config import to_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# `python -m vharm` with Python's own Ctrl-C handler installed even where the test runner's parent ignores
# SIGINT (background jobs): the process then sees SIGINT exactly as in a terminal.
LAUNCH = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from vharm.cli import main; sys.exit(main(sys.argv[1:]))")


# --------------------------------------------------------------------------------------------- helpers


def listing(folder: Path) -> list[str] | None:
    """Every entry of a folder, dot-files (temporaries) included; None if it does not exist."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None


def assert_refused(code: int, err: str, *needles) -> None:
    """Exit 2, one line `vharm: error: ...` holding every needle, no traceback."""
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vharm: error: "), lines[0]
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], (str(n), lines[0])


def warnings_of(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert all(line.startswith("vharm: warning: ") for line in lines), err
    return lines


def png_header(path: Path, width: int, height: int, color_type: int = 2) -> Path:
    """A PNG that holds only its header (IHDR + IEND): it claims width x height, decoding it is impossible."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def write_av(path: Path, frames, codec: str = "libx264", options: dict | None = None, fps: int = 12) -> Path:
    """Like conftest.write_video, with container options (e.g. faststart) and another codec."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12", "preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def cut_inside_packet(src: Path, dst: Path, index: int) -> Path:
    """A copy of `src` cut in the middle of video packet `index` (the end of a file that stopped downloading)."""
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    p = packets[index]
    dst.write_bytes(src.read_bytes()[:p.pos + p.size // 2])
    return dst


def frames_in(path: Path) -> int:
    return len(read_video(path)[0])


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.01)
    return False


def vharm_process(*argv, launcher: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-c", LAUNCH] if launcher else [sys.executable, "-m", "vharm"]
    return subprocess.Popen([*cmd, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"vharm did not stop within {timeout} s: {err[-2000:]}")
    return proc.returncode, out, err


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bad(tmp_path_factory, media, scenes, weights_dir) -> dict[str, Path]:
    """Broken and unusual inputs, built once (each test writes into its own empty output folder)."""
    root = tmp_path_factory.mktemp("hostile")
    rgb, mask = scenes[0]
    rgbs, masks = [s[0] for s in scenes], [s[1] for s in scenes]
    p: dict[str, Path] = {"root": root}

    p["zero_png"] = root / "zero.png"
    p["zero_png"].write_bytes(b"")
    p["text_mp4"] = root / "notes.mp4"
    p["text_mp4"].write_text("These are my notes, not a video.\n")
    p["text_png"] = root / "notes.png"
    p["text_png"].write_text("not a picture\n")

    # Truncated videos: moov atom at the end (the default), moov in front (faststart), Matroska.
    p["cut_moov"] = cut_inside_packet(media["video"], root / "cut-moov.mp4", VIDEO_FRAMES // 2)
    write_av(root / "fast.mp4", rgbs, options={"movflags": "faststart"})
    p["cut_fast"] = cut_inside_packet(root / "fast.mp4", root / "cut-fast.mp4", 4)
    write_av(root / "full.mkv", rgbs)
    p["cut_mkv"] = cut_inside_packet(root / "full.mkv", root / "cut.mkv", 5)
    # An AVI whose headers claim 50 frames; 8 are in the file (like ../shared/data/videos/tree.avi: 444 vs 68).
    data = bytearray(write_av(root / "full.avi", rgbs, codec="mpeg4").read_bytes())
    strh = data.find(b"strh")
    struct.pack_into("<I", data, strh + 8 + 32, 50)  # AVIStreamHeader.dwLength
    avih = data.find(b"avih")
    struct.pack_into("<I", data, avih + 8 + 16, 50)  # AVIMainHeader.dwTotalFrames
    p["claims_avi"] = root / "claims-50.avi"
    p["claims_avi"].write_bytes(bytes(data))

    p["empty_dir"] = root / "no-frames"
    p["empty_dir"].mkdir()
    p["text_dir"] = root / "only-text"
    p["text_dir"].mkdir()
    (p["text_dir"] / "readme.txt").write_text("frames were here\n")
    p["mixed_dir"] = root / "mixed-sizes"
    p["mixed_dir"].mkdir()
    for t in range(4):
        imwrite(p["mixed_dir"] / f"{t:03d}.png", rgbs[t] if t != 2 else rgbs[t][:40])
    p["broken_frame_dir"] = root / "broken-frame"
    shutil.copytree(media["frames"], p["broken_frame_dir"])
    p["broken_frame"] = p["broken_frame_dir"] / "frame_003.png"
    p["broken_frame"].write_bytes(b"")

    # Masks that do not fit the 8 frames of media["frames"] / media["video"].
    p["mask_video_5"] = write_video(root / "mask-5.mp4", masks[:5])
    p["mask_video_big"] = write_video(root / "mask-80x64.mp4", [np.zeros((64, 80), np.uint8)] * VIDEO_FRAMES)
    p["mask_dir_late_size"] = root / "masks-late-size"
    p["mask_dir_late_size"].mkdir()
    for t, m in enumerate(masks):
        imwrite(p["mask_dir_late_size"] / f"{t:03d}.png", m if t < 5 else m[:, :60])
    p["one_mask_dir"] = root / "one-mask"
    p["one_mask_dir"].mkdir()
    shutil.copy(media["static_mask"], p["one_mask_dir"] / "mask.png")
    p["zero_mask"] = imwrite(root / "zero-mask.png", np.zeros_like(mask))
    p["full_mask"] = imwrite(root / "full-mask.png", np.full_like(mask, 255))
    p["mask01_dir"] = root / "masks-0-1"
    p["mask01_dir"].mkdir()
    for t, m in enumerate(masks):
        imwrite(p["mask01_dir"] / f"frame_{t:03d}.png", (m > 127).astype(np.uint8))
    p["mask0255_dir"] = root / "masks-0-255"
    p["mask0255_dir"].mkdir()
    for t, m in enumerate(masks):
        imwrite(p["mask0255_dir"] / f"frame_{t:03d}.png", np.where(m > 127, 255, 0).astype(np.uint8))

    # Images above the pixel limit: only a header, so building them is free and decoding them impossible.
    p["huge_png"] = png_header(root / "huge-20000x20000.png", 20000, 20000)
    p["above_limit_png"] = png_header(root / "8000x5001.png", 8000, 5001)

    # Weights: copies of the tiny weights, each broken in one way.
    def weights(name, change):
        d = root / "weights" / name
        shutil.copytree(weights_dir, d)
        change(d)
        p[f"w_{name}"] = d

    def edit_model(**changes):
        def change(d):
            cfg = json.loads((d / "config.json").read_text())
            cfg["model"].update(changes)
            (d / "config.json").write_text(json.dumps(cfg))
        return change

    rng = np.random.default_rng(7)
    weights("widths", edit_model(widths=[8, 16, 64]))
    weights("depth", edit_model(widths=[8, 16]))
    weights("head", edit_model(head="rgb"))
    weights("random_g", lambda d: (d / "generator.safetensors").write_bytes(rng.bytes(4096)))
    weights("random_d", lambda d: (d / "discriminator.safetensors").write_bytes(rng.bytes(4096)))
    weights("pickle", lambda d: torch.save({"net.out.weight": torch.zeros(1)}, d / "generator.safetensors"))
    weights("half_g", lambda d: (d / "generator.safetensors").write_bytes(
        (d / "generator.safetensors").read_bytes()[:3000]))
    weights("widths_str", edit_model(widths="abc"))
    weights("resolution_str", edit_model(resolution="64"))
    weights("unknown_key", edit_model(depth=3))
    weights("backbone", edit_model(backbone="vit"))
    weights("not_json", lambda d: (d / "config.json").write_text("{model: {widths: [8, 16, 32]"))
    weights("json_list", lambda d: (d / "config.json").write_text("[8, 16, 32]"))
    weights("no_config", lambda d: (d / "config.json").unlink())
    weights("no_generator", lambda d: (d / "generator.safetensors").unlink())

    def smoothing(value):
        def change(d):
            cfg = json.loads((d / "config.json").read_text())
            cfg["inference"] = value
            (d / "config.json").write_text(json.dumps(cfg))
        return change

    weights("smoothing_str", smoothing({"temporal_smoothing": "abc"}))
    weights("inference_str", smoothing("fast"))
    weights("smoothing_2", smoothing({"temporal_smoothing": 2}))
    weights("gate_reversed", smoothing({"min_change": 6, "full_change": 3}))
    return p


@pytest.fixture()
def out(tmp_path) -> Path:
    """An empty output folder: after a refusal it must still be empty (no output, no temporary file)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------------- harmonize: bad inputs

W = ("--quiet",)

# (id, argv after `harmonize` built from (bad, media, out), strings the one error line must hold)
HARMONIZE_REFUSALS = [
    ("zero-byte-image", lambda b, m, o: [b["zero_png"], "-m", m["image_mask"], "-o", o / "o.png"],
     lambda b, m, o: [b["zero_png"], "not a readable image"]),
    ("zero-byte-mask", lambda b, m, o: [m["image"], "-m", b["zero_png"], "-o", o / "o.png"],
     lambda b, m, o: [b["zero_png"], "not a readable image"]),
    ("text-file-named-mp4", lambda b, m, o: [b["text_mp4"], "-m", m["static_mask"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["text_mp4"], "not a readable video"]),
    ("text-file-named-png", lambda b, m, o: [b["text_png"], "-m", m["static_mask"], "-o", o / "o.png"],
     lambda b, m, o: [b["text_png"], "not a readable image"]),
    ("text-file-as-mask-video", lambda b, m, o: [m["video"], "-m", b["text_mp4"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["text_mp4"], "not a readable video"]),
    ("truncated-mp4-moov-at-end", lambda b, m, o: [b["cut_moov"], "-m", m["static_mask"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["cut_moov"], "not a readable video"]),
    ("truncated-faststart-mp4", lambda b, m, o: [b["cut_fast"], "-m", m["static_mask"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["cut_fast"], "frame 4 failed to decode", "--skip-bad-frames"]),
    ("directory-without-frames", lambda b, m, o: [b["empty_dir"], "-m", m["static_mask"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["empty_dir"], "no frames in this directory"]),
    ("directory-of-text-files", lambda b, m, o: [b["text_dir"], "-m", m["static_mask"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["text_dir"], "no frames in this directory"]),
    ("mixed-frame-sizes-to-video", lambda b, m, o: [b["mixed_dir"], "-m", m["static_mask"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["mixed_dir"] / "002.png", "frame size 64x40 differs", "64x48"]),
    ("zero-byte-frame-inside-directory",
     lambda b, m, o: [b["broken_frame_dir"], "-m", m["static_mask"], "-o", o / "frames"],
     lambda b, m, o: [b["broken_frame"], "not a readable image"]),
    ("mask-video-fewer-frames", lambda b, m, o: [m["frames"], "-m", b["mask_video_5"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["mask_video_5"], f"5 mask frames for {VIDEO_FRAMES} input frames"]),
    ("mask-video-other-size", lambda b, m, o: [m["frames"], "-m", b["mask_video_big"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["mask_video_big"], "mask size 80x64 differs", "64x48"]),
    ("mask-frame-changes-size-mid-stream",
     lambda b, m, o: [m["video"], "-m", b["mask_dir_late_size"], "-o", o / "o.mp4"],
     lambda b, m, o: [b["mask_dir_late_size"] / "005.png", "frame size 60x48 differs"]),
    ("image-20000x20000", lambda b, m, o: [b["huge_png"], "-m", m["image_mask"], "-o", o / "o.png"],
     lambda b, m, o: [b["huge_png"], "20000x20000", "limit of 40 megapixels"]),
    ("mask-20000x20000", lambda b, m, o: [m["image"], "-m", b["huge_png"], "-o", o / "o.png"],
     lambda b, m, o: [b["huge_png"], "20000x20000", "limit"]),
    ("image-just-above-limit", lambda b, m, o: [b["above_limit_png"], "-m", m["image_mask"], "-o", o / "o.png"],
     lambda b, m, o: [b["above_limit_png"], "8000x5001", "limit"]),
    ("save-mask-unknown-extension",
     lambda b, m, o: [m["image"], "-m", m["image_mask"], "-o", o / "o.png", "--save-mask", o / "used.msk"],
     lambda b, m, o: [o / "used.msk", "unknown output extension '.msk'"]),
    ("save-mask-in-missing-directory",
     lambda b, m, o: [m["image"], "-m", m["image_mask"], "-o", o / "o.png", "--save-mask", o / "no" / "m.png"],
     lambda b, m, o: [o / "no" / "m.png", "does not exist"]),
    ("start-after-the-last-frame", lambda b, m, o: [m["video"], "-m", m["static_mask"], "-o", o / "o.mp4",
                                                    "--start", VIDEO_FRAMES],
     lambda b, m, o: [m["video"], "no frames to process", "--start"]),
    ("frames-zero", lambda b, m, o: [m["video"], "-m", m["static_mask"], "-o", o / "o.mp4", "--frames", "0"],
     lambda b, m, o: ["--frames >= 1"]),
    ("crf-out-of-range", lambda b, m, o: [m["video"], "-m", m["static_mask"], "-o", o / "o.mp4", "--crf", "99"],
     lambda b, m, o: ["--crf 99", "0..51"]),
    ("start-not-a-number", lambda b, m, o: [m["video"], "-m", m["static_mask"], "-o", o / "o.mp4",
                                            "--start", "abc"],
     lambda b, m, o: ["--start", "invalid int value: 'abc'"]),
    ("negative-temporal-smoothing", lambda b, m, o: [m["video"], "-m", m["static_mask"], "-o", o / "o.mp4",
                                                     "--temporal-smoothing", "-0.1"],
     lambda b, m, o: ["--temporal-smoothing", "-0.1"]),
    ("unknown-device", lambda b, m, o: [m["video"], "-m", m["static_mask"], "-o", o / "o.mp4", "--device", "tpu"],
     lambda b, m, o: ["--device", "'tpu'"]),
]


@pytest.mark.parametrize("case,argv,needles", HARMONIZE_REFUSALS, ids=[c[0] for c in HARMONIZE_REFUSALS])
def test_harmonize_refuses_bad_input(run_cli, weights_dir, bad, media, out, case, argv, needles):
    inputs_before = listing(bad["root"])
    code, stdout, err = run_cli("harmonize", *argv(bad, media, out), "--weights", weights_dir, *W)
    assert_refused(code, err, *needles(bad, media, out))
    assert listing(out) == [] and stdout == ""
    assert listing(bad["root"]) == inputs_before


def test_huge_image_is_refused_from_its_header_without_decoding(run_cli, weights_dir, bad, media, out, monkeypatch):
    from PIL import ImageFile

    def no_decoding(*args, **kwargs):
        raise AssertionError("vharm decoded a 20000x20000 image")

    monkeypatch.setattr(cv2, "imread", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    code, _, err = run_cli("harmonize", bad["huge_png"], "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", weights_dir, *W)
    assert_refused(code, err, bad["huge_png"], "20000x20000")
    assert listing(out) == []


# weights: (case, fixture key, strings of the error line); the file named is the one that is wrong
WEIGHTS_REFUSALS = [
    ("other-architecture-widths", "widths", ["generator.safetensors", "do not match the architecture"]),
    ("other-architecture-depth", "depth", ["generator.safetensors", "do not match the architecture"]),
    ("other-architecture-head", "head", ["generator.safetensors", "do not match the architecture"]),
    ("generator-random-bytes", "random_g", ["generator.safetensors", "not a safetensors weights file"]),
    ("discriminator-random-bytes", "random_d", ["discriminator.safetensors", "not a safetensors weights file"]),
    ("pickle-named-safetensors", "pickle", ["generator.safetensors", "not a safetensors weights file"]),
    ("truncated-safetensors", "half_g", ["generator.safetensors", "not a safetensors weights file"]),
    ("config-widths-is-a-string", "widths_str", ["config.json", "model.widths: expected a list, got str"]),
    ("config-resolution-is-a-string", "resolution_str", ["config.json", "model.resolution: expected an integer"]),
    ("config-unknown-key", "unknown_key", ["config.json", "unknown key(s) depth"]),
    ("config-unknown-backbone", "backbone", ["config.json", "model.backbone is 'vit'"]),
    ("config-not-json", "not_json", ["config.json", "not valid JSON"]),
    ("config-is-a-list", "json_list", ["config.json", "expected an object"]),
    ("config-missing", "no_config", ["config.json", "missing"]),
    ("generator-missing", "no_generator", ["generator.safetensors", "missing weights file"]),
]


@pytest.mark.parametrize("case,key,needles", WEIGHTS_REFUSALS, ids=[c[0] for c in WEIGHTS_REFUSALS])
def test_harmonize_refuses_bad_weights(run_cli, bad, media, out, case, key, needles):
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", bad[f"w_{key}"], *W)
    assert_refused(code, err, bad[f"w_{key}"], *needles)
    assert listing(out) == []


@pytest.mark.parametrize("key", ["smoothing_str", "inference_str", "smoothing_2", "gate_reversed"])
def test_weights_inference_section_of_the_wrong_type(run_cli, bad, media, out, key):
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", bad[f"w_{key}"], *W)
    assert listing(out) == []
    assert_refused(code, err, bad[f"w_{key}"] / "config.json")


def test_weights_given_as_a_file_is_refused(run_cli, weights_dir, media, out):
    file = weights_dir / "generator.safetensors"
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", file, *W)
    assert_refused(code, err, file, "weights")
    assert listing(out) == []


def test_pickle_weights_are_never_unpickled(run_cli, bad, media, out, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("vharm unpickled a weights file")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", bad["w_pickle"], *W)
    assert_refused(code, err, "not a safetensors weights file")


# ------------------------------------------------------------------------ harmonize: where outputs go


def test_output_equal_to_input_is_refused_and_the_input_kept(run_cli, weights_dir, media, tmp_path, scenes):
    rgb, mask = scenes[0]
    comp, m = imwrite(tmp_path / "comp.png", rgb), imwrite(tmp_path / "mask.png", mask)
    video = write_video(tmp_path / "clip.mp4", [s[0] for s in scenes])
    frames = shutil.copytree(media["frames"], tmp_path / "frames")
    os.symlink(comp, tmp_path / "link.png")
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    frame_bytes = {p.name: p.read_bytes() for p in frames.iterdir()}
    cases = [
        ([comp, "-m", m, "-o", comp], comp),
        ([comp, "-m", m, "-o", m], m),  # the mask is an input too
        ([comp, "-m", m, "-o", tmp_path / "o.png", "--save-mask", comp], comp),
        ([video, "-m", m, "-o", video], video),
        ([frames, "-m", m, "-o", frames], frames),  # a frame directory over itself
        ([comp, "-m", m, "-o", tmp_path / "link.png"], tmp_path / "link.png"),  # a symlink to the input
    ]
    for argv, named in cases:
        code, _, err = run_cli("harmonize", *argv, "--overwrite", "--weights", weights_dir, *W)
        assert_refused(code, err, named, "same file as an input")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == snapshot
    assert {p.name: p.read_bytes() for p in frames.iterdir()} == frame_bytes
    assert not (tmp_path / "o.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_in_a_read_only_directory(run_cli, weights_dir, media, tmp_path):
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a 0o555 directory is still writable "
                        "(test_output_in_a_directory_vharm_cannot_write covers the check)")
        code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", ro / "o.png",
                               "--weights", weights_dir, *W)
        assert_refused(code, err, ro / "o.png", "not writable")
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


def test_output_in_a_directory_vharm_cannot_write(run_cli, weights_dir, media, out, monkeypatch):
    """The read-only check with os.access answering as it does for a normal user (root may write anywhere)."""
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda path, mode, **kw: False if Path(path) == out and mode & os.W_OK
                        else real_access(path, mode, **kw))
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out / "o.mp4",
                           "--weights", weights_dir, *W)
    assert_refused(code, err, out / "o.mp4", "not writable")
    assert listing(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_device_cuda_without_cuda(run_cli, dataset_dir, out):
    code, _, err = run_cli("train", "--preset", "tiny", "--dataset", dataset_dir, "--device", "cuda",
                           "--outdir", out, "--quiet")
    assert_refused(code, err, "--device cuda", "no CUDA")
    assert listing(out) == []


def test_an_exception_mid_run_leaves_nothing(run_cli, weights_dir, media, out, monkeypatch):
    """A crash after some frames were encoded (status 1): nothing at the final names, no temporaries."""
    from vharm.inference.harmonizer import Harmonizer

    real = Harmonizer.step
    calls = []

    def crash_at_frame_5(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Harmonizer, "step", crash_at_frame_5)
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out / "o.mp4",
                           "--save-mask", out / "masks", "--weights", weights_dir, *W)
    assert code == 1 and "internal error: RuntimeError: simulated crash" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert listing(out) == []


# -------------------------------------------------------------------- harmonize: inputs vharm accepts


def test_truncated_faststart_mp4_with_skip_bad_frames(run_cli, weights_dir, bad, media, out):
    """The partial last packet is the frame that failed: repeated, and the short count is said."""
    code, stdout, err = run_cli("harmonize", bad["cut_fast"], "-m", media["static_mask"], "-o", out / "o.mp4",
                                "--skip-bad-frames", "--weights", weights_dir, *W)
    assert code == 0, err
    lines = warnings_of(err)
    assert len(lines) == 2
    assert str(bad["cut_fast"]) in lines[0] and "frame 4 failed to decode; repeating the previous output" in lines[0]
    assert f"claims {VIDEO_FRAMES} frames but 5 decoded" in lines[1]
    assert listing(out) == ["o.mp4"] and frames_in(out / "o.mp4") == 5


def test_truncated_mkv_keeps_the_frames_before_the_cut(run_cli, weights_dir, bad, media, out):
    code, stdout, err = run_cli("harmonize", bad["cut_mkv"], "-m", media["static_mask"], "-o", out / "o.mp4",
                                "--weights", weights_dir, *W)
    assert code == 0, err
    assert "5 frame(s)" in stdout and listing(out) == ["o.mp4"] and frames_in(out / "o.mp4") == 5


def test_truncated_mkv_says_it_is_short(run_cli, weights_dir, bad, media, out):
    code, _, err = run_cli("harmonize", bad["cut_mkv"], "-m", media["static_mask"], "-o", out / "o.mp4",
                           "--weights", weights_dir, *W)
    assert code == 0 and str(bad["cut_mkv"]) in err and "warning" in err


def test_container_claiming_more_frames_than_it_holds(run_cli, weights_dir, bad, media, out):
    code, stdout, err = run_cli("harmonize", bad["claims_avi"], "-m", media["static_mask"], "-o", out / "o.mp4",
                                "--weights", weights_dir, *W)
    assert code == 0, err
    (line,) = warnings_of(err)
    assert str(bad["claims_avi"]) in line
    assert f"the container claims 50 frames but {VIDEO_FRAMES} decoded; all decoded frames were processed" in line
    assert f"{VIDEO_FRAMES} frame(s)" in stdout and frames_in(out / "o.mp4") == VIDEO_FRAMES


def test_one_static_mask_in_a_directory_serves_every_frame(run_cli, weights_dir, bad, media, out):
    code, _, err = run_cli("harmonize", media["frames"], "-m", bad["one_mask_dir"], "-o", out / "a",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == ""
    code, _, err = run_cli("harmonize", media["frames"], "-m", media["static_mask"], "-o", out / "b",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == ""
    a, b = read_frames_dir(out / "a"), read_frames_dir(out / "b")
    assert len(a) == VIDEO_FRAMES and all(np.array_equal(a[k], b[k]) for k in b)


def test_all_zero_mask_copies_the_input_and_warns(run_cli, weights_dir, bad, media, out):
    code, _, err = run_cli("harmonize", media["video"], "-m", bad["zero_mask"], "-o", out / "frames",
                           "--weights", weights_dir, *W)
    assert code == 0, err
    (line,) = warnings_of(err)  # one warning, not one per frame
    assert str(bad["zero_mask"]) in line and "mask is empty" in line and "copied" in line
    written = read_frames_dir(out / "frames")
    inputs, _ = read_video(media["video"])
    assert len(written) == VIDEO_FRAMES
    assert all(np.array_equal(written[f"{i:05d}.png"], inputs[i]) for i in range(VIDEO_FRAMES))


def test_all_one_mask_harmonizes_the_whole_frame(run_cli, weights_dir, bad, media, out, scenes):
    code, _, err = run_cli("harmonize", media["frames"], "-m", bad["full_mask"], "-o", out / "frames",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == ""
    written = read_frames_dir(out / "frames")
    for t, (rgb, _) in enumerate(scenes):
        changed = np.abs(written[f"frame_{t:03d}.png"].astype(int) - rgb).sum(axis=2) > 0
        assert changed.mean() > 0.9


def test_masks_of_0_and_1_are_scaled(run_cli, weights_dir, bad, media, out):
    """Per-frame masks holding only 0 and 1 (an export bug) act as 0 and 255."""
    for name, masks in (("a", bad["mask01_dir"]), ("b", bad["mask0255_dir"])):
        code, _, err = run_cli("harmonize", media["frames"], "-m", masks, "-o", out / name,
                               "--weights", weights_dir, *W)
        assert code == 0 and err == ""
    a, b = read_frames_dir(out / "a"), read_frames_dir(out / "b")
    inputs = read_frames_dir(media["frames"])
    assert len(a) == VIDEO_FRAMES and all(np.array_equal(a[k], b[k]) for k in b)
    assert np.mean([np.abs(a[k].astype(int) - inputs[k]).mean() for k in a]) > 2  # it did harmonize


def _image_variants(rgb: np.ndarray) -> dict:
    """(PIL image or array to write, the RGB vharm should see) per kind of PNG."""
    im = Image.fromarray(rgb)
    pal = im.convert("P", palette=Image.Palette.ADAPTIVE)
    g16 = rgb[..., 1].astype(np.uint16) * 256 + 77
    rgba16 = np.dstack([rgb.astype(np.uint16) * 257, np.full(rgb.shape[:2], 40000, np.uint16)])
    return {
        "rgba": (np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)]), rgb),
        "gray-alpha": (im.convert("LA"), np.asarray(im.convert("L").convert("RGB"))),
        "palette": (pal, np.asarray(pal.convert("RGB"))),
        "palette-transparency": (pal, np.asarray(pal.convert("RGB"))),
        "1-bit": (im.convert("1"), np.asarray(im.convert("1").convert("RGB"))),
        "16-bit-gray": (g16, np.repeat(np.round(g16.astype(np.float32) / 65535 * 255).astype(np.uint8)[..., None],
                                       3, 2)),
        "16-bit-rgba": (rgba16, rgb),
    }


@pytest.mark.parametrize("kind", ["rgba", "gray-alpha", "palette", "palette-transparency", "1-bit", "16-bit-gray",
                                  "16-bit-rgba"])
def test_png_kinds_work(run_cli, weights_dir, media, out, tmp_path, scenes, kind):
    rgb, mask = scenes[3]
    image, expected = _image_variants(rgb)[kind]
    path = tmp_path / f"{kind}.png"
    if isinstance(image, np.ndarray):
        imwrite(path, image)
    else:
        image.save(path, **({"transparency": 0} if kind == "palette-transparency" else {}))
    code, _, err = run_cli("harmonize", path, "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == ""
    result = imread(out / "o.png").astype(int)
    assert np.array_equal(result[mask == 0], expected[mask == 0])  # the background is the input's, as RGB
    assert np.abs(result - expected)[mask == 255].mean() > 3


def test_cmyk_jpeg_works(run_cli, weights_dir, media, out, tmp_path, scenes):
    rgb, mask = scenes[3]
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", "JPEG", quality=95)
    expected = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")).astype(int)
    code, _, err = run_cli("harmonize", tmp_path / "cmyk.jpg", "-m", media["image_mask"], "-o", out / "o.png",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == ""
    result = imread(out / "o.png").astype(int)
    assert np.abs(result - expected)[mask == 0].max() <= 3  # colours, not inverted inks
    assert np.abs(result - rgb)[mask == 0].mean() < 3


def test_odd_size_is_padded_for_h264_and_said(run_cli, weights_dir, out, tmp_path, scenes):
    rgb, mask = scenes[0]
    imwrite(tmp_path / "odd.png", rgb[:47, :63])
    imwrite(tmp_path / "odd-mask.png", mask[:47, :63])
    code, _, err = run_cli("harmonize", tmp_path / "odd.png", "-m", tmp_path / "odd-mask.png", "-o", out / "o.mp4",
                           "--weights", weights_dir, *W)
    assert code == 0
    (line,) = warnings_of(err)
    assert str(out / "o.mp4") in line and "padding 63x47 to 64x48" in line
    assert read_video(out / "o.mp4")[0][0].shape == (48, 64, 3)
    code, _, err = run_cli("harmonize", tmp_path / "odd.png", "-m", tmp_path / "odd-mask.png", "-o", out / "o.png",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == "" and imread(out / "o.png").shape == (47, 63, 3)  # images keep their size


def test_one_by_one_image(run_cli, weights_dir, out, tmp_path):
    imwrite(tmp_path / "px.png", np.array([[[200, 120, 40]]], np.uint8))
    imwrite(tmp_path / "px-mask.png", np.array([[255]], np.uint8))
    code, _, err = run_cli("harmonize", tmp_path / "px.png", "-m", tmp_path / "px-mask.png", "-o", out / "o.png",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == "" and imread(out / "o.png").shape == (1, 1, 3)
    code, _, err = run_cli("harmonize", tmp_path / "px.png", "-m", tmp_path / "px-mask.png", "-o", out / "o.mp4",
                           "--weights", weights_dir, *W)
    assert code == 0 and "padding 1x1 to 2x2" in err
    assert frames_in(out / "o.mp4") == 1


def test_one_frame_video(run_cli, weights_dir, media, out, tmp_path, scenes):
    clip = write_video(tmp_path / "one.mp4", [scenes[0][0]])
    for name in ("o.mp4", "o.png"):
        code, stdout, err = run_cli("harmonize", clip, "-m", media["static_mask"], "-o", out / name,
                                    "--weights", weights_dir, *W)
        assert code == 0 and err == "" and "1 frame(s)" in stdout
    assert frames_in(out / "o.mp4") == 1 and imread(out / "o.png").shape == (VIDEO_H, VIDEO_W, 3)


def test_variable_frame_rate_into_mkv(run_cli, weights_dir, media, out, tmp_path):
    pts_ms = [0, 100, 250, 300, 500, 600]
    src = write_vfr_video(tmp_path / "vfr.mp4", pts_ms)
    code, _, err = run_cli("harmonize", src, "-m", media["static_mask"], "-o", out / "o.mkv",
                           "--weights", weights_dir, *W)
    assert code == 0 and err == ""
    with av.open(str(out / "o.mkv")) as c:
        tb = c.streams.video[0].time_base
        assert [f.pts * tb for f in c.decode(video=0)] == [Fraction(t, 1000) for t in pts_ms]


# ------------------------------------------------------------------------ harmonize: known bugs


@pytest.mark.parametrize("role", ["input", "mask", "frame-in-directory"])
def test_truncated_png(run_cli, weights_dir, media, out, tmp_path, role):
    data = media["image"].read_bytes()
    if role == "frame-in-directory":
        folder = shutil.copytree(media["frames"], tmp_path / "frames")
        broken = folder / "frame_005.png"
        argv = [folder, "-m", media["static_mask"], "-o", out / "o.mp4"]
    else:
        broken = tmp_path / "cut.png"
        argv = ([broken, "-m", media["image_mask"]] if role == "input" else [media["image"], "-m", broken]) + \
            ["-o", out / "o.png"]
    broken.write_bytes(data[:len(data) // 2])
    code, _, err = run_cli("harmonize", *argv, "--weights", weights_dir, *W)
    assert listing(out) == []
    assert_refused(code, err, broken)


def test_truncated_jpeg(capfd, weights_dir, media, out, tmp_path, scenes):
    from vharm.cli import main

    cv2.imwrite(str(tmp_path / "full.jpg"), scenes[0][0])
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    code = main(["harmonize", str(tmp_path / "cut.jpg"), "-m", str(media["image_mask"]), "-o", str(out / "o.png"),
                 "--weights", str(weights_dir), "--quiet"])
    err = capfd.readouterr().err
    named = [line for line in err.splitlines() if line.startswith("vharm") and str(tmp_path / "cut.jpg") in line]
    assert (code == 2 and listing(out) == [] or code == 0 and any("warning" in line for line in named)) and named


def test_output_name_taken_by_a_directory(run_cli, weights_dir, media, out):
    (out / "o.mp4").mkdir()
    (out / "o.mp4" / "keep.txt").write_text("mine")
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out / "o.mp4",
                           "--overwrite", "--weights", weights_dir, *W)
    assert (out / "o.mp4" / "keep.txt").read_text() == "mine" and listing(out) == ["o.mp4"]
    assert_refused(code, err, out / "o.mp4")


def test_frame_directory_over_an_existing_file_leaves_no_temporary(run_cli, weights_dir, media, out):
    (out / "frames").write_text("an old file")
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out / "frames",
                           "--overwrite", "--weights", weights_dir, *W)
    assert code == 0, err
    assert listing(out) == ["frames"]


def test_composite_refuses_a_text_background(run_cli, media, bad, out):
    code, _, err = run_cli("composite", "--fg", media["video"], "--fg-mask", media["mask_video"], "--bg",
                           bad["text_png"], "-o", out / "o.mp4", *W)
    assert_refused(code, err, bad["text_png"], "not a readable image")
    assert listing(out) == []


# ------------------------------------------------------------------------------------------ make-dataset


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-sources")
    s = {"good": make_source_dir(root / "good", n=4)}
    s["no_mask"] = make_source_dir(root / "no-mask", n=3)
    (s["no_mask"] / "masks" / "img01.png").unlink()
    s["empty"] = root / "empty"
    (s["empty"] / "images").mkdir(parents=True)
    (s["empty"] / "masks").mkdir()
    s["one"] = make_source_dir(root / "one-image", n=1)
    s["corrupt"] = make_source_dir(root / "corrupt", n=3)
    (s["corrupt"] / "images" / "img00.png").write_text("not a picture")
    s["small_masks"] = make_source_dir(root / "small-masks", n=3)
    for f in (s["small_masks"] / "masks").iterdir():
        imwrite(f, np.full((30, 30), 255, np.uint8))
    s["empty_masks"] = make_source_dir(root / "empty-masks", n=3)
    for f in (s["empty_masks"] / "masks").iterdir():
        imwrite(f, np.zeros((72, 80), np.uint8))
    s["unrelated"] = root / "holiday-photos"
    s["unrelated"].mkdir()
    imwrite(s["unrelated"] / "beach.png", np.zeros((8, 8, 3), np.uint8))
    return s


MAKE_DATASET_REFUSALS = [
    ("image-without-its-mask", "no_mask", lambda s: [s["no_mask"] / "images" / "img01.png", "no mask for this image",
                                                     s["no_mask"] / "masks" / "img01.png"]),
    ("no-usable-items", "empty", lambda s: [s["empty"], "no images with masks found"]),
    ("folder-without-images-and-masks", "unrelated", lambda s: [s["unrelated"], "no images with masks found"]),
    ("empty-train-split", "one", lambda s: [s["one"], "the train split is empty"]),
    ("corrupt-source-image", "corrupt", lambda s: [s["corrupt"] / "images" / "img00.png", "not a readable image"]),
]


@pytest.mark.parametrize("case,key,needles", MAKE_DATASET_REFUSALS, ids=[c[0] for c in MAKE_DATASET_REFUSALS])
def test_make_dataset_refuses(run_cli, sources, out, case, key, needles):
    code, _, err = run_cli("make-dataset", sources[key], "-o", out / "pairs", "--train", "2", "--val", "1",
                           "--size", "32", "--quiet")
    assert_refused(code, err, *needles(sources))
    assert listing(out) == []


def test_make_dataset_names_the_source_without_foreground(run_cli, sources, out):
    code, _, err = run_cli("make-dataset", sources["empty_masks"], "-o", out / "pairs", "--train", "2", "--val", "1",
                           "--size", "32", "--quiet")
    assert listing(out) == []
    assert_refused(code, err, sources["empty_masks"])


def test_make_dataset_mask_of_another_size(run_cli, sources, out):

    code, _, err = run_cli("make-dataset", sources["small_masks"], "-o", out / "pairs", "--train", "2", "--val", "1",
                           "--size", "32", "--quiet")
    mask = sources["small_masks"] / "masks"
    if code == 2:
        assert_refused(code, err, mask)
        assert listing(out) == []
    else:
        assert code == 0 and str(mask) in err and "warning" in err


def test_make_dataset_output_in_a_missing_directory(run_cli, sources, out):
    code, _, err = run_cli("make-dataset", sources["good"], "-o", out / "missing" / "pairs", "--train", "2",
                           "--val", "1", "--size", "32", "--quiet")
    assert listing(out) == []
    assert_refused(code, err, out / "missing")


@pytest.mark.parametrize("flags", [["--size", "0"], ["--families", "nosuch"], ["--train", "-1"]],
                         ids=["size-0", "unknown-family", "negative-train"])
def test_make_dataset_bad_flag_values(run_cli, sources, out, flags):
    argv = {"--size": "32", "--train": "2", "--val": "1", flags[0]: flags[1]}
    code, _, err = run_cli("make-dataset", sources["good"], "-o", out / "pairs", "--quiet",
                           *[a for kv in argv.items() for a in kv])
    assert listing(out) == []
    assert_refused(code, err, flags[0])


# ------------------------------------------------------------------------------------------------- train


def _train_refusals(tmp: Path, dataset: Path, source: Path) -> list:
    """(case, argv, needles) for `vharm train`; files are made here."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "steps-string.json").write_text(json.dumps({"steps": "abc"}))
    (tmp / "widths-string.json").write_text(json.dumps({"model": {"widths": "abc"}}))
    (tmp / "not-json.json").write_text("steps: 3\n")
    (tmp / "no-npz").mkdir(exist_ok=True)
    shutil.copytree(dataset / "train", tmp / "no-val" / "train", dirs_exist_ok=True)
    (tmp / "no-run").mkdir(exist_ok=True)
    run = tmp / "run-without-state"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps(to_dict(tiny_train_config(dataset))))
    damaged = tmp / "run-damaged-state"
    damaged.mkdir(exist_ok=True)
    (damaged / "config.json").write_text(json.dumps(to_dict(tiny_train_config(dataset))))
    (damaged / "resume.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}" + b"\0" * 64)
    tiny = ["--preset", "tiny"]
    return [
        ("missing-source-dir", [*tiny, tmp / "no-such-data"], [tmp / "no-such-data", "data directory not found"]),
        ("missing-dataset-dir", [*tiny, "--dataset", tmp / "no-such-pairs"],
         [tmp / "no-such-pairs", "dataset directory not found"]),
        ("dataset-without-pairs", [*tiny, "--dataset", tmp / "no-npz"], [tmp / "no-npz" / "train", "empty split"]),
        ("dataset-with-empty-val-split", [*tiny, "--dataset", tmp / "no-val"],
         [tmp / "no-val" / "val", "empty split"]),
        ("config-wrong-type", ["--config", tmp / "steps-string.json"],
         [tmp / "steps-string.json", "steps: expected an integer, got 'abc'"]),
        ("config-widths-wrong-type", ["--config", tmp / "widths-string.json"],
         [tmp / "widths-string.json", "model.widths: expected a list"]),
        ("config-not-json", ["--config", tmp / "not-json.json"], [tmp / "not-json.json", "not valid JSON"]),
        ("config-missing", ["--config", tmp / "nope.json"], [tmp / "nope.json", "no such config file"]),
        ("resume-dir-without-anything", ["--resume", tmp / "no-run"], [tmp / "no-run" / "config.json", "no such"]),
        ("resume-dir-without-state", ["--resume", run], [run, "no resume.safetensors"]),
        ("resume-state-damaged", ["--resume", damaged], [damaged / "resume.safetensors", "unreadable resume state"]),
        ("source-with-one-image", [*tiny, source], [source, "split is empty"]),
    ]


_TRAIN_IDS = ["missing-source-dir", "missing-dataset-dir", "dataset-without-pairs", "dataset-with-empty-val-split",
              "config-wrong-type", "config-widths-wrong-type", "config-not-json", "config-missing",
              "resume-dir-without-anything", "resume-dir-without-state", "resume-state-damaged",
              "source-with-one-image"]


@pytest.mark.parametrize("case", _TRAIN_IDS)
def test_train_refuses(run_cli, dataset_dir, sources, tmp_path, out, case):
    cases = {c: (argv, needles) for c, argv, needles in _train_refusals(tmp_path / "in", dataset_dir, sources["one"])}
    argv, needles = cases[case]
    code, _, err = run_cli("train", *argv, "--outdir", out, "--threads", "1", "--quiet")
    assert_refused(code, err, *needles)
    assert listing(out) == []  # no run directory was started


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--val-every", "0"), ("--snapshot-every", "0"),
                                        ("--steps", "-3"), ("--precision", "fp16")])
def test_train_bad_flag_values(run_cli, dataset_dir, out, flag, value):
    argv = {"--steps": "2", "--val-every": "1", "--snapshot-every": "2", flag: value}
    code, _, err = run_cli("train", "--preset", "tiny", "--dataset", dataset_dir, "--outdir", out, "--threads", "1",
                           "--quiet", *[a for kv in argv.items() for a in kv])
    assert listing(out) == []
    assert_refused(code, err, flag)


def test_train_outdir_is_a_file(run_cli, dataset_dir, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    code, _, err = run_cli("train", "--preset", "tiny", "--dataset", dataset_dir, "--outdir", tmp_path / "runs",
                           "--steps", "1", "--quiet")
    assert_refused(code, err, tmp_path / "runs")


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def clip(tmp_path_factory, scenes) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-clip")
    c = {k: root / k for k in ("pred", "target", "mask", "mask3", "small", "empty")}
    for folder in c.values():
        folder.mkdir()
    for t, (rgb, mask) in enumerate(scenes[:6]):
        imwrite(c["pred"] / f"{t:03d}.png", np.clip(rgb.astype(int) + 9, 0, 255).astype(np.uint8))
        imwrite(c["target"] / f"{t:03d}.png", rgb)
        imwrite(c["mask"] / f"{t:03d}.png", mask)
        imwrite(c["small"] / f"{t:03d}.png", cv2.resize(rgb, (VIDEO_W // 2, VIDEO_H // 2)))
        if t < 3:
            imwrite(c["mask3"] / f"{t:03d}.png", mask)
    c["root"] = root
    return c


EVALUATE_REFUSALS = [
    ("missing-pred", {"pred": "nope"}, lambda c: [c["root"] / "nope", "no such file or directory"]),
    ("missing-target", {"target": "nope"}, lambda c: [c["root"] / "nope", "no such file or directory"]),
    ("missing-mask", {"mask": "nope"}, lambda c: [c["root"] / "nope", "no such file or directory"]),
    ("pred-dir-empty", {"pred": "empty"}, lambda c: [c["empty"], "no frames in this directory"]),
    ("target-shorter-than-pred", {"target": "mask3"}, lambda c: [c["pred"], "6 frames, but", c["mask3"], "has 3"]),
    ("mask-count-differs", {"mask": "mask3"}, lambda c: [c["mask3"], "3 mask frames for 6 input frames"]),
    ("pred-other-size", {"pred": "small"}, lambda c: [c["small"], "32x24", "64x48", "--resize"]),
    ("json-in-missing-directory", {"json": "no-dir/scores.json"},
     lambda c: [c["root"] / "no-dir" / "scores.json", "does not exist"]),
    ("testset-missing", {"testset": "no-testset"},
     lambda c: [c["root"] / "no-testset" / "manifest.json", "missing"]),
]


@pytest.mark.parametrize("case,given,needles", EVALUATE_REFUSALS, ids=[c[0] for c in EVALUATE_REFUSALS])
def test_evaluate_refuses(run_cli, clip, case, given, needles):
    before = listing(clip["root"])
    if "testset" in given:
        argv = ["--testset", clip["root"] / given["testset"], "--method", "composite", "--quiet"]
    else:
        argv = [a for k in ("pred", "target", "mask") for a in (f"--{k}", clip["root"] / given.get(k, k))]
        argv += ["--json", clip["root"] / given["json"]] if "json" in given else []
    code, stdout, err = run_cli("evaluate", *argv)
    assert_refused(code, err, *needles(clip))
    assert stdout == "" and listing(clip["root"]) == before


def test_evaluate_resizes_other_sized_predictions_only_when_asked_and_says_so(run_cli, clip):
    code, stdout, err = run_cli("evaluate", "--pred", clip["small"], "--target", clip["target"], "--mask",
                                clip["mask"], "--resize")
    assert code == 0
    (line,) = warnings_of(err)
    assert str(clip["small"]) in line and "32x24 frames resized to the ground truth's 64x48" in line
    assert json.loads(stdout)["frames"] == 6


def test_evaluate_json_never_replaces_an_input_frame(run_cli, clip, tmp_path):
    target = shutil.copytree(clip["target"], tmp_path / "target")
    frame = target / "002.png"
    before = frame.read_bytes()
    code, _, err = run_cli("evaluate", "--pred", clip["pred"], "--target", target, "--mask", clip["mask"],
                           "--json", frame)
    assert frame.read_bytes() == before
    assert_refused(code, err, frame)


# ----------------------------------------------------------------------------------------- nothing lost


def _long_video(path: Path, scenes, frames: int = 240) -> Path:
    return write_video(path, [scenes[t % len(scenes)][0] for t in range(frames)], crf=30)


@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_no_output_and_keeps_the_old_one(weights_dir, media, tmp_path, scenes):
    """SIGINT after the first frames: status 130, the existing output untouched, nothing new, no temporaries."""
    clip = _long_video(tmp_path / "long.mp4", scenes)
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.mp4").write_bytes(b"the previous, finished output")
    proc = vharm_process("harmonize", clip, "-m", media["static_mask"], "-o", out / "o.mp4", "--overwrite",
                         "--save-mask", out / "masks", "--weights", weights_dir, launcher=True)

    def some_frames_written():
        return sum(len(list(d.glob("*.png"))) for d in out.glob(".masks.*")) >= 3

    started = wait_for(some_frames_written, 60, proc)
    assert started and proc.poll() is None, "vharm finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "vharm: interrupted" and "Traceback" not in err
    assert listing(out) == ["o.mp4"]
    assert (out / "o.mp4").read_bytes() == b"the previous, finished output"


def _resume_state(run: Path) -> dict:
    """Loads resume.safetensors completely (every tensor and the metadata): a partial file would fail here."""
    with safe_open(str(run / "resume.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["json"])
    assert "rng.torch" in tensors and any(k.startswith("g.") for k in tensors)
    return meta


def _stats_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]


TRAIN = ("train", "--preset", "tiny", "--threads", "1", "--quiet")


@pytest.mark.slow
def test_sigterm_saves_a_resume_point_and_resume_continues(dataset_dir, tmp_path):
    runs = tmp_path / "runs"
    proc = vharm_process(*TRAIN, "--dataset", dataset_dir, "--outdir", runs, "--steps", "2000", "--val-every", "2",
                         "--snapshot-every", "1000")
    run = runs / "00000-tiny"
    # stats.jsonl gets its first row inside the training loop, after the signal handlers are in place
    assert wait_for(lambda: (run / "stats.jsonl").is_file() and (run / "stats.jsonl").stat().st_size > 0, 60, proc)
    proc.send_signal(signal.SIGTERM)
    code, stdout, err = finish(proc)
    assert code == 143, err
    assert "Traceback" not in err and "run finished" not in stdout
    step = _resume_state(run)["step"]
    assert 2 <= step < 2000
    assert f"stopped by signal {int(signal.SIGTERM)} at step {step}" in (run / "log.txt").read_text()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # a clean stop leaves no temporaries

    proc = vharm_process("train", "--resume", run, "--steps", step + 3, "--quiet")
    code, stdout, err = finish(proc)
    assert code == 0, err
    assert f"run finished: {run}" in stdout
    assert _resume_state(run)["step"] == step + 3
    assert (run / f"network-snapshot-{step + 3:06d}" / "generator.safetensors").is_file()
    assert f"step {step}/{step + 3}" in (run / "log.txt").read_text()  # it continued, it did not restart
    assert listing(runs) == ["00000-tiny"]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(dataset_dir, tmp_path):
    """Two SIGKILLs at seeded random moments; each time the resume state on disk loads completely (it is written
    atomically), and after `--resume` the final weights equal those of an uninterrupted run of the same steps."""
    from vharm.train.loop import train

    steps, snap, val = 48, 2, 8
    flags = ("--steps", steps, "--snapshot-every", snap, "--val-every", val)
    runs = tmp_path / "killed"
    run = runs / "00000-tiny"
    rng = random.Random(20240607)
    proc = vharm_process(*TRAIN, "--dataset", dataset_dir, "--outdir", runs, *flags)
    for kill in range(2):
        if kill:
            proc = vharm_process("train", "--resume", run, "--quiet")
        before = _resume_state(run)["step"] if (run / "resume.safetensors").exists() else 0
        # a random moment: after a random number of this process's resume points, plus a random fraction of time
        target = before + rng.choice([2, 4, 6])
        assert wait_for(lambda: (run / "resume.safetensors").exists()
                        and _resume_state(run)["step"] >= target, 300, proc), proc.poll()
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "training ended before the kill: make it longer"
        proc.kill()
        finish(proc)
        assert proc.returncode == -signal.SIGKILL
        assert target <= _resume_state(run)["step"] < steps  # present, and loads in full

    code, stdout, err = finish(vharm_process("train", "--resume", run, "--quiet"))
    assert code == 0, err
    assert _resume_state(run)["step"] == steps

    cfg = tiny_train_config(dataset_dir, steps=steps, snapshot_every=snap, val_every=val)
    whole = train(cfg, tmp_path / "whole", progress=False)
    for name in ("generator.safetensors", "discriminator.safetensors"):
        a = load_file(whole / f"network-snapshot-{steps:06d}" / name)
        b = load_file(run / f"network-snapshot-{steps:06d}" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
    # every validation step is in stats.jsonl (rows after the last resume point are written again)
    assert set(_stats_steps(run)) == set(_stats_steps(whole)) == set(range(val, steps + 1, val))


def test_resume_state_is_replaced_atomically(tmp_path, monkeypatch):
    """A crash while resume.safetensors is being rewritten leaves the previous, complete file (and no temporary)."""
    from vharm.train import resume as train_mod

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "resume.safetensors"
    train_mod.save_resume(path, 5, {"g": net}, {"opt_g": opt}, 1.0)
    good = path.read_bytes()

    real_save = train_mod.save_file

    def dies_half_way(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[:len(data) // 2])
        raise KeyboardInterrupt  # e.g. Ctrl-C during the write

    monkeypatch.setattr(train_mod, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        train_mod.save_resume(path, 6, {"g": net}, {"opt_g": opt}, 0.5)
    assert path.read_bytes() == good and listing(tmp_path) == ["resume.safetensors"]
    step, best = train_mod.load_resume(path, {"g": torch.nn.Linear(3, 2)}, {"opt_g": torch.optim.Adam(
        torch.nn.Linear(3, 2).parameters())})
    assert (step, best) == (5, 1.0)


def test_broken_frame_in_a_directory_with_skip_bad_frames(run_cli, weights_dir, bad, media, out):
    """A frame in the middle of a directory that does not decode is replaced by the previous output, and said."""
    code, _, err = run_cli("harmonize", bad["broken_frame_dir"], "-m", media["static_mask"], "-o", out / "frames",
                           "--skip-bad-frames", "--weights", weights_dir, *W)
    assert code == 0, err
    assert f"{bad['broken_frame']}: frame 3 failed to decode; repeating the previous output" in err
    written = read_frames_dir(out / "frames")
    assert sorted(written) == sorted(p.name for p in media["frames"].iterdir())
    assert np.array_equal(written["frame_003.png"], written["frame_002.png"])
    assert not np.array_equal(written["frame_004.png"], written["frame_002.png"])
