#!/usr/bin/env bash
# Speed of the automatic masks (issue 18's targets): `Segmenter.step` alone and `vharm segment` (decode, segment,
# encode the mask video) at 1080p, and `vharm harmonize --mask auto` against the same harmonization with the true
# mask, on the DAVIS breakdancer pasted on street-1080p.
#
#   bash benchmarks/automask.sh [DATA] [ROUNDS]   # DATA: the shared data folder (../shared/data), ROUNDS: 3
#
# Prints one line per run (the seconds each command reports for its frames, start-up excluded) and the medians; the three commands take turns in each round, so a machine that gets
# busier or quieter during the runs moves all three alike. Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data}
ROUNDS=${2:-3}
W=${WORKDIR:-/tmp/vharm-automask}
VHARM=${VHARM:-.venv/bin/vharm}
mkdir -p "$W"
"$VHARM" composite --fg "$D/davis2016/breakdance/frames" --fg-mask "$D/davis2016/breakdance/masks" --overwrite \
    --quiet --bg "$D/videos/street-1080p.mp4" -o "$W/street-comp.mp4" --save-mask "$W/street-mask.mp4"
frames=$(.venv/bin/python -c "import av, sys; c = av.open(sys.argv[1]); print(sum(1 for _ in c.decode(video=0)))" \
    "$W/street-comp.mp4")
# Segmenter.step alone on the decoded frames (one core, as in the stream), in the process as `vharm` runs it.
step_alone() {
  .venv/bin/python - "$W/street-comp.mp4" <<'PY'
import sys, time
import av
from vharm.cli import reuse_frame_buffers
from vharm.segment import Segmenter
reuse_frame_buffers()
frames = [f.to_ndarray(format="rgb24") for f in av.open(sys.argv[1]).decode(video=0)]
seg, state = Segmenter(), None
seg.step(frames[0])  # warm-up
t = time.perf_counter()
for f in frames:
    _, state = seg.step(f, state)
print(f"{time.perf_counter() - t:.3f}")
PY
}
declare -A runs
for round in $(seq "$ROUNDS"); do
  seconds=$(step_alone)
  runs[step]+="$seconds "
  printf '%-8s round %s: %6.2f s (%5.1f fps)\n' step "$round" "$seconds" "$(echo "$frames / $seconds" | bc -l)"
  for name in segment auto mask; do
    case $name in
      segment) cmd=("$VHARM" segment "$W/street-comp.mp4" -o "$W/seg.mp4" --overwrite --quiet) ;;
      auto) cmd=("$VHARM" harmonize "$W/street-comp.mp4" --mask auto -o "$W/auto.mp4" --overwrite --quiet) ;;
      mask) cmd=("$VHARM" harmonize "$W/street-comp.mp4" -m "$W/street-mask.mp4" -o "$W/mask.mp4" --overwrite --quiet) ;;
    esac
    # The time the command reports for its frames ("wrote OUT: N frame(s) in S s"): without Python's start-up.
    seconds=$("${cmd[@]}" 2>&1 | sed -n 's/.* frame(s) in \([0-9.]*\) s.*/\1/p')
    runs[$name]+="$seconds "
    printf '%-8s round %s: %6.2f s (%5.1f fps)\n' "$name" "$round" "$seconds" "$(echo "$frames / $seconds" | bc -l)"
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
step=$(median "${runs[step]}"); seg=$(median "${runs[segment]}"); auto=$(median "${runs[auto]}")
mask=$(median "${runs[mask]}")
printf 'medians over %s rounds, %s frames of 1920x1080: Segmenter.step alone %.2f s (%.1f fps), segment %.2f s '\
'(%.1f fps), harmonize --mask auto %.2f s, -m mask %.2f s: auto / mask = %.2fx (load average at the end: %s)\n' \
    "$ROUNDS" "$frames" "$step" "$(echo "$frames / $step" | bc -l)" "$seg" "$(echo "$frames / $seg" | bc -l)" \
    "$auto" "$mask" "$(echo "$auto / $mask" | bc -l)" "$(cut -d' ' -f1-3 /proc/loadavg)"
