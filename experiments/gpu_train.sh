#!/usr/bin/env bash
# Issue 17's GPU path, prepared here so that a session lent a `device` machine spends its minutes training.
#
#   bash experiments/gpu_train.sh prepare [DATA]   # here: gpu-carry/ (ignored): the wheels that machine lacks (PyAV,
#                                                  # kornia) and the training sources shrunk to fit the 64 MiB carry
#   device run: command "bash experiments/gpu_train.sh run", carry ["gpu-carry"], timeout_s 560
#                                                  # there: trains on CUDA, its run comes back in $OUT
#   bash experiments/gpu_train.sh run              # here, without CUDA: the same commands, a few steps on the CPU
#
# Then, here: vharm evaluate --testset data/valset-real --method composite default DIR/best  (DIR: what came back).
# The recipe is `--preset unet` at 256² (the paper's UNet G, with D and the regional temporal loss) for as many steps
# as TRAIN_SECONDS allow (default 420 s: the call's 560 s less the machine's start and the transfers); PRESET,
# RESOLUTION, BATCH and STEPS override it. The batches are synthesised by `--workers` processes, one per core but
# two: at 256² a pair takes ~53 ms on one core, so without them the GPU would wait on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu-carry

prepare() {
  local data=${1:-../shared/data}
  mkdir -p "$CARRY/whl"
  # The device's Python is 3.12 with torch, OpenCV, numpy, safetensors, tqdm and pillow (the device README's
  # package list); vharm also needs these. PyAV's wheel is ~36 MB of the 64 MiB.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/whl" av==18.1.0 kornia==0.9.0 kornia-rs==0.2.0
  # The photo sources at most 288 px on the long side (JPEG, masks PNG): ~7 MB instead of 24.
  .venv/bin/python - "$data" "$CARRY/sources" <<'PY'
import sys
from pathlib import Path

import cv2

data, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("person-photos", "more/coco128-seg"):
    src, dst = data / name, out / Path(name).name
    for kind in ("images", "masks"):
        (dst / kind).mkdir(parents=True, exist_ok=True)
    for image in sorted((src / "images").iterdir()):
        mask = next((src / "masks").glob(image.stem + ".*"), None)
        rgb = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if mask is None or rgb is None:
            continue
        m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        scale = min(1.0, 288 / max(rgb.shape[:2]))
        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        cv2.imwrite(str(dst / "images" / f"{image.stem}.jpg"), cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
        cv2.imwrite(str(dst / "masks" / f"{image.stem}.png"), cv2.resize(m, size, interpolation=cv2.INTER_AREA))
PY
  du -sh "$CARRY"/* "$CARRY"/sources/*
  echo "carry: git ls-files + $CARRY must stay under 64 MiB: $(git ls-files -z | du -ch --files0-from=- | tail -1)"
}

run() {
  local out=${OUT:-gpu-out} python=python3 device=cpu
  mkdir -p "$out"
  if python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    device=cuda
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$CARRY"/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
  else
    python=.venv/bin/python  # the CPU machine: the project's environment, a smoke run of the same commands
  fi
  local cores workers steps seconds
  cores=$(nproc)
  if [ "$device" = cuda ]; then workers=$((cores > 3 ? cores - 2 : 1)); steps=${STEPS:-200000}; seconds=${TRAIN_SECONDS:-420}
  else workers=1; steps=${STEPS:-4}; seconds=${TRAIN_SECONDS:-300}; fi
  local sources=("$CARRY"/sources/*)
  [ -d "${sources[0]}" ] || { echo "gpu_train.sh: no $CARRY/sources: run 'bash experiments/gpu_train.sh prepare' first" >&2; exit 2; }
  echo "device $device, $cores cores, $workers workers, at most $steps steps in $seconds s" | tee "$out/summary.txt"
  # SIGINT at the time limit: the run saves a resume point and its best snapshot stays (exit status 130).
  PYTHONUNBUFFERED=1 timeout -s INT "$seconds" "$python" -m vharm train --preset "${PRESET:-unet}" --device "$device" \
    --resolution "${RESOLUTION:-256}" --batch-size "${BATCH:-16}" --steps "$steps" --workers "$workers" \
    --val-every "${VAL_EVERY:-500}" --snapshot-every "${VAL_EVERY:-500}" --outdir "$out/runs" --name gpu \
    "${sources[@]}" 2>&1 | tr '\r' '\n' | grep -v -E 'step/s\]$|s/step\]$' | tee -a "$out/summary.txt" || true
  local run
  run=$(ls -d "$out"/runs/*-gpu | tail -1)
  # What comes back: at most 8 files, 16 MiB each, two folders down.
  mkdir -p "$out/best"
  cp "$run"/config.json "$run"/stats.jsonl "$run"/log.txt "$out/" 2>/dev/null || true
  cp "$run"/best/* "$out/best/" 2>/dev/null || echo "gpu_train.sh: no best/ yet (no validation ran)" | tee -a "$out/summary.txt"
  rm -rf "$out/runs"
  ls -la "$out" "$out/best"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) run ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
