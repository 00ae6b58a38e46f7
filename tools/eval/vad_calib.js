#!/usr/bin/env node
// Writes Silero VAD calibration samples from a WAV stream: every Nth chunk's input (with its
// context), the state the FP32 model carries into it, and sr, as .npy files under OUT/{input,state,sr}
// (the layout `qtool quantize --calib OUT` reads by input name).
//
//   node tools/eval/vad_calib.js MODEL.onnx WAV OUT [--count 200] [--every 3]
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require(path.join(__dirname, '..', '..', 'node_modules', 'onnxruntime-node'));
const {readWav} = require('./wav.js');


function writeNpy(file, descr, shape, bytes) {
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const pre = Buffer.alloc(10);
  Buffer.from([0x93]).copy(pre, 0);
  pre.write('NUMPY', 1, 'ascii');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'ascii'), Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]));
}

(async () => {
  const args = process.argv.slice(2);
  let count = 200, every = 3;
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--count') count = Number(args[++i]);
    else if (args[i] === '--every') every = Number(args[++i]);
    else pos.push(args[i]);
  }
  if (pos.length !== 3) throw new Error('usage: vad_calib.js MODEL.onnx WAV OUT [--count N] [--every K]');
  const {pcm, rate} = readWav(pos[1]);
  const chunk = rate === 16000 ? 512 : 256, ctx = rate === 16000 ? 64 : 32;
  for (const sub of ['input', 'state', 'sr']) fs.mkdirSync(path.join(pos[2], sub), {recursive: true});
  const session = await ort.InferenceSession.create(pos[0], {intraOpNumThreads: 1});
  let state = new ort.Tensor('float32', new Float32Array(256), [2, 1, 128]);
  const sr = new ort.Tensor('int64', BigInt64Array.from([BigInt(rate)]), []);
  let context = new Float32Array(ctx);
  let written = 0;
  for (let k = 0; written < count && (k + 1) * chunk <= pcm.length; k++) {
    const x = new Float32Array(ctx + chunk);
    x.set(context, 0);
    x.set(pcm.subarray(k * chunk, (k + 1) * chunk), ctx);
    if (k % every === 0) {
      const name = String(written).padStart(3, '0') + '.npy';
      writeNpy(path.join(pos[2], 'input', name), '<f4', [1, ctx + chunk], x);
      writeNpy(path.join(pos[2], 'state', name), '<f4', [2, 1, 128], state.data);
      writeNpy(path.join(pos[2], 'sr', name), '<i8', [], BigInt64Array.from([BigInt(rate)]));
      ++written;
    }
    const out = await session.run({input: new ort.Tensor('float32', x, [1, ctx + chunk]), state, sr});
    state = out.stateN;
    context = x.slice(x.length - ctx);
  }
  console.log(JSON.stringify({written, rate}));
})().catch((e) => { console.error(e.message); process.exit(1); });
