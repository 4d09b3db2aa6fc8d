"""A run's resume point: `resume.safetensors` (weights, optimizer state, step, best score, torch RNG), no pickle.

Tensors go into the safetensors file under flat dotted names; everything else (steps, Adam's hyperparameters)
into its JSON metadata. The file is replaced atomically, so a SIGKILL at any moment leaves a complete one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vharm.config import TrainConfig, load_json, to_dict
from vharm.errors import VharmError
from vharm.io.files import atomic_path

RESUME = "resume.safetensors"


def _flatten(prefix: str, state: dict, tensors: dict, meta: dict) -> None:
    """Optimizer/module state -> flat tensors (safetensors) + JSON-able rest.

    Example:
        >>> tensors, meta = {}, {}
        >>> _flatten("opt", {"0": {"exp_avg": torch.zeros(2), "step": 3}}, tensors, meta)
        >>> list(tensors), meta
        (['opt.0.exp_avg'], {'opt.0.step': 3})
    """
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().contiguous().clone()
        elif isinstance(value, dict):
            _flatten(name, value, tensors, meta)
        else:
            meta[name] = value


def _unflatten(prefix: str, tensors: dict, meta: dict) -> dict:
    """The nested state `_flatten` wrote under `prefix`.

    Example:
        >>> _unflatten("opt", {"opt.0.exp_avg": torch.zeros(2)}, {"opt.0.step": 3})
        {'0': {'exp_avg': tensor([0., 0.]), 'step': 3}}
    """
    out: dict = {}
    for flat in (tensors, meta):
        for name, value in flat.items():
            if not name.startswith(prefix + "."):
                continue
            *path, leaf = name[len(prefix) + 1:].split(".")
            node = out
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = value
    return out


def _optimizer_state(flat: dict) -> dict:
    """Optimizer state keys are ints in torch; JSON/safetensors made them strings."""
    return {"state": {int(k): v for k, v in flat.get("state", {}).items()}, "param_groups": flat["param_groups"]}


def save_resume(path: Path, step: int, modules: dict, optimizers: dict, best: float) -> None:
    """Writes the resume point of `step` atomically: module and optimizer states by name, `best`, torch's RNG."""
    tensors, meta = {}, {"step": step, "best": best}
    for name, m in modules.items():
        tensors.update({f"{name}.{k}": v.detach().contiguous().clone() for k, v in m.state_dict().items()})
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        _flatten(f"{name}.state", sd["state"], tensors, meta)
        meta[f"{name}.param_groups"] = sd["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"json": json.dumps(meta)})


def load_resume(path: Path, modules: dict, optimizers: dict) -> tuple[int, float]:
    """Loads what `save_resume` wrote into `modules` and `optimizers` (and torch's RNG); returns (step, best)."""
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(f.metadata()["json"])
    except Exception as e:  # safetensors raises several types for a damaged file
        raise VharmError(f"{path}: unreadable resume state ({str(e).splitlines()[0]})") from None
    for name, m in modules.items():  # module keys contain dots themselves: strip the prefix, keep them flat
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    for name, opt in optimizers.items():
        flat = _unflatten(name, tensors, meta)
        opt.load_state_dict(_optimizer_state({"state": flat.get("state", {}),
                                              "param_groups": meta[f"{name}.param_groups"]}))
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), float(meta["best"])


def restore_run(run: Path, cfg: TrainConfig, modules: dict, optimizers: dict) -> tuple[int, float]:
    """Loads a stopped run's resume point for `cfg` (the same model); returns (step, best score so far)."""
    if not (run / RESUME).is_file():
        raise VharmError(f"{run}: no {RESUME} to resume from")
    saved = load_json(run / "config.json", TrainConfig)
    if to_dict(saved.model) != to_dict(cfg.model):
        raise VharmError(f"{run}/config.json: its model differs from the requested one; resume with the same config")
    step, best = load_resume(run / RESUME, modules, optimizers)
    if saved.data.val_testset != cfg.data.val_testset:
        best = math.inf  # `best/` is now chosen by another score: the saved one is not comparable
    return step, best


def write_config(run: Path, cfg: TrainConfig) -> None:
    """The run's config.json: the resolved config, rewritten when flags given with --resume changed it."""
    path = run / "config.json"
    if path.is_file() and to_dict(load_json(path, TrainConfig)) == to_dict(cfg):
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
