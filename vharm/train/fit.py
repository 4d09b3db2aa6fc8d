"""`vharm fit`: G's statistics MLP fitted on cached features in minutes on a CPU (the broad recipe).

G's `stats` backbone sees a frame only through its statistics (`STATISTICS`) and predicts one 3x4 colour transform,
and the loss needs only the foreground's colours. So a training pair reduces to the statistics of its two frames
and a sample of their foreground pixels: computed once (`pair_features`, cached in shards of `SHARD` pairs that a
stopped run reuses), after which the MLP passes over tens of thousands of pairs in about a second. The
validation clips reduce the same way at `vharm harmonize`'s working resolution (`clip_features`), so every epoch is
scored on real clips at no cost: fMSE per clip as `vharm evaluate` computes it, up to 8-bit rounding (one
transform per frame is applied exactly to sampled full-resolution pixels).

Top to bottom, as `training_loop` reads:
1. features of the training pairs (synthesised by `SyntheticPairs`: scene recolouring, random regions, real frame
   pairs, the broad families) and of the validation clips;
2. the change: the MLP trained on each frame's fMSE over (its composite's + `relative_eps`), so that nearly
   harmonious composites count about as much as clearly-off ones; a share of the frames (`identity_share`) shows
   the target itself, a composite that needs no change;
3. the confidence (`model.confidence`): the change frozen, a small head trained to say how much of it to apply,
   with a smaller eps (`confidence_eps`), which weighs harm to nearly harmonious composites more;
4. after each epoch: the validation score (`score`); the best state goes to `best/` with D from
   `cfg.discriminator`, a weights directory `Harmonizer.from_pretrained` loads.

A run directory holds config.json (resolved), log.txt, stats.jsonl and best/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vharm.config import DataConfig, FitConfig, to_dict, validate
from vharm.errors import VharmError
from vharm.eval import metrics
from vharm.io.files import atomic_path
from vharm.models import Discriminator, Generator
from vharm.models.backbones import STATISTICS
from vharm.models.colortransform import IDENTITY, apply_affine
from vharm.train.loop import RunWriter, new_run_dir

SHARD = 500  # pairs per cache file: a stopped run loses at most this many of the pairs it made
FEATURES = 2  # the cache's layout: a new one when `frame_features` changes
VAL_PIXELS = 4096  # pixels per validation frame: the fMSE of a clip within ~1 % of all of them


# ---------------------------------------------------------------------------------------------- features


def frame_features(comp: np.ndarray, target: np.ndarray, mask: np.ndarray, resolution: int, pixels: int,
                   rng: np.random.Generator, statistics: str = "colour") -> tuple[np.ndarray, np.ndarray]:
    """What G and the loss need of one frame.

    Args:
        comp, target: (H, W, 3) uint8 or float in [0, 1]; mask (H, W) float in [0, 1].
        resolution: G's working resolution: the statistics are taken after an area resize to it, as
            `Harmonizer.step` takes them (no resize when the frame is that size).
        statistics: G's inputs (`ModelConfig.statistics`), n values.

    Returns:
        (statistics (2, n) float32 of the composite and of the target (the target is a composite that needs no
        change), pixels (pixels, 7) float16: composite RGB, target RGB and mask weight of foreground pixels drawn
        uniformly among those with weight > 0; zeros if the mask is empty).
    """
    scale = 255.0 if comp.dtype == np.uint8 else 1.0
    comp_f, target_f = comp.astype(np.float32) / scale, target.astype(np.float32) / scale
    small, small_mask = np.stack([comp_f, target_f]), mask.astype(np.float32)
    if comp.shape[:2] != (resolution, resolution):
        small = np.stack([cv2.resize(x, (resolution, resolution), interpolation=cv2.INTER_AREA) for x in small])
        small_mask = cv2.resize(small_mask, (resolution, resolution), interpolation=cv2.INTER_AREA)
    stats = STATISTICS[statistics][1](torch.from_numpy(small).permute(0, 3, 1, 2),
                                      torch.from_numpy(small_mask)[None, None].expand(2, 1, -1, -1)).numpy()
    where = np.flatnonzero(mask.reshape(-1) > 0)
    if not len(where):
        return stats, np.zeros((pixels, 7), np.float16)
    pick = where[rng.integers(0, len(where), pixels)]
    px = np.concatenate([comp_f.reshape(-1, 3)[pick], target_f.reshape(-1, 3)[pick], mask.reshape(-1, 1)[pick]], 1)
    return stats, px.astype(np.float16)


def pair_features(pair: dict, resolution: int, pixels: int, rng: np.random.Generator, statistics: str = "colour"):
    """Both frames of a training pair: ((2, 2, n), (2, pixels, 7))."""
    rows = [frame_features(pair["comp"][t], pair["target"][t], pair["mask"][t], resolution, pixels, rng, statistics)
            for t in range(2)]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


# DataConfig fields that do not change the training pairs.
_NOT_PAIRS = {"val_families", "val_pairs", "val_testset", "dataset", "mask_cache"}


def data_key(layout: int, data: DataConfig, *more) -> str:
    """A cache folder's name: what cached pairs depend on: the cache's `layout` version, `data` and `more` (not the
    count: more pairs extend a cache).

    Only the data fields that differ from their defaults count, so that a field added to DataConfig later (at a
    default that keeps the pairs as they were) does not orphan every cache.
    """
    defaults = to_dict(DataConfig())
    fields = {k: v for k, v in to_dict(data).items() if k not in _NOT_PAIRS and v != defaults.get(k)}
    text = json.dumps([layout, fields, *more], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cache_key(cfg: FitConfig) -> str:
    """The features cache of `vharm fit`: the pairs, and the statistics' layout, kind, resolution and sample (the
    kind named only when it is not colour, so that caches written before it was a choice keep their names)."""
    kind = [cfg.model.statistics] if cfg.model.statistics != "colour" else []
    return data_key(FEATURES, cfg.data, cfg.model.resolution, cfg.pixels, cfg.seed, *kind)


def _shard(job: tuple[FitConfig, int, int, Path]) -> Path:
    """Writes the features of pairs [start, stop) of the train split to `path`, atomically (in a worker process)."""
    from vharm.data.dataset import SyntheticPairs

    cfg, start, stop, path = job
    torch.set_num_threads(1)
    pairs = SyntheticPairs(cfg.data, cfg.model.resolution, cfg.seed, "train")
    stats, px, families = [], [], []
    for i in range(start, stop):
        pair = pairs[i]
        s, p = pair_features(pair, cfg.model.resolution, cfg.pixels, np.random.default_rng([cfg.seed, 7, i]),
                             cfg.model.statistics)
        stats.append(s)
        px.append(p)
        families.append(pair["family"])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, stats=np.stack(stats), px=np.stack(px), family=np.array(families))
    return path


def make_shards(work, jobs: list[tuple], workers: int, folder: Path, say=print) -> None:
    """Runs `work(job)` for the jobs whose cache file (`job[-1]`) is missing, in `workers` processes; the pairs of a
    job are `job[-3]` to `job[-2]`."""
    missing = [job for job in jobs if not job[-1].is_file()]
    if not missing:
        return
    say(f"synthesising {sum(job[-2] - job[-3] for job in missing)} pairs into {folder} ({workers} processes)")
    t0 = time.time()
    if workers == 1:
        done = map(work, missing)
    else:  # spawn: the parent holds torch's threads, and a forked copy of them can deadlock
        pool = multiprocessing.get_context("spawn").Pool(workers)
        done = pool.imap_unordered(work, missing)
    for n, _ in enumerate(done, 1):
        say(f"  {n}/{len(missing)} shards ({time.time() - t0:.0f} s)")
    if workers > 1:
        pool.close()


def training_features(cfg: FitConfig, cache: Path, say=print) -> dict[str, np.ndarray]:
    """The features of `cfg.pairs` training pairs, made in `cfg.workers` processes where the cache lacks them.

    Returns {"stats": (2N, 2, n) float32 (composite, target), "px": (2N, P, 7) float16, "family": (2N,) str}: the
    frames of all pairs.
    """
    folder = cache / cache_key(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.json").write_text(json.dumps({"features": FEATURES, "data": to_dict(cfg.data), "resolution":
                                                  cfg.model.resolution, "pixels": cfg.pixels, "seed": cfg.seed},
                                                 indent=1) + "\n")
    jobs = [(cfg, a, min(a + SHARD, cfg.pairs), folder / f"pairs-{a:07d}-{min(a + SHARD, cfg.pairs):07d}.npz")
            for a in range(0, cfg.pairs, SHARD)]
    make_shards(_shard, jobs, cfg.workers, folder, say)
    parts = [np.load(job[-1]) for job in jobs]
    stats, px, family = (np.concatenate([z[k] for z in parts]) for k in ("stats", "px", "family"))
    n = STATISTICS[cfg.model.statistics][0]
    return {"stats": stats.reshape(-1, 2, n), "px": px.reshape(-1, cfg.pixels, 7), "family": np.repeat(family, 2)}


def clip_features(testset: Path, resolution: int, kinds=("real", "mild"), statistics: str = "colour") -> list[dict]:
    """Per clip of those `kinds` in a test set: {"id", "kind", "stats" (T, n), "px" (T, VAL_PIXELS, 7)}."""
    from vharm.eval.clips import load_clip, load_manifest

    rng = np.random.default_rng(0)
    out = []
    for entry in load_manifest(testset)["clips"]:
        if entry["kind"] not in kinds:
            continue
        clip = load_clip(testset, entry)
        rows = [frame_features(c, t, m, resolution, VAL_PIXELS, rng, statistics)
                for c, t, m in zip(clip.comp, clip.target, clip.mask)]
        out.append({"id": clip.id, "kind": clip.kind, "stats": np.stack([r[0][0] for r in rows]),
                    "px": np.stack([r[1] for r in rows])})
    if not any(c["kind"] == "real" for c in out):
        raise VharmError(f"{testset}: no real clips to validate on (build it with `vharm make-testset --sequences`)")
    return out


# ---------------------------------------------------------------------------------------------- the loss


def frame_fmse(coeffs: torch.Tensor, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fMSE (0-255 levels squared) of each frame after its transform, and of its composite.

    Args:
        coeffs: (B, 12) 3x4 transforms (row-major, as `colortransform.IDENTITY`).
        px: (B, P, 7) sampled pixels (`frame_features`).

    The output is blended with the mask weight as `apply_to_frame` blends it and clamped to [0, 1] as 8-bit
    frames are.
    """
    comp, target, m = px[..., :3], px[..., 3:6], px[..., 6:]
    # The pixels as a (B, 3, P, 1) image: the transform is colortransform's, the one definition of its layout.
    changed = apply_affine(comp.transpose(1, 2)[..., None], coeffs[..., None, None])[..., 0].transpose(1, 2)
    pred = comp + m * (changed.clamp(0, 1) - comp)
    weight = (3 * m.sum((1, 2))).clamp_min(1e-6)

    def err(x):
        return (m * ((x - target) * 255).square()).sum((1, 2)) / weight

    return err(pred), err(comp)


def relative_loss(coeffs: torch.Tensor, px: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over frames of fMSE / (composite fMSE + eps): 1 for the identity, below 1 when the change helps."""
    ours, theirs = frame_fmse(coeffs, px)
    return (ours / (theirs + eps)).mean()


# ---------------------------------------------------------------------------------------------- scoring


def score(net, clips: list[dict]) -> dict[str, float]:
    """Each clip's mean fMSE with the per-frame transforms of `net` (a ColourStats), against its composite's.

    Returns real_ratio / mild_ratio (mean fMSE over the clips of a kind over the composite's), real_harmed /
    mild_harmed (clips above `metrics.HARMED` times their composite's), worst (the largest clip ratio) and
    `score` = real_ratio + mild_ratio + 0.05 per harmed clip: what selection minimises.
    """
    eye = torch.tensor(IDENTITY)
    rows: dict[str, list[tuple[float, float]]] = {"real": [], "mild": []}
    with torch.no_grad():
        for clip in clips:
            delta, conf = net.change(torch.from_numpy(clip["stats"]))
            ours, theirs = frame_fmse(eye + conf * delta, torch.from_numpy(clip["px"]).float())
            rows[clip["kind"]].append((float(ours.mean()), float(theirs.mean())))
    out = {}
    for kind, pairs in rows.items():
        if pairs:
            ours, theirs = np.array(pairs).T
            out[f"{kind}_ratio"] = float(ours.mean() / theirs.mean())
            out[f"{kind}_harmed"] = int(sum(metrics.harmed(a, b) for a, b in pairs))
            out[f"{kind}_worst"] = float((ours / theirs).max())
    out["score"] = sum(out.get(f"{k}_ratio", 0.0) + 0.05 * out.get(f"{k}_harmed", 0) for k in rows)
    return out


# ---------------------------------------------------------------------------------------------- the fit


def _epochs(params, data: dict, epochs: int, cfg: FitConfig, loss_of, after_epoch, rng: torch.Generator) -> None:
    """AdamW over shuffled frames for `epochs` passes, the learning rate cosine-decayed to 0; `loss_of(stats, px)`
    is the batch loss, `after_epoch(epoch, mean loss)` is called after each pass."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data["stats"])
    steps, step = epochs * math.ceil(n / cfg.batch_size), 0
    for epoch in range(epochs):
        order, total = torch.randperm(n, generator=rng), 0.0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            # Identity frames: the target shown as the composite, whose right change is none.
            same = torch.rand(len(idx), generator=rng) < cfg.identity_share
            stats = torch.where(same[:, None], data["stats"][idx, 1], data["stats"][idx, 0])
            px = data["px"][idx].float()
            px[same, :, :3] = px[same, :, 3:6]
            if cfg.feature_noise:
                stats = stats + cfg.feature_noise * data["std"] * torch.randn(stats.shape, generator=rng)
            loss = loss_of(stats, px)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            step += 1
        after_epoch(epoch, total / n)


def _check(cfg: FitConfig) -> Discriminator | None:
    """What `fit` cannot run with, before anything is written; returns the D that goes with the fitted G."""
    validate(cfg)
    if cfg.model.backbone != "stats" or cfg.model.grid != 1 or cfg.model.members != 1:
        raise VharmError("vharm fit fits one G of backbone stats with grid 1 (one transform per frame): "
                         f"got {cfg.model.backbone}, grid {cfg.model.grid}, members {cfg.model.members} "
                         "(combine fitted G's with `vharm ensemble`)")
    if not cfg.data.sources:
        raise VharmError("vharm fit: give source folders of images+masks or frames+masks")
    if not cfg.data.val_testset:
        raise VharmError("vharm fit: --val-testset is required (its real and mild clips choose the epoch)")
    if not cfg.discriminator:
        return None
    d = Discriminator.from_pretrained(cfg.discriminator)
    # D depends on these fields of the model section only: taken from it, they describe the same D beside this G.
    cfg.model = dataclasses.replace(cfg.model, disc_backbone=d.cfg.disc_backbone, disc_widths=d.cfg.disc_widths,
                                    norm=d.cfg.norm)
    d.cfg = cfg.model
    return d


def fit(cfg: FitConfig, outdir: Path, cache: Path, progress: bool = True) -> Path:
    """Runs the recipe above; returns the run directory (its `best/` is the chosen weights)."""
    d = _check(cfg)
    # read before the run directory exists
    val = clip_features(Path(cfg.data.val_testset), cfg.model.resolution, statistics=cfg.model.statistics)
    run = new_run_dir(outdir, cfg.name)
    (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    rng = torch.Generator().manual_seed(cfg.seed)
    with RunWriter(run, progress, math.inf) as out:
        # ------------------------------------------------------------------ 1. features
        t0 = time.time()
        feats = training_features(cfg, cache, out.say)
        data = {"stats": torch.from_numpy(feats["stats"]), "px": torch.from_numpy(feats["px"])}
        stats = data["stats"][:, 0]  # the composites'
        data["std"] = stats.std(0)
        out.say(f"{len(stats)} training frames, {len(val)} validation clips ({time.time() - t0:.0f} s)")

        # ------------------------------------------------------------------ 2. the change
        g = Generator(cfg.model)
        net = g.net
        norm = net.body[0]  # fixed standardisation: the statistics' own mean and variance
        norm.running_mean.copy_(stats.mean(0))
        norm.running_var.copy_(stats.var(0))
        g.eval()  # the BatchNorm keeps those; nothing else in the MLP depends on the mode
        eye = torch.tensor(IDENTITY)
        base = score(net, val)
        out.say(f"identity: {json.dumps(base)}")
        best = {"score": math.inf}

        def report(stage: str, first: int):
            """The after-epoch callback of a stage whose epochs are numbered from `first` in the weights' step."""
            def after(epoch: int, loss: float):
                row = {"stage": stage, "epoch": epoch, "loss": round(loss, 5), **score(net, val),
                       "wall_s": round(time.time() - t0, 1)}
                out.stats(row)
                out.say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
                if row["score"] < best["score"]:
                    best.update(row)
                    out.snapshot("best", g, d, first + epoch)
            return after

        def change_loss(s, px):  # the change alone; the untrained head's constant 0.98 is applied when scoring
            delta = net.out(net.body[1:](norm(s)))
            return relative_loss(eye + delta, px, cfg.relative_eps)

        _epochs([*net.body.parameters(), *net.out.parameters()], data, cfg.epochs, cfg, change_loss,
                report("change", 0), rng)

        # ------------------------------------------------------------------ 3. the confidence
        if net.confidence is not None:
            def confidence_loss(s, px):
                delta, conf = net.change(s)
                return relative_loss(eye + conf * delta.detach(), px, cfg.confidence_eps)

            _epochs(list(net.confidence.parameters()), data, cfg.confidence_epochs, cfg, confidence_loss,
                    report("confidence", cfg.epochs), rng)
        out.say(f"best: {json.dumps(best)}")
    return run
