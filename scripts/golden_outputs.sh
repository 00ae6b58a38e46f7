#!/bin/sh
# Byte guard for restructurings: quantizes the bundled digits CNN (and, where ../shared is present,
# stories260K and Silero VAD) with a matrix of options and prints one line per run: exit code, the
# output model's hash and the report's hash (timings and paths removed).
#   scripts/golden_outputs.sh QTOOL OUTDIR      then: diff OLD/hashes.txt NEW/hashes.txt
Q=$1; O=$2; M=calibration_samples/digits/digits_cnn.onnx; C="--calib calibration_samples/digits/ --samples 64"
S=${QTOOL_SHARED:-../shared}
mkdir -p "$O"; : > "$O/hashes.txt"; i=0
run() {
  i=$((i+1))
  model=$1; shift
  "$Q" -q quantize "$model" "$@" -o "$O/$i.onnx" --report "$O/$i.json" >/dev/null 2>&1; rc=$?
  jq -S 'del(.timings,.total_seconds,.output_model,.input_model,.settings.calib) | .actions |= map(sub(", [0-9.]+ s$"; ""))' "$O/$i.json" > "$O/$i.rep" 2>/dev/null
  echo "$i rc=$rc $(sha256sum < "$O/$i.onnx" 2>/dev/null | cut -c1-16) $(sha256sum < "$O/$i.rep" | cut -c1-16) [$*]" >> "$O/hashes.txt"
}
run $M $C
run $M $C --per-tensor --activation-type int8
run $M $C --format qoperator
run $M $C --activation-bits 16
run $M $C --cle --bias-correction
run $M --calib calibration_samples/digits/ --samples 20
run $M --bits 4
run $M --bits 4 $C
run $M --bits 4 $C --no-guard
run $M --bits 4 --asymmetric --block-size 0
run $M --bits 4 --layer-bits conv2=8 --exclude-nodes conv1
run $M --bits 4 --bits-first-last same --bits-depthwise same --scale-type float32
run $M --bits 2 --outlier-fraction 0.1 $C
run $M --bits ternary --block-size 64
run $M --bits binary
run $M --bits uint4  # (--bits int4 --asymmetric is refused since session 6: int4 has no zero points)
run $M --bits 4 --format cast
run $M --bits 4 --weight-algorithm gptq $C
run $M --bits 4 --weight-algorithm awq $C
run $M --bits 4 --weight-algorithm awq+gptq --gptq-act-order $C
run $M --bits 4 --tune-steps 10 $C
if [ -d "$S/models" ]; then
  run "$S/models/stories260K/stories260K.onnx" --bits 4 --format matmulnbits
  run "$S/models/stories260K/stories260K.onnx" --bits 4 --weight-algorithm gptq --asymmetric \
      --calib "$S/data/stories260K-text/runc_samples_t1.0_p0.9_seed1-600.tok512.i32" --seq-len 64 --samples 32
  run "$S/models/mnist-8/mnist-8.onnx" --calib "$S/data/mnist/t10k-images-idx3-ubyte.gz" --preprocess mnist-raw --samples 64
  mkdir -p "$O/vad" && cp -r "$S/models/silero-vad/test_data_set_silero_vad_16k_op15" "$O/vad/test_data_set_0"
  run "$S/models/silero-vad/silero_vad_16k_op15.onnx" --calib "$O/vad"
fi
cat "$O/hashes.txt"
