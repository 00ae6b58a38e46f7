#!/usr/bin/env node
// ONNX Runtime oracle for qtool's tests and benchmarks (onnxruntime-node, pinned in package.json).
//
//   node tools/ort/run.js MODEL OUTDIR [--threads N] [--repeat R] [--warmup W] name=input.npy ...
//
// Runs MODEL once per repeat on the given .npy inputs, writes every output as OUTDIR/<k>.npy and
// OUTDIR/manifest.json: {"outputs":[{"name":..,"file":..}], "load_ms":.., "run_ms":[..]}.
// Exit code 0 on success; on failure the error text goes to stderr and the exit code is 1.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const TYPES = {
  '<f4': ['float32', Float32Array], '<f8': ['float64', Float64Array], '|i1': ['int8', Int8Array],
  '|u1': ['uint8', Uint8Array], '|b1': ['bool', Uint8Array], '<i2': ['int16', Int16Array],
  '<u2': ['uint16', Uint16Array], '<i4': ['int32', Int32Array], '<u4': ['uint32', Uint32Array],
  '<i8': ['int64', BigInt64Array], '<u8': ['uint64', BigUint64Array], '<f2': ['float16', Uint16Array],
};
const DESCR = {};
for (const [k, v] of Object.entries(TYPES)) DESCR[v[0]] = k;

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file}: not .npy`);
  const major = buf.readUInt8(6);
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', hstart, hstart + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shapeStr = /'shape':\s*\(([^)]*)\)/.exec(header)[1];
  const dims = shapeStr.split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const [type, Arr] = TYPES[descr] || [];
  if (!type) throw new Error(`${file}: unsupported dtype ${descr}`);
  const n = dims.reduce((a, b) => a * b, 1);
  const start = hstart + hlen;
  const bytes = buf.subarray(start, start + n * Arr.BYTES_PER_ELEMENT);
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  let data = new Arr(copy.buffer, 0, n);
  if (type === 'bool') data = new Uint8Array(copy.buffer, 0, n);
  return new ort.Tensor(type, data, dims);
}

function writeNpy(file, t) {
  const descr = DESCR[t.type];
  if (!descr) throw new Error(`cannot write output of type ${t.type}`);
  const dims = t.dims;
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.writeUInt8(0x93, 0);
  pre.write('NUMPY', 1, 'latin1');
  pre.writeUInt8(1, 6);
  pre.writeUInt8(0, 7);
  pre.writeUInt16LE(header.length, 8);
  const d = t.data;
  const body = Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}

async function main() {
  const args = process.argv.slice(2);
  let threads = 1, repeat = 1, warmup = 0, optLevel = 'all';
  const pos = [], feeds = {};
  for (let i = 0; i < args.length; ++i) {
    const a = args[i];
    if (a === '--threads') threads = Number(args[++i]);
    else if (a === '--repeat') repeat = Number(args[++i]);
    else if (a === '--warmup') warmup = Number(args[++i]);
    else if (a === '--opt') optLevel = args[++i];
    else if (a.includes('=')) {
      const k = a.indexOf('=');
      feeds[a.slice(0, k)] = readNpy(a.slice(k + 1));
    } else pos.push(a);
  }
  if (pos.length !== 2) throw new Error('usage: run.js MODEL OUTDIR [--threads N] name=x.npy ...');
  const [model, outdir] = pos;
  fs.mkdirSync(outdir, { recursive: true });
  const t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: optLevel,
  });
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
  let results;
  for (let i = 0; i < warmup; ++i) await session.run(feeds);
  const runMs = [];
  for (let i = 0; i < Math.max(1, repeat); ++i) {
    const s = process.hrtime.bigint();
    results = await session.run(feeds);
    runMs.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  const outputs = [];
  session.outputNames.forEach((name, k) => {
    const file = `${k}.npy`;
    writeNpy(path.join(outdir, file), results[name]);
    outputs.push({ name, file });
  });
  fs.writeFileSync(path.join(outdir, 'manifest.json'),
    JSON.stringify({ outputs, inputs: session.inputNames, load_ms: loadMs, run_ms: runMs }, null, 1));
}

main().catch((e) => {
  process.stderr.write(String(e && e.message ? e.message : e) + '\n');
  process.exit(1);
});
