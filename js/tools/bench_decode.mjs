#!/usr/bin/env node
// Time kformat.js decoding every tensor of a model (best of REPEAT), in Node, or in Chromium
// when given --chromium PAGE_URL (a page served next to js/ and the model). Prints JSON:
// seconds, float32 bytes produced, bytes read.
//
//   node tools/bench_decode.mjs MODEL_PATH_OR_URL [REPEAT]
//   node tools/bench_decode.mjs MODEL_URL REPEAT --chromium SITE_URL [/usr/bin/chromium]

import { pathToFileURL } from 'node:url';
import { openModel } from '../kformat.js';
import { fileFetch } from '../test/helpers.js';

async function decodeAll(open, repeat) {
  let best = Infinity;
  let produced = 0;
  let read = 0;
  for (let i = 0; i < repeat; i++) {
    const started = performance.now();
    const model = await open();
    produced = 0;
    for (const t of model.manifest.tensors) produced += (await model.tensor(t.name)).data.length * 4;
    best = Math.min(best, (performance.now() - started) / 1000);
    read = model.bytesRead;
  }
  return { seconds: best, float32_bytes: produced, bytes_read: read };
}

const [target, repeatText = '3', flag, site, chromiumPath = '/usr/bin/chromium'] = process.argv.slice(2);
const repeat = Number(repeatText);
if (flag === '--chromium') {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage();
    await page.goto(site);
    const result = await page.evaluate(
      async ([url, n]) => {
        const { openModel } = await import('./js/kformat.js');
        let best = Infinity;
        let produced = 0;
        let read = 0;
        for (let i = 0; i < n; i++) {
          const started = performance.now();
          const model = await openModel(url);
          produced = 0;
          for (const t of model.manifest.tensors) produced += (await model.tensor(t.name)).data.length * 4;
          best = Math.min(best, (performance.now() - started) / 1000);
          read = model.bytesRead;
        }
        return { seconds: best, float32_bytes: produced, bytes_read: read };
      },
      [target, repeat],
    );
    console.log(JSON.stringify({ ...result, runtime: `Chromium ${browser.version()}` }));
  } finally {
    await browser.close();
  }
} else {
  const remote = /^https?:/.test(target);
  const url = remote ? target : pathToFileURL(target).href + (target.endsWith('.kf') ? '' : '/');
  const result = await decodeAll(() => openModel(url, remote ? {} : { fetch: fileFetch() }), repeat);
  console.log(JSON.stringify({ ...result, runtime: `Node ${process.version}` }));
}
