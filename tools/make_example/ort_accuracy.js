#!/usr/bin/env node
// ONNX Runtime's accuracy of one or more classifier models on a folder of .npy inputs with labels:
// the independent check of `qtool compare --labels` (feed it the tensors `qtool compare
// --dump-inputs DIR` wrote, so both tools see exactly the same inputs).
//
//   node tools/make_example/ort_accuracy.js LABELS.csv DIR MODEL.onnx [MODEL2.onnx ...]
//
// LABELS.csv: a header with a file/filename column and an integer class_index or label column
// (files are matched by name without extension). Prints one JSON line per model:
//   {"model":..,"samples":N,"correct":C,"accuracy":C/N,"top1_agreement_with_first":..}
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require(path.join(__dirname, '..', '..', 'node_modules', 'onnxruntime-node'));

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file}: not .npy`);
  const major = buf.readUInt8(6);
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', hstart, hstart + hlen);
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(`${file}: expected float32`);
  const dims = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const n = dims.reduce((a, b) => a * b, 1);
  const start = hstart + hlen;
  const copy = new Uint8Array(n * 4);
  copy.set(buf.subarray(start, start + n * 4));
  return new ort.Tensor('float32', new Float32Array(copy.buffer), dims);
}

function splitCsv(line) {
  const out = [''];
  let q = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) { if (c === '"' && line[i + 1] === '"') { out[out.length - 1] += '"'; i++; } else if (c === '"') q = false; else out[out.length - 1] += c; }
    else if (c === '"') q = true; else if (c === ',') out.push(''); else out[out.length - 1] += c;
  }
  return out.map((s) => s.trim());
}

function readLabels(file) {
  const lines = fs.readFileSync(file, 'utf8').split(/\r?\n/).filter((l) => l.trim());
  const head = splitCsv(lines[0]).map((s) => s.toLowerCase());
  const key = head.findIndex((h) => ['file', 'filename', 'image', 'name', 'path'].includes(h));
  let lab = -1;
  for (const name of ['class_index', 'label', 'class', 'target']) {
    const c = head.indexOf(name);
    if (c >= 0 && lines.slice(1).every((l) => /^-?\d+$/.test(splitCsv(l)[c]))) { lab = c; break; }
  }
  if (key < 0 || lab < 0) throw new Error(`${file}: need a file column and an integer label column`);
  const m = new Map();
  for (const l of lines.slice(1)) { const f = splitCsv(l); m.set(path.parse(f[key]).name, Number(f[lab])); }
  return m;
}

function argmax(a) { let b = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; }

(async () => {
  const [labelsFile, dir, ...models] = process.argv.slice(2);
  if (!models.length) { console.error('usage: ort_accuracy.js LABELS.csv DIR MODEL.onnx [MODEL2.onnx ...]'); process.exit(2); }
  const labels = readLabels(labelsFile);
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.npy')).sort();
  let first = null;
  for (const model of models) {
    const s = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
    const preds = [];
    let correct = 0, labelled = 0;
    for (const f of files) {
      const out = await s.run({ [s.inputNames[0]]: readNpy(path.join(dir, f)) });
      const p = argmax(out[s.outputNames[0]].data);
      preds.push(p);
      const l = labels.get(path.parse(f).name);
      if (l !== undefined) { labelled++; correct += p === l; }
    }
    let agree = null;
    if (first) agree = preds.filter((p, i) => p === first[i]).length / preds.length; else first = preds;
    console.log(JSON.stringify({ model, samples: files.length, labelled, correct, accuracy: correct / labelled,
                                 top1_agreement_with_first: agree }));
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
