#!/usr/bin/env bash
# ONNX Runtime latency of qtool's low-bit forms against FP32, measured in one go (issue 6).
#
#   tools/bench/lowbit_latency.sh [BUILD_DIR] [ROUNDS] [REPEAT]
#
# For SqueezeNet 1.1, MobileNetV2 and stories260K it writes, with build/tools/qtool/qtool (RTN: the
# form, not the algorithm, sets the speed), the 4-bit block-32 model as DequantizeLinear (qdq), as
# Cast/Mul (cast) and, for stories260K, as MatMulNBits (matmulnbits), plus the ternary models in
# qdq and cast form. Then ROUNDS rounds (default 3), each running every model once in a fresh ONNX
# Runtime session (1 thread, REPEAT timed runs after 5 warm-up runs, default 40), interleaved so that
# machine noise hits all forms alike. Prints a markdown table: per form the median over rounds of
# each round's median run time, and the ratio to FP32's median in the same rounds.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
ROUNDS=${2:-3}
REPEAT=${3:-40}
PY=${PYTHON:-/usr/bin/python3}
SHARED=${QTOOL_SHARED:-../shared}
QTOOL="$BUILD/tools/qtool/qtool"
[ -x "$QTOOL" ] || { echo "missing $QTOOL" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK" <<'EOF'
import sys, numpy as np
w = sys.argv[1]
r = np.random.default_rng(1)
np.save(f"{w}/sq.npy", r.standard_normal((1, 3, 224, 224)).astype(np.float32))
np.save(f"{w}/mb.npy", r.standard_normal((1, 3, 244, 244)).astype(np.float32))
np.save(f"{w}/st.npy", np.concatenate([[1], r.integers(2, 512, 255)]).astype(np.int64).reshape(1, 256))
EOF

# name | fp32 model | input name | input file
MODELS=(
  "SqueezeNet 1.1|$SHARED/models/squeezenet1.1/squeezenet1.1_fp32.onnx|data_0|$WORK/sq.npy"
  "MobileNetV2|$SHARED/models/mobilenetv2/mobilenetv2_dequant_fp32.onnx|image|$WORK/mb.npy"
  "stories260K, 256 tokens|$SHARED/models/stories260K/stories260K.onnx|input_ids|$WORK/st.npy"
)
FORMS=(fp32 "4:qdq" "4:cast" "4:matmulnbits" "ternary:qdq" "ternary:cast")
declare -A PATHS
for row in "${MODELS[@]}"; do
  IFS='|' read -r name model input file <<< "$row"
  for form in "${FORMS[@]}"; do
    key="$name|$form"
    if [ "$form" = fp32 ]; then PATHS[$key]=$model; continue; fi
    bits=${form%%:*}; fmt=${form##*:}
    case "$name" in stories*) ;; *) [ "$fmt" = matmulnbits ] && continue ;; esac
    out="$WORK/$(echo "$name-$bits-$fmt" | tr -c 'a-zA-Z0-9-' _).onnx"
    "$QTOOL" -q quantize "$model" --bits "$bits" --block-size 32 --format "$fmt" --no-guard -o "$out" > /dev/null
    PATHS[$key]=$out
  done
done

declare -A TIMES
for round in $(seq 1 "$ROUNDS"); do
  for row in "${MODELS[@]}"; do
    IFS='|' read -r name model input file <<< "$row"
    for form in "${FORMS[@]}"; do
      key="$name|$form"
      [ -n "${PATHS[$key]:-}" ] || continue
      node tools/ort/run.js "${PATHS[$key]}" "$WORK/out" --threads 1 --repeat "$REPEAT" --warmup 5 "$input=$file" > /dev/null
      ms=$("$PY" -c "import json,statistics; print(statistics.median(json.load(open('$WORK/out/manifest.json'))['run_ms']))")
      TIMES[$key]="${TIMES[$key]:-} $ms"
    done
  done
done

echo "| model | form | file bytes | median ms (${ROUNDS} rounds × ${REPEAT} runs) | × FP32 |"
echo "|---|---|---|---|---|"
for row in "${MODELS[@]}"; do
  IFS='|' read -r name model input file <<< "$row"
  fp=$("$PY" -c "import statistics; print(statistics.median([float(x) for x in '${TIMES[$name|fp32]}'.split()]))")
  for form in "${FORMS[@]}"; do
    key="$name|$form"
    [ -n "${PATHS[$key]:-}" ] || continue
    med=$("$PY" -c "import statistics; print(statistics.median([float(x) for x in '${TIMES[$key]}'.split()]))")
    size=$(stat -c %s "${PATHS[$key]}")
    "$PY" -c "print(f'| $name | $form | {${size}:,} | {${med}:.2f} | {${med}/${fp}:.2f} |')"
  done
done
