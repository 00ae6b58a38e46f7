#!/usr/bin/env bash
# One command: install dependencies, then configure and build qtool and its tests in ./build.
#   scripts/setup.sh [extra cmake args...]     e.g. -DQTOOL_SANITIZE=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
BUILD_DIR=${QTOOL_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} "$@"
cmake --build "$BUILD_DIR" -j "$(nproc)"
