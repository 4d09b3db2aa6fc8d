"""Two-frame coordinated adversarial training (Huang et al. 2020, Fig. 2), top to bottom.

A run lives in `runs/NNNNN-name/`: `config.json` (resolved), `log.txt`, `stats.jsonl` (losses and
validation numbers), weight snapshots `network-snapshot-NNNNNN/` and `best/` (loadable with
`Generator.from_pretrained`), and `resume.safetensors` (optimizers, step, RNG; `vharm.train.resume`) written
atomically. SIGINT/SIGTERM save a resume point and raise `TrainingStopped`; `--resume RUN_DIR` continues exactly.

Runs unchanged under `torchrun --nproc_per_node=N` (DDP, gloo on CPU, nccl on CUDA; `vharm.train.distributed`):
each rank draws different pairs, rank 0 writes the files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from vharm.config import TrainConfig, validate
from vharm.data.dataset import collate, open_pairs
from vharm.errors import VharmError
from vharm.eval import metrics
from vharm.io.files import atomic_dir
from vharm.models import Discriminator, Generator, count_params
from vharm.train import distributed
from vharm.train.losses import GeneratorLoss, discriminator_loss
from vharm.train.resume import RESUME, restore_run, save_resume, write_config


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training between two steps; the resume point of `step` is saved in `run`."""

    def __init__(self, signum: int, step: int, run: Path):
        super().__init__(f"stopped by signal {signum} at step {step}; continue with: vharm train --resume {run}")
        self.signum, self.step, self.run = signum, step, run

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, the status a shell gives a process the signal ended (130 SIGINT, 143 SIGTERM).

        Example:
            >>> TrainingStopped(signal.SIGTERM, 7, Path("runs/00000-cpu")).exit_code
            143
        """
        return 128 + self.signum


def new_run_dir(outdir: Path, name: str) -> Path:
    """runs/NNNNN-name with the next free number (edm style)."""
    if outdir.exists() and not outdir.is_dir():
        raise VharmError(f"{outdir}: --outdir is a file, not a directory")
    outdir.mkdir(parents=True, exist_ok=True)
    ids = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    run = outdir / f"{max(ids, default=-1) + 1:05d}-{name}"
    run.mkdir()
    return run


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step `step` (0-based): a function of the step alone, so that resume is exact.

    Example:
        >>> from vharm.config import preset
        >>> cfg = dataclasses.replace(preset("tiny"), lr=1e-3, lr_schedule="cosine", steps=100)
        >>> learning_rate(cfg, 0), learning_rate(cfg, 50)
        (0.001, 0.0005)
    """
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    return cfg.lr


def set_learning_rate(optimizers, lr: float) -> None:
    """Gives every parameter group of `optimizers` the learning rate `lr`."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def _due(step: int, every: int, last: int) -> bool:
    """Whether a periodic task (validation, snapshot) runs after `step`: every `every` steps and after the last."""
    return step % every == 0 or step == last


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


class StepBatches(torch.utils.data.Dataset):
    """This rank's training batches from step `start` on: item k is step start + k's batch. Its pairs' indices are a
    pure function of (step, rank), and each pair of its index, so that resume, DDP and worker processes making
    batches ahead all see the same pairs."""

    def __init__(self, pairs, batch_size: int, start: int, steps: int, rank: int, world: int):
        self.pairs, self.batch_size, self.start, self.steps = pairs, batch_size, start, steps
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __getitem__(self, k: int) -> dict:
        first = ((self.start + k) * self.world + self.rank) * self.batch_size
        return collate([self.pairs[i] for i in range(first, first + self.batch_size)])


def _one_thread(_worker: int) -> None:
    # A synthesising worker takes one core: torch's and OpenCV's own pools would fight the training step for them.
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def step_batches(batches: StepBatches, workers: int):
    """The batches in step order: made here (`workers` 0), or ahead by `workers` spawned processes (spawn: this
    process holds torch's threads, which a forked copy can deadlock on)."""
    if workers == 0:
        return (batches[k] for k in range(len(batches)))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=2,
                                            multiprocessing_context="spawn", worker_init_fn=_one_thread))


@torch.no_grad()
def update_ema(ema: Generator, g: Generator, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * g for the parameters; buffers (the stats backbone's BatchNorm running
    statistics) are copied, not averaged."""
    for pe, p in zip(ema.parameters(), g.parameters()):
        pe.lerp_(p, 1 - decay)
    for be, b in zip(ema.buffers(), g.buffers()):
        be.copy_(b)


# ------------------------------------------------------------------------------------------ validation


def _val_batches(cfg: TrainConfig, data) -> list[dict]:
    source = open_pairs(data, cfg.model.resolution, cfg.seed, "val")
    return [collate([source[i] for i in range(s, min(s + cfg.batch_size, data.val_pairs))])
            for s in range(0, data.val_pairs, cfg.batch_size)]


def validation_sets(cfg: TrainConfig) -> dict[str, list[dict]]:
    """The batches of each validation, by the prefix of its numbers.

    "val": held-out images recoloured by held-out families (checkpoint selection, a generalisation number);
    "val_seen": the same images recoloured by the training families (is the model learning at all?), when those
    families differ and the pairs are synthesised.
    """
    sets = {"val": _val_batches(cfg, cfg.data)}
    seen = dataclasses.replace(cfg.data, val_families=cfg.data.families)
    if seen != cfg.data and not cfg.data.dataset:
        sets["val_seen"] = _val_batches(cfg, seen)
    return sets


@torch.no_grad()
def score_pairs(g: Generator, batches: list[dict], device: torch.device, prefix: str = "val") -> dict:
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


def validation_numbers(g: Generator, val_sets: dict[str, list[dict]], device: torch.device,
                       validate_real: Callable[[Generator], dict[str, float]] | None) -> dict[str, float]:
    """A validation's numbers for stats.jsonl: `val/*`, `val_seen/*` and, with `validate_real`, `val_real/*`."""
    row = {}
    for prefix, batches in val_sets.items():
        row.update(score_pairs(g, batches, device, prefix))
    if validate_real is not None:
        row.update({f"val_real/{k}": v for k, v in validate_real(g).items()})
    return row


def validation_summary(step: int, row: dict) -> str:
    """The log's lines on a stats.jsonl row, each number in its metric's format (`metrics.METRICS`)."""
    def f(key: str, metric: str) -> str:
        return metrics.METRICS[metric].fmt.format(row[key])

    seen = (f"; seen families: fMSE {f('val_seen/fmse', 'fmse')} (composite {f('val_seen/comp_fmse', 'fmse')})"
            if "val_seen/fmse" in row else "")
    lines = [f"step {step}: val fMSE {f('val/fmse', 'fmse')} (composite {f('val/comp_fmse', 'fmse')}), PSNR "
             f"{f('val/psnr', 'psnr')} (composite {f('val/comp_psnr', 'psnr')}), L_T {f('val/lt', 'lt1')}" + seen]
    if "val_real/fmse" in row:
        lines.append(f"step {step}: real clips: fMSE {f('val_real/fmse', 'fmse')} (composite "
                     f"{f('val_real/comp_fmse', 'fmse')}, {row['val_real/ratio']:.3f}x), {row['val_real/harmed']} of "
                     f"{row['val_real/clips']} clips above {metrics.HARMED}x")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- bookkeeping


class RunWriter:
    """What rank 0 writes into a run directory: log.txt (also on the terminal with `echo`), stats.jsonl, weight
    snapshots, `best/` (the snapshot of the lowest score offered) and the resume point; on other ranks every call
    does nothing."""

    def __init__(self, run: Path, echo: bool, best: float):
        self.run, self.echo, self.best = run, echo, best
        self.files = (open(run / "log.txt", "a"), open(run / "stats.jsonl", "a")) if distributed.is_main() else ()

    def say(self, msg: str) -> None:
        if self.files:
            self.files[0].write(msg + "\n")
            self.files[0].flush()
            if self.echo:
                tqdm.write(msg)

    def stats(self, row: dict) -> None:
        if self.files:
            self.files[1].write(json.dumps(row) + "\n")
            self.files[1].flush()

    def snapshot(self, tag: str, g: Generator, d: Discriminator | None, step: int, **sections) -> None:
        """A weights directory `tag` of G (the EMA one if any) and D (if any), written atomically, that says its step
        and run (and holds `sections`, more config.json keys)."""
        if self.files:
            with atomic_dir(self.run / tag, overwrite=True) as tmp:
                g.save_pretrained(tmp, step=step, run=str(self.run), **sections)
                if d is not None:
                    d.save_pretrained(tmp)

    def offer_best(self, score: float, g: Generator, d: Discriminator, step: int) -> None:
        """Makes this state `best/` if `score` is below every score offered before (and the resumed run's)."""
        if self.files and score < self.best:
            self.best = score
            self.snapshot("best", g, d, step)

    def resume_point(self, step: int, modules: dict, optimizers: dict) -> None:
        if self.files:
            save_resume(self.run / RESUME, step, modules, optimizers, self.best)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files:
            f.close()


class StopSignals:
    """Within `with`, SIGINT and SIGTERM set `signum` instead of interrupting, so that training stops between two
    steps; the previous handlers come back at exit. signal() works only in the main thread: elsewhere none is caught."""

    def __enter__(self) -> StopSignals:
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._catch) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _catch(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------------------------ train


def train(cfg: TrainConfig, outdir: Path = Path("runs"), resume: Path | None = None, progress: bool = True,
          validate_real: Callable[[Generator], dict[str, float]] | None = None) -> Path:
    """Trains G and D; returns the run directory.

    Args:
        outdir: the parent of a new run directory (not used with `resume`).
        resume: a run directory to continue from its resume point, with the same model.
        progress: a progress bar and the log on the terminal.
        validate_real: scores G on real clips at every validation, leaving it as it was (`vharm.cli.train.
            real_clip_validation` builds it from `cfg.data.val_testset`): its numbers go into stats.jsonl as
            `val_real/*`, and its "fmse" picks `best/` instead of `val/fmse`.

    Raises:
        TrainingStopped: SIGINT or SIGTERM, after the resume point was saved.
    """
    validate(cfg)
    if cfg.data.val_testset and validate_real is None:
        raise VharmError(f"data.val_testset is {cfg.data.val_testset!r} but no validate_real was given to score it "
                         "(vharm.cli.train.real_clip_validation(cfg) builds it)")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise VharmError("--device cuda: this torch build or machine has no CUDA device")
    if cfg.model.disc_backbone != "unet":
        raise VharmError(f"--disc-backbone {cfg.model.disc_backbone}: that D is fitted by `vharm fit-d`, "
                         "not trained adversarially; vharm train trains disc_backbone unet")
    if cfg.model.members != 1:
        raise VharmError(f"model.members {cfg.model.members}: vharm train trains one G; train each member on its own "
                         "(e.g. --seed) and combine them with `vharm ensemble`")
    distributed.init(cfg.device)
    try:
        return training_loop(cfg, outdir, resume, progress, validate_real)
    finally:
        distributed.teardown()


def training_loop(cfg: TrainConfig, outdir: Path, resume: Path | None, progress: bool,
                  validate_real: Callable[[Generator], dict[str, float]] | None) -> Path:
    """`train` inside the process group (see there)."""
    # Initialize.
    rank, world, device = distributed.get_rank(), distributed.get_world_size(), distributed.device(cfg.device)
    torch.manual_seed(cfg.seed)

    # Load dataset.
    train_pairs = open_pairs(cfg.data, cfg.model.resolution, cfg.seed, "train")
    val_sets = validation_sets(cfg)

    # Construct networks.
    g, d = Generator(cfg.model).to(device), Discriminator(cfg.model).to(device)
    ema = copy.deepcopy(g).eval().requires_grad_(False) if cfg.ema > 0 else None
    g_out = ema if ema is not None else g  # the G that validation scores and snapshots hold
    loss_g = GeneratorLoss(cfg.loss.lambda_temporal, cfg.loss.lambda_adv, cfg.loss.temporal, cfg.loss.relative,
                           cfg.loss.relative_eps)

    # Setup optimizers.
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    modules = {"g": g, "d": d, **({"ema": ema} if ema is not None else {})}
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}

    # Resume training from previous snapshot, or start a run directory.
    if resume is not None:
        run = Path(resume)
        step, best = restore_run(run, cfg, modules, optimizers)
    else:
        run = new_run_dir(outdir, cfg.name) if distributed.is_main() else None
        step, best = 0, math.inf
    run = distributed.broadcast_path(run)
    if distributed.is_main():
        write_config(run, cfg)
    g_train, d_train = distributed.wrap(g), distributed.wrap(d)

    # Train.
    with RunWriter(run, progress, best) as out, StopSignals() as stop, \
            tqdm(total=cfg.steps, initial=step, disable=not progress or not distributed.is_main(), unit="step",
                 dynamic_ncols=True) as bar:
        out.say(f"run {run}: G {count_params(g):,} params, D {count_params(d):,} params, step {step}/{cfg.steps}, "
                f"{world} process(es), {torch.get_num_threads()} threads, device {device}")
        t0 = t_last = time.time()
        batches = step_batches(StepBatches(train_pairs, cfg.batch_size, step, cfg.steps, rank, world), cfg.workers)
        while step < cfg.steps and stop.signum is None:
            # Update weights.
            batch = next(batches)
            set_learning_rate(optimizers.values(), learning_rate(cfg, step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                terms = gan_step(g_train, d_train, d, opt_g, opt_d, loss_g, batch, cfg.loss.use_discriminator,
                                 device)

            # Update EMA.
            if ema is not None:
                update_ema(ema, g, cfg.ema)
            step += 1
            bar.update(1)

            # Validate (rank 0), and keep the best state.
            if distributed.is_main() and _due(step, cfg.val_every, cfg.steps):
                row = {"step": step, "time_s": round(time.time() - t0, 1), "lr": opt_g.param_groups[0]["lr"],
                       "steps_per_s": round(cfg.val_every / max(time.time() - t_last, 1e-9), 3), **terms,
                       **validation_numbers(g_out, val_sets, device, validate_real)}
                t_last = time.time()
                out.stats(row)
                out.say(validation_summary(step, row))
                out.offer_best(row["val_real/fmse" if validate_real is not None else "val/fmse"], g_out, d, step)

            # Save network snapshot and resume point, after checking that the ranks still hold the same weights.
            if _due(step, cfg.snapshot_every, cfg.steps):
                if world > 1:
                    out.say(f"step {step}: ranks in sync, max parameter difference to rank 0: "
                            f"{distributed.rank_drift(g):.3g}")
                out.snapshot(f"network-snapshot-{step:06d}", g_out, d, step)
                out.resume_point(step, modules, optimizers)

        # Done.
        if stop.signum is None:
            distributed.barrier()
            return run
        # Stopped by a signal: save where, and say how to continue.
        stopped = TrainingStopped(stop.signum, step, run)
        out.resume_point(step, modules, optimizers)
        out.say(str(stopped))
    raise stopped
