"""The `vharm` command line: harmonize, composite, demo, make-dataset; exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import (
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_H,
    VIDEO_W,
    blob_mask,
    imread,
    imwrite,
    read_frames_dir,
    read_video,
    write_video,
)

from vharm import Harmonizer
from vharm.inference.harmonizer import to_tensor, to_uint8

ROOT = Path(__file__).resolve().parents[1]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("vharm")
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ------------------------------------------------------------------------------------------ harmonize


def test_harmonize_video_to_mp4(run_cli, weights_dir, media, tmp_path):
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out,
                                "--weights", weights_dir, "--quiet")
    assert code == 0, err
    assert f"{VIDEO_FRAMES} frame(s)" in stdout and str(out) in stdout
    frames, fps = read_video(out)
    assert len(frames) == VIDEO_FRAMES and frames[0].shape == (VIDEO_H, VIDEO_W, 3) and fps == VIDEO_FPS


def test_harmonize_encoder_options(run_cli, weights_dir, media, tmp_path):
    small, big = tmp_path / "crf40.mp4", tmp_path / "crf5.mp4"
    for out, crf in ((small, 40), (big, 5)):
        code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out, "--crf", crf,
                               "--x264-preset", "ultrafast", "--weights", weights_dir, "--quiet")
        assert code == 0, err
    assert small.stat().st_size < big.stat().st_size
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mkv",
                           "--codec", "mpeg4", "--weights", weights_dir, "--quiet")
    assert code == 0, err
    with av.open(str(tmp_path / "o.mkv")) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"


@pytest.mark.parametrize("flags", [["--codec", "no-such-codec"], ["--x264-preset", "warp-speed"], ["--frames", "-1"],
                                   ["--start", "-2"]])
def test_bad_encoder_or_slice_flags_are_usage_errors(run_cli, weights_dir, media, tmp_path, flags):
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                           *flags, "--weights", weights_dir, "--quiet")
    assert not (tmp_path / "o.mp4").exists()
    assert_one_line_error(code, err, flags[0])


def test_harmonize_video_to_frames_and_slice(run_cli, weights_dir, media, tmp_path):
    out = tmp_path / "frames"
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out, "--start", "3",
                           "--frames", "2", "--weights", weights_dir, "--quiet")
    assert code == 0, err
    # %05d names are the input's frame numbers
    assert sorted(read_frames_dir(out)) == ["00003.png", "00004.png"]


def test_api_and_cli_same_pixels(run_cli, weights_dir, media, tmp_path, scenes):
    out = tmp_path / "out.png"
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", out,
                           "--weights", weights_dir, "--quiet")
    assert code == 0, err
    rgb, mask = scenes[3]
    h = Harmonizer.from_pretrained(weights_dir)
    pred = h(to_tensor(rgb), torch.from_numpy(mask.astype(np.float32) / 255)[None, None])
    # The file path rounds the transformed colour to uint8 before the mask blend, the tensor path after it:
    # the same pixels up to that one rounding step.
    diff = np.abs(imread(out).astype(int) - to_uint8(pred).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05


def test_no_mask_and_save_mask(run_cli, weights_dir, media, tmp_path):
    out, saved = tmp_path / "out.mp4", tmp_path / "map.mp4"
    code, _, err = run_cli("harmonize", media["video"], "--no-mask", "--save-mask", saved, "-o", out,
                           "--weights", weights_dir, "--quiet")
    assert code == 0, err
    frames, _ = read_video(out)
    maps, _ = read_video(saved)
    assert len(frames) == len(maps) == VIDEO_FRAMES
    assert maps[0].shape == (VIDEO_H, VIDEO_W, 3) and maps[0].std() > 1


def test_save_mask_as_image(run_cli, weights_dir, media, tmp_path, scenes):
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", tmp_path / "o.png",
                           "--save-mask", tmp_path / "used.png", "--weights", weights_dir, "--quiet")
    assert code == 0, err
    assert np.array_equal(imread(tmp_path / "used.png")[..., 0], scenes[3][1])


def test_refuses_to_overwrite(run_cli, weights_dir, media, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out,
                           "--weights", weights_dir, "--quiet")
    assert_one_line_error(code, err, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    # an output directory too
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep.txt").write_text("x")
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "dir",
                           "--weights", weights_dir, "--quiet")
    assert_one_line_error(code, err, "already exists")
    assert (tmp_path / "dir" / "keep.txt").read_text() == "x"
    code, _, err = run_cli("harmonize", media["video"], "-m", media["mask_video"], "-o", out, "--overwrite",
                           "--weights", weights_dir, "--quiet")
    assert code == 0, err
    assert len(read_video(out)[0]) == VIDEO_FRAMES


@pytest.mark.parametrize("case,needles", [
    ("missing-input", ["no such file"]),
    ("garbage-video", ["not a readable video"]),
    ("empty-video", ["empty file"]),
    ("bad-extension", ["unknown output extension"]),
    ("mask-size", ["mask size"]),
    ("no-mask", ["no mask"]),
    ("mask-and-no-mask", ["exclude"]),
    ("missing-weights", ["weights"]),
    ("bad-smoothing", ["temporal-smoothing"]),
    ("bad-gate", ["--min-change", "min_change <= full_change", "5.0 and 2.0"]),
    ("bad-strength", ["strength is 2.5 (--strength): must be in [0, 2]"]),
    ("negative-strength", ["strength is -1.0 (--strength)"]),
    ("bad-brighten", ["brighten is 0.5 (--brighten): must be in [1, 10]"]),
    ("bad-g-steps", ["g_steps is 0 (--g-steps): must be in [1, 10]"]),
    ("composite-bad-strength", ["strength is 3.0 (--strength): must be in [0, 2]"]),
    ("missing-output-flag", ["-o/--output"]),
    ("output-dir-missing", ["does not exist"]),
    ("unknown-command", ["invalid choice"]),
])
def test_bad_input_is_one_line_exit_2(run_cli, weights_dir, media, tmp_path, case, needles):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(2048))
    (tmp_path / "empty.mp4").write_bytes(b"")
    imwrite(tmp_path / "small-mask.png", blob_mask(20, 20, 10, 10, 5, 5))
    w = ["--weights", weights_dir, "--quiet"]
    argv = {
        "missing-input": ["harmonize", tmp_path / "nope.mp4", "-m", media["mask_video"], "-o", tmp_path / "o.mp4", *w],
        "garbage-video": ["harmonize", garbage, "-m", media["static_mask"], "-o", tmp_path / "o.mp4", *w],
        "empty-video": ["harmonize", tmp_path / "empty.mp4", "-m", media["static_mask"], "-o", tmp_path / "o.mp4", *w],
        "bad-extension": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.xyz", *w],
        "mask-size": ["harmonize", media["video"], "-m", tmp_path / "small-mask.png", "-o", tmp_path / "o.mp4", *w],
        "no-mask": ["harmonize", media["video"], "-o", tmp_path / "o.mp4", *w],
        "mask-and-no-mask": ["harmonize", media["video"], "-m", media["mask_video"], "--no-mask", "-o",
                             tmp_path / "o.mp4", *w],
        "missing-weights": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                            "--weights", tmp_path / "no-weights", "--quiet"],
        "bad-smoothing": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                          "--temporal-smoothing", "1.5", *w],
        "bad-gate": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                     "--min-change", "5", "--full-change", "2", *w],
        "bad-strength": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                         "--strength", "2.5", *w],
        "negative-strength": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                              "--strength", "-1", *w],
        "bad-brighten": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                         "--brighten", "0.5", *w],
        "bad-g-steps": ["harmonize", media["video"], "-m", media["mask_video"], "-o", tmp_path / "o.mp4",
                        "--g-steps", "0", *w],
        "composite-bad-strength": ["composite", "--fg", media["video"], "--fg-mask", media["mask_video"], "--bg",
                                   media["image"], "--harmonize", "-o", tmp_path / "o.mp4", "--strength", "3", *w],
        "missing-output-flag": ["harmonize", media["video"], "-m", media["mask_video"], *w],
        "output-dir-missing": ["harmonize", media["video"], "-m", media["mask_video"], "-o",
                               tmp_path / "no" / "o.mp4", *w],
        "unknown-command": ["harmonise", media["video"]],
    }[case]
    code, out, err = run_cli(*argv)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.xyz").exists()


def test_mask_free_needs_d(run_cli, weights_no_d, media, tmp_path):
    code, _, err = run_cli("harmonize", media["image"], "--no-mask", "-o", tmp_path / "o.png",
                           "--weights", weights_no_d, "--quiet")
    assert_one_line_error(code, err, "discriminator")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_usage_error(run_cli, weights_dir, media, tmp_path):
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", tmp_path / "o.png",
                           "--device", "cuda", "--weights", weights_dir, "--quiet")
    assert_one_line_error(code, err, "cuda")


def test_save_mask_same_as_output_is_refused(run_cli, weights_dir, media, tmp_path):
    out = tmp_path / "o.png"
    code, _, err = run_cli("harmonize", media["image"], "-m", media["image_mask"], "-o", out, "--save-mask", out,
                           "--weights", weights_dir, "--quiet")
    assert_one_line_error(code, err, "o.png")


def test_sixteen_bit_and_gray_inputs(run_cli, weights_dir, tmp_path, scenes):
    rgb, mask = scenes[0]
    imwrite(tmp_path / "c8.png", rgb)
    imwrite(tmp_path / "c16.png", rgb.astype(np.uint16) * 257)
    imwrite(tmp_path / "gray.png", rgb[..., 1])
    imwrite(tmp_path / "m.png", mask)
    outs = {}
    for name in ("c8", "c16", "gray"):
        code, _, err = run_cli("harmonize", tmp_path / f"{name}.png", "-m", tmp_path / "m.png", "-o",
                               tmp_path / f"o-{name}.png", "--weights", weights_dir, "--quiet")
        assert code == 0, err
        outs[name] = imread(tmp_path / f"o-{name}.png")
    assert np.array_equal(outs["c16"], outs["c8"])
    assert outs["gray"].shape == (VIDEO_H, VIDEO_W, 3)
    assert np.array_equal(outs["gray"][mask == 0], np.repeat(rgb[..., 1:2], 3, 2)[mask == 0])


def test_temporal_smoothing_flag(run_cli, weights_dir, media, tmp_path):
    outs = []
    for a in ("0", "0.8"):
        out = tmp_path / f"smooth-{a.replace('.', '_')}"
        code, _, err = run_cli("harmonize", media["frames"], "-m", media["mask_frames"], "-o", out,
                               "--temporal-smoothing", a, "--weights", weights_dir, "--quiet")
        assert code == 0, err
        outs.append(read_frames_dir(out))
    plain, smooth = outs
    assert np.array_equal(plain["frame_000.png"], smooth["frame_000.png"])
    assert not np.array_equal(plain["frame_005.png"], smooth["frame_005.png"])


def test_change_gate_flags(run_cli, weights_dir, media, tmp_path):
    """A gate above any change the test weights make passes the frames through; 0,0 leaves them harmonized."""
    outs = {}
    for name, gate in (("off", ("0", "0")), ("high", ("300", "300"))):
        out = tmp_path / f"gate-{name}"
        code, _, err = run_cli("harmonize", media["frames"], "-m", media["mask_frames"], "-o", out, "--min-change",
                               gate[0], "--full-change", gate[1], "--weights", weights_dir, "--quiet")
        assert code == 0, err
        outs[name] = read_frames_dir(out)
    inputs = read_frames_dir(media["frames"])
    assert all(np.array_equal(outs["high"][k], inputs[k]) for k in inputs)
    assert not np.array_equal(outs["off"]["frame_000.png"], inputs["frame_000.png"])


def test_strength_flag(run_cli, weights_dir, media, tmp_path):
    """--strength 0 gives the input back exactly; 2 changes the foreground twice as much as 1."""
    outs = {}
    for s in ("0", "1", "2"):
        out = tmp_path / f"strength-{s}"
        code, _, err = run_cli("harmonize", media["frames"], "-m", media["mask_frames"], "-o", out, "--strength", s,
                               "--weights", weights_dir, "--quiet")
        assert code == 0, err
        outs[s] = read_frames_dir(out)
    inputs = read_frames_dir(media["frames"])
    assert all(np.array_equal(outs["0"][k], inputs[k]) for k in inputs)
    rgb, twice = inputs["frame_000.png"].astype(int), outs["2"]["frame_000.png"].astype(int)
    inside = (read_frames_dir(media["mask_frames"])["frame_000.png"][..., 0] == 255) & (twice > 0).all(-1) & (
        twice < 255).all(-1)  # full-weight pixels that 8 bits do not clip
    once = (outs["1"]["frame_000.png"] - rgb)[inside]
    assert np.abs(once).mean() > 3 and np.abs((twice - rgb)[inside] - 2 * once).max() <= 1


@pytest.mark.parametrize("flag,attr,values", [("--brighten", "brighten", (1.0, 4.0)), ("--g-steps", "g_steps", (1, 3))])
def test_inference_flags_reach_the_harmonizer(run_cli, weights_dir, media, tmp_path, monkeypatch, flag, attr, values):
    """--brighten S and --g-steps N override the weights' settings (`Harmonizer.brighten`, `.g_steps`), as the other
    inference flags do."""
    from vharm.inference.harmonizer import Harmonizer

    seen = []
    original = Harmonizer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(getattr(self, attr))

    monkeypatch.setattr(Harmonizer, "__init__", spy)
    for value in values:
        out = tmp_path / f"out{value:g}"
        code, _, err = run_cli("harmonize", media["frames"], "-m", media["mask_frames"], "-o", out, flag, str(value),
                               "--weights", weights_dir, "--quiet")
        assert code == 0, err
    assert seen[0] == values[0] and seen[-1] == values[1]


def test_composite_strength_flag(run_cli, weights_dir, composite_inputs, tmp_path):
    c = composite_inputs
    paste = ("composite", "--fg", c["fg_frames"], "--fg-mask", c["alpha_frames"], "--bg", c["bg"], "--quiet")
    code, _, err = run_cli(*paste, "-o", tmp_path / "plain")
    assert code == 0, err
    code, _, err = run_cli(*paste, "-o", tmp_path / "zero", "--harmonize", "--strength", "0", "--weights", weights_dir)
    assert code == 0, err
    plain, zero = read_frames_dir(tmp_path / "plain"), read_frames_dir(tmp_path / "zero")
    assert all(np.array_equal(plain[k], zero[k]) for k in plain)


def test_version(run_cli):
    with pytest.raises(SystemExit) as e:
        run_cli("--version")
    assert e.value.code == 0


def test_python_dash_m_subprocess(weights_dir, media, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out.png"
    ok = subprocess.run([sys.executable, "-m", "vharm", "harmonize", str(media["image"]), "-m",
                         str(media["image_mask"]), "-o", str(out), "--weights", str(weights_dir), "--quiet"],
                        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert ok.returncode == 0, ok.stderr
    assert imread(out).shape == (VIDEO_H, VIDEO_W, 3)
    bad = subprocess.run([sys.executable, "-m", "vharm", "harmonize", str(tmp_path / "missing.mp4"), "-o",
                          str(tmp_path / "x.mp4"), "--weights", str(weights_dir)],
                         capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "missing.mp4" in bad.stderr


# ------------------------------------------------------------------------------------------ composite


@pytest.fixture(scope="module")
def composite_inputs(tmp_path_factory, scenes):
    root = tmp_path_factory.mktemp("composite")
    fg = write_video(root / "fg.mp4", [s[0] for s in scenes])
    alpha = write_video(root / "alpha.mp4", [s[1] for s in scenes])
    (root / "fg-frames").mkdir()
    (root / "alpha-frames").mkdir()
    for t, (rgb, mask) in enumerate(scenes):
        imwrite(root / "fg-frames" / f"{t:03d}.png", rgb)
        imwrite(root / "alpha-frames" / f"{t:03d}.png", mask)
    bg_rgb = np.full((80, 96, 3), (30, 90, 160), np.uint8)
    bg_rgb[40:] = (60, 140, 60)
    imwrite(root / "bg.png", bg_rgb)
    (root / "bg-frames").mkdir()
    for t in range(5):
        imwrite(root / "bg-frames" / f"{t:03d}.png", np.roll(bg_rgb, 3 * t, axis=1))
    return {"fg": fg, "alpha": alpha, "fg_frames": root / "fg-frames", "alpha_frames": root / "alpha-frames",
            "bg": root / "bg.png", "bg_rgb": bg_rgb, "bg_frames": root / "bg-frames"}


def test_composite_pastes_at_position(run_cli, composite_inputs, tmp_path, scenes):
    c = composite_inputs
    out = tmp_path / "comp"
    code, stdout, err = run_cli("composite", "--fg", c["fg_frames"], "--fg-mask", c["alpha_frames"], "--bg",
                                c["bg"], "--position", "10,20", "-o", out, "--quiet")
    assert code == 0, err
    frames = read_frames_dir(out)
    assert sorted(frames) == [f"{i:05d}.png" for i in range(VIDEO_FRAMES)]
    f0 = frames["00000.png"]
    assert f0.shape == (80, 96, 3)
    rgb, mask = scenes[0]
    region = f0[20:20 + VIDEO_H, 10:10 + VIDEO_W]
    assert np.array_equal(region[mask == 255], rgb[mask == 255])
    assert np.array_equal(region[mask == 0], c["bg_rgb"][20:20 + VIDEO_H, 10:10 + VIDEO_W][mask == 0])
    outside = np.ones((80, 96), bool)
    outside[20:20 + VIDEO_H, 10:10 + VIDEO_W] = False
    assert np.array_equal(f0[outside], c["bg_rgb"][outside])


def test_composite_with_harmonize_and_save_mask(run_cli, weights_dir, composite_inputs, tmp_path):
    c = composite_inputs
    plain, harm, saved = tmp_path / "plain.mp4", tmp_path / "harm.mp4", tmp_path / "mask"
    code, _, err = run_cli("composite", "--fg", c["fg"], "--fg-mask", c["alpha"], "--bg", c["bg"], "-o", plain,
                           "--quiet")
    assert code == 0, err
    code, _, err = run_cli("composite", "--fg", c["fg"], "--fg-mask", c["alpha"], "--bg", c["bg"], "-o", harm,
                           "--harmonize", "--save-mask", saved, "--weights", weights_dir, "--quiet")
    assert code == 0, err
    a, fps = read_video(plain)
    b, _ = read_video(harm)
    assert len(a) == len(b) == VIDEO_FRAMES and a[0].shape == b[0].shape == (80, 96, 3) and fps == VIDEO_FPS
    masks = read_frames_dir(saved)
    assert len(masks) == VIDEO_FRAMES
    m = masks["00000.png"][..., 0]
    assert (m > 200).mean() > 0.05  # the pasted (centred) foreground
    inside, outside = m > 250, m == 0
    assert np.abs(a[0].astype(int) - b[0])[inside].mean() > 5
    assert np.abs(a[0].astype(int) - b[0])[outside].mean() < 2  # video coding noise only


@pytest.mark.parametrize("length,expected", [("shortest", 5), ("fg", VIDEO_FRAMES), ("bg", 5)])
def test_composite_length(run_cli, composite_inputs, tmp_path, length, expected):
    c = composite_inputs
    code, _, err = run_cli("composite", "--fg", c["fg_frames"], "--fg-mask", c["alpha_frames"], "--bg",
                           c["bg_frames"], "--length", length, "--scale", "0.5", "-o", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert len(read_frames_dir(tmp_path / "o")) == expected


def test_composite_errors(run_cli, composite_inputs, tmp_path):
    c = composite_inputs
    code, _, err = run_cli("composite", "--fg", c["fg"], "--fg-mask", c["bg"], "--bg", c["bg"], "-o",
                           tmp_path / "o.mp4", "--quiet")
    assert_one_line_error(code, err, "mask size")
    code, _, err = run_cli("composite", "--fg", c["fg"], "--fg-mask", c["alpha"], "--bg", c["bg"], "-o",
                           tmp_path / "o.mp4", "--position", "left", "--quiet")
    assert_one_line_error(code, err, "X,Y")
    code, _, err = run_cli("composite", "--fg", c["fg"], "--fg-mask", c["alpha"], "--bg", c["bg"], "-o",
                           tmp_path / "o.mp4", "--scale", "0", "--quiet")
    assert_one_line_error(code, err, "scale")


# ------------------------------------------------------------------------------------------------ demo


def test_demo(run_cli, weights_dir, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--weights", weights_dir, "-o", out, "--quiet")
    assert code == 0, err
    for name in ("input.mp4", "output.mp4", "side-by-side.mp4", "side-by-side.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in stdout
    inp, fps = read_video(out / "input.mp4")
    outp, _ = read_video(out / "output.mp4")
    side, _ = read_video(out / "side-by-side.mp4")
    assert len(inp) == len(outp) == len(side) > 10 and fps == 25
    assert inp[0].shape == outp[0].shape and side[0].shape[1] == 2 * inp[0].shape[1]
    png = imread(out / "side-by-side.png")
    assert png.shape == side[0].shape
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(inp, outp)]) > 1  # it harmonized
    # running it again replaces the files
    code, _, err = run_cli("demo", "--weights", weights_dir, "-o", out, "--quiet")
    assert code == 0, err


# ---------------------------------------------------------------------------------------- make-dataset


def test_make_dataset_cli(run_cli, source_dir, tmp_path):
    out = tmp_path / "pairs"
    argv = ["make-dataset", source_dir, "-o", out, "--train", "3", "--val", "1", "--size", "32", "--quiet"]
    code, stdout, err = run_cli(*argv)
    assert code == 0, err
    assert "wrote 4 pairs" in stdout
    assert len(list((out / "train").glob("*.npz"))) == 3 and (out / "contact-sheet.png").is_file()
    code, _, err = run_cli(*argv)
    assert_one_line_error(code, err, "already exists")
    code, _, err = run_cli(*argv, "--overwrite", "--families", "hue")
    assert code == 0, err
    code, _, err = run_cli("make-dataset", tmp_path / "nowhere", "-o", tmp_path / "p2", "--quiet")
    assert_one_line_error(code, err, "not found")
    assert not (tmp_path / "p2").exists()


def test_batch_with_two_jobs_is_resumable(run_cli, weights_dir, media, tmp_path):
    jobs = tmp_path / "jobs.txt"
    second = tmp_path / "second.mp4"
    second.write_bytes(Path(media["video"]).read_bytes())
    jobs.write_text(f"# composite<TAB>mask\n{media['video']}\t{media['mask_video']}\n{second}\t{media['mask_video']}\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli("batch", jobs, "-o", out, "--jobs", "2", "--weights", weights_dir)
    assert code == 0, err
    assert "2 done, 0 failed" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert {j["status"] for j in manifest["jobs"].values()} == {"done"}
    # Each worker streams with the threads it was given: two workers take half the cores between them.
    assert {j["threads"] for j in manifest["jobs"].values()} == {max(1, (os.cpu_count() or 2) // 4)}
    assert len(read_video(out / f"{Path(media['video']).stem}.mp4")[0]) == VIDEO_FRAMES
    # a second run skips both; a deleted output is redone
    (out / "second.mp4").unlink()
    code, stdout, err = run_cli("batch", jobs, "-o", out, "--jobs", "2", "--weights", weights_dir)
    assert code == 0, err
    assert "1 of 2 already done; 1 to run" in stdout and (out / "second.mp4").is_file()


def test_batch_workers_use_the_inference_flags(run_cli, weights_dir, media, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"{media['video']}\t{media['mask_video']}\n")
    outs = {}
    for name, gate in (("off", "0"), ("high", "300")):
        code, _, err = run_cli("batch", jobs, "-o", tmp_path / name, "--weights", weights_dir, "--min-change", gate,
                               "--full-change", gate, "--crf", "0")
        assert code == 0, err
        outs[name] = read_video(tmp_path / name / f"{Path(media['video']).stem}.mp4")[0][0].astype(int)
    source = read_video(media["video"])[0][0].astype(int)
    # A gate above any change passes the frames through (up to the re-encode); the gate off harmonizes them.
    assert np.abs(outs["high"] - source).mean() < np.abs(outs["off"] - source).mean() / 4


def test_batch_threads_flag_reaches_the_workers(run_cli, weights_dir, media, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"{media['video']}\t{media['mask_video']}\n")
    code, _, err = run_cli("batch", jobs, "-o", tmp_path / "out", "--weights", weights_dir, "--threads", "3")
    assert code == 0, err
    (job,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"].values()
    assert job["threads"] == 3


def test_batch_reports_a_failed_job(run_cli, weights_dir, media, tmp_path):
    jobs = tmp_path / "jobs.txt"
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    jobs.write_text(f"{media['video']}\t{media['mask_video']}\n{bad}\t{media['mask_video']}\n")
    code, stdout, err = run_cli("batch", jobs, "-o", tmp_path / "out", "--weights", weights_dir)
    assert code == 2 and "bad.mp4: not a readable video" in err and "1 done, 1 failed" in stdout


def test_ensemble_command(run_cli, weights_dir, weights_no_d, tmp_path):
    import shutil

    from conftest import perturb_generator

    from vharm.models import Generator

    other = tmp_path / "other"
    shutil.copytree(weights_dir, other)
    perturb_generator(Generator.from_pretrained(weights_dir), seed=5).save_pretrained(other)
    code, out, _ = run_cli("ensemble", weights_dir, other, "-o", tmp_path / "ens")
    assert code == 0 and "mean of 2" in out
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert cfg["model"]["members"] == 2 and [m["weights"] for m in cfg["members"]] == [str(weights_dir), str(other)]
    h = Harmonizer.from_pretrained(tmp_path / "ens")  # G and D load
    assert h.generator.cfg.members == 2 and h.discriminator is not None
    code, _, err = run_cli("ensemble", weights_dir, other, "-o", tmp_path / "ens")
    assert_one_line_error(code, err, "ens", "--overwrite")
    code, _, err = run_cli("ensemble", weights_dir, "-o", tmp_path / "one")
    assert_one_line_error(code, err, "at least two")
    code, _, _ = run_cli("ensemble", weights_no_d, weights_no_d, "-o", tmp_path / "no-d")  # G's without D
    assert code == 0 and not (tmp_path / "no-d" / "discriminator.safetensors").exists()
    assert Harmonizer.from_pretrained(tmp_path / "no-d").generator.cfg.members == 2
