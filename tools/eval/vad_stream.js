#!/usr/bin/env node
// Streams a WAV file through two Silero VAD v5 exports with ONNX Runtime and compares their speech
// decisions chunk by chunk (issue 14's bar: agreement >= 99%).
//
//   node tools/eval/vad_stream.js WAV REFERENCE.onnx TEST.onnx [--threshold 0.5]
//
// 16 kHz audio goes in chunks of 512 new samples with the previous 64 as context; 8 kHz in chunks of
// 256 with 32 of context (Silero's own streaming). Each model carries its own state. Prints
// {"chunks":..,"agreement":..,"speech_ref":..,"max_abs_diff":..,"mean_abs_diff":..} on stdout.
'use strict';
const path = require('path');
const ort = require(path.join(__dirname, '..', '..', 'node_modules', 'onnxruntime-node'));
const {readWav} = require('./wav.js');


async function stream(modelPath, pcm, rate) {
  const session = await ort.InferenceSession.create(modelPath, {intraOpNumThreads: 1});
  const chunk = rate === 16000 ? 512 : 256, ctx = rate === 16000 ? 64 : 32;
  let state = new ort.Tensor('float32', new Float32Array(256), [2, 1, 128]);
  const sr = new ort.Tensor('int64', BigInt64Array.from([BigInt(rate)]), []);
  let context = new Float32Array(ctx);
  const probs = [];
  for (let k = 0; (k + 1) * chunk <= pcm.length; k++) {
    const x = new Float32Array(ctx + chunk);
    x.set(context, 0);
    x.set(pcm.subarray(k * chunk, (k + 1) * chunk), ctx);
    const out = await session.run({input: new ort.Tensor('float32', x, [1, ctx + chunk]), state, sr});
    probs.push(out.output.data[0]);
    state = out.stateN;
    context = x.slice(x.length - ctx);
  }
  return probs;
}

(async () => {
  const args = process.argv.slice(2);
  let threshold = 0.5;
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--threshold') threshold = Number(args[++i]);
    else pos.push(args[i]);
  }
  if (pos.length !== 3) throw new Error('usage: vad_stream.js WAV REFERENCE.onnx TEST.onnx [--threshold 0.5]');
  const {pcm, rate} = readWav(pos[0]);
  if (rate !== 16000 && rate !== 8000) throw new Error(`${pos[0]}: ${rate} Hz (Silero takes 8000 or 16000)`);
  const a = await stream(pos[1], pcm, rate), b = await stream(pos[2], pcm, rate);
  let agree = 0, speech = 0, maxd = 0, sumd = 0;
  for (let i = 0; i < a.length; i++) {
    agree += (a[i] > threshold) === (b[i] > threshold);
    speech += a[i] > threshold;
    const d = Math.abs(a[i] - b[i]);
    maxd = Math.max(maxd, d);
    sumd += d;
  }
  console.log(JSON.stringify({wav: pos[0], rate, chunks: a.length, agreement: agree / a.length, speech_ref: speech / a.length,
                              max_abs_diff: maxd, mean_abs_diff: sumd / a.length}));
})().catch((e) => { console.error(e.message); process.exit(1); });
