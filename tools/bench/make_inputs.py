#!/usr/bin/env python3
"""Writes the benchmark inputs (.npy) for tools/bench/executor_vs_ort.sh.

Deterministic pseudo-random data of the right shapes: latency does not depend on values.
Usage: make_inputs.py OUTDIR
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


if __name__ == "__main__":
    main()
