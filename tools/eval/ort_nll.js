#!/usr/bin/env node
// Next-token negative log-likelihood of a causal LM (stories260K) on a raw int32 token stream,
// with ONNX Runtime as the judge (qtool's INT8 benchmarks).
//
//   node tools/eval/ort_nll.js MODEL TOKENS.i32 [--seq-len L] [--threads N]
//
// Cuts the stream into consecutive windows of L tokens (the last partial window is dropped), runs
// input_ids int64[1, L] -> logits [1, L, V], and averages -log softmax(logits[t])[token t+1] over
// every position of every window. Prints {"tokens":..,"nll":..,"ppl":..} on stdout.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require(path.join(__dirname, '..', '..', 'node_modules', 'onnxruntime-node'));

(async () => {
  const args = process.argv.slice(2);
  let seqLen = 256;
  let threads = 1;
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--seq-len') seqLen = Number(args[++i]);
    else if (args[i] === '--threads') threads = Number(args[++i]);
    else pos.push(args[i]);
  }
  if (pos.length !== 2) throw new Error('usage: ort_nll.js MODEL TOKENS.i32 [--seq-len L]');
  const buf = fs.readFileSync(pos[1]);
  const tokens = new Int32Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 4));
  const session = await ort.InferenceSession.create(pos[0], {intraOpNumThreads: threads});
  const inName = session.inputNames[0];
  let nll = 0;
  let count = 0;
  for (let start = 0; start + seqLen <= tokens.length; start += seqLen) {
    const ids = new BigInt64Array(seqLen);
    for (let t = 0; t < seqLen; t++) ids[t] = BigInt(tokens[start + t]);
    const feeds = {};
    feeds[inName] = new ort.Tensor('int64', ids, [1, seqLen]);
    const out = await session.run(feeds);
    const logits = out[session.outputNames[0]].data;
    const V = logits.length / seqLen;
    for (let t = 0; t + 1 < seqLen; t++) {
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[t * V + v]);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(logits[t * V + v] - m);
      const target = tokens[start + t + 1];
      nll += Math.log(s) + m - logits[t * V + target];
      count++;
    }
  }
  console.log(JSON.stringify({tokens: count, nll: nll / count, ppl: Math.exp(nll / count)}));
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
