#!/usr/bin/env bash
# Runs the libFuzzer targets of tests/fuzz one after another, SECONDS_PER_TARGET each, under
# `nice -n 19`, and fails if any of them finds something (a crash, a sanitizer report, a leak, a
# timeout over 10 s, an input using over 1 GB, or an unexpected exception: see fuzz_common.h).
# CI runs it with a fixed seed and run count (FUZZ_ARGS="-seed=1 -runs=5000", .ci/run); the long
# runs in BENCHMARKS.md use 600 s per target.
#
# Usage: tests/fuzz/run_fuzzers.sh SECONDS_PER_TARGET [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR  configured with -DQTOOL_FUZZ=ON and the target qtool_fuzzers built (default build-fuzz)
#   WORK_DIR   default BUILD_DIR/fuzz, holding
#                seeds/<target>/      made by make_corpus.sh when missing
#                corpus/<target>/     the inputs libFuzzer adds (kept: a later run starts from them)
#                artifacts/<target>/  what a finding saved (crash-*, leak-*, timeout-*, oom-*)
#                logs/<target>.log    libFuzzer's output
# Environment: FUZZ_TARGETS (space-separated subset), FUZZ_ARGS (extra libFuzzer flags).
# Reproduce a finding: BUILD_DIR/tests/fuzz/<target> WORK_DIR/artifacts/<target>/crash-...
set -euo pipefail
secs=${1:?usage: tests/fuzz/run_fuzzers.sh SECONDS_PER_TARGET [BUILD_DIR] [WORK_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${2:-$repo/build-fuzz}
work=${3:-$build/fuzz}
read -r -a targets <<< "${FUZZ_TARGETS:-fuzz_model fuzz_npy fuzz_npz fuzz_idx fuzz_image fuzz_config}"
read -r -a user_args <<< "${FUZZ_ARGS:-}"

for t in "${targets[@]}"; do
  [ -x "$build/tests/fuzz/$t" ] || {
    echo "run_fuzzers.sh: $build/tests/fuzz/$t is not built (cmake --build $build --target qtool_fuzzers)" >&2
    exit 2
  }
done
[ -d "$work/seeds" ] || "$here/make_corpus.sh" "$work/seeds"
mkdir -p "$work/logs"

# Leaks are findings; UBSan stops at the first report. ASan's quarantine of freed memory is cut
# from 256 to 64 MB: it counts in the RSS that -rss_limit_mb watches, beside libFuzzer's in-memory
# corpus. Options set by the caller come last and win.
export ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=64${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
scratch_root=/dev/shm
[ -d "$scratch_root" ] || scratch_root=${TMPDIR:-/tmp}

found=0
summary="target        seconds       execs  exec/s   cov     ft  corpus  result"
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  args=(-max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1
        -artifact_prefix="$work/artifacts/$t/")
  [ -f "$here/$t.dict" ] && args+=(-dict="$here/$t.dict")
  echo "== $t: ${secs} s"
  start=$(date +%s)
  rc=0
  nice -n 19 "$build/tests/fuzz/$t" "${args[@]}" "${user_args[@]}" "$work/corpus/$t" "$work/seeds/$t" \
    > "$work/logs/$t.log" 2>&1 &
  pid=$!
  wait "$pid" || rc=$?
  rm -rf "${scratch_root:?}/qtool-fuzz-$pid"  # left behind when the fuzzer died
  elapsed=$(( $(date +%s) - start ))
  log=$work/logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  status=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<< "$status")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    result=none
  else
    found=1
    result="FINDING (exit $rc): $(ls "$work/artifacts/$t" | tr '\n' ' ')"
    echo "-- $t found something; the end of $log:"
    tail -n 60 "$log"
  fi
  summary+=$(printf '\n%-12s %8d %11s %7s %5s %6s %7s  %s' "$t" "$elapsed" "${execs:--}" "${rate:--}" "${cov:--}" \
    "${ft:--}" "${corp:--}" "$result")
done
echo "$summary"
exit "$found"
