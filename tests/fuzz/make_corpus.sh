#!/usr/bin/env bash
# Builds the seed corpora of the libFuzzer targets in OUT_DIR/<target>/ from real files, at run
# time (nothing is copied into the repository):
#   fuzz_model   the shared models under 3 MB (mnist-8, the PyTorch MNIST CNN, Silero VAD,
#                stories260K, SqueezeNet fp16) and calibration_samples/digits/digits_cnn.onnx, each
#                rewritten with every tensor of 1 KiB to 4 MiB in external data: its raw_data
#                replaced by {location: "weights.bin", offset, length}, the 4 MiB file that fuzz_model
#                keeps in its base folder. The graphs stay whole (every node, attribute, subgraph,
#                small initializer), the seeds shrink from up to 2.8 MB to at most ~200 KB, and
#                external data is exercised on every model. Models under 512 KB are also kept as
#                they are, plus two hand-made models with external data;
#   fuzz_npy     calibration_samples .npy files, and the first one re-encoded in other dtypes and
#                .npy versions 2.0/3.0;
#   fuzz_npz     .npz archives of those .npy files (stored, deflate, ZIP64 like numpy.savez);
#   fuzz_idx     the first records of the shared MNIST IDX files, plain and gzipped;
#   fuzz_image   the smallest shared ImageNet JPEGs and PNGs made from MNIST digits (gray, RGB,
#                RGBA, 16-bit), each behind fuzz_image's two option bytes;
#   fuzz_config  the README's experiment config (JSON, and the same as YAML), a ranges file from
#                `qtool calibrate` on the digits example (when build/tools/qtool/qtool exists) and
#                a small hand-written one.
# Usage: tests/fuzz/make_corpus.sh OUT_DIR
# Environment: QTOOL_SHARED (default ../shared beside the checkout), QTOOL_BIN (default
# build/tools/qtool/qtool), PYTHON (default python3; only its standard library is used).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: tests/fuzz/make_corpus.sh OUT_DIR}
shared=${QTOOL_SHARED:-$repo/../shared}
qtool_bin=${QTOOL_BIN:-$repo/build/tools/qtool/qtool}
py=${PYTHON:-python3}
samples=$repo/calibration_samples

if [ ! -d "$shared" ]; then
  if [ "${CI:-}" = true ]; then
    echo "make_corpus.sh: shared folder '$shared' is missing (set QTOOL_SHARED)" >&2
    exit 1
  fi
  echo "make_corpus.sh: warning: no shared folder '$shared'; seeds from calibration_samples only" >&2
fi

targets=(fuzz_model fuzz_npy fuzz_npz fuzz_idx fuzz_image fuzz_config)
for t in "${targets[@]}"; do
  rm -rf "${out:?}/$t"
  mkdir -p "$out/$t"
done

# fuzz_model: real models, skipping anything of 3 MB or more (find -size rounds up to whole KiB).
# They go to a list; the Python part below writes each with its weights in external data.
models=$(mktemp)
echo "$samples/digits/digits_cnn.onnx" > "$models"
if [ -d "$shared/models" ]; then
  find "$shared/models" -name '*.onnx' -size -3072k | sort >> "$models"
fi

# fuzz_npy: a handful of real samples.
for f in "$samples"/digits/calib_000[0-3].npy "$samples"/digits_eval/eval_000[0-1].npy; do
  cp "$f" "$out/fuzz_npy/"
done

# fuzz_config: the README's experiment config, and the same keys as YAML.
{ printf '\0'; awk '/^## Batch experiments/ {s = 1} s && /^```json/ {p = 1; next} p && /^```/ {exit} p' "$repo/README.md"; } \
  > "$out/fuzz_config/readme_experiment.json"
if [ "$(wc -c < "$out/fuzz_config/readme_experiment.json")" -lt 20 ]; then
  echo "make_corpus.sh: no JSON example under '## Batch experiments' in README.md" >&2
  exit 1
fi
{ printf '\1'; cat <<'EOF'; } > "$out/fuzz_config/experiment.yaml"
output_dir: experiments/digits
defaults: {calib: calibration_samples/digits, method: minmax}
settings:
  - {name: int8, bits: 8}
  - name: w4-gptq
    bits: 4
    weight-algorithm: gptq
    block-size: 32
    cle: true
sweep:
  bits: [4, 2]
  block_size: [32, 64]
EOF
# A ranges file as `qtool calibrate` writes it, when the CLI is built.
if [ -x "$qtool_bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$qtool_bin" calibrate "$samples/digits/digits_cnn.onnx" --calib "$samples/digits" --samples 20 \
    -o "$tmp/ranges.json" -q > /dev/null
  { printf '\2'; cat "$tmp/ranges.json"; } > "$out/fuzz_config/calibrate_ranges.json"
else
  echo "make_corpus.sh: note: $qtool_bin not built; only the hand-written ranges seed" >&2
fi
{ printf '\2'; cat <<'EOF'; } > "$out/fuzz_config/handwritten_ranges.json"
{"format": "qtool-ranges", "version": 1,
 "model": {"name": "digits_cnn.onnx", "fingerprint": "fnv1a64:0123456789abcdef"},
 "method": "percentile",
 "config": {"bits": 8, "symmetric": false, "percentile": 99.99, "bins": 2048, "channel_axis": 1},
 "samples": 20, "source": "calibration_samples/digits", "preprocess": "",
 "tensors": [
  {"name": "input", "dtype": "float32", "shape": [1, 1, 8, 8], "count": 1280,
   "min": 0, "max": 1, "mean": 0.3, "std": 0.4, "range_min": 0, "range_max": 1,
   "channel_axis": 1, "per_channel_min": [0], "per_channel_max": [1], "per_channel_absmax": [1],
   "histogram": {"lo": 0, "hi": 1, "counts": [700, 100, 80, 400]},
   "percentiles": {"1": 0, "50": 0.1, "99": 1, "99.99": 1}, "nonfinite": 0},
  {"name": "logits", "dtype": "float32", "shape": [1, 10], "count": 200,
   "min": -12.5, "max": 17.25, "mean": -1.5, "std": 6.0, "range_min": -12.5, "range_max": 17.25,
   "histogram": {"lo": -12.5, "hi": 17.25, "counts": [3, 50, 100, 40, 7]}, "nonfinite": 0}
 ]}
EOF

# Everything that has to be encoded: standard library only.
"$py" - "$out" "$shared" "$samples" "$models" <<'EOF'
import glob, gzip, io, os, struct, sys, zipfile, zlib

out, shared, samples, model_list = sys.argv[1:5]

def write(target, name, data):
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)

def read(path):
    with open(path, "rb") as f:
        return f.read()

# --- .npy: the first digits sample re-encoded (header variants, dtypes) -----------------------
def npy(descr, shape, payload, version=(1, 0), fortran=False):
    shape_s = f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(str(d) for d in shape) + ")"
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape_s}, }}"
    size_bytes = 2 if version[0] == 1 else 4
    pad = (-(6 + 2 + size_bytes + len(header) + 1)) % 64
    header = header + " " * pad + "\n"
    size = struct.pack("<H" if size_bytes == 2 else "<I", len(header))
    return b"\x93NUMPY" + bytes(version) + size + header.encode("latin1") + payload

first = read(os.path.join(samples, "digits", "calib_0000.npy"))
hlen = struct.unpack("<H", first[8:10])[0]
values = struct.unpack(f"<{(len(first) - 10 - hlen) // 4}f", first[10 + hlen:])  # 64 float32 values
n = len(values)
write("fuzz_npy", "v2_f4.npy", npy("<f4", (1, 1, 8, 8), first[10 + hlen:], version=(2, 0)))
write("fuzz_npy", "v3_f8.npy", npy("<f8", (8, 8), struct.pack(f"<{n}d", *values), version=(3, 0)))
write("fuzz_npy", "f2.npy", npy("<f2", (n,), struct.pack(f"<{n}e", *values)))
write("fuzz_npy", "i8.npy", npy("<i8", (4, 16), struct.pack(f"<{n}q", *[int(v * 255) for v in values])))
write("fuzz_npy", "u1.npy", npy("|u1", (8, 8), bytes(int(v * 255) & 255 for v in values)))
write("fuzz_npy", "b1.npy", npy("|b1", (n,), bytes(1 if v > 0.5 else 0 for v in values)))
write("fuzz_npy", "scalar_i4.npy", npy("<i4", (), struct.pack("<i", 7)))
write("fuzz_npy", "fortran_u2.npy", npy("<u2", (8, 8), struct.pack(f"<{n}H", *[int(v * 999) for v in values]),
                                        fortran=True))

# --- .npz: ZIP archives of real .npy files, as numpy.savez / savez_compressed write them ------
npys = sorted(glob.glob(os.path.join(samples, "digits", "calib_000[0-3].npy")))
def npz(members, method, zip64=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in members:
            with z.open(name + ".npy", "w", force_zip64=zip64) as f:
                f.write(data)
    return buf.getvalue()
write("fuzz_npz", "stored.npz", npz([("input", read(npys[0]))], zipfile.ZIP_STORED))
write("fuzz_npz", "deflate.npz", npz([("input", read(npys[1]))], zipfile.ZIP_DEFLATED))
write("fuzz_npz", "zip64_stored.npz", npz([("input", read(npys[2]))], zipfile.ZIP_STORED, zip64=True))
write("fuzz_npz", "two_members_deflate.npz",
      npz([("a", read(npys[0])), ("b", read(os.path.join(out, "fuzz_npy", "i8.npy")))], zipfile.ZIP_DEFLATED))

# --- IDX: the first records of the MNIST files ------------------------------------------------
def idx_head(path, keep):
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        ndim = head[3]
        dims = list(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
        per = 1
        for d in dims[1:]:
            per *= d
        dims[0] = keep
        return head + struct.pack(f">{ndim}I", *dims) + f.read(keep * per)

mnist_images = None
for name, keep in (("t10k-images-idx3-ubyte.gz", 3), ("t10k-labels-idx1-ubyte.gz", 16)):
    path = os.path.join(shared, "data", "mnist", name)
    if not os.path.exists(path):
        continue
    raw = idx_head(path, keep)
    stem = name.replace(".gz", "").replace("t10k-", "")
    write("fuzz_idx", stem, raw)
    write("fuzz_idx", stem + ".gz", gzip.compress(raw, mtime=0))
    if "images" in name:
        mnist_images = raw

# --- images: small real JPEGs; PNGs of an MNIST digit (or a digits sample) ----------------------
# Option bytes (fuzz_image.cc): presets imagenet / mnist-raw / none, and custom RGB / gray.
headers = [b"\x00\x00", b"\x03\x00", b"\x05\x00", b"\x06\x5c", b"\x0e\xd0", b"\x26\x9c"]
jpegs = sorted(glob.glob(os.path.join(shared, "data", "imagenet-sample", "images", "*.JPEG")), key=os.path.getsize)
for k, path in enumerate(jpegs[:4]):
    write("fuzz_image", f"{k}_" + os.path.basename(path), headers[k % len(headers)] + read(path))

if mnist_images is not None:
    w = h = 28
    gray = mnist_images[16:16 + w * h]
else:  # 8x8 digits sample, 0..1 floats
    w = h = 8
    gray = bytes(int(v * 255) & 255 for v in values)

def png(width, height, color_type, bit_depth, rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)  # filter type 0 on every row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

rows_g = [gray[y * w:(y + 1) * w] for y in range(h)]
write("fuzz_image", "gray8.png", b"\x03\x00" + png(w, h, 0, 8, rows_g))
write("fuzz_image", "rgb8.png", b"\x00\x00" + png(w, h, 2, 8, [bytes(c for p in r for c in (p, 255 - p, p // 2)) for r in rows_g]))
write("fuzz_image", "rgba8.png", b"\x06\x5c" + png(w, h, 6, 8, [bytes(c for p in r for c in (p, p, p, 200)) for r in rows_g]))
write("fuzz_image", "gray16.png", b"\x0e\xd0" + png(w, h, 0, 16, [bytes(c for p in r for c in (p, p)) for r in rows_g]))

# --- models with external data ------------------------------------------------------------------
# A minimal protobuf writer for onnx.ModelProto (onnx/onnx.proto field numbers), so that no ONNX
# Python package is needed. fuzz_model's "weights.bin" holds 1024 float32 values.
def varint(v):
    b = bytearray()
    while True:
        x = v & 0x7F
        v >>= 7
        b.append(x | (0x80 if v else 0))
        if not v:
            return bytes(b)

def fld(num, value):  # int -> varint field, bytes/str -> length-delimited field
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint((num << 3) | 2) + varint(len(value)) + value

FLOAT = 1
def external_tensor(name, dims, dtype, offset, length):
    t = b"".join(fld(1, d) for d in dims) + fld(2, dtype) + fld(8, name)
    for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(length))):
        t += fld(13, fld(1, k) + fld(2, v))
    return t + fld(14, 1)  # data_location = EXTERNAL

def value_info(name, dims):
    shape = b"".join(fld(1, fld(1, d)) for d in dims)
    return fld(1, name) + fld(2, fld(1, fld(1, FLOAT) + fld(2, shape)))

def node(op, inputs, outputs, name, attrs=b""):
    return b"".join(fld(1, i) for i in inputs) + b"".join(fld(2, o) for o in outputs) + fld(3, name) + fld(4, op) + attrs

def model(nodes, inits, inputs, outputs, opset=13):
    g = b"".join(fld(1, n) for n in nodes) + fld(2, "g") + b"".join(fld(5, t) for t in inits)
    g += b"".join(fld(11, v) for v in inputs) + b"".join(fld(12, v) for v in outputs)
    return fld(1, 8) + fld(2, "make_corpus.sh") + fld(7, g) + fld(8, fld(1, "") + fld(2, opset))

write("fuzz_model", "external_matmul_add.onnx", model(
    [node("MatMul", ["x", "w"], ["xw"], "mm"), node("Add", ["xw", "b"], ["y"], "add")],
    [external_tensor("w", [4, 4], FLOAT, 0, 64), external_tensor("b", [4], FLOAT, 1024, 16)],
    [value_info("x", [1, 4])], [value_info("y", [1, 4])]))
ints = lambda name, vals: fld(1, name) + b"".join(fld(8, v) for v in vals) + fld(20, 7)  # AttributeProto INTS
write("fuzz_model", "external_conv_relu.onnx", model(
    [node("Conv", ["x", "w", "b"], ["c"], "conv", fld(5, ints("kernel_shape", [3, 3])) + fld(5, ints("pads", [1, 1, 1, 1]))),
     node("Relu", ["c"], ["y"], "relu")],
    [external_tensor("w", [2, 1, 3, 3], FLOAT, 64, 72), external_tensor("b", [2], FLOAT, 4088, 8)],
    [value_info("x", [1, 1, 8, 8])], [value_info("y", [1, 2, 8, 8])]))

# The real models with their tensors in external data. A generic protobuf walk: ModelProto.graph (7);
# GraphProto.node (1), .initializer (5); NodeProto.attribute (5); AttributeProto.t (5), .g (6),
# .tensors (10), .graphs (11). A TensorProto whose raw_data (9) holds 1 KiB to 4 MiB loses it and
# gets external_data (13) entries and data_location (14) = EXTERNAL.
WEIGHTS_BYTES = 4 << 20  # fuzz_model.cc's weights.bin

def rd_varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i

def pb_fields(b):
    fields, i = [], 0
    while i < len(b):
        key, i = rd_varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = rd_varint(b, i)
        elif wt == 2:
            n, i = rd_varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wt}")
        fields.append((num, wt, v))
    return fields

def pb_join(fields):
    b = bytearray()
    for num, wt, v in fields:
        b += varint((num << 3) | wt)
        b += varint(v) if wt == 0 else (varint(len(v)) + v if wt == 2 else v)
    return bytes(b)

SUBMESSAGES = {"model": {7: "graph"}, "graph": {1: "node", 5: "tensor"}, "node": {5: "attr"},
               "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph"}}

def externalize(b, kind, state):
    if kind != "tensor":
        sub = SUBMESSAGES[kind]
        return pb_join([(n, w, externalize(v, sub[n], state) if w == 2 and n in sub else v)
                        for n, w, v in pb_fields(b)])
    fields = pb_fields(b)
    raw = [v for n, w, v in fields if n == 9 and w == 2]
    if not raw or not 1024 <= len(raw[0]) <= WEIGHTS_BYTES:
        return b
    length = len(raw[0])
    offset = state["offset"] if state["offset"] + length <= WEIGHTS_BYTES else 0
    state["offset"] = (offset + length + 4095) // 4096 * 4096
    state["count"] += 1
    kept = [(n, w, v) for n, w, v in fields if n not in (9, 13, 14)]
    ext = [(13, 2, fld(1, k) + fld(2, v)) for k, v in
           (("location", "weights.bin"), ("offset", str(offset)), ("length", str(length)))]
    return pb_join(kept + ext + [(14, 0, 1)])

for path in open(model_list).read().split():
    data = read(path)
    base = os.path.basename(path)
    if len(data) < 512 * 1024:
        write("fuzz_model", base, data)
    state = {"offset": 0, "count": 0}
    small = externalize(data, "model", state)
    if state["count"]:
        write("fuzz_model", base[:-5] + ".external.onnx", small)
EOF

rm -f "$models"
chmod -R u+w "$out"  # the shared files are read-only
for t in "${targets[@]}"; do
  printf '%-12s %3d seeds, %8d bytes\n' "$t" "$(find "$out/$t" -type f | wc -l)" "$(cat "$out/$t"/* | wc -c)"
done
