"""`vharm make-testset` and `vharm evaluate` on the command line (registered by `vharm.cli.build_parser`).

Kept free of heavy imports: the work is in vharm.eval.testset / vharm.eval.scoring, loaded when a command runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from vharm.cli.common import show_progress
from vharm.errors import VharmError

DEFAULT_DATA = "../shared/data"
SETS = ("real", "synthetic", "composites", "mild")  # = vharm.eval.testset.SETS, repeated so this module stays light


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def cmd_make_testset(args) -> None:
    from tqdm import tqdm

    from vharm.eval.testset import TEST_SEQUENCES, make_testset
    from vharm.io.files import atomic_dir, check_output

    out = check_output(Path(args.output), args.overwrite)
    if args.frames < 2:
        raise VharmError(f"--frames must be at least 2 (temporal metrics need pairs of frames), got {args.frames}")
    sequences = tuple(args.sequences or TEST_SEQUENCES)
    total = (args.clips_per_sequence + args.mild_per_sequence) * len(sequences) + args.synthetic + args.composites
    with tqdm(total=total, unit="clip", disable=not show_progress(args)) as bar, \
            atomic_dir(out, overwrite=args.overwrite) as tmp:
        manifest = make_testset(Path(args.data), tmp, seed=args.seed, clips_per_sequence=args.clips_per_sequence,
                                frames=args.frames, max_side=args.max_side, synthetic=args.synthetic,
                                synthetic_size=args.synthetic_size, composites=args.composites,
                                progress=lambda: bar.update(1), sequences=sequences,
                                mild_per_sequence=args.mild_per_sequence)
    counts = {k: sum(c["kind"] == k for c in manifest["clips"]) for k in SETS}
    print(f"wrote {out}: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + " clip(s)")


def cmd_evaluate(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    single = [args.pred, args.target, args.mask]
    if args.testset and any(single):
        raise VharmError("--testset excludes --pred/--target/--mask: score a test set or one clip, not both")
    if not args.testset:
        if not all(single):
            raise VharmError("give --testset DIR --method NAME..., or all of --pred, --target and --mask")
        return _evaluate_one(args)
    if args.json:
        raise VharmError("--json is for one clip; a test set writes results.json into the report dir (-o)")
    if args.resize:
        raise VharmError("--resize is for one clip; a test set's frames, masks and predictions have one size")
    from vharm.eval.report import format_tables
    from vharm.eval.scoring import evaluate_testset

    report_dir = Path(args.output) if args.output else Path(args.testset) / "report"
    results = evaluate_testset(Path(args.testset), args.method or [], report_dir, device=args.device,
                               sets=args.sets, max_clips=args.max_clips, fresh=args.fresh,
                               progress=show_progress(args),
                               command=shlex.join(["vharm", *sys.argv[1:]]))
    print(format_tables(results))
    print(f"report: {report_dir / 'report.html'} ({results['scored']} scored, {results['cached']} from the cache)")


def _evaluate_one(args) -> None:
    from vharm.eval.scoring import evaluate_clip
    from vharm.io.files import atomic_path, check_output

    if args.json:
        json_path = Path(args.json).absolute()
        for folder in (args.pred, args.target, args.mask):
            if Path(folder).absolute() in json_path.parents:
                raise VharmError(f"{args.json}: --json must not be inside the input folder {folder}")
        check_output(Path(args.json), overwrite=args.overwrite,
                     inputs=(Path(args.pred), Path(args.target), Path(args.mask)))
    result = {"pred": args.pred, "target": args.target, "mask": args.mask,
              **evaluate_clip(Path(args.pred), Path(args.target), Path(args.mask), resize=args.resize)}
    text = json.dumps(result, indent=2)
    if args.json:
        with atomic_path(Path(args.json)) as tmp:
            tmp.write_text(text + "\n")
    print(text)


def add_parsers(sub) -> None:
    """Registers `make-testset` and `evaluate` on the `vharm` subcommand parser."""
    m = sub.add_parser("make-testset", help="build held-out test sets: recoloured real clips, synthetic pairs, "
                                            "real composites")
    m.add_argument("--data", default=DEFAULT_DATA, help=f"data root holding davis2016/ and videos/ ({DEFAULT_DATA})")
    m.add_argument("-o", "--output", required=True, help="output directory (created; see docs/testset.md)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--clips-per-sequence", type=_positive, default=3,
                   help="real clips per test sequence, one recolouring each")
    m.add_argument("--mild-per-sequence", type=_positive, default=2,
                   help="mildly recoloured clips per test sequence (foreground fMSE 20-100: the do-no-harm set)")
    m.add_argument("--frames", type=int, default=24, help="frames per real clip and per composite")
    m.add_argument("--max-side", type=int, default=480, help="frames are shrunk to at most this long side")
    m.add_argument("--synthetic", type=_positive, default=24, help="number of synthetic two-frame pairs")
    m.add_argument("--synthetic-size", type=int, default=256, help="synthetic pair size in pixels (square)")
    m.add_argument("--composites", type=_positive, default=3, help="number of real composites without ground truth")
    m.add_argument("--sequences", nargs="+", metavar="NAME",
                   help="DAVIS sequences to build from (default: the dev split); other ones, kept out of "
                        "training, make a real-video validation set")
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_make_testset)

    e = sub.add_parser("evaluate", help="score one clip, or methods over a test set with an HTML report")
    e.add_argument("--pred", help="one clip: predicted frames (video, frame dir or image)")
    e.add_argument("--target", help="one clip: ground-truth frames")
    e.add_argument("--mask", help="one clip: foreground masks (or one mask image for every frame)")
    e.add_argument("--json", metavar="PATH", help="one clip: also write the scores here")
    e.add_argument("--resize", action="store_true",
                   help="one clip: score predictions and masks of another size than the ground truth resized to "
                        "its size (otherwise they are refused)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.add_argument("--testset", metavar="DIR", help="a `vharm make-testset` directory")
    e.add_argument("--method", nargs="+", metavar="NAME",
                   help="composite, reinhard-frame, reinhard-clip, default, a weights/run dir; suffixes :nomask "
                        "(D's map as mask), :zeros / :ones (constant masks), :smooth=A (temporal smoothing), "
                        ":two-pass (one transform per shot) and :gate=MIN,FULL (the do-no-harm gate, levels)")
    e.add_argument("-o", "--output", metavar="REPORT_DIR", help="report directory (default: TESTSET/report)")
    e.add_argument("--sets", nargs="+", choices=SETS, help="only these sets (default: all)")
    e.add_argument("--max-clips", type=_positive, default=None, help="at most this many clips per set")
    e.add_argument("--fresh", action="store_true", help="recompute cached scores")
    e.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    # Scoring is many small tensor ops: a second thread gains little, and where another job holds the
    # cores (training), torch's spinning worker threads made it ~40x slower than one thread.
    e.add_argument("--threads", type=_positive, default=1, help="torch threads (0 = torch's default)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)
