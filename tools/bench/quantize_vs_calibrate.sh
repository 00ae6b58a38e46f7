#!/usr/bin/env bash
# Wall time of `qtool quantize --bits 8` (default guard, --report for the phase breakdown) against
# `qtool calibrate` on the same samples, run alternately (calibrate, quantize, calibrate, ...) so
# that load from other processes hits both alike; prints each model's median times, the ratio of
# the medians, and the phases of the last quantize report (BENCHMARKS.md, issues 14 and 18).
# Usage: tools/bench/quantize_vs_calibrate.sh [RUNS] [MODEL ...]
#   models: mobilenetv2 squeezenet stories (200 windows, the BENCHMARKS command) stories-default
#   (every window: the default --samples), mnist8, mnistcnn (the first 1000 MNIST test images),
#   vad16, vad15, vad18 (200 chunks of test.wav written by tools/eval/vad_calib.js); "all" = every one.
# Env: QTOOL (binary, default build/tools/qtool/qtool), QTOOL_SHARED (default ../shared),
#      THREADS (default 2), OUT (default bench-out/quantize).
set -euo pipefail
cd "$(dirname "$0")/../.."
QTOOL=${QTOOL:-build/tools/qtool/qtool}
SHARED=${QTOOL_SHARED:-../shared}
THREADS=${THREADS:-2}
OUT=${OUT:-bench-out/quantize}
RUNS=${1:-3}
shift || true
MODELS=${*:-mobilenetv2 squeezenet stories}
[ "$MODELS" = all ] && MODELS="mobilenetv2 squeezenet stories stories-default mnist8 mnistcnn vad16 vad15 vad18"
mkdir -p "$OUT"
IMAGES=$SHARED/data/imagenet-sample/images
TOKENS=$SHARED/data/stories260K-text/runc_samples_t1.0_p0.9_seed1-600.tok512.i32
MNIST=$SHARED/data/mnist/t10k-images-idx3-ubyte.gz
VAD=$SHARED/models/silero-vad
vad_calib() {  # 200 streamed chunks of test.wav (every 3rd), with the state carried, once
  [ -d "$OUT/vad-calib/input" ] ||
    node tools/eval/vad_calib.js "$VAD/silero_vad.onnx" "$SHARED/data/speech/test.wav" "$OUT/vad-calib" --count 200 --every 3 > /dev/null
}

# wall SECONDS of a command (its output goes to $OUT/last.log)
wall() {
  local start end
  start=$(date +%s.%N)
  "$@" > "$OUT/last.log" 2>&1 || { cat "$OUT/last.log" >&2; exit 1; }
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "| model | qtool calibrate (s) | qtool quantize --bits 8 (s) | ratio of medians | quantize phases (last run) |"
echo "|---|---|---|---|---|"
for name in $MODELS; do
  case $name in
    mobilenetv2)
      model=$SHARED/models/mobilenetv2/mobilenetv2_dequant_fp32.onnx
      cal=(--calib "$IMAGES" --split even --preprocess mobilenetv2-244)
      quant=(--calib "$IMAGES" --calib-split even --preprocess mobilenetv2-244) ;;
    squeezenet)
      model=$SHARED/models/squeezenet1.1/squeezenet1.1_fp32.onnx
      cal=(--calib "$IMAGES" --split even --preprocess caffe-bgr)
      quant=(--calib "$IMAGES" --calib-split even --preprocess caffe-bgr) ;;
    stories)
      model=$SHARED/models/stories260K/stories260K.onnx
      cal=(--calib "$TOKENS" --seq-len 256 --samples 200)
      quant=(--calib "$TOKENS" --seq-len 256 --samples 200) ;;
    stories-default)
      model=$SHARED/models/stories260K/stories260K.onnx
      cal=(--calib "$TOKENS" --seq-len 256)
      quant=("${cal[@]}") ;;
    mnist8|mnistcnn)
      [ $name = mnist8 ] && model=$SHARED/models/mnist-8/mnist-8.onnx pre=mnist-raw
      [ $name = mnistcnn ] && model=$SHARED/models/mnist-cnn-pytorch/cnn_mnist_pytorch.onnx pre=mnist-pytorch
      cal=(--calib "$MNIST" --samples 1000 --preprocess $pre)
      quant=("${cal[@]}") ;;
    vad16|vad15|vad18)
      vad_calib
      model=$VAD/silero_vad.onnx
      [ $name = vad15 ] && model=$VAD/silero_vad_16k_op15.onnx
      [ $name = vad18 ] && model=$VAD/silero_vad_op18_ifless.onnx
      cal=(--calib "$OUT/vad-calib")
      quant=("${cal[@]}") ;;
    *) echo "unknown model $name" >&2; exit 2 ;;
  esac
  c_all="" q_all=""
  for _ in $(seq "$RUNS"); do
    c_all="$c_all $(wall "$QTOOL" calibrate "$model" "${cal[@]}" --threads "$THREADS" --no-progress -o "$OUT/$name.ranges.json")"
    q_all="$q_all $(wall "$QTOOL" quantize "$model" --bits 8 "${quant[@]}" --threads "$THREADS" -o "$OUT/$name.int8.onnx" --report "$OUT/$name.report.json")"
  done
  c=$(echo "$c_all" | median)
  q=$(echo "$q_all" | median)
  phases=$(python3 - "$OUT/$name.report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(", ".join(f"{t['phase'].replace('quantize: ', '')} {t['seconds']:.2f}" for t in r["timings"] if t["phase"] not in ("load", "save")))
PY
)
  echo "| $name | $c (runs:$c_all) | $q (runs:$q_all) | $(awk -v a="$q" -v b="$c" 'BEGIN {printf "%.2f", a / b}') | $phases |"
done
