"""`vharm train`, `fit`, `fit-d`, `ensemble` and `make-dataset`: every field of the typed configs is a flag, with
its help and choices."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vharm import config
from vharm.errors import VharmError

if TYPE_CHECKING:
    from vharm.models import Generator


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _help(spec: config.FieldSpec) -> str:
    """The field's help line with what it accepts; %(choices)s is filled in only when help is shown (the family
    names load OpenCV)."""
    notes = [f"{'any of' if spec.many else 'one of'} %(choices)s"] if spec.choices is not None else []
    notes += [f"{'each ' if spec.many else ''}{spec.range}"] if spec.range else []
    text = spec.help.replace("%", "%%")
    return f"{text} ({'; '.join(notes)})" if notes else text


# Boolean fields given as bare switches (`--auto-mask`, `--no-auto-mask`) rather than `--flag true|false`: options that
# are off unless asked for, where a value reads oddly.
SWITCHES = ("auto_mask",)


def _add_flag(parser: argparse.ArgumentParser, spec: config.FieldSpec) -> None:
    """The flag of one config field, default None ('the config's'); argparse checks the choices, validate the rest."""
    kwargs = {"help": _help(spec), "default": None, "choices": spec.choices}
    if spec.choices is not None:
        kwargs["metavar"] = "NAME"  # argparse would list the choices here, loading them when the parser is built
    if spec.name in SWITCHES:
        parser.add_argument(config.flag(spec.name), action=argparse.BooleanOptionalAction, help=kwargs["help"])
    elif spec.many:
        kwargs.setdefault("metavar", spec.kind.__name__.upper())
        parser.add_argument(config.flag(spec.name), nargs="+", type=spec.kind, **kwargs)
    elif spec.kind is bool:
        parser.add_argument(config.flag(spec.name), type=_parse_bool, metavar="true|false", **kwargs)
    else:
        parser.add_argument(config.flag(spec.name), type=spec.kind, **kwargs)


def _add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field (nested sections flattened); defaults are None = 'take the preset's'."""
    for spec in config.field_specs(cls):
        if dataclasses.is_dataclass(spec.kind):
            _add_config_flags(parser, spec.kind, skip)
        elif spec.name not in skip:
            _add_flag(parser, spec)


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


def real_clip_validation(cfg: config.TrainConfig) -> Callable[[Generator], dict[str, float]] | None:
    """`train`'s validate_real for `cfg.data.val_testset` (None without one): G scored on the test set's real clips
    through `vharm harmonize`'s path with true masks, as `vharm evaluate` scores them.

    The clips are read, and the test set checked, here: before the run directory exists.
    """
    if not cfg.data.val_testset:
        return None
    from vharm.eval.clips import load_real_clips
    from vharm.eval.scoring import composite_fmse, score_real
    from vharm.inference.harmonizer import Harmonizer

    clips = load_real_clips(Path(cfg.data.val_testset))
    # The composite's fMSE per clip is the same at every validation: computed once, by the rank that validates.
    comp_fmse = functools.cache(lambda: composite_fmse(clips))

    def score(g: Generator) -> dict[str, float]:
        # A copy: the Harmonizer puts G in eval mode and channels_last. D is not needed with true masks.
        return score_real(Harmonizer(copy.deepcopy(g), None, cfg.device), clips, comp_fmse())

    return score


def _train_config(args) -> config.TrainConfig:
    """The config a `vharm train` command asks for: a file, a run to resume or a preset, then the flags; checked."""
    if args.config:
        cfg = config.load_json(Path(args.config), config.TrainConfig)
    elif args.resume:
        cfg = config.load_json(Path(args.resume) / "config.json", config.TrainConfig)
    else:
        cfg = config.preset(args.preset_name)
    # Positional sources replace the config's only when given (a resumed run keeps its own).
    args.sources = tuple(args.sources) if args.sources else None
    cfg = _apply_flags(cfg, args)
    config.validate(cfg)
    return cfg


def cmd_train(args) -> None:
    cfg = _train_config(args)
    if args.dry_run:
        print(json.dumps(config.to_dict(cfg), indent=2))
        return
    import torch

    from vharm.train.loop import TrainingStopped, train

    if cfg.threads:  # this process trains: it owns torch's thread count (train() never sets it)
        torch.set_num_threads(cfg.threads)
    try:
        run = train(cfg, Path(args.outdir), Path(args.resume) if args.resume else None, progress=not args.quiet,
                    validate_real=real_clip_validation(cfg))
    except TrainingStopped as e:  # the run's log says where it stopped and how to continue
        raise SystemExit(e.exit_code) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"run finished: {run}")


def _fitting(args, config_class, module: str, function: str) -> None:
    """`vharm fit` and `vharm fit-d`: the config from the flags, then `vharm.train.MODULE.FUNCTION(cfg, outdir,
    cache)` unless --dry-run."""
    args.sources = tuple(args.sources)
    cfg = _apply_flags(config_class(), args)
    config.validate(cfg)
    if args.dry_run:
        print(json.dumps(config.to_dict(cfg), indent=2))
        return
    import importlib

    import torch

    run_fit = getattr(importlib.import_module(f"vharm.train.{module}"), function)  # torch loads only now
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = run_fit(cfg, Path(args.outdir), Path(args.cache), progress=not args.quiet)
    print(f"run finished: {run} (weights: {run / 'best'})")


def cmd_fit(args) -> None:
    _fitting(args, config.FitConfig, "fit", "fit")


def cmd_fit_d(args) -> None:
    _fitting(args, config.FitDConfig, "fit_d", "fit_d")


def cmd_ensemble(args) -> None:
    from vharm.io.files import atomic_dir, check_output
    from vharm.models.networks import Discriminator, Generator, ensemble, read_weights_config, resolve_weights

    out = check_output(Path(args.output), args.overwrite)
    if len(args.weights) < 2:
        raise VharmError("vharm ensemble: give at least two weights directories (or run directories)")
    paths = [resolve_weights(w) for w in args.weights]
    configs = [read_weights_config(p) for p in paths]
    g = ensemble([Generator.from_pretrained(p) for p in paths], names=[str(p) for p in paths])
    # Where each member came from; D and the inference defaults are the first member's (re-choose the gate for the
    # ensemble with experiments/select_gate.py: a mean of changes is smaller where the members disagree).
    members = [{"weights": str(p), **{k: v for k, v in c.items() if k in ("run", "step")}}
               for p, c in zip(paths, configs)]
    sections = {k: configs[0][k] for k in ("discriminator", "inference") if k in configs[0]}
    d = Discriminator.from_pretrained(paths[0]) if (paths[0] / Discriminator.WEIGHTS).is_file() else None
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        g.save_pretrained(tmp, members=members, **sections)
        if d is not None:  # D reads only the disc_* and norm fields of the model section, which the members share
            d.cfg = g.cfg
            d.save_pretrained(tmp)
    print(f"wrote {out}: G = the mean of {g.cfg.members} G's; D and inference defaults of {paths[0]}")


# The DataConfig fields `make-dataset` takes as flags (the pairs' content; the rest is chosen at training time).
DATASET_FIELDS = ("families", "min_fg", "max_motion", "real_pair_prob", "auto_mask", "mask_cache")


def cmd_make_dataset(args) -> None:
    from tqdm import tqdm

    from vharm.data.dataset import make_dataset
    from vharm.io.files import atomic_dir, check_output

    out = check_output(Path(args.output), args.overwrite)
    if args.size < 16 or args.train < 0 or args.val < 1 or args.train + args.val < 2:
        raise VharmError("make-dataset: --size must be >= 16, --train >= 0 and --val >= 1")
    cfg = _apply_flags(config.DataConfig(), args)  # the sources and the DATASET_FIELDS flags given
    config.validate(cfg)
    with tqdm(total=args.train + args.val, unit="pair", disable=args.quiet) as bar, \
            atomic_dir(out, overwrite=args.overwrite) as tmp:
        manifest = make_dataset(cfg, tmp, args.size, args.train, args.val, args.seed, progress=lambda: bar.update(1))
    print(f"wrote {len(manifest['pairs'])} pairs to {out} (contact sheet: {out / 'contact-sheet.png'})")


def add_parsers(sub) -> None:
    """Registers `train` and `make-dataset` on the `vharm` subcommand parser."""
    t = sub.add_parser("train", help="train G and D (two-frame GAN with regional temporal loss)")
    t.add_argument("sources", nargs="*", help="source dirs of images+masks or frames+masks (see make-dataset; "
                   "--auto-mask: also without masks)")
    t.add_argument("--preset", dest="preset_name", default="cpu", choices=config.PRESETS)
    t.add_argument("--config", help="a config.json to start from (parsed as data)")
    t.add_argument("--outdir", default="runs", help="parent of the numbered run dirs")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true")
    _add_config_flags(t, config.TrainConfig, skip=("preset", "sources", "members"))
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("fit", help="fit the statistics G on cached features of many pairs (minutes on a CPU)")
    f.add_argument("sources", nargs="+", help="source dirs of images+masks or frames+masks (see make-dataset; "
                   "--auto-mask: also without masks)")
    f.add_argument("--outdir", default="runs", help="parent of the numbered run dirs")
    f.add_argument("--cache", default="data/fit-cache", help="where the pairs' features are kept between runs")
    f.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    f.add_argument("--quiet", action="store_true")
    _add_config_flags(f, config.FitConfig, skip=("sources", "members"))
    f.set_defaults(func=cmd_fit)

    fd = sub.add_parser("fit-d", help="fit D for mask-free mode on frozen ImageNet features (minutes on a CPU)")
    fd.add_argument("sources", nargs="+", help="source dirs of images+masks or frames+masks (see make-dataset; "
                    "--auto-mask: also without masks)")
    fd.add_argument("--outdir", default="runs", help="parent of the numbered run dirs")
    fd.add_argument("--cache", default="data/fit-d-cache", help="where the pairs' images and the encoder's maps are "
                    "kept between runs")
    fd.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    fd.add_argument("--quiet", action="store_true")
    _add_config_flags(fd, config.FitDConfig, skip=("sources",))
    fd.set_defaults(func=cmd_fit_d)

    e = sub.add_parser("ensemble", help="one weights directory whose G is the mean of several trained G's")
    e.add_argument("weights", nargs="+", help="weights or run directories of G's of one architecture (e.g. seeds of "
                   "one recipe); D and the inference defaults come from the first")
    e.add_argument("-o", "--output", required=True, help="the weights directory to write")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_ensemble)

    m = sub.add_parser("make-dataset", help="synthesise two-frame pairs with exact flow (Dancing-MSCOCO recipe)")
    m.add_argument("sources", nargs="+", help="dirs with images/+masks/ or frames/+masks/ (searched 2 levels); with "
                   "--auto-mask also photo and frame folders without masks, and video files")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--train", type=int, default=1000, help="number of training pairs")
    m.add_argument("--val", type=int, default=100, help="number of validation pairs (from held-out sources)")
    m.add_argument("--size", type=int, default=256, help="pair size in pixels (square)")
    m.add_argument("--seed", type=int, default=0)
    for spec in config.field_specs(config.DataConfig):
        if spec.name in DATASET_FIELDS:
            _add_flag(m, spec)
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_make_dataset)
