"""The typed configs: presets, JSON round trip, the one validation (choices, ranges, cross-field rules) and the
`vharm train` flags built from the fields' metadata."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import tiny_train_config

from vharm.cli import main
from vharm.config import (
    PRESETS,
    DataConfig,
    FitConfig,
    FitDConfig,
    InferenceConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    field_specs,
    flag,
    from_dict,
    load_json,
    preset,
    read_json,
    to_dict,
    validate,
)
from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.models import WEIGHTS_DIR
from vharm.train.loop import train

REPO = Path(__file__).resolve().parents[1]
TRAIN_FAMILIES = ["reinhard", "exposure", "gamma", "hue", "saturation", "temperature", "contrast", "curve"]

# Every preset resolved, flattened, as it was before ModelConfig's defaults became the shipped G's (commit
# 4c875c5): the values all four share, then each one's own.
SHARED = {"model.use_mask": True, "model.confidence": False, "model.statistics": "colour", "model.members": 1,
          "model.disc_backbone": "unet",
          "data.scene_prob": 0.0,
          "loss.lambda_temporal": 0.02, "loss.lambda_adv": 0.01, "loss.temporal": "regional",
          "loss.use_discriminator": True, "data.sources": [], "data.auto_mask": False,
          "data.mask_cache": "data/auto-masks", "data.dataset": "", "data.families": TRAIN_FAMILIES,
          "data.min_fg": 0.1, "data.max_motion": 0.04, "data.val_testset": "", "data.backdrops": [],
          "data.backdrop_prob": 0.5, "lr_schedule": "constant",
          "beta2": 0.999, "seed": 0, "threads": 0, "workers": 0, "precision": "fp32", "device": "cpu"}
PRESET_VALUES = {
    "tiny": {"name": "tiny", "preset": "tiny", "model.backbone": "unet", "model.head": "affine",
             "model.widths": [8, 16, 32], "model.norm": "group", "model.resolution": 64, "model.grid": 0,
             "model.disc_widths": [8, 16], "loss.relative": False, "loss.relative_eps": 0.001,
             "data.val_families": TRAIN_FAMILIES, "data.real_pair_prob": 0.0, "data.mild_prob": 0.15,
             "data.random_mask_prob": 0.0, "data.val_pairs": 4, "steps": 200, "batch_size": 2, "lr": 0.0002,
             "beta1": 0.5, "val_every": 50, "snapshot_every": 100, "ema": 0.0},
    "cpu": {"name": "cpu", "preset": "cpu", "model.backbone": "stats", "model.head": "affine", "model.widths": [64, 64],
            "model.norm": "group", "model.resolution": 128, "model.grid": 1,
            "model.disc_widths": [4, 8, 16, 32, 64, 128], "loss.relative": True, "loss.relative_eps": 0.002,
            "data.val_families": ["lut"], "data.real_pair_prob": 0.2, "data.mild_prob": 0.15,
            "data.random_mask_prob": 0.5, "data.val_pairs": 64, "steps": 400, "batch_size": 32, "lr": 0.001,
            "beta1": 0.9, "val_every": 50, "snapshot_every": 50, "ema": 0.0},
    "unet": {"name": "unet", "preset": "unet", "model.backbone": "unet", "model.head": "affine",
             "model.widths": [8, 16, 32, 64, 128, 256], "model.norm": "group", "model.resolution": 256, "model.grid": 1,
             "model.disc_widths": [4, 8, 16, 32, 64, 128], "loss.relative": True, "loss.relative_eps": 0.001,
             "data.val_families": ["lut"], "data.real_pair_prob": 0.2, "data.mild_prob": 0.3,
             "data.random_mask_prob": 0.0, "data.val_pairs": 64, "steps": 20000, "batch_size": 4, "lr": 0.0002,
             "beta1": 0.5, "val_every": 500, "snapshot_every": 1000, "ema": 0.998},
    "paper": {"name": "paper", "preset": "paper", "model.backbone": "unet", "model.head": "rgb",
              "model.widths": [64, 128, 256, 512, 512, 512, 512, 512], "model.norm": "instance",
              "model.resolution": 512, "model.grid": 0, "model.disc_widths": [64, 128, 256, 512, 512, 512, 512, 512],
              "loss.relative": False, "loss.relative_eps": 0.001, "data.val_families": ["lut"],
              "data.real_pair_prob": 0.0, "data.mild_prob": 0.15, "data.random_mask_prob": 0.0, "data.val_pairs": 64,
              "steps": 1341810, "batch_size": 1, "lr": 0.0002, "beta1": 0.999, "val_every": 500,
              "snapshot_every": 1000, "ema": 0.0},
}
# The model sections of the weights that ship in the package and of the 2026-11 UNet weights (data/, not in git).
SHIPPED_MODEL = {"backbone": "stats", "head": "affine", "widths": [64, 64], "norm": "group", "resolution": 128,
                 "grid": 1, "disc_widths": [4, 8, 16, 32, 64, 128], "disc_backbone": "efficientnet",
                 "use_mask": True, "confidence": False, "statistics": "colour", "members": 1}
UNET_2026_11_MODEL = {**SHIPPED_MODEL, "backbone": "unet", "widths": [8, 16, 32, 64, 128, 256], "disc_backbone": "unet"}


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


# --------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve_as_before_the_defaults_changed(name):
    assert _flat(to_dict(preset(name))) == {**SHARED, **PRESET_VALUES[name]}


def test_model_defaults_are_the_shipped_generator():
    # D's default stays the UNet of every earlier weights directory; the shipped D is `vharm fit-d`'s
    shipped = read_json(WEIGHTS_DIR / "default" / "config.json")["model"]
    assert {**to_dict(ModelConfig()), "disc_backbone": "efficientnet"} == SHIPPED_MODEL == shipped
    assert preset("cpu").model == ModelConfig()
    # `vharm fit` fits the same G with a confidence head (its weights are not the shipped ones, docs/training.md)
    assert dataclasses.replace(FitConfig().model, confidence=False) == ModelConfig()


@pytest.mark.parametrize("weights,model,inference", [
    # the gate experiments/select_gate.py chose; the smoothing and mask-free gate chosen on the validation sets; no
    # brightening gain (docs/training.md, "G brightens too little"); the gate's factor for darkening changes; G's
    # three steps (chosen with the gate, "G again on its own result")
    ("default", SHIPPED_MODEL, (9.0, 13.5, 0.8, 1.6, 1.0, 1.25, 3)),
    (REPO / "data" / "unet-2026-11", UNET_2026_11_MODEL, (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1)),
])
def test_shipped_and_saved_weights_load_with_the_same_config(weights, model, inference):
    if isinstance(weights, Path) and not weights.exists():
        pytest.skip(f"{weights}: not in this checkout")
    h = Harmonizer.from_pretrained(weights)
    assert to_dict(h.generator.cfg) == model
    assert (h.min_change, h.full_change, h.temporal_smoothing, h.mask_free_gate, h.brighten, h.darken_gate,
            h.g_steps) == inference


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_and_validate(name, tmp_path):
    cfg = preset(name)
    assert cfg.preset == name
    validate(cfg)
    (tmp_path / "c.json").write_text(json.dumps(to_dict(cfg)))
    assert load_json(tmp_path / "c.json", TrainConfig) == cfg
    assert preset(name) is not preset(name)  # fresh objects


def test_saved_run_configs_still_load():
    """The run configs kept in docs/ (some older than today's keys) pass today's validation."""
    files = sorted((REPO / "docs").rglob("config.json"))
    assert files
    for file in files:
        data = json.loads(file.read_text())
        if "generator" in data:  # a `vharm fit-d` run
            assert load_json(file, FitDConfig).pairs >= 1
        elif "pairs" in data:  # a `vharm fit` run
            assert load_json(file, FitConfig).pairs >= 1
        else:
            assert load_json(file, TrainConfig).steps >= 1


# ------------------------------------------------------------------------------------ field metadata


SECTIONS = (TrainConfig, ModelConfig, LossConfig, DataConfig, InferenceConfig)
# Paths and labels, not names from a list.
FREE_TEXT = {"name", "preset", "dataset", "val_testset", "sources", "mask_cache", "backdrops"}


def _leaf_specs(has=lambda spec: True) -> list:
    return [pytest.param(cls, s, id=f"{cls.__name__}.{s.name}") for cls in SECTIONS for s in field_specs(cls)
            if not dataclasses.is_dataclass(s.kind) and has(s)]


def test_every_field_says_what_it_accepts():
    for cls, spec in (p.values for p in _leaf_specs()):
        assert spec.help, (cls.__name__, spec.name)
        if spec.kind in (int, float):
            assert spec.range is not None, (cls.__name__, spec.name)
        if spec.kind is str:
            assert (spec.choices is not None) != (spec.name in FREE_TEXT), (cls.__name__, spec.name)


@pytest.mark.parametrize("cls,spec", _leaf_specs(lambda s: s.range is not None))
def test_values_below_a_range_are_refused_naming_the_flag(cls, spec):
    below = spec.kind(spec.range.lo - (0 if spec.range.lo_open else 1))
    value = (below,) if spec.many else below
    with pytest.raises(VharmError, match=f"{spec.name} (is|holds) {below!r} \\({flag(spec.name)}\\): must be"):
        validate(dataclasses.replace(cls(), **{spec.name: value}))


@pytest.mark.parametrize("cls,spec", _leaf_specs(lambda s: s.choices is not None))
def test_unknown_names_are_refused_with_the_allowed_ones(cls, spec):
    value = ("bogus",) if spec.many else "bogus"
    with pytest.raises(VharmError) as e:
        validate(dataclasses.replace(cls(), **{spec.name: value}))
    assert f"{spec.name} {'holds' if spec.many else 'is'} 'bogus' ({flag(spec.name)})" in str(e.value)
    assert ", ".join(spec.choices) in str(e.value)


@pytest.mark.parametrize("section,changes,match", [
    ("model", {"backbone": "stats", "head": "rgb"}, "needs model.head affine \\(--head\\)"),
    ("model", {"resolution": 65}, r"model.resolution 65 \(--resolution\) must be a multiple of 2\*\*\(depth - 1\) = 4"),
    ("model", {"grid": 5}, r"model.grid 5 \(--grid\) must be 0 or divide model.resolution 64 \(--resolution\)"),
    ("model", {"widths": (8,) * 11}, r"model.widths has 11 entries \(--widths\): the number must be in \[1, 10\]"),
    ("model", {"disc_widths": ()}, r"model.disc_widths has 0 entries \(--disc-widths\)"),
    ("model", {"widths": (8, 5000, 8)}, r"model.widths holds 5000 \(--widths\): must be in \[1, 4096\]"),
    ("model", {"resolution": 8192}, "must be in"),
    ("data", {"families": ()}, r"data.families has 0 entries \(--families\)"),
    ("data", {"val_families": ("lut", "sepia")}, r"data.val_families holds 'sepia' \(--val-families\): choose from "),
    ("data", {"mild_prob": 1.5}, r"data.mild_prob is 1.5 \(--mild-prob\): must be in \[0, 1\]"),
    ("loss", {"temporal": "bogus"}, r"loss.temporal is 'bogus' \(--temporal\): choose one of regional, global, none"),
])
def test_impossible_training_settings(section, changes, match):
    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    with pytest.raises(VharmError, match=match):
        validate(cfg)


def test_training_refuses_an_invalid_config_before_writing(tmp_path, dataset_dir):
    cfg = tiny_train_config(dataset_dir, ema=1.0)
    with pytest.raises(VharmError, match=r"^ema is 1.0 \(--ema\): must be in \[0, 1\)"):
        train(cfg, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_inference_validation_keeps_its_name_and_messages():
    validate(InferenceConfig(0.5, 4.0, 6.0), "Harmonizer")
    with pytest.raises(VharmError, match=r"^Harmonizer: temporal_smoothing is 1.0 \(--temporal-smoothing\): must be"):
        validate(InferenceConfig(temporal_smoothing=1.0), "Harmonizer")
    with pytest.raises(VharmError, match="^Harmonizer: the change gate needs min_change <= full_change .* 4.0 and 0.0"):
        validate(InferenceConfig(min_change=4.0), "Harmonizer")


def test_config_errors(tmp_path):
    with pytest.raises(VharmError, match="unknown preset"):
        preset("huge")
    data = to_dict(preset("tiny"))
    data["model"]["depth"] = 3
    with pytest.raises(VharmError, match="unknown key"):
        from_dict(TrainConfig, data)
    data = to_dict(preset("tiny"))
    data["steps"] = "many"
    with pytest.raises(VharmError, match="config.steps: expected an integer"):
        from_dict(TrainConfig, data)
    data = to_dict(preset("tiny"))
    data["loss"]["relative"] = 1
    with pytest.raises(VharmError, match="true or false"):
        from_dict(TrainConfig, data)
    data = to_dict(preset("tiny"))
    data["model"]["norm"] = 3
    with pytest.raises(VharmError, match="config.model.norm: expected a string"):
        from_dict(TrainConfig, data)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VharmError, match="not valid JSON"):
        load_json(tmp_path / "bad.json", TrainConfig)
    with pytest.raises(VharmError, match="no such config"):
        load_json(tmp_path / "nope.json", TrainConfig)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_refuses_an_unknown_temporal_loss_before_printing_or_writing(run_cli, tmp_path):
    code, out, err = run_cli("train", "--preset", "tiny", "--temporal", "bogus", "--dry-run", "--outdir",
                             tmp_path / "runs")
    assert code == 2 and out == "" and "--temporal" in err and "'regional', 'global', 'none'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_cli_refuses_an_unknown_family_before_writing(run_cli, tmp_path, source_dir):
    code, out, err = run_cli("train", source_dir, "--preset", "tiny", "--families", "hue", "bogus", "--steps", "1",
                             "--outdir", tmp_path / "runs", "--quiet", "--threads", "1")
    assert code == 2 and "--families" in err and "'bogus'" in err and "'reinhard'" in err, err
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_a_config_file_with_an_unknown_name(run_cli, tmp_path):
    data = to_dict(preset("tiny"))
    data["loss"]["temporal"] = "bogus"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    code, out, err = run_cli("train", "--config", tmp_path / "bad.json", "--dry-run")
    assert code == 2 and out == ""
    bad = tmp_path / "bad.json"
    assert f"{bad}: loss.temporal is 'bogus' (--temporal): choose one of regional, global, none" in err


def test_make_dataset_refuses_an_unknown_family(run_cli, tmp_path, source_dir):
    code, out, err = run_cli("make-dataset", source_dir, "-o", tmp_path / "pairs", "--families", "bogus", "--quiet")
    assert code == 2 and "--families" in err and "'bogus'" in err
    assert not (tmp_path / "pairs").exists()
    code, out, err = run_cli("make-dataset", source_dir, "-o", tmp_path / "pairs", "--min-fg", "2", "--quiet")
    assert code == 2 and "data.min_fg is 2.0 (--min-fg): must be in [0, 1]" in err


def test_train_help_shows_each_fields_help_and_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--temporal NAME temporal loss over the foreground (regional, paper)" in out
    assert "(one of regional, global, none)" in out
    assert "--families NAME [NAME ...] recolouring families of the training pairs (any of reinhard, exposure," in out
    assert "--steps STEPS training steps (>= 1)" in out
    assert "--ema EMA weight EMA decay of the snapshot generator (0 = off) (in [0, 1))" in out
    assert "(paper: 10 %)" in out  # a literal % in a help line

