#!/usr/bin/env bash
# qtool executor vs ONNX Runtime (onnxruntime-node), same inputs, same thread count, in one go.
#
#   tools/bench/executor_vs_ort.sh [BUILD_DIR] [REPEAT]
#
# BUILD_DIR must hold bench/executor_bench (cmake --build BUILD_DIR --target executor_bench).
# For each model and thread count (1, 2) it runs WARMUP untimed + REPEAT timed runs in qtool
# (bench/executor_bench) and in ORT (tools/ort/run.js), then prints a markdown table of the
# medians and the qtool/ORT ratio. The random 125m Llama is generated once with
# ../shared/tools/make_llama_onnx.py into BUILD_DIR/bench_models (needs python3-onnx, python3-numpy).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
REPEAT=${2:-10}
WARMUP=${WARMUP:-2}
PY=${PYTHON:-/usr/bin/python3}
SHARED=${QTOOL_SHARED:-../shared}
BENCH="$BUILD/bench/executor_bench"
[ -x "$BENCH" ] || { echo "missing $BENCH (cmake --build $BUILD --target executor_bench)" >&2; exit 2; }
MODELS="$BUILD/bench_models"
mkdir -p "$MODELS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" tools/bench/make_inputs.py "$WORK" "$SHARED/models/squeezenet1.1/squeezenet1.1_fp32.onnx" "$MODELS/squeezenet1.1_dynbatch.onnx"
LLAMA="$MODELS/llama125m.onnx"
if [ ! -f "$LLAMA.done" ]; then
  "$PY" "$SHARED/tools/make_llama_onnx.py" --preset 125m --seed 1 "$LLAMA" >&2
  touch "$LLAMA.done"
fi
VOCAB=$("$PY" -c "import onnx,sys; m=onnx.load('$LLAMA', load_external_data=False); print([i for i in m.graph.initializer if len(i.dims)==2 and i.dims[0]>=1000][0].dims[0])")
"$PY" -c "import numpy as np; r=np.random.default_rng(1); np.save('$WORK/llama_tokens.npy', np.concatenate([[1], r.integers(2, $VOCAB, 127)]).astype(np.int64).reshape(1,128))"

# name | model | input name | input file | repeat
ROWS=(
  "MobileNetV2 b1|$SHARED/models/mobilenetv2/mobilenetv2_dequant_fp32.onnx|image|$WORK/image244_b1.npy|$REPEAT"
  "MobileNetV2 b8|$SHARED/models/mobilenetv2/mobilenetv2_dequant_fp32.onnx|image|$WORK/image244_b8.npy|$REPEAT"
  "SqueezeNet 1.1 b1|$MODELS/squeezenet1.1_dynbatch.onnx|data_0|$WORK/image224_b1.npy|$REPEAT"
  "SqueezeNet 1.1 b8|$MODELS/squeezenet1.1_dynbatch.onnx|data_0|$WORK/image224_b8.npy|$REPEAT"
  "stories260K seq 256|$SHARED/models/stories260K/stories260K.onnx|input_ids|$WORK/tokens512_s256.npy|$REPEAT"
  "Llama 125m (random) seq 128|$LLAMA|input_ids|$WORK/llama_tokens.npy|$(( (REPEAT + 1) / 2 ))"
)

# CPU milliseconds per run (user + sys, all threads) measured as the difference between a
# process doing 1 + REP runs and one doing 1 run, so model loading, warm-up and process start
# cancel out. On a shared, loaded machine this is far steadier than wall-clock latency.
cpu_ms() { perf stat -x, -e task-clock -o "$WORK/ps.txt" -- "$@" >/dev/null 2>&1; awk -F, '/task-clock/{print $1}' "$WORK/ps.txt"; }
per_run() { "$PY" -c "print('%.2f' % (($2 - $1) / $3))"; }
HAVE_PERF=0
command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1 && HAVE_PERF=1

median() { "$PY" -c "import json,sys,statistics; d=json.load(open(sys.argv[1])); print('%.2f' % statistics.median(d['run_ms']))" "$1"; }

# glibc returns large freed blocks to the OS (mmap/munmap), so every run page-faults its
# intermediates in again; the second qtool column keeps them in the heap (GLIBC_TUNABLES) to
# show what an allocation cache in the executor would buy.
TUNED="glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483648"
echo "| model | threads | qtool median ms | qtool, malloc kept ms | ORT median ms | qtool/ORT | kept/ORT | qtool CPU ms/run | ORT CPU ms/run | CPU ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for threads in 1 2; do
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name model input file rep <<<"$row"
    "$BENCH" "$model" --threads "$threads" --repeat "$rep" --warmup "$WARMUP" "$input=$file" >"$WORK/q.json"
    GLIBC_TUNABLES=$TUNED "$BENCH" "$model" --threads "$threads" --repeat "$rep" --warmup "$WARMUP" "$input=$file" >"$WORK/k.json"
    node tools/ort/run.js "$model" "$WORK/ort" --threads "$threads" --repeat "$rep" --warmup "$WARMUP" "$input=$file" >/dev/null
    q=$(median "$WORK/q.json")
    o=$(median "$WORK/ort/manifest.json")
    k=$(median "$WORK/k.json")
    r=$("$PY" -c "print('%.2f' % ($q / $o))")
    rk=$("$PY" -c "print('%.2f' % ($k / $o))")
    cq="-"; co="-"; cr="-"
    if [ "$HAVE_PERF" = 1 ] && [ "$threads" = 1 ]; then
      a=$(cpu_ms "$BENCH" "$model" --threads 1 --repeat 1 --warmup "$WARMUP" "$input=$file")
      b=$(cpu_ms "$BENCH" "$model" --threads 1 --repeat $((rep + 1)) --warmup "$WARMUP" "$input=$file")
      cq=$(per_run "$a" "$b" "$rep")
      a=$(cpu_ms node tools/ort/run.js "$model" "$WORK/ort" --threads 1 --repeat 1 --warmup "$WARMUP" "$input=$file")
      b=$(cpu_ms node tools/ort/run.js "$model" "$WORK/ort" --threads 1 --repeat $((rep + 1)) --warmup "$WARMUP" "$input=$file")
      co=$(per_run "$a" "$b" "$rep")
      cr=$("$PY" -c "print('%.2f' % ($cq / $co))")
    fi
    echo "| $name | $threads | $q | $k | $o | $r | $rk | $cq | $co | $cr |"
  done
done
