"""`vharm fit-d`: D for mask-free mode, a frozen ImageNet encoder and a small decoder fitted in minutes on a CPU.

Mask-free, `vharm harmonize --no-mask` takes G's statistics from the core of D's map (`core_of_map`) and blends the
change with it (`mask_from_map`): D must find the pasted region. The paper's UNet D, trained adversarially at CPU
scale, learned where pasted objects tend to be and little more (docs/training.md). This D
(`disc_backbone efficientnet`, `vharm.models.networks.EncoderD`) reads ImageNet EfficientNet-Lite0 features, which
know objects, and fits only its `TopDown` decoder. The encoder is frozen, so its maps of every training image are
computed once and cached, and an epoch over thousands of frames takes seconds.

Top to bottom, as `fit` reads:
1. the training images: both frames of `cfg.pairs` pairs (`SyntheticPairs`, the recipe `vharm fit` uses) at D's
   working resolution, composite, target and mask, made in `cfg.workers` processes and cached as 8-bit;
2. the encoder's maps of every composite and target, cached in float16 (safetensors);
3. the decoder, trained with binary cross-entropy toward Eq. 1's targets for the composite (its mask) and the
   real frame (zeros); G is fixed, so Eq. 1's third term, on G's output, is left out;
4. after each epoch: the mask-free fMSE of the validation sets' real and mild clips, harmonized with G and the
   inference settings of `cfg.generator` as `vharm harmonize --no-mask` would (`score_real`), scored as
   `vharm fit` scores (real ratio + mild ratio + 0.05 per clip above 1.1x); the lowest goes to `best/`: that G,
   this D and the inference settings, a weights directory `Harmonizer.from_pretrained` loads.

A run directory holds config.json (resolved), log.txt, stats.jsonl and best/.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from vharm.config import FitDConfig, to_dict, validate
from vharm.errors import VharmError
from vharm.eval.clips import load_clip, load_manifest
from vharm.eval.scoring import composite_fmse, score_real
from vharm.inference.harmonizer import Harmonizer
from vharm.io.files import atomic_path
from vharm.models import Discriminator, Generator
from vharm.models.efficientnet import imagenet_state_dict
from vharm.train.fit import data_key, make_shards
from vharm.train.loop import RunWriter, new_run_dir

IMAGES = 1  # the cache's layout: a new one when what `_shard` stores changes
SHARD = 250  # pairs per cache file


# ---------------------------------------------------------------------------------------------- the cache


def _shard(job: tuple[FitDConfig, int, int, int, Path]) -> Path:
    """Writes pairs [start, stop) of the train split at `size`, 8-bit, to `path` atomically (in a worker)."""
    from vharm.data.dataset import SyntheticPairs

    cfg, size, start, stop, path = job
    torch.set_num_threads(1)
    pairs = SyntheticPairs(cfg.data, size, cfg.seed, "train")
    rows = [pairs[i] for i in range(start, stop)]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.stack([np.round(p[k] * 255).astype(np.uint8) for p in rows])
                           for k in ("comp", "target", "mask")})
    return path


def training_images(cfg: FitDConfig, size: int, folder: Path, say=print) -> dict[str, np.ndarray]:
    """{"comp", "target": (2N, S, S, 3) uint8, "mask": (2N, S, S) uint8}: both frames of `cfg.pairs` pairs."""
    jobs = [(cfg, size, a, min(a + SHARD, cfg.pairs), folder / f"images-{a:07d}-{min(a + SHARD, cfg.pairs):07d}.npz")
            for a in range(0, cfg.pairs, SHARD)]
    make_shards(_shard, jobs, cfg.workers, folder, say)
    parts = [np.load(job[-1]) for job in jobs]
    return {k: np.concatenate([z[k] for z in parts]).reshape(-1, *parts[0][k].shape[2:])
            for k in ("comp", "target", "mask")}


def encoder_maps(encoder, images: np.ndarray, path: Path, batch: int = 64) -> list[torch.Tensor]:
    """The frozen encoder's maps (float16) of (N, S, S, 3) uint8 images, cached at `path`."""
    if path.is_file():
        state = load_file(str(path))
        return [state[str(i)] for i in range(len(state))]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255
            chunks.append([m.half() for m in encoder(x)])
    maps = [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]
    with atomic_path(path) as tmp:
        save_file({str(i): m.contiguous() for i, m in enumerate(maps)}, str(tmp))
    return maps


# ---------------------------------------------------------------------------------------------- the loss


def decoder_epoch(decoder, opt, maps: dict[str, list[torch.Tensor]], images: dict[str, torch.Tensor],
                  mask: torch.Tensor, batch_size: int) -> float:
    """One pass over the frames in random order; returns the mean loss.

    Args:
        maps: "comp" and "target": the encoder's maps (N, C_i, h_i, w_i) of the composites and their targets.
        images: the same frames, (N, 3, S, S) uint8; mask: (N, 1, S, S) uint8.

    The loss is Eq. 1's targets as binary cross-entropy: the mask on the composite, zeros on the real frame.
    """
    order, total = torch.randperm(len(mask)), 0.0
    for i in range(0, len(mask), batch_size):
        idx = order[i:i + batch_size]
        region = mask[idx].float() / 255
        loss = 0.0
        for kind, want in (("comp", region), ("target", torch.zeros_like(region))):
            logits = decoder([m[idx].float() for m in maps[kind]], images[kind][idx].float() / 255)
            loss = loss + F.binary_cross_entropy_with_logits(logits, want)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / len(mask)


# ---------------------------------------------------------------------------------------------- scoring


def score(h: Harmonizer, clips: dict[str, list], comp: dict[str, list[float]]) -> dict[str, float]:
    """Mask-free fMSE of each clip kind over its composite's, clips above `metrics.HARMED`, and `score`."""
    out: dict[str, float] = {}
    for kind, group in clips.items():
        row = score_real(h, group, comp[kind], mask_mode="nomask")
        out[f"{kind}_ratio"], out[f"{kind}_harmed"] = row["ratio"], row["harmed"]
    out["score"] = sum(out[f"{k}_ratio"] + 0.05 * out[f"{k}_harmed"] for k in clips)
    return out


# ---------------------------------------------------------------------------------------------- the fit


def _check(cfg: FitDConfig) -> Harmonizer:
    """What `fit_d` cannot run with, before anything is written; returns the harmonizer of `cfg.generator`."""
    validate(cfg)
    if not cfg.data.sources:
        raise VharmError("vharm fit-d: give source folders of images+masks or frames+masks")
    if not cfg.data.val_testset:
        raise VharmError("vharm fit-d: --val-testset is required (its real and mild clips choose the epoch)")
    h = Harmonizer.from_pretrained(cfg.generator)
    if h.resolution % 32:
        raise VharmError(f"--generator {cfg.generator}: its working resolution {h.resolution} is not a multiple "
                         "of 32, which the encoder needs")
    return h


def fit_d(cfg: FitDConfig, outdir: Path, cache: Path, progress: bool = True, encoder_state: dict | None = None
          ) -> Path:
    """Runs the recipe above; returns the run directory (its `best/` is the chosen weights).

    `encoder_state` is the encoder's starting state (default: ImageNet's, `imagenet_state_dict`); tests pass a
    random one.
    """
    h = _check(cfg)
    clips: dict[str, list] = {}  # the real and the mild clips of every validation test set, pooled by kind
    for testset in map(Path, (cfg.data.val_testset, *cfg.more_val)):
        for e in load_manifest(testset)["clips"]:
            if e["kind"] in ("real", "mild"):
                clips.setdefault(e["kind"], []).append(load_clip(testset, e))
    if "real" not in clips:
        raise VharmError(f"{cfg.data.val_testset}: no real clips to validate on (build it with `vharm make-testset "
                         "--sequences`)")
    model_cfg = dataclasses.replace(h.generator.cfg, disc_backbone="efficientnet")
    d = Discriminator(model_cfg)
    d.net.encoder.load_state_dict(imagenet_state_dict() if encoder_state is None else encoder_state)
    d.net.decoder.drop.p = cfg.dropout
    g = Generator(model_cfg)
    g.load_state_dict(h.generator.state_dict())
    inference = dataclasses.asdict(h.inference_config)
    run = new_run_dir(outdir, cfg.name)
    (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    with RunWriter(run, progress, math.inf) as out:
        # ------------------------------------------------------------------ 1-2. images and the encoder's maps
        t0 = time.time()
        folder = cache / data_key(IMAGES, cfg.data, h.resolution, cfg.seed)
        folder.mkdir(parents=True, exist_ok=True)
        imgs = training_images(cfg, h.resolution, folder, out.say)
        maps = {k: encoder_maps(d.net.encoder, imgs[k], folder / f"maps-{k}-{cfg.pairs}.safetensors")
                for k in ("comp", "target")}
        images = {k: torch.from_numpy(imgs[k]).permute(0, 3, 1, 2) for k in ("comp", "target")}
        mask = torch.from_numpy(imgs["mask"])[:, None]
        comp_fmse = {kind: composite_fmse(group) for kind, group in clips.items()}
        out.say(f"{len(mask)} training frames, {sum(map(len, clips.values()))} validation clips "
                f"({time.time() - t0:.0f} s)")

        # ------------------------------------------------------------------ 3. the decoder
        decoder = d.net.decoder
        opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = {"score": math.inf}
        for epoch in range(cfg.epochs):
            d.train()
            loss = decoder_epoch(decoder, opt, maps, images, mask, cfg.batch_size)

            # -------------------------------------------------------------- 4. validation
            d.eval()
            row = {"epoch": epoch, "loss": round(loss, 5),
                   **score(Harmonizer(g, d, "cpu", **inference), clips, comp_fmse),
                   "wall_s": round(time.time() - t0, 1)}
            out.stats(row)
            out.say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if row["score"] < best["score"]:
                best.update(row)
                out.snapshot("best", g, d, epoch, inference=inference)
        out.say(f"best: {json.dumps(best)}")
    return run

