#!/usr/bin/env node
// ONNX Runtime latency of two models on the same input, runs interleaved (A, B, A, B, ...) so
// that load from other processes hits both alike (qtool's INT8 benchmarks).
//
//   node tools/eval/ort_latency.js MODEL_A MODEL_B INPUT_NAME 1x3x224x224 [--threads N] [--repeat R]
//        [--pb input_0.pb]
//
// --pb: a real input (ONNX TensorProto with float raw_data, e.g. a model zoo test_data_set) instead
// of the synthetic one: integer kernels' speed depends on the data (sparsity after Relu).
//
// Batch is the first dim of the shape. The input is a fixed pseudo-random float32 tensor in
// [-2, 2) * SCALE (--scale: match the model's input range, e.g. 60 for Caffe mean-subtracted pixels).
// Prints {"a_ms": median, "b_ms": median, "speedup": a/b, "threads": N, "repeat": R}.
'use strict';
const path = require('path');
const ort = require(path.join(__dirname, '..', '..', 'node_modules', 'onnxruntime-node'));

(async () => {
  const args = process.argv.slice(2);
  let threads = 1, repeat = 50, scale = 1, pbFile = null;
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--threads') threads = Number(args[++i]);
    else if (args[i] === '--repeat') repeat = Number(args[++i]);
    else if (args[i] === "--scale") scale = Number(args[++i]);
    else if (args[i] === '--pb') pbFile = args[++i];
    else pos.push(args[i]);
  }
  if (pos.length !== 4) throw new Error('usage: ort_latency.js A B INPUT_NAME SHAPE [--threads N] [--repeat R]');
  const dims = pos[3].split('x').map(Number);
  const n = dims.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1103515245) + 12345) >>> 0; x[i] = ((s / 4294967296) * 4 - 2) * scale; }
  if (pbFile) {
    // Minimal TensorProto reader: field 1 dims (varints), field 9 raw_data (float32 little-endian).
    const b = require('fs').readFileSync(pbFile);
    let p = 0;
    const varint = () => { let r = 0n, sh = 0n; for (;;) { const c = b[p++]; r |= BigInt(c & 0x7f) << sh; sh += 7n; if (!(c & 0x80)) return r; } };
    while (p < b.length) {
      const key = Number(varint()), field = key >> 3, wt = key & 7;
      if (wt === 0) varint();
      else if (wt === 2) {
        const len = Number(varint());
        if (field === 9) { const c = new Uint8Array(len); c.set(b.subarray(p, p + len)); x.set(new Float32Array(c.buffer).subarray(0, n)); }
        p += len;
      } else if (wt === 5) p += 4; else if (wt === 1) p += 8; else throw new Error('bad TensorProto');
    }
  }
  const opts = {intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all'};
  const sessions = [await ort.InferenceSession.create(pos[0], opts), await ort.InferenceSession.create(pos[1], opts)];
  const feeds = {};
  feeds[pos[2]] = new ort.Tensor('float32', x, dims);
  const times = [[], []];
  for (let w = 0; w < 5; w++) for (const sess of sessions) await sess.run(feeds);
  for (let r = 0; r < repeat; r++) {
    for (let k = 0; k < 2; k++) {
      const t0 = process.hrtime.bigint();
      await sessions[k].run(feeds);
      times[k].push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const med = (a) => { const b = [...a].sort((p, q) => p - q); return b[Math.floor(b.length / 2)]; };
  const a = med(times[0]), b = med(times[1]);
  console.log(JSON.stringify({a_ms: a, b_ms: b, speedup: a / b, threads, repeat}));
})().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });
