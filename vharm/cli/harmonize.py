"""`vharm harmonize`, `segment`, `composite`, `demo`, `batch` and `benchmark`: the inference commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vharm.cli.common import show_progress
from vharm.errors import VharmError

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def _encode_options(args):
    import av

    from vharm.io.video import EncodeOptions

    if args.x264_preset and args.x264_preset not in X264_PRESETS:
        raise VharmError(f"--x264-preset {args.x264_preset!r}: choose one of {', '.join(X264_PRESETS)}")
    if not 0 <= args.crf <= 51:
        raise VharmError(f"--crf {args.crf}: must be in 0..51")
    if args.codec:
        try:
            av.codec.Codec(args.codec, "w")
        except ValueError:  # UnknownCodecError
            raise VharmError(f"--codec {args.codec!r}: no such encoder in this PyAV build") from None
    if getattr(args, "start", 0) < 0 or getattr(args, "frames", None) is not None and args.frames < 1:
        raise VharmError("--start must be >= 0 and --frames >= 1")
    return EncodeOptions(crf=args.crf, preset=args.x264_preset, codec=args.codec)


def _add_output_flags(p: argparse.ArgumentParser, save_mask: bool = True) -> None:
    p.add_argument("-o", "--output", required=True, help="video file, directory (PNG frames) or image")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--crf", type=int, default=18, help="x264 quality (lower = better, bigger)")
    p.add_argument("--x264-preset", default="", help="x264 speed preset (ultrafast ... veryslow; default: veryfast "
                                                    "for colour video, ultrafast for mask video)")
    p.add_argument("--codec", default="", help="video codec (default libx264; libvpx-vp9 for .webm)")
    if save_mask:
        p.add_argument("--save-mask", metavar="PATH", help="also write the mask used (video, frames or image)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_segment_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("automatic masks (vharm segment, --mask auto, composite without --fg-mask)")
    g.add_argument("--seg-model", default="selfie", choices=("selfie", "pose", "pose+selfie"),
                   help="the crop pass's network: selfie (default, fastest), pose (MediaPipe's pose landmarks: whole "
                        "bodies, one crop per person, mirrored too, ~2.7x the time) or pose+selfie (both, by max, "
                        "~1.6x)")
    g.add_argument("--pose-model", metavar="TFLITE", default=None,
                   help="with --seg-model pose or pose+selfie: another MediaPipe pose-landmark model than the shipped "
                        "full one, e.g. pose_landmark_heavy.tflite from `npm pack @mediapipe/pose` (better whole "
                        "bodies, ~2x the full model's time; docs/segment.md)")
    g.add_argument("--no-crop", action="store_true", help="no second pass of the network on a crop around the people")
    g.add_argument("--no-stabilise", action="store_true", help="no blending of the flow-warped previous mask")
    g.add_argument("--no-refine", action="store_true", help="no guided-filter edges from the frame")
    g.add_argument("--all-people", action="store_true",
                   help="every person the network finds, not only the main subject (the largest person, followed "
                        "over time, and those about as tall)")


def _segmenter(args):
    from vharm.segment import Segmenter

    if args.pose_model is not None and args.seg_model == "selfie":
        raise VharmError(f"{args.pose_model}: --pose-model needs --seg-model pose or pose+selfie")

    return Segmenter(crop=not args.no_crop, stabilise=not args.no_stabilise, refine=not args.no_refine,
                     subject=not args.all_people, model=args.seg_model, pose_file=args.pose_model)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="shipped weights name or a weights/run directory")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads for the network (default 0: half the cores; decode and encode use the rest)")
    p.add_argument("--temporal-smoothing", type=float, default=None, metavar="A",
                   help="EMA of the colour transform over time (and, with --no-mask, of D's map), 0 = off "
                        "(default: the weights' setting)")
    p.add_argument("--min-change", type=float, default=None, metavar="LEVELS",
                   help="do-no-harm gate: drop changes smaller than this (RMS over the mask, 0-255 levels; "
                        "default: the weights' setting)")
    p.add_argument("--full-change", type=float, default=None, metavar="LEVELS",
                   help="changes above this pass whole, between --min-change and it they are ramped in; both "
                        "rise to the change G makes to the frame's own background where that is larger "
                        "(default: the weights' setting; 0 with --min-change 0 = gate off)")
    p.add_argument("--strength", type=float, default=None, metavar="S",
                   help="the correction's strength, 0..2: 0 = the input, 1 = the model, 2 = twice its change "
                        "(scales the colour transform after the gate; default: the weights' setting, else 1)")
    p.add_argument("--mask-free-gate", type=float, default=None, metavar="K",
                   help="with --no-mask, --min-change and --full-change times K (1..10; default: the weights' "
                        "setting, else 1)")
    p.add_argument("--brighten", type=float, default=None, metavar="S",
                   help="a change that brightens the foreground has its luminance times S after the gate (1..10; "
                        "G brightens too little; default: the weights' setting, else 1; --mask auto: always 1)")
    p.add_argument("--darken-gate", type=float, default=None, metavar="K",
                   help="a change that darkens the foreground passes the gate only at --min-change and "
                        "--full-change times K (1..10; G darkens bright objects wrongly; default: the weights' "
                        "setting, else 1)")
    p.add_argument("--g-steps", type=int, default=None, metavar="N",
                   help="G run again on its own result, N steps in all, the transforms composed (1..10; G makes "
                        "part of the change a foreground needs; the gate judges the first step; default: the "
                        "weights' setting, else 1)")


def _add_two_pass_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--two-pass", action="store_true",
                   help="files only: read the input twice, first to predict G's colour transform on every frame, "
                        "then to apply one transform per shot (their mean; shots split at cuts): steadier than "
                        "--temporal-smoothing, which it replaces; twice the decoding (and segmentation with "
                        "--mask auto)")


def load_harmonizer(args, device: str | None = None):
    import torch

    from vharm.inference.harmonizer import Harmonizer
    from vharm.inference.stream import default_threads

    # This process streams video: the decoder and encoder threads need the cores torch does not take.
    torch.set_num_threads(args.threads or default_threads())
    return Harmonizer.from_pretrained(args.weights, device=device or args.device,
                                      temporal_smoothing=args.temporal_smoothing, min_change=args.min_change,
                                      full_change=args.full_change, strength=args.strength,
                                      mask_free_gate=args.mask_free_gate, brighten=args.brighten,
                                      darken_gate=args.darken_gate, g_steps=args.g_steps)


def _report(timing, output) -> None:
    print(f"wrote {output}: {timing.frames} frame(s) in {timing.wall:.2f} s ({timing.fps:.1f} fps)")


def cmd_harmonize(args) -> None:
    from vharm.inference.stream import harmonize_video

    encode = _encode_options(args)
    h = load_harmonizer(args)
    mask = _segmenter(args) if args.mask == "auto" else args.mask
    timing = harmonize_video(h, args.input, mask, args.output, no_mask=args.no_mask, save_mask=args.save_mask,
                             overwrite=args.overwrite, start=args.start, frames=args.frames, encode=encode,
                             progress=show_progress(args), skip_bad_frames=args.skip_bad_frames,
                             two_pass=args.two_pass)
    _report(timing, args.output)


def cmd_segment(args) -> None:
    from vharm.inference.stream import segment_video

    timing = segment_video(args.input, args.output, _segmenter(args), overwrite=args.overwrite,
                           encode=_encode_options(args), progress=show_progress(args),
                           skip_bad_frames=args.skip_bad_frames)
    _report(timing, args.output)


def _position(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in pixels, got {text!r}") from None
    return x, y


def cmd_composite(args) -> None:
    from vharm.inference.composite import composite_video

    h = load_harmonizer(args) if args.harmonize else None
    timing = composite_video(args.fg, args.fg_mask, args.bg, args.output, h, position=args.position,
                             scale=args.scale, length=args.length, save_mask=args.save_mask,
                             segmenter=_segmenter(args) if args.fg_mask is None else None,
                             overwrite=args.overwrite, encode=_encode_options(args),
                             progress=show_progress(args))
    _report(timing, args.output)


def cmd_demo(args) -> None:
    from vharm.inference.composite import run_demo

    paths = run_demo(load_harmonizer(args), Path(args.output), overwrite=True,
                     progress=show_progress(args))
    print(f"demo: harmonized {paths['timing'].frames} frames at {paths['timing'].fps:.1f} fps")
    for key in ("input", "mask", "output", "side-by-side", "frame"):
        print(f"  {key:13s} {paths[key]}")


def _ray_options(args) -> dict | None:
    """run_batch's `ray` from --ray, --cpus-per-job and --gpus-per-job; None for local processes."""
    if args.ray is None:
        if args.cpus_per_job is not None or args.gpus_per_job is not None:
            raise VharmError("--cpus-per-job and --gpus-per-job need --ray")
        return None
    cpus = 2.0 if args.cpus_per_job is None else args.cpus_per_job
    gpus = args.gpus_per_job or 0.0
    if cpus <= 0 or gpus < 0:
        raise VharmError(f"--cpus-per-job must be > 0 and --gpus-per-job >= 0, got {cpus:g} and {gpus:g}")
    if args.device == "cuda" and not gpus:
        raise VharmError("--ray --device cuda: give each job a GPU with --gpus-per-job (which implies CUDA)")
    return {"address": args.ray or None, "cpus_per_job": cpus, "gpus_per_job": gpus}


def _list_file(args) -> Path:
    # Optional for argparse only so that `vharm batch --ray jobs.txt`, where --ray takes the list as its ADDRESS,
    # can say so.
    if args.list is None:
        took = f": --ray took {args.ray!r} as its ADDRESS (give the list first, or --ray=ADDRESS)" if args.ray else ""
        raise VharmError(f"vharm batch: no list file given{took}")
    return Path(args.list)


def cmd_batch(args) -> None:
    from tqdm import tqdm

    from vharm.inference.batch import run_batch

    list_file = _list_file(args)
    if args.jobs is not None and args.jobs < 1 or args.threads < 0 or args.retries < 0:
        raise VharmError(f"--jobs must be >= 1, --threads and --retries >= 0, got {args.jobs}, {args.threads} and "
                         f"{args.retries}")
    ray = _ray_options(args)
    if ray is not None:
        from vharm.inference.ray_batch import import_ray

        import_ray()  # not installed: say so before anything else
    options = {"encode": _encode_options(args), "skip_bad_frames": args.skip_bad_frames, "two_pass": args.two_pass}
    # Bad weights or device: one clear error before any worker starts. A Ray driver may have no GPU of its own.
    load_harmonizer(args, device="cpu" if ray is not None else None)
    inference = {"temporal_smoothing": args.temporal_smoothing, "min_change": args.min_change,
                 "full_change": args.full_change, "strength": args.strength, "mask_free_gate": args.mask_free_gate,
                 "brighten": args.brighten, "darken_gate": args.darken_gate, "g_steps": args.g_steps}
    manifest = run_batch(list_file, Path(args.output), args.weights, args.device, args.jobs, options,
                         progress=tqdm.write, inference=inference, threads=args.threads, retries=args.retries,
                         ray=ray, bar=show_progress(args))
    failed = [j for j in manifest["jobs"].values() if j["status"] == "failed"]
    print(f"{len(manifest['jobs']) - len(failed)} done, {len(failed)} failed; manifest: "
          f"{Path(args.output) / 'manifest.json'}")
    if failed:
        raise VharmError(f"{failed[0]['input']}: {failed[0]['error']}" + (f" (and {len(failed) - 1} more failed)"
                                                                         if len(failed) > 1 else ""))


def cmd_benchmark(args) -> None:
    import shlex

    from vharm import benchmark

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = benchmark.run(args.weights, workdir, args.frames, args.long_frames,
                           Path(args.input) if args.input else None, Path(args.mask) if args.mask else None,
                           not args.no_4k, not args.no_training)
    command = "vharm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(benchmark.to_markdown(result, command))
    if args.output:
        benchmark.write_report(result, Path(args.output), command)
        print(f"wrote {args.output} and {Path(args.output).with_suffix('.json')}")



def add_parsers(sub) -> None:
    """Registers the inference commands on the `vharm` subcommand parser."""
    h = sub.add_parser("harmonize", help="harmonize a composite video, frame directory or image")
    h.add_argument("input", help="composite: video file, directory of frames, or image")
    h.add_argument("-m", "--mask", help="foreground mask: video, frames, or one image for all frames; auto: the "
                                         "people in each frame (vharm segment), pasted or not")
    h.add_argument("--no-mask", action="store_true",
                   help="mask-free: D's disharmony map finds the region (G reads its top 3 %%, the map blends)")
    h.add_argument("--start", type=int, default=0, help="first frame to process")
    h.add_argument("--frames", type=int, default=None, help="number of frames to process")
    h.add_argument("--skip-bad-frames", action="store_true",
                   help="replace a frame that fails to decode by the previous output instead of stopping")
    _add_output_flags(h)
    add_model_flags(h)
    _add_two_pass_flag(h)
    _add_segment_flags(h)
    h.set_defaults(func=cmd_harmonize)

    s = sub.add_parser("segment", help="automatic person masks of a video, frame directory or image")
    s.add_argument("input", help="video file, directory of frames, or image")
    s.add_argument("--skip-bad-frames", action="store_true",
                   help="repeat the previous mask for a frame that fails to decode instead of stopping")
    _add_output_flags(s, save_mask=False)
    _add_segment_flags(s)
    s.set_defaults(func=cmd_segment)

    c = sub.add_parser("composite", help="paste a foreground video over a background (and harmonize it)")
    c.add_argument("--fg", required=True, help="foreground video, frames or image")
    c.add_argument("--fg-mask", help="the foreground's alpha/mask: video, frames or image (default: the "
                                     "foreground's own alpha, else the people in it, found by vharm segment)")
    c.add_argument("--bg", required=True, help="background video, frames or image")
    c.add_argument("--harmonize", action="store_true", help="harmonize the composite in the same pass")
    c.add_argument("--position", type=_position, default=None, metavar="X,Y",
                   help="top-left corner of the foreground in background pixels (default: centred)")
    c.add_argument("--scale", type=float, default=1.0, help="foreground scale factor")
    c.add_argument("--length", choices=("shortest", "fg", "bg"), default="shortest",
                   help="stop with the shorter input, or follow fg/bg and loop the other")
    _add_output_flags(c)
    add_model_flags(c)
    _add_segment_flags(c)
    c.set_defaults(func=cmd_composite)

    d = sub.add_parser("demo", help="harmonize the bundled example into demo-output/")
    d.add_argument("-o", "--output", default="demo-output", help="output directory")
    d.add_argument("--quiet", action="store_true")
    add_model_flags(d)
    d.set_defaults(func=cmd_demo)

    bt = sub.add_parser("batch", help="harmonize many videos (a list file) with N processes, resumable")
    bt.add_argument("list", nargs="?", metavar="LIST", help="text file: one INPUT or INPUT<TAB>MASK per line")
    bt.add_argument("-o", "--output", required=True, help="output directory (OUTDIR/<input stem>.mp4)")
    bt.add_argument("--jobs", type=int, default=None,
                    help="worker processes (default 1); with --ray, the most Ray workers to start")
    bt.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="run on Ray: the cluster at ADDRESS, else at $RAY_ADDRESS, else a local Ray instance sized "
                         "to this machine; OUTDIR and the inputs must be on storage every node sees "
                         "(pip install 'vharm[ray]')")
    bt.add_argument("--cpus-per-job", type=float, default=None, metavar="N",
                    help="with --ray: CPUs each worker holds (default 2; the network takes half, decode and encode "
                         "the rest)")
    bt.add_argument("--gpus-per-job", type=float, default=None, metavar="N",
                    help="with --ray: GPUs each worker holds (default 0); the network then runs on CUDA")
    bt.add_argument("--retries", type=int, default=2,
                    help="runs again a job whose worker died (killed, out of memory, node lost) up to this many "
                         "times, then records it as failed")
    bt.add_argument("--quiet", action="store_true", help="no progress bar")
    bt.add_argument("--crf", type=int, default=18)
    bt.add_argument("--x264-preset", default="", help="x264 speed preset (ultrafast ... veryslow; default: veryfast "
                                                     "for colour video, ultrafast for mask video)")
    bt.add_argument("--codec", default="")
    bt.add_argument("--skip-bad-frames", action="store_true")
    add_model_flags(bt)
    _add_two_pass_flag(bt)
    bt.set_defaults(func=cmd_batch)

    b = sub.add_parser("benchmark", help="measure fps vs the decode+encode floor, memory, training speed")
    b.add_argument("--weights", default=None)
    b.add_argument("--frames", type=int, default=100, help="frames of the generated 1080p video")
    b.add_argument("--long-frames", type=int, default=1000, help="length for the flat-memory check")
    b.add_argument("--input", help="benchmark this composite video instead of a generated one")
    b.add_argument("--mask", help="the mask video for --input")
    b.add_argument("--no-4k", action="store_true")
    b.add_argument("--no-training", action="store_true")
    b.add_argument("--workdir", default="/tmp/vharm-benchmark", help="where inputs/outputs are generated")
    b.add_argument("-o", "--output", help="write the Markdown table here (and .json beside it)")
    b.set_defaults(func=cmd_benchmark)
