#!/usr/bin/env bash
# Speed and memory of the product, into docs/performance*.md (quality experiments live in experiments/).
#
#   bash benchmarks/speed.sh [DATA]        # DATA: the shared data folder, default ../shared/data
#
# docs/performance.md: generated 1080p and 4K composites, peak memory at 100 and 1000 frames, training steps/s.
# docs/performance-street.md / -480p.md: a real composite, the DAVIS breakdancer pasted on street-1080p and on
# DAVIS libby (854x480). Each `vharm benchmark` also measures the decode+encode floor on the same input.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data}
W=${WORKDIR:-/tmp/vharm-speed}
VHARM=${VHARM:-.venv/bin/vharm}
mkdir -p "$W"
fg=(--fg "$D/davis2016/breakdance/frames" --fg-mask "$D/davis2016/breakdance/masks" --overwrite --quiet)
"$VHARM" composite "${fg[@]}" --bg "$D/videos/street-1080p.mp4" -o "$W/street-comp.mp4" --save-mask "$W/street-mask.mp4"
"$VHARM" composite "${fg[@]}" --bg "$D/davis2016/libby/frames" -o "$W/libby-comp.mp4" --save-mask "$W/libby-mask.mp4"
"$VHARM" benchmark --frames 100 --long-frames 1000 -o docs/performance.md --workdir "$W/generated"
"$VHARM" benchmark --input "$W/street-comp.mp4" --mask "$W/street-mask.mp4" --no-training --no-4k \
    -o docs/performance-street.md --workdir "$W/street"
"$VHARM" benchmark --input "$W/libby-comp.mp4" --mask "$W/libby-mask.mp4" --no-training --no-4k \
    -o docs/performance-480p.md --workdir "$W/libby"
