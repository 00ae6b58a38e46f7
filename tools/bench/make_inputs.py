#!/usr/bin/env python3
"""Writes the benchmark inputs (.npy) for tools/bench/executor_vs_ort.sh.

Deterministic pseudo-random data of the right shapes: latency does not depend on values.
Usage: make_inputs.py OUTDIR [SQUEEZENET_IN SQUEEZENET_OUT]

With the two model paths it also writes a copy of SqueezeNet 1.1 whose batch dimension is
symbolic ("N"): the shared model declares batch 1, and both runtimes reject batch 8 otherwise.
"""
import os
import sys

import numpy as np


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    for b in (1, 8):
        np.save(os.path.join(out, f"image224_b{b}.npy"), rng.standard_normal((b, 3, 224, 224), dtype=np.float32))
        np.save(os.path.join(out, f"image244_b{b}.npy"), rng.standard_normal((b, 3, 244, 244), dtype=np.float32))
    np.save(os.path.join(out, "tokens512_s256.npy"), np.concatenate(
        [[1], rng.integers(2, 512, 255)]).astype(np.int64).reshape(1, 256))
    np.save(os.path.join(out, "tokens32000_s128.npy"), np.concatenate(
        [[1], rng.integers(2, 32000, 127)]).astype(np.int64).reshape(1, 128))


def dynamic_batch(src, dst):
    import onnx
    m = onnx.load(src)
    for v in list(m.graph.input) + list(m.graph.output):
        if v.type.tensor_type.shape.dim:
            v.type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.value_info[:]
    onnx.save(m, dst)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        dynamic_batch(sys.argv[2], sys.argv[3])
    main()
