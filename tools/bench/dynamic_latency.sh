#!/usr/bin/env bash
# ONNX Runtime latency of qtool's dynamic forms (--mode dynamic) against FP32, measured in one go
# (issue 17).
#
#   tools/bench/dynamic_latency.sh LLAMA.onnx [BUILD_DIR] [ROUNDS] [REPEAT]
#
# LLAMA.onnx: a token model with input input_ids int64 [1, seq] (e.g. ../shared/tools/make_llama_onnx.py
# --preset 125m --seed 1). Writes with BUILD_DIR/tools/qtool/qtool the W8 dynamic model
# (DynamicQuantizeLinear + MatMulInteger, uint8 weights), the same with int8 weights (--weight-type
# int8), and the 4-bit dynamic model (MatMulNBits accuracy_level 4, RTN block 32). Then ROUNDS rounds
# (default 3) of: for sequence 128 and 1, threads 1 and 2, every model once in a fresh ONNX Runtime
# session (REPEAT timed runs after 3 warm-up runs, default 10), interleaved so that machine noise hits
# all forms alike. Prints a markdown table: per form the median over rounds of each round's median
# run time, and the ratio to FP32's in the same rounds.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
BUILD=${2:-build}
ROUNDS=${3:-3}
REPEAT=${4:-10}
PY=${PYTHON:-/usr/bin/python3}
QTOOL="$BUILD/tools/qtool/qtool"
[ -x "$QTOOL" ] || { echo "missing $QTOOL" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK" <<'PYEOF'
import sys, numpy as np
w = sys.argv[1]
r = np.random.default_rng(1)
np.save(f"{w}/seq128.npy", np.concatenate([[1], r.integers(2, 32000, 127)]).astype(np.int64).reshape(1, 128))
np.save(f"{w}/seq1.npy", np.array([[1]], dtype=np.int64))
PYEOF
declare -A PATHS=([fp32]=$MODEL)
"$QTOOL" -q quantize "$MODEL" --bits 8 --mode dynamic -o "$WORK/w8.onnx" > /dev/null
PATHS[w8-uint8]=$WORK/w8.onnx
"$QTOOL" -q quantize "$MODEL" --bits 8 --mode dynamic --weight-type int8 -o "$WORK/w8s.onnx" > /dev/null
PATHS[w8-int8]=$WORK/w8s.onnx
"$QTOOL" -q quantize "$MODEL" --bits 4 --mode dynamic -o "$WORK/w4.onnx" > /dev/null
PATHS[w4-level4]=$WORK/w4.onnx
FORMS=(fp32 w8-uint8 w8-int8 w4-level4)

declare -A TIMES
for round in $(seq 1 "$ROUNDS"); do
  for seq in 128 1; do
    for th in 1 2; do
      for form in "${FORMS[@]}"; do
        node tools/ort/run.js "${PATHS[$form]}" "$WORK/out" --threads "$th" --repeat "$REPEAT" --warmup 3 \
          "input_ids=$WORK/seq$seq.npy" > /dev/null
        ms=$("$PY" -c "import json,statistics; print(statistics.median(json.load(open('$WORK/out/manifest.json'))['run_ms']))")
        TIMES[$seq|$th|$form]="${TIMES[$seq|$th|$form]:-} $ms"
      done
    done
  done
done

echo "| form | file bytes | seq | threads | median ms (${ROUNDS} rounds × ${REPEAT} runs) | × FP32 |"
echo "|---|---|---|---|---|---|"
for seq in 128 1; do
  for th in 1 2; do
    fp=$("$PY" -c "import statistics; print(statistics.median([float(x) for x in '${TIMES[$seq|$th|fp32]}'.split()]))")
    for form in "${FORMS[@]}"; do
      med=$("$PY" -c "import statistics; print(statistics.median([float(x) for x in '${TIMES[$seq|$th|$form]}'.split()]))")
      size=$(stat -c %s "${PATHS[$form]}")
      "$PY" -c "print(f'| $form | {${size}:,} | $seq | $th | {${med}:.2f} | {${med}/${fp}:.2f} |')"
    done
  done
done
