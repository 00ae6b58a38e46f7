#!/usr/bin/python3
"""Builds qtool's bundled example: a small CNN trained on scikit-learn's digits, exported to ONNX,
plus real calibration and evaluation samples.

Data: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" test set
(1797 8x8 images, pixels 0..16, 10 classes; E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), shipped by
Debian's python3-sklearn package (BSD-3-Clause). Nothing is downloaded.

Model (opset 13), input 'image' float32 [N,1,8,8] = pixels / 16, output 'logits' float32 [N,10]:
    Conv3x3(1->16,pad 1) Relu Conv3x3(16->32,stride 2,pad 1) Relu Conv3x3(32->32,pad 1) Relu
    Flatten Gemm(512->64) Relu Gemm(64->10)
trained from scratch with plain numpy (im2col convolutions, Adam, cross-entropy), seeded and
deterministic, in well under a minute on one core.

Split (seeded permutation of the 1797 images): 1297 train, 500 held-out evaluation.
Writes:
  <out>/digits/digits_cnn.onnx                the FP32 model
  <out>/digits/calib_NNNN.npy                 600 calibration samples from the training split, [1,1,8,8]
  <out>/digits_eval/eval_NNNN.npy             the 500 held-out samples, [1,1,8,8]
  <out>/digits_eval/labels.csv                file,label for `qtool compare --labels`
and prints the FP32 accuracy on the held-out set.

Usage: tools/make_example/make_digits_example.py [--out calibration_samples]
Needs Debian's python3-numpy, python3-onnx, python3-sklearn (scripts/install_deps.sh). Run it with
the system Python (/usr/bin/python3), where those packages live.
"""
import argparse
import os
import sys

import numpy as np

SEED = 20240611
N_EVAL = 500
N_CALIB = 600
EPOCHS = 20
BATCH = 32
LR = 2e-3


def im2col(x, k, stride, pad):
    """x [N,C,H,W] -> cols [N*Ho*Wo, C*k*k] (row order n,ho,wo; column order c,ky,kx)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, c, k, k, ho, wo), dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            cols[:, :, ky, kx] = xp[:, :, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * k * k), ho, wo


def col2im(cols, shape, k, stride, pad, ho, wo):
    """Adjoint of im2col: scatters column gradients back to an [N,C,H,W] gradient."""
    n, c, h, w = shape
    cols = cols.reshape(n, ho, wo, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    dx = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for ky in range(k):
        for kx in range(k):
            dx[:, :, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride] += cols[:, :, ky, kx]
    return dx[:, :, pad:pad + h, pad:pad + w]


class Conv:
    def __init__(self, rng, cin, cout, stride):
        fan_in = cin * 9
        self.w = rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin, 3, 3))
        self.b = np.zeros(cout)
        self.stride = stride

    def forward(self, x):
        self.x_shape = x.shape
        self.cols, self.ho, self.wo = im2col(x, 3, self.stride, 1)
        y = self.cols @ self.w.reshape(self.w.shape[0], -1).T + self.b
        n = x.shape[0]
        return y.reshape(n, self.ho, self.wo, -1).transpose(0, 3, 1, 2)

    def backward(self, dy):
        cout = self.w.shape[0]
        dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, cout)
        self.dw = (dy2.T @ self.cols).reshape(self.w.shape)
        self.db = dy2.sum(0)
        dcols = dy2 @ self.w.reshape(cout, -1)
        return col2im(dcols, self.x_shape, 3, self.stride, 1, self.ho, self.wo)

    def params(self):
        return [("w", self), ("b", self)]


class Dense:
    def __init__(self, rng, nin, nout):
        self.w = rng.normal(0.0, np.sqrt(2.0 / nin), (nout, nin))  # ONNX Gemm transB=1 layout
        self.b = np.zeros(nout)

    def forward(self, x):
        self.x = x
        return x @ self.w.T + self.b

    def backward(self, dy):
        self.dw = dy.T @ self.x
        self.db = dy.sum(0)
        return dy @ self.w

    def params(self):
        return [("w", self), ("b", self)]


class Net:
    def __init__(self, rng):
        self.c1 = Conv(rng, 1, 16, 1)
        self.c2 = Conv(rng, 16, 32, 2)
        self.c3 = Conv(rng, 32, 32, 1)
        self.f1 = Dense(rng, 32 * 4 * 4, 64)
        self.f2 = Dense(rng, 64, 10)
        self.layers = [self.c1, self.c2, self.c3, self.f1, self.f2]

    def forward(self, x):
        self.a1 = np.maximum(self.c1.forward(x), 0)
        self.a2 = np.maximum(self.c2.forward(self.a1), 0)
        self.a3 = np.maximum(self.c3.forward(self.a2), 0)
        self.a4 = np.maximum(self.f1.forward(self.a3.reshape(x.shape[0], -1)), 0)
        return self.f2.forward(self.a4)

    def backward(self, dlogits):
        d = self.f2.backward(dlogits) * (self.a4 > 0)
        d = self.f1.backward(d).reshape(self.a3.shape) * (self.a3 > 0)
        d = self.c3.backward(d) * (self.a2 > 0)
        d = self.c2.backward(d) * (self.a1 > 0)
        self.c1.backward(d)


def train(x, y, rng):
    net = Net(rng)
    state = {}
    step = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            logits = net.forward(x[idx])
            logits = logits - logits.max(1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            total += -np.log(p[np.arange(len(idx)), y[idx]] + 1e-12).sum()
            d = p
            d[np.arange(len(idx)), y[idx]] -= 1.0
            net.backward(d / len(idx))
            step += 1
            for li, layer in enumerate(net.layers):  # Adam
                for name in ("w", "b"):
                    g = getattr(layer, "d" + name)
                    m, v = state.get((li, name), (np.zeros_like(g), np.zeros_like(g)))
                    m = 0.9 * m + 0.1 * g
                    v = 0.999 * v + 0.001 * g * g
                    state[(li, name)] = (m, v)
                    mh = m / (1 - 0.9 ** step)
                    vh = v / (1 - 0.999 ** step)
                    setattr(layer, name, getattr(layer, name) - LR * mh / (np.sqrt(vh) + 1e-8))
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1}: mean loss {total / len(x):.4f}", file=sys.stderr)
    return net


def export_onnx(net, path):
    from onnx import TensorProto, helper, numpy_helper, save_model, checker

    def init(name, a):
        return numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)

    inits = []
    nodes = []
    prev = "image"
    for i, c in enumerate([net.c1, net.c2, net.c3], start=1):
        inits += [init(f"conv{i}.weight", c.w), init(f"conv{i}.bias", c.b)]
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[c.stride, c.stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        prev = f"relu{i}"
    nodes.append(helper.make_node("Flatten", [prev], ["flatten"], name="flatten", axis=1))
    inits += [init("fc1.weight", net.f1.w), init("fc1.bias", net.f1.b)]
    nodes.append(helper.make_node("Gemm", ["flatten", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1))
    nodes.append(helper.make_node("Relu", ["fc1"], ["relu4"], name="relu4"))
    inits += [init("fc2.weight", net.f2.w), init("fc2.bias", net.f2.b)]
    nodes.append(helper.make_node("Gemm", ["relu4", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1))
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="qtool make_digits_example.py",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    model.doc_string = ("Small CNN trained on scikit-learn's digits (UCI Optical Recognition of Handwritten "
                        "Digits, CC BY 4.0). Input: pixels/16 in [0,1].")
    checker.check_model(model)
    save_model(model, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                  "calibration_samples"))
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float64) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(x))
    eval_idx, train_idx = perm[:N_EVAL], perm[N_EVAL:]

    net = train(x[train_idx], y[train_idx], rng)
    pred = net.forward(x[eval_idx]).argmax(1)
    acc = float((pred == y[eval_idx]).mean())
    train_acc = float((net.forward(x[train_idx]).argmax(1) == y[train_idx]).mean())

    out = os.path.abspath(args.out)
    calib_dir = os.path.join(out, "digits")
    eval_dir = os.path.join(out, "digits_eval")
    for d in (calib_dir, eval_dir):
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.endswith(".npy") or f == "labels.csv":
                os.remove(os.path.join(d, f))
    export_onnx(net, os.path.join(calib_dir, "digits_cnn.onnx"))
    for k, i in enumerate(train_idx[:N_CALIB]):
        np.save(os.path.join(calib_dir, f"calib_{k:04d}.npy"), x[i:i + 1].astype(np.float32))
    with open(os.path.join(eval_dir, "labels.csv"), "w") as f:
        f.write("file,label\n")
        for k, i in enumerate(eval_idx):
            name = f"eval_{k:04d}.npy"
            np.save(os.path.join(eval_dir, name), x[i:i + 1].astype(np.float32))
            f.write(f"{name},{y[i]}\n")
    print(f"FP32 accuracy: held-out {acc * 100:.1f}% ({N_EVAL} images), train {train_acc * 100:.1f}%")
    print(f"wrote {calib_dir}/digits_cnn.onnx, {N_CALIB} calibration samples, {N_EVAL} evaluation samples")


if __name__ == "__main__":
    main()
