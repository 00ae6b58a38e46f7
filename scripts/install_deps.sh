#!/usr/bin/env bash
# Installs qtool's build and test dependencies from Debian 12 packages and npm. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  build-essential cmake pkg-config
  libonnx-dev libprotobuf-dev protobuf-compiler   # ONNX 1.12 protobuf classes + libonnx
  libeigen3-dev                                    # GEMM, Cholesky (GPTQ)
  libcli11-dev libspdlog-dev libfmt-dev            # CLI parsing, logging, formatting
  nlohmann-json3-dev                               # JSON reports, ranges, configs
  libstb-dev                                       # PNG decoding of calibration images
  libjpeg-dev                                      # JPEG decoding (libjpeg-turbo, the decoder PIL uses)
  zlib1g-dev                                       # .npz (deflate) calibration archives
  libzstd-dev                                      # zstd-compressed size of sparse / palettized outputs (issue 16 reports)
  libgtest-dev                                     # unit tests
  libonnx-testdata                                 # ONNX's own backend conformance tests
  python3-onnx python3-numpy                       # ../shared/tools/make_llama_onnx.py (benchmarks, external-data tests)
  time                                             # /usr/bin/time -v: peak RSS in tools/bench/calibrate_bench.sh
  python3-sklearn                                  # digits data set for tools/make_example/make_digits_example.py (bundled example)
  libyaml-cpp-dev                                  # YAML experiment configs for qtool quantize --config (optional)
  chromium                                         # headless check that the HTML report renders its charts (tests/report)
  nodejs npm                                       # ONNX Runtime oracle (onnxruntime-node)
  clang libclang-rt-14-dev                         # libFuzzer + ASan/UBSan runtimes: tests/fuzz (CI's fuzz step)
)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from outside Debian (e.g. NodeSource); accept any working install.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<< "${missing[*]:-}"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# ONNX Runtime for the parity tests (pinned in package.json; ships its own native library).
if [ ! -f node_modules/onnxruntime-node/package.json ]; then
  npm install --ignore-scripts --no-audit --no-fund
fi
