"""Shared fixtures: tiny weights, a tiny synthetic source folder, tiny videos, frame directories and masks.

Everything is generated here (seeded, small, CPU only); nothing reads ../shared/data.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from vharm.config import preset
from vharm.io.video import FrameSource
from vharm.models import Discriminator, Generator

# Small thread count: the suite runs beside other jobs on a 2-core machine.
torch.set_num_threads(1)

VIDEO_W, VIDEO_H, VIDEO_FRAMES, VIDEO_FPS = 64, 48, 8, 12


# --------------------------------------------------------------------------------------------- helpers


def tiny_model_cfg(**changes):
    """The `tiny` preset's ModelConfig, optionally changed."""
    import dataclasses

    return dataclasses.replace(preset("tiny").model, **changes)


def perturb_generator(g: Generator, seed: int = 0) -> Generator:
    """Gives a (zero-initialised, identity) affine-head G a definite, input-dependent colour change."""
    gen = torch.Generator().manual_seed(seed)
    out = g.net.out
    with torch.no_grad():
        out.weight.copy_(torch.randn(out.weight.shape, generator=gen) * 0.05)
        if g.cfg.head == "affine":
            # rows: R' = 0.8 R + 0.15, G' = 0.9 G + 0.05, B' = 0.7 B + 0.1 (plus the small random part)
            out.bias.copy_(torch.tensor([-0.2, 0, 0, 0.15, 0, -0.1, 0, 0.05, 0, 0, -0.3, 0.1]))
        else:
            out.bias.copy_(torch.randn(out.bias.shape, generator=gen) * 0.2)
    return g


def blob_mask(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """uint8 (H, W) ellipse mask, 255 inside."""
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), (int(rx), int(ry)), 0, 0, 360, 255, -1)
    return m


def scene(h: int, w: int, t: int, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a coloured foreground blob that moves with t: (rgb uint8, mask uint8)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([40 + 120 * xs / w, 60 + 100 * ys / h, 150 - 60 * xs / w + 20 * np.sin(ys / 5 + t)], -1)
    rng = np.random.default_rng(rng_seed)
    bg = bg + rng.normal(0, 6, bg.shape)
    mask = blob_mask(h, w, w * 0.4 + 2 * t, h * 0.5, w * 0.22, h * 0.3)
    fg = np.stack([210 + 30 * np.sin(xs / 4), 120 + 40 * np.cos(ys / 3), 60 + 0 * xs], -1)
    m = mask[..., None] / 255.0
    rgb = np.clip(np.round(m * fg + (1 - m) * bg), 0, 255).astype(np.uint8)
    return rgb, mask


def write_video(path: Path, frames: list[np.ndarray], fps: int = VIDEO_FPS, crf: int = 12) -> Path:
    """Writes uint8 RGB frames as an H.264 yuv420p video with PyAV."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in frames:
            if f.ndim == 2:
                f = np.repeat(f[..., None], 3, 2)
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames (uint8 RGB, decoded as vharm decodes them) and the average frame rate of a video."""
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
    return [f.rgb for f in FrameSource(path)], fps


def write_vfr_video(path: Path, pts_ms: list[int], audio: bool = False) -> Path:
    """A video with variable frame timing (time base 1/1000) and optionally an AAC track."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = VIDEO_W, VIDEO_H, "yuv420p"
        v.options = {"preset": "ultrafast", "bframes": "0"}
        v.time_base = v.codec_context.time_base = Fraction(1, 1000)
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        for i, t in enumerate(pts_ms):
            f = av.VideoFrame.from_ndarray(scene(VIDEO_H, VIDEO_W, i)[0], format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            n = 16 * pts_ms[-1] + 1600
            samples = (0.3 * np.sin(np.arange(n) / 10)).astype(np.float32)[None]
            for s in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, s:s + 1024]), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts = 16000, s
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def imwrite(path: Path, arr: np.ndarray) -> Path:
    """Writes RGB / RGBA / gray arrays (uint8 or uint16) with OpenCV (colour order handled)."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), arr), path
    return Path(path)


def imread(path: Path) -> np.ndarray:
    """An 8-bit RGB image as uint8 (H, W, 3)."""
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert arr is not None, path
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_frames_dir(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: imread(p) for p in sorted(Path(folder).glob("*.png"))}


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """A tiny affine-head model (unet) whose G changes colours (not the identity), with D."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg()
    g = perturb_generator(Generator(cfg))
    d = Discriminator(cfg)
    path = tmp_path_factory.mktemp("weights") / "tiny"
    g.save_pretrained(path)
    d.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def weights_no_d(tmp_path_factory) -> Path:
    """Tiny weights without discriminator.safetensors."""
    torch.manual_seed(1)
    cfg = tiny_model_cfg()
    path = tmp_path_factory.mktemp("weights") / "tiny-no-d"
    perturb_generator(Generator(cfg)).save_pretrained(path)
    return path


def make_source_dir(root: Path, n: int = 6) -> Path:
    """ROOT/images/*.png + ROOT/masks/*.png: n images (80x72) with a large coloured foreground blob."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    h, w = 72, 80
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        base = rng.uniform(30, 220, 3)
        bg = base + 50 * np.stack([np.sin(xs / (5 + i)), np.cos(ys / 7), np.sin((xs + ys) / 9)], -1)
        bg += rng.normal(0, 8, bg.shape)
        mask = blob_mask(h, w, w / 2 + rng.uniform(-6, 6), h / 2 + rng.uniform(-6, 6), 20 + i, 24)
        fg = rng.uniform(40, 230, 3) + 35 * np.stack([np.cos(xs / 3), np.sin(ys / 4), np.cos((xs - ys) / 5)], -1)
        m = mask[..., None] / 255.0
        img = np.clip(np.round(m * fg + (1 - m) * bg), 0, 255).astype(np.uint8)
        imwrite(root / "images" / f"img{i:02d}.png", img)
        imwrite(root / "masks" / f"img{i:02d}.png", mask)
    return root


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory) -> Path:
    """A source folder of 6 images with masks (see make_source_dir)."""
    return make_source_dir(tmp_path_factory.mktemp("sources") / "photos")


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory, source_dir) -> Path:
    """A tiny `make-dataset` directory at the tiny preset's 64x64 working resolution."""
    from vharm.config import DataConfig
    from vharm.data.dataset import make_dataset

    out = tmp_path_factory.mktemp("dataset") / "pairs"
    make_dataset(DataConfig(sources=(str(source_dir),)), out, size=64, n_train=4, n_val=2, seed=0)
    return out


@pytest.fixture(scope="session")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """VIDEO_FRAMES (rgb, mask) uint8 pairs of VIDEO_H x VIDEO_W."""
    return [scene(VIDEO_H, VIDEO_W, t) for t in range(VIDEO_FRAMES)]


@pytest.fixture(scope="session")
def media(tmp_path_factory, scenes) -> dict[str, Path]:
    """Inputs in every form: comp video, mask video, frame dirs, a static mask image, RGBA frames."""
    root = tmp_path_factory.mktemp("media")
    rgbs = [s[0] for s in scenes]
    masks = [s[1] for s in scenes]
    paths = {
        "video": write_video(root / "comp.mp4", rgbs),
        "mask_video": write_video(root / "mask.mp4", masks),
        "frames": root / "frames",
        "mask_frames": root / "mask-frames",
        "rgba_frames": root / "rgba-frames",
        "static_mask": root / "static-mask.png",
        "image": root / "frames" / "frame_003.png",
        "image_mask": root / "mask-frames" / "frame_003.png",
    }
    for key in ("frames", "mask_frames", "rgba_frames"):
        paths[key].mkdir()
    for t, (rgb, mask) in enumerate(scenes):
        name = f"frame_{t:03d}.png"
        imwrite(paths["frames"] / name, rgb)
        imwrite(paths["mask_frames"] / name, mask)
        imwrite(paths["rgba_frames"] / name, np.dstack([rgb, mask]))
    # A static mask that covers the blob at every frame position.
    imwrite(paths["static_mask"], blob_mask(VIDEO_H, VIDEO_W, VIDEO_W * 0.4 + 7, VIDEO_H * 0.5, 22, 16))
    return paths


@pytest.fixture()
def run_cli(capsys):
    """Runs `vharm.cli.main(argv)`; returns (exit code, stdout, stderr)."""
    from vharm.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def tiny_train_config(dataset: Path, **changes):
    """The tiny preset reading pairs from a dataset directory, quiet and single-threaded."""
    import dataclasses

    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=str(dataset)), threads=1)
    return dataclasses.replace(cfg, **changes)


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data))
