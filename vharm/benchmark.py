"""`vharm benchmark`: speed and memory of the real pipeline on a generated (or given) composite video.

Reports, in one run: the floor (decode composite + mask, encode, nothing else, through the same threaded
stream), `vharm harmonize` end to end with the time per stage, peak RSS of whole `vharm harmonize`
processes at two video lengths and at 4K, and training throughput of the two-frame GAN step.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from vharm.config import preset
from vharm.inference.harmonizer import Harmonizer
from vharm.inference.stream import default_threads, harmonize_video, run_stream
from vharm.io.video import EncodeOptions, Frame, FrameSource, StreamInfo

SIZES = {"480p": (854, 480), "1080p": (1920, 1080), "4k": (3840, 2160)}


def make_input(folder: Path, size: tuple[int, int], frames: int) -> tuple[Path, Path]:
    """A textured background panning under a moving, colour-cast foreground ellipse, and its mask video."""
    w, h = size
    folder.mkdir(parents=True, exist_ok=True)
    comp, mask = folder / f"comp-{w}x{h}-{frames}.mp4", folder / f"mask-{w}x{h}-{frames}.mp4"
    if comp.exists() and mask.exists():
        return comp, mask
    rng = np.random.default_rng(0)
    texture = cv2.resize((rng.random((h // 8, w // 8 + frames, 3)) * 255).astype(np.uint8), (w + frames * 8, h))
    fg = np.full((h, w, 3), (230, 150, 90), np.uint8)

    def items():
        for t in range(frames):
            bg = np.ascontiguousarray(texture[:, t * 8:t * 8 + w])
            m = np.zeros((h, w), np.float32)
            cv2.ellipse(m, (w // 3 + t * w // (3 * frames), h // 2), (w // 8, h // 3), 0, 0, 360, 1.0, -1)
            m = cv2.GaussianBlur(m, (9, 9), 0)
            out = (m[..., None] * (0.5 * fg + 0.5 * bg) + (1 - m[..., None]) * bg).astype(np.uint8)
            yield Frame(out, None, f"{t:05d}.png", None), m

    fast = EncodeOptions(crf=18, preset="ultrafast")
    run_stream(None, items(), StreamInfo(size, fps=25), comp, save_mask=mask, overwrite=True, encode=fast)
    return comp, mask


def measure_harmonize(harmonizer: Harmonizer | None, comp: Path, mask: Path, out: Path, encode: EncodeOptions) -> dict:
    """fps and per-stage seconds per frame; `harmonizer` None measures the floor (decode + encode only)."""
    if harmonizer is None:  # the floor decodes the mask video too, and encodes the composite unchanged
        source, mask_source = FrameSource(comp), FrameSource(mask)
        items = ((f, None) for f, _ in zip(source, mask_source))
        t = run_stream(None, items, source.info, out, overwrite=True, encode=encode)
    else:
        t = harmonize_video(harmonizer, comp, mask, out, overwrite=True, encode=encode)
    per = {k: round(1000 * getattr(t, k) / t.frames, 1) for k in ("decode", "network", "apply", "encode")}
    return {"frames": t.frames, "fps": round(t.fps, 2), "ms_per_frame": per}


# Runs the measured command as its own child and prints that child's peak RSS (KiB) last on stderr. A child of this
# (large) benchmark process would not do: Linux carries the parent's peak over fork and exec into ru_maxrss.
_RSS_LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory of a `python -m vharm ...` process, in MB."""
    proc = subprocess.run([sys.executable, "-c", _RSS_LAUNCHER, sys.executable, "-m", "vharm", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    *messages, peak_kb = proc.stderr.rstrip().splitlines() or [""]
    if proc.returncode:
        detail = "\n".join(messages)[-500:]
        raise RuntimeError(f"vharm {' '.join(args)} failed: {detail}")
    return round(int(peak_kb) / 1024, 1)  # Linux reports KiB


def training_throughput(steps: int = 5) -> dict:
    """Two-frame GAN steps/s at the `cpu` preset's size and batch, fp32 vs bf16 autocast, random data."""
    from vharm.models import Discriminator, Generator
    from vharm.train.loop import gan_step
    from vharm.train.losses import GeneratorLoss

    cfg = preset("cpu")
    r, b = cfg.model.resolution, cfg.batch_size
    gen = torch.Generator().manual_seed(0)
    batch = {"comp": torch.rand(b, 2, 3, r, r, generator=gen), "target": torch.rand(b, 2, 3, r, r, generator=gen),
             "mask": (torch.rand(b, 2, 1, r, r, generator=gen) > 0.5).float(), "flow": torch.zeros(b, 2, r, r)}
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        g, d = Generator(cfg.model), Discriminator(cfg.model)
        opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
        loss = GeneratorLoss(relative=cfg.loss.relative)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            gan_step(g, d, d, opt_g, opt_d, loss, batch, True, "cpu")  # warm-up
            t = time.perf_counter()
            for _ in range(steps):
                gan_step(g, d, d, opt_g, opt_d, loss, batch, True, "cpu")
        out[name] = round(steps / (time.perf_counter() - t), 3)
    return {"batch": b, "resolution": r, "steps_per_s": out}


@contextlib.contextmanager
def torch_threads(n: int):
    """The benchmark owns its process: `vharm harmonize` gives the network `default_threads()`, training all."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(weights: str | None, workdir: Path, frames: int, long_frames: int, input_video: Path | None,
        input_mask: Path | None, with_4k: bool, with_training: bool) -> dict:
    """All measurements; returns a JSON-able dict."""
    h = Harmonizer.from_pretrained(weights)
    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, PyAV {av.__version__}",
              "threads": torch.get_num_threads(), "video_threads": default_threads(), "rows": []}
    if input_video is not None:
        inputs = [("given", input_video, input_mask)]
    else:
        inputs = [("1080p", *make_input(workdir, SIZES["1080p"], frames))]
        if with_4k:
            inputs.append(("4k", *make_input(workdir, SIZES["4k"], max(frames // 4, 10))))
    for label, comp, mask in inputs:
        for x264 in ("veryfast", "ultrafast"):
            enc = EncodeOptions(preset=x264)
            with torch_threads(default_threads()):
                floor = measure_harmonize(None, comp, mask, workdir / "floor.mp4", enc)
                ours = measure_harmonize(h, comp, mask, workdir / "out.mp4", enc)
            result["rows"].append({"input": label, "preset": x264, "floor": floor, "harmonize": ours,
                                   "ratio": round(floor["fps"] / max(ours["fps"], 1e-9), 2)})
    if input_video is None:
        rss = {}
        short_comp, short_mask = make_input(workdir, SIZES["1080p"], frames)
        long_comp, long_mask = make_input(workdir, SIZES["1080p"], long_frames)
        for label, (comp, mask) in ((f"1080p x {frames}", (short_comp, short_mask)),
                                    (f"1080p x {long_frames}", (long_comp, long_mask))):
            rss[label] = peak_rss_mb(["harmonize", str(comp), "-m", str(mask), "-o", str(workdir / "rss.mp4"),
                                      "--overwrite", "--quiet", *(["--weights", weights] if weights else [])])
        if with_4k:
            comp, mask = make_input(workdir, SIZES["4k"], max(frames // 4, 10))
            rss["4k"] = peak_rss_mb(["harmonize", str(comp), "-m", str(mask), "-o", str(workdir / "rss.mp4"),
                                     "--overwrite", "--quiet", *(["--weights", weights] if weights else [])])
        result["peak_rss_mb"] = rss
    if with_training:
        result["training"] = training_throughput()
    return result


def to_markdown(result: dict, command: str) -> str:
    lines = ["# Performance\n", f"Measured {result['date']} on {result['machine']}: training used "
             f"{result['threads']} torch threads, the video path gives the network "
             f"{result.get('video_threads', 'half the cores')} (half the cores).",
             f"Command: `{command}`\n",
             "| input | x264 preset | floor fps (decode+encode) | vharm fps | ratio floor/vharm | decode | network "
             "| apply | encode (ms/frame) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        ms = row["harmonize"]["ms_per_frame"]
        lines.append(f"| {row['input']} | {row['preset']} | {row['floor']['fps']} | {row['harmonize']['fps']} | "
                     f"{row['ratio']} | {ms['decode']} | {ms['network']} | {ms['apply']} | {ms['encode']} |")
    lines.append("\nDecode and encode run in their own threads, overlapped with the network: stage times add up to "
                 "more than the wall time per frame.")
    if "peak_rss_mb" in result:
        lines += ["\n| run | peak RSS (MB) |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in result["peak_rss_mb"].items()]
    if "training" in result:
        t = result["training"]
        lines += [f"\nTraining, two-frame GAN step of the `cpu` preset ({t['resolution']}², batch {t['batch']}): "
                  + ", ".join(f"{k} {v} steps/s" for k, v in t["steps_per_s"].items())]
    return "\n".join(lines) + "\n"


def write_report(result: dict, path: Path, command: str) -> None:
    from vharm.io.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(to_markdown(result, command))
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
