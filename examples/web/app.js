// The digits page: open the sharded model with kformat.js (shards cached in the Cache API),
// dequantize its weights, and classify what is drawn on the canvas with a float32 forward pass.

import { openModel } from './js/kformat.js';

const $ = (id) => document.getElementById(id);
const pad = $('pad');
const ctx = pad.getContext('2d');
const GRID = 8;
const demo = { ready: false, error: null };
window.kformatDemo = demo;

function show(id, text) {
  $(id).textContent = text;
}

const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;

async function load() {
  const started = performance.now();
  const cache = 'caches' in self ? await caches.open('kformat-digits') : undefined;
  const model = await openModel(new URL('models/digits/', location.href).href, {
    cache,
    onProgress: ({ loaded, total }) => show('status', `loading… ${kib(loaded)} of ${kib(total)}`),
  });
  const layers = [];
  for (const k of [0, 2, 4]) {
    const w = await model.tensor(`${k}.weight`);
    const b = await model.tensor(`${k}.bias`);
    layers.push({ w: w.data, b: b.data, out: w.shape[0], in: w.shape[1] });
  }
  const seconds = (performance.now() - started) / 1000;
  const rules = [...new Set(model.manifest.tensors.map((t) => t.rule))].join(', ');
  const stored = model.manifest.shards.reduce((a, s) => a + s.length, 0);
  show('model', `${model.manifest.shards.length} shards, ${kib(stored)}; rules: ${rules}`);
  show('network', kib(model.networkBytes));
  show('cached', `${kib(model.bytesRead - model.networkBytes)} (${model.cacheHits} shard${model.cacheHits === 1 ? '' : 's'})`);
  show('requests', String(model.requests));
  show('time', `${(seconds * 1000).toFixed(0)} ms`);
  show('status', 'ready: draw a digit');
  Object.assign(demo, {
    ready: true,
    seconds,
    networkBytes: model.networkBytes,
    bytesRead: model.bytesRead,
    cacheHits: model.cacheHits,
    requests: model.requests,
    shards: model.manifest.shards.length,
  });
  return layers;
}

/** Logits of the Linear-ReLU-Linear-ReLU-Linear network for 64 pixels in 0..1. */
function forward(layers, pixels) {
  let h = Float32Array.from(pixels);
  layers.forEach(({ w, b, out, in: n }, i) => {
    const next = new Float32Array(out);
    for (let o = 0; o < out; o++) {
      let s = b[o];
      for (let j = 0; j < n; j++) s += w[o * n + j] * h[j];
      next[o] = i < layers.length - 1 ? Math.max(s, 0) : s;
    }
    h = next;
  });
  return h;
}

function pixelsOfCanvas() {
  const cell = pad.width / GRID;
  const image = ctx.getImageData(0, 0, pad.width, pad.height).data;
  const out = new Float32Array(GRID * GRID);
  for (let gy = 0; gy < GRID; gy++) {
    for (let gx = 0; gx < GRID; gx++) {
      let ink = 0;
      for (let y = gy * cell; y < (gy + 1) * cell; y++) {
        for (let x = gx * cell; x < (gx + 1) * cell; x++) ink += 255 - image[(y * pad.width + x) * 4];
      }
      out[gy * GRID + gx] = Math.min(1, ink / (cell * cell * 255) * 1.6);
    }
  }
  return out;
}

function paint(pixels) {
  const cell = pad.width / GRID;
  for (let i = 0; i < GRID * GRID; i++) {
    const v = Math.round(255 * (1 - pixels[i]));
    ctx.fillStyle = `rgb(${v},${v},${v})`;
    ctx.fillRect((i % GRID) * cell, Math.floor(i / GRID) * cell, cell, cell);
  }
}

function showScores(logits) {
  const max = Math.max(...logits);
  const exp = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const best = exp.indexOf(Math.max(...exp));
  show('prediction', String(best));
  $('scores').innerHTML = exp
    .map((e, d) => `<div>${d} <span class="bar" style="width:${(120 * e) / sum}px"></span></div>`)
    .join('');
  return best;
}

function clear() {
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, pad.width, pad.height);
  show('prediction', '\u00a0');
  $('scores').textContent = '';
}

async function main() {
  clear();
  const layers = await load();
  demo.classify = (pixels) => {
    const logits = Array.from(forward(layers, pixels));
    return logits.indexOf(Math.max(...logits));
  };
  demo.classifyCanvas = () => showScores(forward(layers, pixelsOfCanvas()));
  let drawing = false;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
  };
  pad.addEventListener('pointerdown', (e) => {
    drawing = true;
    ctx.beginPath();
    ctx.moveTo(...at(e));
  });
  pad.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    ctx.lineWidth = 26;
    ctx.lineCap = 'round';
    ctx.strokeStyle = '#000';
    ctx.lineTo(...at(e));
    ctx.stroke();
  });
  const finish = () => {
    if (drawing) demo.lastDrawn = demo.classifyCanvas();
    drawing = false;
  };
  pad.addEventListener('pointerup', finish);
  pad.addEventListener('pointerleave', finish);
  $('clear').addEventListener('click', clear);
  const samples = await (await fetch('samples.json')).json();
  samples.samples.slice(0, 10).forEach((s, i) => {
    const button = document.createElement('button');
    button.textContent = `test digit ${i + 1}`;
    button.addEventListener('click', () => {
      paint(s.pixels);
      showScores(forward(layers, s.pixels));
    });
    $('samples').append(button);
  });
}

main().catch((err) => {
  demo.error = `${err.kind ?? err.name}: ${err.message}`;
  show('status', `error: ${demo.error}`);
  $('status').className = 'error';
});
