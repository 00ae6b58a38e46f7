#!/usr/bin/env bash
# Calibration benchmark (BENCHMARKS.md "Calibration"):
#   methods: ranges for MobileNetV2 from the 500 ImageNet calibration images (even positions of the
#            sorted file names) with each method; writes ranges_<method>.json.
#   memory:  peak RSS, wall time and samples/s of `qtool calibrate --method entropy` at 100, 500 and
#            1000 samples (the first N sorted images of all 1000: distinct images, no repeats).
# Usage: tools/bench/calibrate_bench.sh [methods|memory|all]
# Env: QTOOL (binary, default build/tools/qtool/qtool), QTOOL_SHARED (default ../shared),
#      OUT (default bench-out/calib), THREADS (executor threads, default 1).
# Needs /usr/bin/time (Debian package `time`). Prints Markdown table rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
QTOOL=${QTOOL:-build/tools/qtool/qtool}
SHARED=${QTOOL_SHARED:-../shared}
OUT=${OUT:-bench-out/calib}
THREADS=${THREADS:-1}
MODEL=$SHARED/models/mobilenetv2/mobilenetv2_dequant_fp32.onnx
IMAGES=$SHARED/data/imagenet-sample/images
mode=${1:-all}
mkdir -p "$OUT"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

# run NAME ARGS...: runs qtool calibrate under /usr/bin/time -v, prints "wall_s peak_rss_mib samples/s".
run() {
  local name=$1; shift
  /usr/bin/time -v "$QTOOL" calibrate "$MODEL" --calib "$IMAGES" --preprocess mobilenetv2-244 \
      --threads "$THREADS" --no-progress "$@" > "$OUT/$name.out" 2> "$OUT/$name.time"
  local rss wall secs rate
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$OUT/$name.time")
  wall=$(awk '/Elapsed \(wall clock\) time/ {print $NF}' "$OUT/$name.time")
  secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rate=$(sed -n 's/.*, \([0-9.]*\) samples\/s).*/\1/p' "$OUT/$name.out")
  printf '%s %s %s\n' "$secs" "$(awk -v k="$rss" 'BEGIN {printf "%.1f", k/1024}')" "$rate"
}

if [ "$mode" = methods ] || [ "$mode" = all ]; then
  echo "| method | wall s | peak RSS MiB | samples/s | tensors |"
  echo "|---|---|---|---|---|"
  for m in minmax percentile entropy mse; do
    read -r secs rss rate < <(run "method_$m" --split even --method "$m" -o "$OUT/ranges_$m.json")
    n=$(grep -c '"range_max"' "$OUT/ranges_$m.json")
    echo "| $m | $secs | $rss | $rate | $n |"
  done
fi

if [ "$mode" = memory ] || [ "$mode" = all ]; then
  echo "| samples | wall s | peak RSS MiB | samples/s |"
  echo "|---|---|---|---|"
  for n in 100 500 1000; do
    read -r secs rss rate < <(run "entropy_$n" --split all --samples "$n" --repeat-ok --method entropy \
                              -o "$OUT/ranges_entropy_$n.json")
    echo "| $n | $secs | $rss | $rate |"
  done
fi
