"""Two-frame coordinated adversarial training (Huang et al. 2020, Fig. 2), top to bottom.

A run lives in `runs/NNNNN-name/`: `config.json` (resolved), `log.txt`, `stats.jsonl` (losses and
validation numbers), weight snapshots `network-snapshot-NNNNNN/` and `best/` (loadable with
`vharm.models.from_pretrained`), and `resume.safetensors` (optimizers, step, RNG) written atomically.
SIGINT/SIGTERM save a resume point and exit cleanly; `--resume RUN_DIR` continues exactly.

Runs unchanged under `torchrun --nproc_per_node=N` (DDP, gloo on CPU, nccl on CUDA): each rank draws
different pairs, rank 0 writes the files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vharm.eval import metrics
from vharm.config import TrainConfig, from_dict, to_dict
from vharm.data.dataset import collate, open_pairs
from vharm.errors import VharmError
from vharm.eval.evaluate import composite_fmse, load_real_clips, score_real
from vharm.io.files import atomic_dir, atomic_path
from vharm.train.losses import GeneratorLoss, discriminator_loss
from vharm.models import Discriminator, Generator, count_params, save_pretrained
from vharm.inference.harmonizer import Harmonizer

RESUME = "resume.safetensors"


def new_run_dir(outdir: Path, name: str) -> Path:
    """runs/NNNNN-name with the next free number (edm style)."""
    if outdir.exists() and not outdir.is_dir():
        raise VharmError(f"{outdir}: --outdir is a file, not a directory")
    outdir.mkdir(parents=True, exist_ok=True)
    ids = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    run = outdir / f"{max(ids, default=-1) + 1:05d}-{name}"
    run.mkdir()
    return run


def _flatten(prefix: str, state: dict, tensors: dict, meta: dict) -> None:
    """Optimizer/module state -> flat tensors (safetensors) + JSON-able rest; no pickle anywhere."""
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().contiguous().clone()
        elif isinstance(value, dict):
            _flatten(name, value, tensors, meta)
        else:
            meta[name] = value


def _unflatten(prefix: str, tensors: dict, meta: dict) -> dict:
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
        opt.load_state_dict(_optimizer_state({"state": flat.get("state", {}), "param_groups": meta[f"{name}.param_groups"]}))
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), float(meta["best"])


def rank_drift(module: torch.nn.Module) -> float:
    """Largest |p - p_rank0| over all parameters and ranks (0 when DDP keeps the replicas identical)."""
    drift = torch.zeros(())
    for p in module.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        drift = torch.maximum(drift, (p.detach() - ref).abs().max().cpu())
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    return float(drift)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step `step` (0-based): a function of the step alone, so that resume is exact."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    return cfg.lr


def gan_step(g_train, d_train, d: Discriminator, opt_g, opt_d, loss_g: GeneratorLoss, batch: dict,
             use_discriminator: bool, device) -> dict[str, float]:
    """One two-frame coordinated step (paper Fig. 2): D on (O_t, I_t, X_t), then G. Returns the loss terms."""
    comp, target, mask, flow = (batch[k].to(device) for k in ("comp", "target", "mask", "flow"))
    # O_{t-1} is a constant; O_t gets the gradients.
    with torch.no_grad():
        prev_pred = g_train(comp[:, 0], mask[:, 0])
    pred = g_train(comp[:, 1], mask[:, 1])
    d_pred, out = None, {}
    if use_discriminator:
        loss_d = discriminator_loss(d_train(pred.detach()), d_train(comp[:, 1]), d_train(target[:, 1]), mask[:, 1])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        out["loss/d"] = loss_d.item()
        d.requires_grad_(False)  # G's adversarial gradient must not update D
        d_pred = d_train(pred)
    # Losses on [-1, 1] colours as in the paper, so lambda1/lambda2 keep their published meaning.
    terms = loss_g(2 * pred - 1, 2 * target[:, 1] - 1, 2 * prev_pred - 1, flow, mask[:, 1], d_pred,
                   comp=2 * comp[:, 1] - 1)
    opt_g.zero_grad(set_to_none=True)
    terms["total"].backward()
    opt_g.step()
    d.requires_grad_(True)
    return {**out, **{f"loss/{k}": v.item() for k, v in terms.items()}}


@torch.no_grad()
def validate(g: Generator, batches: list[dict], device: torch.device, prefix: str = "val") -> dict:
    """Means over the validation pairs (frame 2): the model's and the composite's MSE/fMSE/PSNR and L_T."""
    g.eval()
    rows = {k: [] for k in ("mse", "fmse", "psnr", "lt", "comp_mse", "comp_fmse", "comp_psnr", "comp_lt")}
    for b in batches:
        comp, target, mask, flow = (b[k].to(device) for k in ("comp", "target", "mask", "flow"))
        pred1, pred2 = g(comp[:, 0], mask[:, 0]), g(comp[:, 1], mask[:, 1])
        for who, (o1, o2) in (("", (pred1, pred2)), ("comp_", (comp[:, 0], comp[:, 1]))):
            e = metrics.mse(o2, target[:, 1])
            rows[who + "mse"] += e.tolist()
            rows[who + "fmse"] += metrics.fmse(o2, target[:, 1], mask[:, 1]).tolist()
            rows[who + "psnr"] += metrics.psnr(e).tolist()
            rows[who + "lt"] += metrics.temporal_lt(o2, o1, flow, mask[:, 1]).tolist()
    g.train()
    return {f"{prefix}/{k}": metrics.mean(v) for k, v in rows.items()}


def train(cfg: TrainConfig, outdir: Path = Path("runs"), resume: Path | None = None, progress: bool = True) -> Path:
    """Trains G and D; returns the run directory."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise VharmError("--device cuda: this torch build or machine has no CUDA device")
    device = torch.device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))) if cfg.device == "cuda" else torch.device("cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    train_pairs = open_pairs(cfg.data, cfg.model.resolution, cfg.seed, "train")
    def val_batches_for(data):
        source = open_pairs(data, cfg.model.resolution, cfg.seed, "val")
        return [collate([source[i] for i in range(s, min(s + cfg.batch_size, data.val_pairs))])
                for s in range(0, data.val_pairs, cfg.batch_size)]

    # "val": held-out images recoloured by held-out families (checkpoint selection, a generalisation number);
    # "val_seen": the same images recoloured by the training families (is the model learning at all?).
    val_batches = val_batches_for(cfg.data)
    seen = dataclasses.replace(cfg.data, val_families=cfg.data.families)
    seen_batches = val_batches_for(seen) if seen != cfg.data and not cfg.data.dataset else []
    real_clips = load_real_clips(Path(cfg.data.val_testset)) if cfg.data.val_testset else []
    real_comp_fmse = composite_fmse(real_clips) if rank == 0 else []  # the same at every validation

    g, d = Generator(cfg.model).to(device), Discriminator(cfg.model).to(device)
    ema = copy.deepcopy(g).eval().requires_grad_(False) if cfg.ema > 0 else None
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    modules = {"g": g, "d": d, **({"ema": ema} if ema is not None else {})}
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}

    if resume is not None:
        run = Path(resume)
        if not (run / RESUME).is_file():
            raise VharmError(f"{run}: no {RESUME} to resume from")
        saved = from_dict(TrainConfig, json.loads((run / "config.json").read_text()), f"{run}/config.json")
        if to_dict(saved.model) != to_dict(cfg.model):
            raise VharmError(f"{run}/config.json: its model differs from the requested one; resume with the same config")
        step, best = load_resume(run / RESUME, modules, optimizers)
        if saved.data.val_testset != cfg.data.val_testset:
            best = float("inf")  # `best/` is now chosen by another score: the saved one is not comparable
        if rank == 0 and to_dict(saved) != to_dict(cfg):  # flags given with --resume: the run records them
            with atomic_path(run / "config.json") as tmp:
                tmp.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    else:
        run = new_run_dir(outdir, cfg.name) if rank == 0 else None
        step, best = 0, float("inf")
        if rank == 0:
            (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    if distributed:
        holder = [str(run) if run else ""]
        dist.broadcast_object_list(holder, src=0)
        run = Path(holder[0])
        g_train = torch.nn.parallel.DistributedDataParallel(g)
        d_train = torch.nn.parallel.DistributedDataParallel(d)
    else:
        g_train, d_train = g, d
    loss_g = GeneratorLoss(cfg.loss.lambda_temporal, cfg.loss.lambda_adv, cfg.loss.temporal, cfg.loss.relative,
                           cfg.loss.relative_eps)
    log = open(run / "log.txt", "a") if rank == 0 else None
    stats = open(run / "stats.jsonl", "a") if rank == 0 else None

    def say(msg: str) -> None:
        if log:
            log.write(msg + "\n")
            log.flush()
            tqdm.write(msg) if progress else None

    say(f"run {run}: G {count_params(g):,} params, D {count_params(d):,} params, step {step}/{cfg.steps}, "
        f"{world} process(es), {torch.get_num_threads()} threads, device {device}")

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    in_main_thread = threading.current_thread() is threading.main_thread()  # signal() works only there
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}

    def snapshot(tag: str) -> None:
        with atomic_dir(run / tag, overwrite=True) as tmp:
            save_pretrained(tmp, cfg.model, ema if ema is not None else g, d, extra={"step": step, "run": str(run)})

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, unit="step", dynamic_ncols=True)
    t0, t_last = time.time(), time.time()
    try:
        while step < cfg.steps and stop["signal"] is None:
            # Pair indices are a pure function of (step, rank): resume and DDP see the right pairs.
            first = (step * world + rank) * cfg.batch_size
            batch = collate([train_pairs[i] for i in range(first, first + cfg.batch_size)])
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                terms = gan_step(g_train, d_train, d, opt_g, opt_d, loss_g, batch, cfg.loss.use_discriminator,
                                 device)
            if ema is not None:
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), g.parameters()):
                        pe.lerp_(p, 1 - cfg.ema)
                    # Buffers (the stats backbone's BatchNorm running statistics) are copied, not averaged.
                    for be, b in zip(ema.buffers(), g.buffers()):
                        be.copy_(b)
            step += 1
            bar.update(1)

            if rank == 0 and (step % cfg.val_every == 0 or step == cfg.steps):
                row = {"step": step, "time_s": round(time.time() - t0, 1), "lr": opt_g.param_groups[0]["lr"],
                       "steps_per_s": round(cfg.val_every / max(time.time() - t_last, 1e-9), 3),
                       **terms,
                       **validate(ema if ema is not None else g, val_batches, device),
                       **(validate(ema if ema is not None else g, seen_batches, device, "val_seen")
                          if seen_batches else {})}
                if real_clips:
                    # A copy: the Harmonizer puts G in eval mode and channels_last. D is not needed with true masks.
                    h = Harmonizer(copy.deepcopy(ema if ema is not None else g), None, cfg.device)
                    row.update({f"val_real/{k}": v for k, v in score_real(h, real_clips, real_comp_fmse).items()})
                t_last = time.time()
                stats.write(json.dumps(row) + "\n")
                stats.flush()
                seen_note = (f"; seen families: fMSE {row['val_seen/fmse']:.1f} (composite "
                             f"{row['val_seen/comp_fmse']:.1f})") if seen_batches else ""
                say(f"step {step}: val fMSE {row['val/fmse']:.1f} (composite {row['val/comp_fmse']:.1f}), "
                    f"PSNR {row['val/psnr']:.2f} (composite {row['val/comp_psnr']:.2f}), L_T {row['val/lt']:.5f}"
                    + seen_note)
                if real_clips:
                    say(f"step {step}: real clips: fMSE {row['val_real/fmse']:.1f} (composite "
                        f"{row['val_real/comp_fmse']:.1f}, {row['val_real/ratio']:.3f}x), "
                        f"{row['val_real/harmed']} of {len(real_clips)} clips above 1.1x")
                score = row["val_real/fmse" if real_clips else "val/fmse"]
                if score < best:
                    best = score
                    snapshot("best")
            if distributed and (step % cfg.snapshot_every == 0 or step == cfg.steps):
                say(f"step {step}: ranks in sync, max parameter difference to rank 0: {rank_drift(g):.3g}")
            if rank == 0 and (step % cfg.snapshot_every == 0 or step == cfg.steps):
                snapshot(f"network-snapshot-{step:06d}")
                save_resume(run / RESUME, step, modules, optimizers, best)
        if distributed and stop["signal"] is None:
            # No rank tears its process group down while rank 0 still writes (gloo aborted a rank doing so).
            dist.barrier()
    finally:
        bar.close()
        if rank == 0 and stop["signal"] is not None:
            save_resume(run / RESUME, step, modules, optimizers, best)
            say(f"stopped by signal {stop['signal']} at step {step}; continue with: vharm train --resume {run}")
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if log:
            log.close()
            stats.close()
        if distributed:
            dist.destroy_process_group()
    if stop["signal"] is not None:
        sys.exit(130 if stop["signal"] == signal.SIGINT else 143)
    return run
