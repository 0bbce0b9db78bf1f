#!/usr/bin/env node
// Decode every tensor of a kformat container with the JavaScript reader and write each one's
// raw little-endian bytes to OUTDIR, with OUTDIR/index.json (name, dtype, shape, file):
// what tests/test_js.py compares with the Python reader. A local path or an http(s) URL.
//
//   node tools/dump.mjs MODEL OUTDIR [--quantized]

import { mkdir, writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { openModel, KFormatError } from '../kformat.js';
import { fileFetch } from '../test/helpers.js';

const [target, out, flag] = process.argv.slice(2);
if (!target || !out) {
  console.error('usage: node tools/dump.mjs MODEL OUTDIR [--quantized]');
  process.exit(2);
}
const remote = /^https?:/.test(target);
let url = remote ? target : pathToFileURL(target).href;
if (!remote && !target.endsWith('.kf') && !url.endsWith('/')) url += '/';
try {
  const started = performance.now();
  const model = await openModel(url, remote ? {} : { fetch: fileFetch() });
  await mkdir(out, { recursive: true });
  const index = [];
  let produced = 0;
  for (const [i, name] of model.names.entries()) {
    const t = await model.tensor(name);
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    produced += bytes.length;
    await writeFile(`${out}/${i}.bin`, bytes);
    const entry = { name, dtype: t.dtype, shape: t.shape, file: `${i}.bin` };
    if (flag === '--quantized') {
      const q = await model.quantized(name);
      if (q.codes) {
        await writeFile(`${out}/${i}.codes`, q.codes);
        entry.codes = `${i}.codes`;
      }
    }
    index.push(entry);
  }
  const seconds = (performance.now() - started) / 1000;
  await writeFile(`${out}/index.json`, JSON.stringify({ tensors: index, seconds, produced, bytesRead: model.bytesRead }, null, 1));
} catch (err) {
  console.error(`kformat.js: ${err instanceof KFormatError ? `${err.kind}: ` : ''}${err.message}`);
  process.exit(err instanceof KFormatError ? 2 : 1);
}
