# Every dependency comes from a Debian 12 package (scripts/install_deps.sh).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)          # libprotobuf-dev: ONNX's protobuf classes link against it
find_package(ONNX REQUIRED)              # libonnx-dev: ONNX 1.12 proto classes, checker, shape inference
find_package(Eigen3 3.4 REQUIRED NO_MODULE)  # libeigen3-dev: GEMM and linear algebra (GPTQ Cholesky)
find_package(CLI11 REQUIRED)             # libcli11-dev: command-line parsing
find_package(spdlog REQUIRED)            # libspdlog-dev: logging to stderr
find_package(fmt REQUIRED)               # libfmt-dev (spdlog's dependency): message formatting
find_package(nlohmann_json 3 REQUIRED)   # nlohmann-json3-dev: JSON reports, ranges files, configs
find_package(yaml-cpp QUIET)             # libyaml-cpp-dev (optional): YAML configs for `qtool quantize --config`
find_path(STB_INCLUDE_DIR stb/stb_image.h REQUIRED)  # libstb-dev: PNG decoding for calibration images
find_package(JPEG REQUIRED)              # libjpeg-dev (libjpeg-turbo): JPEG decoding, the decoder PIL uses
find_package(ZLIB REQUIRED)              # zlib1g-dev: deflate in .npz archives, gzip IDX files (calibration data)
find_package(PkgConfig REQUIRED)         # pkg-config: finds libzstd
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)  # libzstd-dev: zstd-compressed size of outputs (reports)
if(QTOOL_BUILD_TESTS)
  find_package(GTest REQUIRED)           # libgtest-dev
endif()
