#!/usr/bin/env node
// ONNX Runtime as the judge of classifier accuracy (qtool's INT8 benchmarks).
//
//   node tools/eval/ort_classify.js MODEL LIST OUT [--threads N] [--input NAME]
//
// LIST: a text file with one preprocessed input (.npy, float32, the model's input shape) per line.
// OUT: a text file with one line per input: the argmax of the first output over its last non-unit
// axis. Loads the model once; prints the mean run time per sample (ms) on stdout as JSON.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require(path.join(__dirname, '..', '..', 'node_modules', 'onnxruntime-node'));

function readNpyF32(file) {
  const buf = fs.readFileSync(file);
  const major = buf.readUInt8(6);
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', hstart, hstart + hlen);
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(`${file}: expected float32`);
  const dims = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const n = dims.reduce((a, b) => a * b, 1);
  const copy = new Uint8Array(n * 4);
  copy.set(buf.subarray(hstart + hlen, hstart + hlen + n * 4));
  return new ort.Tensor('float32', new Float32Array(copy.buffer), dims);
}

(async () => {
  const args = process.argv.slice(2);
  let threads = 1;
  let inputName = null;
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--threads') threads = Number(args[++i]);
    else if (args[i] === '--input') inputName = args[++i];
    else pos.push(args[i]);
  }
  if (pos.length !== 3) throw new Error('usage: ort_classify.js MODEL LIST OUT [--threads N]');
  const [model, list, out] = pos;
  const session = await ort.InferenceSession.create(model, {intraOpNumThreads: threads, interOpNumThreads: 1,
                                                            graphOptimizationLevel: 'all'});
  const name = inputName || session.inputNames[0];
  const files = fs.readFileSync(list, 'utf8').split('\n').filter((l) => l.length);
  const lines = [];
  let ms = 0;
  for (const f of files) {
    const feeds = {};
    feeds[name] = readNpyF32(f);
    const t0 = process.hrtime.bigint();
    const res = await session.run(feeds);
    ms += Number(process.hrtime.bigint() - t0) / 1e6;
    const y = res[session.outputNames[0]];
    const d = y.data;
    let best = 0;
    for (let i = 1; i < d.length; i++) if (d[i] > d[best]) best = i;
    lines.push(String(best));
  }
  fs.writeFileSync(out, lines.join('\n') + '\n');
  console.log(JSON.stringify({samples: files.length, mean_ms: ms / Math.max(1, files.length)}));
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
