"""`vharm train` and `vharm make-dataset`: every field of the typed configs is a flag."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from pathlib import Path

from vharm.errors import VharmError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field (nested sections flattened); defaults are None = 'take the preset's'."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            _add_config_flags(parser, tp, skip)
            continue
        if f.name in skip:
            continue
        if typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            parser.add_argument(_flag(f.name), nargs="+", type=item, default=None, metavar=item.__name__.upper())
        elif tp is bool:
            parser.add_argument(_flag(f.name), type=_parse_bool, default=None, metavar="true|false")
        else:
            parser.add_argument(_flag(f.name), type=tp, default=None)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _apply_flags(cfg, args: argparse.Namespace):
    """Copies every flag the user gave onto the (nested) config."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = _apply_flags(value, args)
        elif getattr(args, f.name, None) is not None:
            given = getattr(args, f.name)
            changes[f.name] = tuple(given) if isinstance(given, list) else given
    return dataclasses.replace(cfg, **changes)


def cmd_train(args) -> None:
    from vharm import config
    from vharm.train.loop import train

    if args.config:
        cfg = config.load_json(Path(args.config), config.TrainConfig)
    elif args.resume:
        cfg = config.load_json(Path(args.resume) / "config.json", config.TrainConfig)
    else:
        cfg = config.preset(args.preset_name)
    # Positional sources replace the config's only when given (a resumed run keeps its own).
    args.sources = tuple(args.sources) if args.sources else None
    cfg = _apply_flags(cfg, args)
    config.validate_train(cfg)
    if args.dry_run:
        print(json.dumps(config.to_dict(cfg), indent=2))
        return
    run = train(cfg, Path(args.outdir), Path(args.resume) if args.resume else None, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"run finished: {run}")


def cmd_make_dataset(args) -> None:
    from tqdm import tqdm

    from vharm.config import DataConfig
    from vharm.data.dataset import make_dataset
    from vharm.data.recolor import FAMILIES
    from vharm.io.files import atomic_dir, check_output

    out = check_output(Path(args.output), args.overwrite)
    if args.size < 16 or args.train < 0 or args.val < 1 or args.train + args.val < 2:
        raise VharmError("make-dataset: --size must be >= 16, --train >= 0 and --val >= 1")
    families = tuple(args.families) if args.families else DataConfig.families
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise VharmError(f"--families: unknown {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    cfg = DataConfig(sources=tuple(args.sources), families=families, min_fg=args.min_fg,
                     max_motion=args.max_motion, real_pair_prob=args.real_pair_prob)
    with tqdm(total=args.train + args.val, unit="pair", disable=args.quiet) as bar, \
            atomic_dir(out, overwrite=args.overwrite) as tmp:
        manifest = make_dataset(cfg, tmp, args.size, args.train, args.val, args.seed, progress=lambda: bar.update(1))
    print(f"wrote {len(manifest['pairs'])} pairs to {out} (contact sheet: {out / 'contact-sheet.png'})")



def add_parsers(sub) -> None:
    """Registers `train` and `make-dataset` on the `vharm` subcommand parser."""
    from vharm.config import PRESETS, TrainConfig

    t = sub.add_parser("train", help="train G and D (two-frame GAN with regional temporal loss)")
    t.add_argument("sources", nargs="*", help="source dirs of images+masks or frames+masks (see make-dataset)")
    t.add_argument("--preset", dest="preset_name", default="cpu", choices=PRESETS)
    t.add_argument("--config", help="a config.json to start from (parsed as data)")
    t.add_argument("--outdir", default="runs", help="parent of the numbered run dirs")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true")
    _add_config_flags(t, TrainConfig, skip=("preset", "sources"))
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("make-dataset", help="synthesise two-frame pairs with exact flow (Dancing-MSCOCO recipe)")
    m.add_argument("sources", nargs="+", help="dirs with images/+masks/ or frames/+masks/ (searched 2 levels)")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--train", type=int, default=1000, help="number of training pairs")
    m.add_argument("--val", type=int, default=100, help="number of validation pairs (from held-out sources)")
    m.add_argument("--size", type=int, default=256, help="pair size in pixels (square)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--families", nargs="+", help="recolouring families (default: all but the held-out 'lut')")
    m.add_argument("--min-fg", type=float, default=0.10)
    m.add_argument("--max-motion", type=float, default=0.04)
    m.add_argument("--real-pair-prob", type=float, default=0.0)
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_make_dataset)
